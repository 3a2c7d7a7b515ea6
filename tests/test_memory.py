"""The GPU memory estimate (rast_gguf/memory.py) against the file's own tensor sizes, and the
up-front refusal of a triple that does not fit, with the estimate in the message."""

import rast_gguf  # noqa: F401

import pytest

from rast_gguf import DeltaPair, RastEngine, memory
from rast_gguf.errors import OutOfMemoryError
from rast_gguf.gguf_file import read_gguf_info


def test_full_offload_counts_every_weight_and_zero_layers_count_nothing(triple):
    info = read_gguf_info(triple.large)
    arch = info.architecture
    n_layer = info.metadata[f"{arch}.block_count"]
    all_bytes = sum(t.n_bytes for t in info.tensors)
    embd = info.tensor("token_embd.weight").n_bytes
    full = memory.estimate(triple.large, -1, n_ctx=256, n_batch=64)
    # everything but the input embedding (llama.cpp keeps get_rows on the CPU) goes to the GPU
    assert full.weights == all_bytes - embd + (embd if info.tensor("output.weight") is None else 0)
    assert memory.estimate(triple.large, n_layer + 1, n_ctx=256).weights == full.weights
    assert memory.estimate(triple.large, 0, n_ctx=256).total == 0
    layer0 = sum(t.n_bytes for t in info.tensors if t.name.startswith(f"blk.{n_layer - 1}."))
    assert memory.estimate(triple.large, 1, n_ctx=256).weights == layer0  # the last layer goes first
    # KV: 2 (K and V) x layers x cells (n_ctx rounded up to 256) x head_dim x kv heads x 2 bytes (f16)
    head_dim = info.metadata[f"{arch}.embedding_length"] // info.metadata[f"{arch}.attention.head_count"]
    n_kv = info.metadata[f"{arch}.attention.head_count_kv"]
    assert full.kv == 2 * n_layer * 256 * head_dim * n_kv * 2
    assert memory.estimate(triple.large, -1, n_ctx=300).kv == 2 * n_layer * 512 * head_dim * n_kv * 2


def test_triple_that_does_not_fit_is_refused_with_the_estimate(triple):
    models = [(triple.large, -1), (triple.tuned, -1), (triple.base, -1)]
    estimates = memory.check_fits(models, n_ctx=256, free_bytes=1 << 40)
    need = sum(e.total for e in estimates) + memory.CUDA_CONTEXT_BYTES
    with pytest.raises(OutOfMemoryError) as err:
        memory.check_fits(models, n_ctx=256, free_bytes=need - 1)
    message = str(err.value)
    assert "\n" not in message and f"{need / 2**30:.1f} GiB" in message and "large.gguf" in message
    assert "-ngls 0" in message
    memory.check_fits([(p, 0) for p, _ in models], n_ctx=256, free_bytes=0)  # all on the CPU: nothing to check


def test_engine_refuses_before_loading(triple, monkeypatch):
    monkeypatch.setattr(memory, "gpu_offload_supported", lambda: True)
    monkeypatch.setattr(memory, "gpu_free_bytes", lambda: 1 << 20)
    with pytest.raises(OutOfMemoryError, match="GiB of GPU memory"):
        RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base), 1.0, -1)], n_ctx=256,
                   n_gpu_layers=-1, n_threads=2)
    # the small pair on the CPU (-ngls 0) and the large one too: nothing needs the GPU
    with RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base), 1.0, 0)], n_ctx=256,
                    n_gpu_layers=0, n_threads=2) as engine:
        assert engine.n_vocab > 0
