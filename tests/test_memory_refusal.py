"""The memory refusal fires before anything big exists: no full model (weights) and no context is
created when the estimate says the triple does not fit."""

import rast_gguf  # noqa: F401

import pytest

from rast_gguf import DeltaPair, RastEngine, engine, memory
from rast_gguf.errors import OutOfMemoryError


@pytest.fixture
def counted(monkeypatch):
    created = {"full models": 0, "vocab-only models": 0, "contexts": 0}
    real_model, real_context = engine.Model, engine.Context

    def model(path, *args, vocab_only=False, **kwargs):
        created["vocab-only models" if vocab_only else "full models"] += 1
        return real_model(path, *args, vocab_only=vocab_only, **kwargs)

    def context(*args, **kwargs):
        created["contexts"] += 1
        return real_context(*args, **kwargs)

    monkeypatch.setattr(engine, "Model", model)
    monkeypatch.setattr(engine, "Context", context)
    return created


def test_refusal_creates_no_full_model_and_no_context(triple, monkeypatch, counted):
    monkeypatch.setattr(memory, "gpu_offload_supported", lambda: True)
    monkeypatch.setattr(memory, "gpu_free_bytes", lambda: 1 << 20)
    pairs = [DeltaPair(str(triple.tuned), str(triple.base), 1.0, -1)]
    with pytest.raises(OutOfMemoryError, match="GiB of GPU memory"):
        RastEngine(triple.large, pairs, n_ctx=256, n_gpu_layers=-1, n_threads=1)
    assert counted == {"full models": 0, "vocab-only models": 3, "contexts": 0}


def test_the_counter_sees_a_normal_load(triple, counted):
    with RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base), 1.0, 0)], n_ctx=128,
                    n_threads=1):
        pass
    assert counted == {"full models": 3, "vocab-only models": 3, "contexts": 3}
