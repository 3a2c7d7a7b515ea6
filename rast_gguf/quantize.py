"""Quantize a GGUF file with llama.cpp's own quantizer (`llama_model_quantize`).

`quantize_gguf(src, dst, "q4_k_m")` writes `dst` through a temporary file that is renamed only
when llama.cpp reports success, so a failed or interrupted run never leaves a half-written model
(and what a killed run left is removed by the next: rast_gguf.partial_files).
Type names are llama.cpp's (`f16`, `bf16`, `q8_0`, `q4_k_m`, ...), case-insensitive.
"""

from __future__ import annotations

import os
from pathlib import Path

from rast_gguf.errors import QuantizeError
from rast_gguf.partial_files import clean_leftovers, partial_path

# llama_ftype values from llama.h (stable across versions).
FTYPES: dict[str, int] = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9,
    "q2_k": 10, "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13, "q4_k_s": 14, "q4_k_m": 15,
    "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18, "iq4_nl": 25, "iq4_xs": 30, "bf16": 32,
}


def ftype_from_name(name: str) -> int:
    key = name.lower()
    if key not in FTYPES:
        known = ", ".join(sorted(FTYPES))
        raise QuantizeError(f"unknown quantization type '{name}'; choose one of: {known}")
    return FTYPES[key]


def quantize_gguf(src: str | os.PathLike, dst: str | os.PathLike, type_name: str,
                  *, n_threads: int = 0, allow_requantize: bool = True, overwrite: bool = False) -> Path:
    import llama_cpp  # noqa: F401  (load libllama before anything else; see rast_gguf/__init__.py)
    from llama_cpp import llama_cpp as C

    from rast_gguf.gguf_file import read_gguf_info

    src, dst = Path(src), Path(dst)
    read_gguf_info(src)  # a clear error for a missing/corrupt input instead of a llama.cpp abort
    ftype = ftype_from_name(type_name)
    if dst.exists() and not overwrite:
        raise QuantizeError(f"cannot write {dst}: it already exists; delete it or choose another path")
    params = C.llama_model_quantize_default_params()
    params.nthread = n_threads
    params.ftype = ftype
    params.allow_requantize = allow_requantize
    clean_leftovers(dst)
    tmp = partial_path(dst)
    done = False
    try:
        rc = C.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0 or not tmp.exists():
            raise QuantizeError(f"llama.cpp could not quantize {src} to {type_name} (code {rc}); "
                                "see the log above for the tensor it stopped at")
        os.replace(tmp, dst)
        done = True
    finally:
        if not done:  # an error, or Ctrl-C (which lands when the C call returns): no partial output
            tmp.unlink(missing_ok=True)
    return dst
