"""The one error type of rast_convert.

Every problem a user can cause while converting or quantizing (an unsupported architecture, a
missing or misshapen tensor, an unreadable shard, an existing output file, a failed llama.cpp
quantization, ...) raises `ConversionError`, whose message is one line saying what is wrong and
what to do. It is raised before any large write starts wherever the problem can be seen in headers
and configs. rast_convert is a library of its own: it imports nothing from rast_gguf, and rast_gguf
maps this error to its own `rast_gguf.errors.ConvertError` / `QuantizeError` where it calls us.
"""

from __future__ import annotations


class ConversionError(Exception):
    """A Hugging Face checkpoint cannot be converted to GGUF (or a GGUF quantized) as asked."""
