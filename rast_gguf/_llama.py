"""The one place libllama enters the process, and where llama.cpp's log goes.

Importing this module imports llama-cpp-python, whose ctypes layer loads
`site-packages/llama_cpp/lib/libllama.so`; `rast_gguf._ext` is linked against that same file and
must be imported only after it (the package __init__ guarantees the order), so the process holds
exactly one libllama whatever the user imported before us. llama.cpp's log is captured: nothing is
printed unless `set_verbose(True)` (or RAST_VERBOSE=1), and the last warning/error lines are kept
so that a failed load can say why in its one-line error: the first error line since the last
`take_last_problem()` (llama.cpp logs the reason first, "error loading model: ...", then a generic
"failed to load model"), else the last warning.
"""

from __future__ import annotations

import collections
import ctypes
import os
import sys

# ggml answers a failed assertion by attaching gdb to the process and printing its backtrace
# (hundreds of lines, seconds) before abort(); without it only the message line is printed
os.environ.setdefault("GGML_NO_BACKTRACE", "1")

from rast_gguf import _preload  # noqa: F401,E402  (one libstdc++ for the process; must precede llama_cpp)
import llama_cpp  # noqa: F401,E402  (loads libllama; must precede rast_gguf._ext)
from llama_cpp import llama_cpp as C  # noqa: E402

# enum ggml_log_level (ggml.h): NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
_GGML_LOG_LEVEL_WARN = 3
_GGML_LOG_LEVEL_ERROR = 4
_GGML_LOG_LEVEL_CONT = 5

_verbose = os.environ.get("RAST_VERBOSE", "") not in ("", "0")
_recent_problems: collections.deque[str] = collections.deque(maxlen=8)  # warnings
_first_error: list[str] = []  # the first error line since the last take_last_problem()
_last_level = 0


@C.llama_log_callback
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    global _last_level
    if level != _GGML_LOG_LEVEL_CONT:
        _last_level = level
    message = text.decode("utf-8", errors="replace")
    if _last_level == _GGML_LOG_LEVEL_ERROR and message.strip() and not _first_error:
        _first_error.append(message.strip())
    elif _last_level in (_GGML_LOG_LEVEL_WARN, _GGML_LOG_LEVEL_ERROR) and message.strip():
        _recent_problems.append(message.strip())
    if _verbose:
        sys.stderr.write(message)


C.llama_log_set(_log_callback, ctypes.c_void_p(0))
C.llama_backend_init()


def set_verbose(verbose: bool) -> None:
    global _verbose
    _verbose = verbose


def take_last_problem() -> str:
    """The first llama.cpp error line since the last call, else the most recent warning, else ''
    (all cleared)."""
    if _first_error:
        message = _first_error[0]
    else:
        message = _recent_problems[-1] if _recent_problems else ""
    _recent_problems.clear()
    _first_error.clear()
    return message


def addr(handle) -> int:
    """A ctypes handle's address, for the C++ extension."""
    return ctypes.cast(handle, ctypes.c_void_p).value or 0


def libggml() -> ctypes.CDLL:
    """A handle through which ggml's functions resolve to the copy libllama itself uses.

    pip installs each library under three names (libggml.so, .so.0, .so.0.N) as separate files, and
    libllama links the `.so.0` ones; opening `libggml-base.so` by path loads a second copy with its
    own state (abort callback, backend registry), which llama.cpp never sees. dlsym on libllama's own
    handle searches libllama's dependencies, so every ggml symbol found through it is the live one.
    """
    return ctypes.CDLL(C._lib._name)
