"""Hugging Face safetensors checkpoints where GGUF models are expected: converted once, then reused.

`convert_checkpoint(hf_dir, out, out_type)` runs the project's converter (rast_convert, a library
that knows nothing of rast_gguf) and turns its ConversionError into `ConvertError`. `cached_conversion`
converts a checkpoint folder into the cache (`cache_dir()/converted/`, see rast_gguf.defaults) under
a name that is the checkpoint's identity plus the output type, and returns the cached file when it
is already there: a hub checkpoint is identified by repo and commit sha (rast_gguf.hub downloads
it), a local folder by a sha256 over each file's name, size and mtime, the contents of its small
files (config, tokenizer) and each safetensors header. A changed checkpoint gets a new name and is
converted again. The file appears atomically (written under a temporary name, then renamed), so an
interrupted conversion leaves nothing that a later run would mistake for a result.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
from pathlib import Path
from typing import Callable

from rast_gguf.errors import ConvertError

logger = logging.getLogger("rast_gguf.checkpoints")

DEFAULT_CONVERT_TYPE = "q8_0"  # keeps the small pair's difference precise; large models may ask for less
_SMALL_FILE_BYTES = 64 << 20   # files hashed whole (config, tokenizer); larger ones by name, size and mtime
n_conversions = 0              # conversions run by this process (tests check that a cached one is reused)


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    """A folder with config.json and at least one .safetensors file."""
    folder = Path(path)
    return folder.is_dir() and (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def convert_checkpoint(hf_dir: str | os.PathLike, out: str | os.PathLike, out_type: str = "f16", *,
                       overwrite: bool = False, n_threads: int = 0, progress: bool = True) -> Path:
    """Convert the checkpoint folder `hf_dir` to the GGUF file `out` of `out_type` (f16, bf16, f32, q8_0 or a
    llama.cpp quantization such as q4_k_m); returns `out`. Raises ConvertError with rast_convert's message."""
    from rast_convert import ConversionError, convert_hf_to_gguf

    global n_conversions
    try:
        written = convert_hf_to_gguf(hf_dir, out, out_type=out_type, overwrite=overwrite, progress=progress,
                                     n_threads=n_threads)
    except ConversionError as e:
        raise ConvertError(str(e)) from None
    n_conversions += 1
    return written


def output_types() -> list[str]:
    from rast_convert import output_type_names

    return output_type_names()


def check_convert_type(out_type: str) -> str:
    out_type = out_type.lower()
    if out_type not in output_types():
        raise ConvertError(f"unknown --convert-type '{out_type}'; choose one of: {', '.join(output_types())}")
    return out_type


def converted_dir() -> Path:
    from rast_gguf.defaults import cache_dir

    return cache_dir() / "converted"


def folder_identity(folder: Path) -> str:
    """sha256 over every file of a checkpoint folder: name, size, mtime; the bytes of small files; the
    header of each safetensors file (its tensor names, dtypes, shapes and offsets)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        with open(path, "rb") as file:
            if path.suffix == ".safetensors":
                head = file.read(8)
                (n_header,) = struct.unpack("<Q", head) if len(head) == 8 else (0,)
                digest.update(file.read(min(n_header, _SMALL_FILE_BYTES)))
            elif stat.st_size <= _SMALL_FILE_BYTES:
                digest.update(file.read())
    return digest.hexdigest()


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def cached_conversion(hf_dir: Path | Callable[[], Path], out_type: str = DEFAULT_CONVERT_TYPE, *,
                      identity: str | None = None, label: str | None = None, n_threads: int = 0) -> Path:
    """The GGUF of a checkpoint folder from the conversion cache, converting it first if it is not there.

    `hf_dir` is the folder, or a function that fetches it (called only when a conversion is needed);
    `identity` names the checkpoint's version (required with a function; a hub repo's commit; default:
    `folder_identity`), `label` the file (default: the folder's name). A notice goes to stderr."""
    import sys

    out_type = check_convert_type(out_type)
    if identity is None:
        hf_dir = Path(hf_dir)
        identity = folder_identity(hf_dir)
    label = label or Path(hf_dir).resolve().name
    key = hashlib.sha256(f"{identity}\0{out_type}".encode()).hexdigest()[:16]
    out = converted_dir() / f"{_safe(label)}-{key}-{out_type}.gguf"
    if out.is_file():
        logger.info("reusing %s", out)
        return out
    hf_dir = hf_dir() if callable(hf_dir) else Path(hf_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"converting {label} to {out_type} GGUF (once; cached as {out})", file=sys.stderr)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.gguf")
    try:
        convert_checkpoint(hf_dir, tmp, out_type, overwrite=True, n_threads=n_threads, progress=sys.stderr.isatty())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
