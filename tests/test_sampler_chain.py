"""The C++ chain: delta first, llama.cpp's samplers after it, in the chosen order; and the process
holds exactly one libllama whatever was imported first."""

import llama_cpp  # noqa: F401

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from oracle import N_GPU_LAYERS, AloneModel, combine, unused_ids
from rast_gguf import DeltaPair, RastEngine, SamplingParams, generate


def chain_names(engine, **kwargs):
    sampler = engine.sampler(SamplingParams(**kwargs))
    try:
        return sampler.names()
    finally:
        sampler.close()


def test_delta_is_the_first_link_of_a_llama_cpp_chain(triple):
    with RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base))], n_ctx=64) as engine:
        assert chain_names(engine, temp=0.7, top_k=40, top_p=0.9, min_p=0.05) == [
            "rast-delta", "top-k", "top-p", "min-p", "temp", "rast-probe", "dist"]
        assert chain_names(engine, temp=0.7, top_k=40, top_p=0.9, min_p=0.05, order="reference") == [
            "rast-delta", "temp", "top-k", "top-p", "min-p", "rast-probe", "dist"]
        assert chain_names(engine, temp=0) == ["rast-delta", "rast-probe", "greedy"]


@pytest.mark.parametrize("sampling", [SamplingParams(temp=0.8, seed=3),  # the defaults: top-k 40, top-p, min-p
                                      SamplingParams(temp=1.3, top_k=20, top_p=1.0, min_p=0.0, seed=4),
                                      SamplingParams(temp=0.7, top_k=50, top_p=0.9, min_p=0.02, seed=5,
                                                     order="reference")],
                         ids=["defaults", "top-k only", "reference order"])
def test_sampled_rows_with_top_k_choose_what_the_whole_chain_chooses(triple, sampling):
    """With top-k on, a plain sample() starts from the k ids of largest combined logit picked in one
    pass; recording the final logits takes llama.cpp's chain over the full candidate array instead.
    Same seed, same rows: the same token at every step (and the draws do vary)."""
    with RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base), 1.5, N_GPU_LAYERS),
                                   DeltaPair(str(triple.base), str(triple.tuned), -0.25, N_GPU_LAYERS)],
                    n_ctx=128, n_threads=2, n_gpu_layers=N_GPU_LAYERS) as engine:
        engine.feed(engine.tokenize("Once upon a time"))
        fast, full = engine.sampler(sampling), engine.sampler(sampling)
        full.set_record(True)
        tokens = []
        try:
            for _ in range(48):
                token = fast.sample(-1)
                assert full.sample(-1) == token, len(tokens)
                tokens.append(token)
                engine.feed([token])
        finally:
            fast.close()
            full.close()
    assert len(set(tokens)) > 8


def numpy_top_p(logits, p):
    """ids kept by top-p on softmax(logits): the most probable ones until their mass reaches p."""
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    cum = np.cumsum(probs[order])
    n_keep = int(np.searchsorted(cum, p) + 1)
    return set(order[:n_keep].tolist())


@pytest.mark.parametrize("order", ["llama", "reference"])
def test_temperature_order_against_numpy(triple, order):
    temp, top_p, alpha = 2.0, 0.6, 1.0
    prompt = "The answer is"
    with RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base), alpha, N_GPU_LAYERS)], n_ctx=64,
                    n_threads=2, flash_attn="off", n_gpu_layers=N_GPU_LAYERS) as engine:
        prompt_tokens = engine.tokenize(prompt)
        result = generate(engine, prompt, max_tokens=1, record_logits=True,
                          sampling=SamplingParams(temp=temp, top_k=0, top_p=top_p, min_p=0.0, seed=1, order=order))
        n_shared = engine.n_shared
    models = [AloneModel(p, n_ctx=64) for p in (triple.large, triple.tuned, triple.base)]
    try:
        z = [m.start(prompt_tokens) for m in models]
    finally:
        for m in models:
            m.close()
    combined = combine(z[0], [(alpha, z[1], z[2])], n_shared, unused_ids(triple.large))
    finite = np.isfinite(combined)
    ids = np.nonzero(finite)[0]
    if order == "reference":
        kept = numpy_top_p(combined[ids] / temp, top_p)
    else:
        kept = numpy_top_p(combined[ids], top_p)
    expected = {int(ids[i]) for i in kept}
    got = set(np.nonzero(np.isfinite(result.step_logits[0]))[0].tolist())
    assert got == expected
    survivors = sorted(got)
    np.testing.assert_allclose(result.step_logits[0][survivors], combined[survivors] / temp, rtol=1e-5, atol=1e-4)


def mapped_libllama(code: str) -> str:
    script = textwrap.dedent(code) + textwrap.dedent("""
        import os
        files = set()
        for line in open("/proc/self/maps"):
            parts = line.split()
            if len(parts) >= 6 and "libllama" in os.path.basename(parts[5]):
                files.add((parts[3], parts[4], parts[5]))   # device, inode, path
        print(len({(d, i) for d, i, _ in files}), sorted({p for _, _, p in files}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.parametrize("first", ["import numpy", "import llama_cpp", "import gguf", "pass"])
def test_process_holds_one_libllama(triple, first):
    out = mapped_libllama(f"""
        {first}
        import rast_gguf
        from rast_gguf import RastEngine, DeltaPair, generate, SamplingParams
        with RastEngine({str(triple.large)!r}, [DeltaPair({str(triple.tuned)!r}, {str(triple.base)!r})], n_ctx=64) as e:
            generate(e, "hi", max_tokens=2, sampling=SamplingParams(temp=0))
    """)
    count, paths = out.split(" ", 1)
    assert count == "1", out
    assert "llama_cpp/lib/libllama.so" in paths, out
