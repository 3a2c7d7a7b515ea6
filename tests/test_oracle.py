"""The engine against the independent numpy/llama-cpp-python oracle (tests/oracle.py)."""

import llama_cpp  # noqa: F401

import numpy as np
import pytest

from oracle import N_GPU_LAYERS, AloneModel, combine, log_softmax, unused_ids
from rast_gguf import DeltaPair, RastEngine, SamplingParams, generate

PROMPT = "Question: what is 12 + 35?\nAnswer: Let's think step by step."
N_STEPS = 40
FULL_DISTRIBUTION = dict(top_k=0, top_p=1.0, min_p=0.0)


def oracle_logprobs(t, tokens, prompt_tokens, alpha, n_shared, flash_attn=False):
    """Per-step oracle log-probabilities along a given token sequence (teacher forcing)."""
    models = [AloneModel(p, flash_attn=flash_attn) for p in (t.large, t.tuned, t.base)]
    excluded = np.union1d(unused_ids(t.large), unused_ids(t.base))
    excluded = excluded[excluded < n_shared]
    try:
        z = [m.start(prompt_tokens) for m in models]
        out = []
        for token in tokens:
            out.append(log_softmax(combine(z[0], [(alpha, z[1], z[2])], n_shared, excluded)))
            z = [m.step(token) for m in models]
        return out
    finally:
        for m in models:
            m.close()


@pytest.mark.parametrize("overlap", [False, True], ids=["sequential", "overlap"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("which, flash_attn", [("triple", "off"), ("triple", "on"), ("padded_triple", "off")])
def test_distribution_matches_oracle(which, flash_attn, alpha, overlap, request):
    t = request.getfixturevalue(which)
    with RastEngine(t.large, [DeltaPair(str(t.tuned), str(t.base), alpha, N_GPU_LAYERS)], n_ctx=256, n_threads=2,
                    n_gpu_layers=N_GPU_LAYERS, overlap=overlap,
                    flash_attn=flash_attn) as engine:
        assert engine.overlap == overlap
        prompt_tokens = engine.tokenize(PROMPT)
        result = generate(engine, PROMPT, max_tokens=N_STEPS, record_logits=True, ignore_eos=True,
                          sampling=SamplingParams(temp=1.0, seed=1234, **FULL_DISTRIBUTION))
        n_shared = engine.n_shared
    assert len(result.tokens) == N_STEPS >= 32
    expected = oracle_logprobs(t, result.tokens, prompt_tokens, alpha, n_shared, flash_attn == "on")
    worst = 0.0
    for step, (got_logits, want) in enumerate(zip(result.step_logits, expected)):
        got = log_softmax(got_logits)
        assert np.array_equal(np.isfinite(got), np.isfinite(want)), f"step {step}: different excluded ids"
        finite = np.isfinite(want)
        worst = max(worst, float(np.max(np.abs(got[finite] - want[finite]))))
    assert worst <= 1e-4, f"max |logprob difference| {worst:.3g} over {len(expected)} steps"


@pytest.mark.parametrize("overlap", [False, True], ids=["sequential", "overlap"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0])
def test_greedy_sequence_matches_oracle(triple, alpha, overlap):
    t = triple
    with RastEngine(t.large, [DeltaPair(str(t.tuned), str(t.base), alpha, N_GPU_LAYERS)], n_ctx=256, n_threads=2,
                    n_gpu_layers=N_GPU_LAYERS, overlap=overlap,
                    flash_attn="off") as engine:
        assert engine.overlap == overlap
        prompt_tokens = engine.tokenize(PROMPT)
        result = generate(engine, PROMPT, max_tokens=N_STEPS, sampling=SamplingParams(temp=0))
        n_shared = engine.n_shared
        eog = [tok for tok in range(engine.n_vocab) if engine.model_large.is_eog(tok)]
    models = [AloneModel(p) for p in (t.large, t.tuned, t.base)]
    excluded = unused_ids(t.large)
    try:
        z = [m.start(prompt_tokens) for m in models]
        oracle_tokens = []
        for _ in range(N_STEPS):
            token = int(np.argmax(combine(z[0], [(alpha, z[1], z[2])], n_shared, excluded)))
            oracle_tokens.append(token)
            if token in eog:
                break
            z = [m.step(token) for m in models]
    finally:
        for m in models:
            m.close()
    assert result.tokens == oracle_tokens


def test_alpha_zero_equals_large_model_alone(triple):
    with RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base), 0.0, N_GPU_LAYERS)],
                    n_ctx=256, n_threads=2, flash_attn="off", n_gpu_layers=N_GPU_LAYERS) as engine:
        result = generate(engine, PROMPT, max_tokens=N_STEPS, sampling=SamplingParams(temp=0))
    llm = llama_cpp.Llama(model_path=str(triple.large), n_ctx=256, n_threads=2, flash_attn=False,
                          n_gpu_layers=N_GPU_LAYERS, verbose=False)
    try:
        prompt_tokens = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
        alone_tokens = []
        for token in llm.generate(prompt_tokens, temp=0.0, repeat_penalty=1.0):
            alone_tokens.append(int(token))
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(alone_tokens) == N_STEPS:
                break
    finally:
        llm.close()
    assert len(result.tokens) >= 16
    assert result.tokens == alone_tokens


def test_seeded_sampling_is_reproducible_and_seed_matters(triple):
    def run(seed):
        with RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base), 1.0)], n_ctx=256,
                        n_threads=2) as engine:
            return generate(engine, PROMPT, max_tokens=32, sampling=SamplingParams(temp=1.0, seed=seed)).tokens

    first = run(7)
    assert run(7) == first
    assert run(8) != first


def test_padding_ids_are_never_candidates(padded_triple):
    t = padded_triple
    with RastEngine(t.large, [DeltaPair(str(t.tuned), str(t.base), 1.0)], n_ctx=256, n_threads=2,
                    flash_attn="off") as engine:
        assert engine.n_shared == 608 and engine.n_vocab == 640
        result = generate(engine, PROMPT, max_tokens=32, record_logits=True,
                          sampling=SamplingParams(temp=1.5, seed=3, **FULL_DISTRIBUTION))
    pads = unused_ids(t.large)
    assert len(pads) == 8 + 32
    for logits in result.step_logits:
        assert np.all(np.isneginf(logits[pads]))
        assert np.all(np.isneginf(logits[608:]))
    assert not set(result.tokens) & set(pads.tolist())
