"""Quantize a GGUF file with llama.cpp's own quantizer (`llama_model_quantize`).

`quantize(src, dst, "q4_k_m")` writes `dst` through a temporary file that is renamed only when
llama.cpp reports success, so a failed or interrupted run never leaves a half-written model (and
what a killed run left is removed by the next: rast_convert.partial_files).
Type names are llama.cpp's (`f16`, `bf16`, `q8_0`, `q4_k_m`, ...), case-insensitive. Failures
raise ConversionError. The input is not validated here beyond its magic; rast_gguf's
`quantize_gguf` runs its full GGUF validator first.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

from rast_convert.errors import ConversionError
from rast_convert.partial_files import clean_leftovers, partial_path

# llama_ftype values from llama.h (stable across versions).
FTYPES: dict[str, int] = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9,
    "q2_k": 10, "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13, "q4_k_s": 14, "q4_k_m": 15,
    "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18, "iq4_nl": 25, "iq4_xs": 30, "bf16": 32,
}


def ftype_from_name(name: str) -> int:
    key = name.lower()
    if key not in FTYPES:
        raise ConversionError(f"unknown quantization type '{name}'; choose one of: {', '.join(sorted(FTYPES))}")
    return FTYPES[key]


def _llama_api():
    # Some CUDA builds of llama.cpp carry a private libstdc++; loading the shared one into the global
    # scope before libllama keeps the process on one copy (rast_gguf/_preload.py explains why).
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libstdc++.so.6", mode=os.RTLD_GLOBAL | os.RTLD_NOW)
        except OSError:
            pass
    from llama_cpp import llama_cpp as C

    return C


def quantize(src: str | os.PathLike, dst: str | os.PathLike, type_name: str, *, n_threads: int = 0,
             allow_requantize: bool = True, overwrite: bool = False) -> Path:
    """Write `dst`, the GGUF `src` quantized to `type_name` (0 threads: all cores). Returns `dst`."""
    src, dst = Path(src), Path(dst)
    ftype = ftype_from_name(type_name)
    try:
        with open(src, "rb") as file:
            magic = file.read(4)
    except OSError as e:
        raise ConversionError(f"cannot read {src} ({e.strerror or e}); check the path") from None
    if magic != b"GGUF":
        raise ConversionError(f"{src}: not a GGUF file (bad magic); pass a .gguf model")
    if dst.exists() and not overwrite:
        raise ConversionError(f"cannot write {dst}: it already exists; delete it or choose another path")
    C = _llama_api()
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
            raise ConversionError(f"llama.cpp could not quantize {src} to {type_name} (code {rc}); "
                                  "see the log above for the tensor it stopped at")
        os.replace(tmp, dst)
        done = True
    finally:
        if not done:  # an error, or Ctrl-C (which lands when the C call returns): no partial output
            tmp.unlink(missing_ok=True)
    return dst
