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


class ConvertError(RastError):
    """A Hugging Face checkpoint cannot be converted to GGUF (rast_convert's ConversionError, mapped)."""


class ClosedError(RastError):
    """A model, context, batch, sampler chain or engine was used after close()."""


class BatchInputError(RastError):
    """A bad line in a batch input file (raised with --strict; otherwise reported and skipped)."""


class BatchOutputError(RastError):
    """A batch output file that cannot be resumed (not JSONL records of ours)."""


class ShardMergeError(RastError):
    """Shard outputs of a batch that do not add up to its input (missing or duplicated ids)."""


class RpcError(RastError):
    """An RPC server (llama.cpp's ggml-rpc) that cannot be reached, speaks another version, or has no devices."""


class HubError(RastError):
    """A hub reference that is malformed, names a missing repo or file, or cannot be fetched."""


class ChatTemplateError(RastError):
    """A model has no chat template, or the messages do not fit it."""


class ContextFullError(PromptTooLongError):
    """A chat conversation no longer fits in the context."""


class ChatFileError(RastError):
    """A saved chat (/save, /load) cannot be read or written."""


class DatasetError(RastError):
    """An evaluation dataset that cannot be read (missing file, bad JSON, missing fields, duplicate ids)."""


class OutOfMemoryError(RastError):
    """The models would not fit in GPU memory (estimated before anything is loaded)."""


class QueueFullError(RastError):
    """The scheduler's queue holds as many waiting requests as it may; try again later."""
