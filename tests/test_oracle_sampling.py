"""More of the engine against the independent oracle (tests/oracle.py: each model alone in
llama-cpp-python, combined in numpy): two pairs with per-pair alphas set through
engine.set_alpha(alpha, pair_index) and SamplerChain.set_alpha(pair_index, alpha), negative alpha,
temperatures other than 1 over many steps, and top-k / top-p / min-p truncation in both orders."""

import llama_cpp  # noqa: F401

import dataclasses

import numpy as np
import pytest

from conftest import make_triple
from oracle import N_GPU_LAYERS, AloneModel, combine, log_softmax, unused_ids
from rast_gguf import DeltaPair, RastEngine, SamplingParams

PROMPT = "Question: what is 12 + 35?\nAnswer: Let's think step by step."
N_STEPS = 32


@pytest.fixture(scope="module")
def second_pair(tmp_path_factory):
    other = make_triple(tmp_path_factory.mktemp("oracle_pair2"), seed=41)
    return other.tuned, other.base


def run_engine(large, pairs, sampling, n_steps=N_STEPS, chain_alphas=None):
    """(prompt tokens, sampled tokens, recorded final logits per step, n_shared); chain_alphas are
    set on the sampler chain itself, pair by pair, before the first step."""
    pairs = [dataclasses.replace(p, n_gpu_layers=N_GPU_LAYERS) for p in pairs]  # placed as the oracle's models
    with RastEngine(large, pairs, n_ctx=256, n_threads=2, flash_attn="off", n_gpu_layers=N_GPU_LAYERS) as engine:
        prompt = engine.tokenize(PROMPT)
        engine.feed(prompt)
        sampler = engine.sampler(sampling)
        sampler.set_record(True)
        for index, alpha in enumerate(chain_alphas or []):
            sampler.set_alpha(index, alpha)
        tokens, logits = [], []
        try:
            for _ in range(n_steps):
                token = sampler.sample(-1)
                tokens.append(token)
                logits.append(np.array(sampler.recorded_logits(), dtype=np.float64))
                engine.feed([token])
        finally:
            sampler.close()
        return prompt, tokens, logits, engine.n_shared


def oracle_logits(large, pair_paths, alphas, prompt, tokens, n_shared):
    """The oracle's combined logits (before temperature and truncation) along the given tokens."""
    models = [AloneModel(large)] + [AloneModel(p) for pair in pair_paths for p in pair]
    excluded = unused_ids(large)
    excluded = excluded[excluded < n_shared]
    try:
        z = [m.start(prompt) for m in models]
        out = []
        for token in tokens:
            terms = [(a, z[1 + 2 * i], z[2 + 2 * i]) for i, a in enumerate(alphas)]
            out.append(combine(z[0], terms, n_shared, excluded))
            z = [m.step(token) for m in models]
        return out
    finally:
        for m in models:
            m.close()


def truncate(z, top_k, top_p, min_p):
    """numpy top-k, top-p (keep the smallest set reaching p) and min-p (p >= min_p * p_max), as
    llama.cpp's samplers with min_keep 1; removed ids get -inf."""
    z = z.copy()
    if top_k > 0:
        finite = np.sort(z[np.isfinite(z)])[::-1]
        if len(finite) > top_k:
            z[z < finite[top_k - 1]] = -np.inf
    if top_p < 1.0:
        order = np.argsort(-z, kind="stable")
        p = np.exp(log_softmax(z))[order]
        keep = int(np.searchsorted(np.cumsum(p), top_p) + 1)
        z[order[keep:]] = -np.inf
    if min_p > 0.0:
        z[z < np.max(z) + np.log(min_p)] = -np.inf
    return z


def expected_final(z, sampling):
    t = sampling.temp
    if sampling.order == "reference":
        return truncate(z / t, sampling.top_k, sampling.top_p, sampling.min_p)
    return truncate(z, sampling.top_k, sampling.top_p, sampling.min_p) / t


