"""Quantize a GGUF file with llama.cpp's own quantizer, behind rast-gguf's GGUF validator.

`quantize_gguf(src, dst, "q4_k_m")` validates `src` (a clear GGUFFileError instead of a llama.cpp
abort), then runs rast_convert's quantizer (`rast_convert.quantize`: a temporary file renamed only
on success) and turns its errors into QuantizeError. Type names are llama.cpp's, case-insensitive.
"""

from __future__ import annotations

import os
from pathlib import Path

from rast_convert.errors import ConversionError
from rast_convert.quantize import FTYPES
from rast_convert.quantize import ftype_from_name as _ftype_from_name
from rast_convert.quantize import quantize as _quantize
from rast_gguf.errors import QuantizeError

__all__ = ["FTYPES", "ftype_from_name", "quantize_gguf"]


def ftype_from_name(name: str) -> int:
    try:
        return _ftype_from_name(name)
    except ConversionError as e:
        raise QuantizeError(str(e)) from None


def quantize_gguf(src: str | os.PathLike, dst: str | os.PathLike, type_name: str,
                  *, n_threads: int = 0, allow_requantize: bool = True, overwrite: bool = False) -> Path:
    from rast_gguf import _llama  # noqa: F401  (libllama with its log captured, before the quantizer runs)
    from rast_gguf.gguf_file import read_gguf_info

    read_gguf_info(src)
    try:
        return _quantize(src, dst, type_name, n_threads=n_threads, allow_requantize=allow_requantize,
                         overwrite=overwrite)
    except ConversionError as e:
        raise QuantizeError(str(e)) from None
