"""The one error type of rast_convert.

Every problem a user can cause while converting (an unsupported architecture, a missing or
misshapen tensor, an unreadable shard, an existing output file, ...) raises `ConversionError`, a
`RastError`, whose message is one line saying what is wrong and what to do. It is raised before
any large write starts wherever the problem can be seen in headers and configs.
"""

from __future__ import annotations

from rast_gguf.errors import RastError


class ConversionError(RastError):
    """A Hugging Face checkpoint cannot be converted to GGUF as asked."""