def compare(got_steps, want_steps, tolerance=1e-4):
    """Same kept ids (up to ids within float noise of a cut) and the same log-probabilities."""
    worst, boundary = 0.0, 0
    for step, (got, want) in enumerate(zip(got_steps, want_steps)):
        kept_got, kept_want = np.isfinite(got), np.isfinite(want)
        if not np.array_equal(kept_got, kept_want):
            boundary += 1
            assert boundary <= 2, f"step {step}: kept ids differ in more than boundary noise"
            continue
        lp_got, lp_want = log_softmax(got), log_softmax(want)
        worst = max(worst, float(np.max(np.abs(lp_got[kept_want] - lp_want[kept_want]))))
    assert worst <= tolerance, f"max |logprob difference| {worst:.3g}"
    return boundary


FULL = dict(top_k=0, top_p=1.0, min_p=0.0)


def test_two_pairs_negative_alpha_set_per_pair_at_another_temperature(triple, second_pair, temp=0.6):
    pair_paths = [(triple.tuned, triple.base), second_pair]
    pairs = [DeltaPair(str(t), str(b), 1.0) for t, b in pair_paths]
    sampling = SamplingParams(temp=temp, seed=99, **FULL)
    with RastEngine(triple.large, pairs, n_ctx=64, n_threads=1) as engine:
        engine.set_alpha(-0.75, 1)
        assert [p.alpha for p in engine.pairs] == [1.0, -0.75]
        alphas_after_set = [p.alpha for p in engine.pairs]
    pairs = [DeltaPair(str(t), str(b), a) for (t, b), a in zip(pair_paths, alphas_after_set)]
    prompt, tokens, got, n_shared = run_engine(triple.large, pairs, sampling)
    want = [z / temp for z in oracle_logits(triple.large, pair_paths, [1.0, -0.75], prompt, tokens, n_shared)]
    assert compare(got, want) == 0
    assert len(set(tokens)) > 5  # sampled, not stuck on one token


def test_sampler_chain_set_alpha_per_pair(triple, second_pair):
    pair_paths = [(triple.tuned, triple.base), second_pair]
    pairs = [DeltaPair(str(t), str(b), 0.0) for t, b in pair_paths]
    sampling = SamplingParams(temp=0.8, seed=5, **FULL)
    prompt, tokens, got, n_shared = run_engine(triple.large, pairs, sampling, chain_alphas=[-1.5, 2.0])
    want = [z / 0.8 for z in oracle_logits(triple.large, pair_paths, [-1.5, 2.0], prompt, tokens, n_shared)]
    assert compare(got, want) == 0
    swapped = [z / 0.8 for z in oracle_logits(triple.large, pair_paths, [2.0, -1.5], prompt, tokens, n_shared)]
    with pytest.raises(AssertionError):
        compare(got, swapped)  # the comparison is sharp enough to tell the pairs' alphas apart


@pytest.mark.parametrize("order, truncation", [
    ("reference", dict(top_k=7, top_p=1.0, min_p=0.0)),
    ("llama", dict(top_k=0, top_p=1.0, min_p=0.08)),
    ("reference", dict(top_k=20, top_p=0.8, min_p=0.02)),
], ids=["top_k-reference", "min_p-llama", "all-reference"])
def test_truncation_against_numpy(triple, order, truncation):
    pair_paths = [(triple.tuned, triple.base)]
    pairs = [DeltaPair(str(triple.tuned), str(triple.base), -0.5)]
    sampling = SamplingParams(temp=1.3, seed=17, order=order, **truncation)
    prompt, tokens, got, n_shared = run_engine(triple.large, pairs, sampling)
    combined = oracle_logits(triple.large, pair_paths, [-0.5], prompt, tokens, n_shared)
    want = [expected_final(z, sampling) for z in combined]
    compare(got, want)
    kept = [int(np.isfinite(g).sum()) for g in got]
    if truncation["top_k"] and truncation["top_p"] == 1.0:
        assert max(kept) == truncation["top_k"]
    assert min(kept) < n_shared // 2  # truncation removed something at every step
