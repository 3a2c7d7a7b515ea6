"""Typed errors of rast-gguf.

Every failure a user can cause (a bad file, incompatible models, a prompt too long, invalid
sampling values, bad input lines) is raised as a subclass of `RastError` whose message is one
line saying what is wrong and what to do. The CLI prints that line and exits with status 1;
library users catch the specific class. Nothing else in the package defines exception types.
"""


class RastError(Exception):
    """Base class: the message is a complete one-line explanation for the user."""


class GGUFFileError(RastError):
    """A file is missing, unreadable, not GGUF, or truncated/corrupt."""


class ModelLoadError(RastError):
    """llama.cpp refused to load a model or create a context."""


class VocabMismatchError(RastError):
    """The models of a triple do not share a vocabulary."""


class SamplingParamsError(RastError, ValueError):
    """An invalid sampling value (temperature, top-p, alpha, ...)."""


class PromptTooLongError(RastError):
    """The prompt does not fit in the context."""


class DecodeError(RastError):
    """llama_decode failed for a reason other than a full context."""


class UsageError(RastError):
    """Options that do not fit together (unpaired --base/--tuned, an unknown choice)."""


class QuantizeError(RastError):
    """llama.cpp's quantizer failed."""
