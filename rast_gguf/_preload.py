"""Make the process hold one C++ runtime before libllama loads, whatever was imported first.

Some llama.cpp builds carry a private copy of libstdc++ inside a backend library and export it
(seen: a CUDA build of llama-cpp-python whose libggml-cuda.so has no libstdc++.so.6 dependency but
exports ~3400 `std::` symbols, std::locale included). Which copy a C++ symbol binds to then depends
on load order: if libstdc++.so.6 was loaded and relocated before libllama (numpy 2 links it, so
`import numpy` first does this), the shared libstdc++ keeps its own locale state while libllama's
iostream calls land in the private copy, and the first `ostream << long` inside
llama_model_load_from_file (llama_model::print_info) segfaults. Loading libstdc++.so.6 into the
global symbol scope first makes every library bind every exported `std::` symbol to that one copy,
so the order of user imports stops mattering. Linux only; elsewhere there is nothing to do.
`runtime_report()` says what the process holds (for `rast doctor` and the regression test).
"""

from __future__ import annotations

import ctypes
import os
import sys

LIBSTDCXX = "libstdc++.so.6"
PROBE_SYMBOL = "_ZNSt6locale7classicEv"  # std::locale::classic(): present in any libstdc++ copy


def promote_libstdcxx() -> bool:
    """Load (or promote an already loaded) libstdc++.so.6 into the global scope. False if absent."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        ctypes.CDLL(LIBSTDCXX, mode=os.RTLD_GLOBAL | os.RTLD_NOW)
    except OSError:
        return False
    return True


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def defining_file(handle: ctypes.CDLL, symbol: str = PROBE_SYMBOL) -> str:
    """The file whose definition of `symbol` a lookup through `handle` finds ('' if none)."""
    try:
        address = ctypes.cast(getattr(handle, symbol), ctypes.c_void_p).value
    except AttributeError:
        return ""
    libc = ctypes.CDLL(None)
    info = _DlInfo()
    if not address or not libc.dladdr(ctypes.c_void_p(address), ctypes.byref(info)):
        return ""
    return os.path.realpath(info.dli_fname.decode())


def runtime_report(libllama: ctypes.CDLL | None = None) -> dict[str, str]:
    """Where std::locale::classic resolves in the global scope (what every library binds to once
    libstdc++ is there) and, given libllama, the first copy in libllama's own dependency tree: a
    llama/ggml library there means the build carries a private libstdc++ (harmless once global)."""
    report = {"global": defining_file(ctypes.CDLL(None))}
    if libllama is not None:
        report["first_in_libllama_tree"] = defining_file(libllama)
    return report


promote_libstdcxx()
