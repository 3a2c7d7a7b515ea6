"""CUDA stream priorities (bindings/stream_priority.cpp): the engine raises the large context's
stream exactly when the process holds a CUDA build of llama.cpp and the models sit on the GPU;
elsewhere the hook reports why not and changes nothing. Whether libggml-cuda is loaded is read
independently from /proc/self/maps. Numerics with raised priorities: tests/test_oracle.py run with
RAST_TEST_NGL=99 (pairs make every engine there raise its large stream)."""

import sys

import llama_cpp.llama_cpp as C
import pytest

from rast_gguf import _ext
from rast_gguf.engine import RastEngine
from rast_gguf.sampling import DeltaPair

from oracle import N_GPU_LAYERS

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")


def cuda_backend_loaded() -> bool:
    with open("/proc/self/maps") as maps:
        return any("libggml-cuda" in line for line in maps)


def test_hook_installs_exactly_on_a_cuda_build():
    installed, detail, least, greatest = _ext.stream_priority_install()
    assert installed == (cuda_backend_loaded() and N_GPU_LAYERS != 0), detail
    if installed:
        assert "libggml-cuda" in detail
        assert greatest < least  # CUDA counts urgency downwards
        assert _ext.stream_priority_set(greatest - 100) == greatest  # clamped to the device's range
        assert _ext.stream_priority_set(0) == 0
    else:
        assert "libggml-cuda" in detail or "CUDA" in detail
        assert _ext.stream_priority_set(-5) == 0  # nothing to raise: stays at the default


@pytest.mark.parametrize("with_pairs,wanted", [(True, True), (False, True), (True, False)])
def test_engine_raises_only_the_large_stream_of_a_rast_engine(triple, with_pairs, wanted):
    expect_raise = with_pairs and wanted and _ext.stream_priority_install()[0] and N_GPU_LAYERS != 0
    pairs = [DeltaPair(str(triple.tuned), str(triple.base), 1.0, N_GPU_LAYERS)] if with_pairs else []
    before = _ext.stream_priority_n_raised()
    with RastEngine(triple.large, pairs, n_ctx=64, n_gpu_layers=N_GPU_LAYERS, stream_priority=wanted) as engine:
        assert engine.stream_priority == expect_raise
        # the warm-up decode that created the stream left nothing behind in any KV cache
        assert [C.llama_memory_seq_pos_max(C.llama_get_memory(ctx.handle), 0) for ctx in engine.contexts] \
            == [-1] * len(engine.contexts)
    assert _ext.stream_priority_n_raised() - before == (1 if expect_raise else 0)
