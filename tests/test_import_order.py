"""Import order does not matter: rast_gguf puts one libstdc++ in the global symbol scope before
libllama loads (rast_gguf/_preload.py), also when numpy loaded libstdc++ privately first. On the GPU
machine this is what stops the CUDA model-load segfault; on CPU CI we check the invariant and that
a numpy-first process loads a model and generates. Each case runs in a fresh interpreter."""

import rast_gguf  # noqa: F401

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF symbol scopes are Linux-only")


def run_python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-2000:]}"
    return proc.stdout


def test_numpy_first_then_rast_gguf_promotes_libstdcxx_to_global_scope():
    out = run_python("""
        import ctypes
        import numpy  # numpy 2 maps libstdc++ privately (RTLD_LOCAL)
        assert any("libstdc++" in line for line in open("/proc/self/maps")), "numpy did not map libstdc++"
        assert not hasattr(ctypes.CDLL(None), "_ZNSt6locale7classicEv"), "libstdc++ already global"
        import rast_gguf
        from rast_gguf import _preload
        from llama_cpp import llama_cpp as C
        report = _preload.runtime_report(C._lib)
        print(report["global"])
    """)
    # global scope is searched before any library's own dependencies, so every std:: symbol of
    # libllama / libggml* (and of a private libstdc++ copy inside them) binds to this one file
    assert "libstdc++.so" in out.strip()


def test_numpy_first_process_loads_and_generates(triple):
    out = run_python(f"""
        import numpy
        from rast_gguf import DeltaPair, RastEngine, SamplingParams, generate
        with RastEngine({str(triple.large)!r}, [DeltaPair({str(triple.tuned)!r}, {str(triple.base)!r}, 1.0)],
                        n_ctx=128, n_threads=2) as engine:
            result = generate(engine, "Question: 1 + 1?", max_tokens=6, ignore_eos=True,
                              sampling=SamplingParams(temp=0))
        print(len(result.tokens))
    """)
    assert out.split()[-1] == "6"
