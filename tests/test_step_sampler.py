"""The one-call-per-step sampler (C++ `_ext.StepSampler`) against numpy: several sequences decoded in
one batch, each model's logits rows read on their own, combined in numpy as
log_softmax(z_large + sum alpha_k (z_tuned_k - z_base_k)); greedy and sampled rows, per-row alpha,
two pairs, logprobs and top-k, changed flags, sampling frequencies, and errors that never crash."""

import llama_cpp  # noqa: F401

import numpy as np
import pytest

from conftest import make_triple
from oracle import GPU_BATCH_TOLERANCE, N_GPU_LAYERS, AloneModel, log_softmax, unused_ids
from rast_gguf import DeltaPair, RastEngine, SamplingParams, _ext
from rast_gguf.scheduler import SeqRequest
from rast_gguf.step_sampler import ChainStepSampler, StepSampler

PROMPTS = ["Question: what is 12 + 35?\nAnswer:", "Once upon a time", "The quick brown fox jumps", "Hello"]


@pytest.fixture(scope="module")
def second_pair(tmp_path_factory):
    t = make_triple(tmp_path_factory.mktemp("second"), seed=31)  # same tokenizer and small shape
    return t.tuned, t.base


@pytest.fixture(scope="module")
def stepped(triple, second_pair):
    """An engine with two pairs after one batch that ends each of 4 prompts in its own sequence;
    rows[i] is the output row of prompt i; logits[name][i] that model's logits there (float64)."""
    pairs = [DeltaPair(str(triple.tuned), str(triple.base), 0.5, N_GPU_LAYERS),
             DeltaPair(str(second_pair[0]), str(second_pair[1]), 1.0, N_GPU_LAYERS)]
    with RastEngine(triple.large, pairs, n_ctx=64, n_threads=2, n_seq_max=4, flash_attn="off",
                    n_gpu_layers=N_GPU_LAYERS) as engine:  # placed as the oracle's AloneModel (RAST_TEST_NGL)
        entries = []
        rows = []
        for seq, text in enumerate(PROMPTS):
            tokens = engine.tokenize(text)
            entries += [(t, pos, seq, pos == len(tokens) - 1) for pos, t in enumerate(tokens)]
            rows.append(len(entries) - 1)
        engine.decode_entries(*zip(*entries))
        names = ["large", "tuned1", "base1", "tuned2", "base2"]
        logits = {name: np.array([ctx.logits(r) for r in rows], dtype=np.float64)
                  for name, ctx in zip(names, engine.contexts)}
        excluded = np.union1d(unused_ids(triple.large), unused_ids(triple.base))
        yield engine, rows, logits, excluded[excluded < engine.n_shared]


def combined(logits, i, alphas, n_shared, excluded):
    z = np.full(logits["large"].shape[1], -np.inf)
    z[:n_shared] = logits["large"][i, :n_shared]
    for k, alpha in enumerate(alphas, start=1):
        z[:n_shared] += alpha * (logits[f"tuned{k}"][i, :n_shared] - logits[f"base{k}"][i, :n_shared])
    z[excluded] = -np.inf
    return z


def large_top(logits, i, n_shared, excluded):
    z = logits["large"][i, :n_shared].copy()
    z[excluded] = -np.inf
    return int(np.argmax(z))


def request(temp=0.0, alpha=None, n_logprobs=None, seed=1, **chain):
    return SeqRequest((1,), SamplingParams(temp=temp, seed=seed, **chain), 8, alpha=alpha, n_logprobs=n_logprobs)


def test_greedy_rows_take_the_argmax_of_the_combined_logits(stepped):
    engine, rows, logits, excluded = stepped
    sampler = StepSampler(engine, n_threads=3)
    alphas = [None, -1.0, 2.0, 0.0]  # None: the engine's (0.5, 1.0)
    handles = [sampler.open(request(alpha=a, n_logprobs=5)) for a in alphas]
    tokens, changed, logprob, top_ids, top_lp = sampler.sample(rows, handles, 5)
    n_changed = 0
    for i, alpha in enumerate(alphas):
        pair_alphas = [0.5, 1.0] if alpha is None else [alpha, alpha]
        want = log_softmax(combined(logits, i, pair_alphas, engine.n_shared, excluded))
        order = np.argsort(-want, kind="stable")
        assert tokens[i] == order[0]
        assert logprob[i] == pytest.approx(want[order[0]], abs=1e-4)
        assert list(top_ids[i]) == list(order[:5])
        np.testing.assert_allclose(top_lp[i], want[order[:5]], atol=1e-4)
        assert changed[i] == (tokens[i] != large_top(logits, i, engine.n_shared, excluded))
        n_changed += changed[i]
    assert not changed[3]  # alpha 0: RAST is the large model
    assert n_changed >= 1  # and the pairs do move some choices (else the flag tests nothing)


def test_sampled_rows_report_the_distribution_they_were_drawn_from(stepped):
    engine, rows, logits, excluded = stepped
    sampler = StepSampler(engine)
    full = dict(top_k=0, top_p=1.0, min_p=0.0)
    specs = [dict(temp=1.0, **full), dict(temp=0.7, top_k=5, top_p=1.0, min_p=0.0),
             dict(temp=1.3, top_k=0, top_p=0.9, min_p=0.0, order="reference"), dict(temp=1.0, alpha=-0.5, **full)]
    handles = [sampler.open(request(n_logprobs=3, seed=10 + i, **spec)) for i, spec in enumerate(specs)]
    tokens, changed, logprob, top_ids, top_lp = sampler.sample(rows, handles, 3)

    def check(i, z):
        want = log_softmax(z)
        assert np.isfinite(want[tokens[i]])
        assert logprob[i] == pytest.approx(want[tokens[i]], abs=1e-4)
        order = [j for j in np.argsort(-want, kind="stable")[:3] if np.isfinite(want[j])]
        assert list(top_ids[i]) == order + [-1] * (3 - len(order))  # fewer when fewer ids survive the chain
        np.testing.assert_allclose(top_lp[i][:len(order)], want[order], atol=1e-4)

    z0 = combined(logits, 0, [0.5, 1.0], engine.n_shared, excluded)
    check(0, z0)
    z1 = combined(logits, 1, [0.5, 1.0], engine.n_shared, excluded)
    keep = np.argsort(-z1, kind="stable")[:5]  # llama order: top-k, then temperature
    z1_chain = np.full_like(z1, -np.inf)
    z1_chain[keep] = z1[keep] / 0.7
    check(1, z1_chain)
    z2 = combined(logits, 2, [0.5, 1.0], engine.n_shared, excluded) / 1.3  # reference order: temperature first
    p = np.exp(log_softmax(z2))
    order = np.argsort(-p, kind="stable")
    n_keep = int(np.searchsorted(np.cumsum(p[order]), 0.9) + 1)
    z2_chain = np.full_like(z2, -np.inf)
    z2_chain[order[:n_keep]] = z2[order[:n_keep]]
    check(2, z2_chain)
    check(3, combined(logits, 3, [-0.5, -0.5], engine.n_shared, excluded))


def test_sampling_frequencies_follow_the_combined_distribution(stepped):
    engine, rows, logits, excluded = stepped
    sampler = StepSampler(engine, n_threads=4)
    n = 3000
    handles = [sampler.open(request(temp=1.0, seed=s, top_k=0, top_p=1.0, min_p=0.0, alpha=2.0)) for s in range(n)]
    tokens, *_ = sampler.sample([rows[1]] * n, handles)
    p = np.exp(log_softmax(combined(logits, 1, [2.0, 2.0], engine.n_shared, excluded)))
    for token in np.argsort(-p)[:4]:
        freq = np.mean(tokens == token)
        assert abs(freq - p[token]) <= 4 * np.sqrt(p[token] * (1 - p[token]) / n) + 1e-3, (token, freq, p[token])
    assert p[tokens].min() > 0  # never an excluded or unscored id
    for h in handles:
        sampler.close(h)
    assert sampler._c.n_open == 0


def test_same_choices_as_the_one_row_chain(stepped):
    """The C++ step path and SamplerChain (the single-sequence path) choose alike, row by row, step by step."""
    engine, rows, _, _ = stepped
    fast, slow = StepSampler(engine, n_threads=2), ChainStepSampler(engine)
    specs = [dict(temp=0.0), dict(temp=0.8), dict(temp=1.0, top_k=0, top_p=0.9, min_p=0.1, alpha=1.5),
             dict(temp=0.5, order="reference")]
    reqs = [request(seed=7 + i, n_logprobs=2, **spec) for i, spec in enumerate(specs)]
    hf, hs = [fast.open(r) for r in reqs], [slow.open(r) for r in reqs]
    for _ in range(5):  # the seeded draws advance alike
        got, want = fast.sample(rows, hf, 2), slow.sample(rows, hs, 2)
        assert list(got[0]) == list(want[0]) and list(got[1]) == list(want[1])
        np.testing.assert_allclose(got[2], want[2], atol=1e-4)
        assert np.array_equal(got[3], want[3])
    for h in hs:
        slow.close(h)


def test_engine_rows_are_each_models_own_logits(stepped, triple):
    """The rows of the 4-sequence batch equal each model run alone on that prompt (llama-cpp-python),
    and each row is nearest to its own prompt's (on a GPU, batched rows round differently)."""
    engine, rows, logits, _ = stepped
    tolerance = 1e-4 if N_GPU_LAYERS == 0 else GPU_BATCH_TOLERANCE
    for name, path in (("large", triple.large), ("tuned1", triple.tuned)):
        model = AloneModel(path, n_ctx=64)
        try:
            alone = [log_softmax(model.start(engine.tokenize(text))) for text in PROMPTS]
        finally:
            model.close()
        for i in range(len(PROMPTS)):
            distance = [np.max(np.abs(a - log_softmax(logits[name][i]))) for a in alone]
            assert distance[i] < tolerance and int(np.argmin(distance)) == i, (name, i, distance)


def test_bad_calls_are_python_errors_not_crashes(stepped):
    engine, rows, _, _ = stepped
    sampler = StepSampler(engine)
    h = sampler.open(request())
    with pytest.raises(IndexError):
        sampler.sample(rows[:1], [h + 100])
    with pytest.raises(ValueError):
        sampler.sample(rows[:2], [h])
    with pytest.raises(IndexError, match="no logits"):
        sampler.sample([999], [h])
    sampler.close(h)
    with pytest.raises(IndexError):
        sampler.close(h)
    with pytest.raises(ValueError, match="one alpha per pair"):
        sampler._c.open(0.0, 0, 1.0, 0.0, 1, "llama", [1.0], -1)


def test_a_worker_exception_reaches_the_caller_after_every_worker_stopped():
    for fail_at in (0, 5, 63):
        with pytest.raises(RuntimeError, match=f"row {fail_at} failed"):
            _ext._row_pool_check(4, 64, fail_at)
    assert _ext._row_pool_check(4, 64, -1) == 64  # the pool still works afterwards


def test_many_rows_spread_over_the_pool_match_numpy(stepped):
    """Enough rows that the pool's threads share them (greedy rows, per-row alpha, every output row)."""
    engine, rows, logits, excluded = stepped
    sampler = StepSampler(engine, n_threads=4)
    alphas = [-1.0, 0.0, 0.5, 2.0, 1.0]
    n = 600
    handles = [sampler.open(request(alpha=alphas[i % len(alphas)], n_logprobs=0)) for i in range(n)]
    tokens, changed, logprob, _, _ = sampler.sample([rows[i % len(rows)] for i in range(n)], handles)
    for i in range(n):
        a = alphas[i % len(alphas)]
        want = log_softmax(combined(logits, i % len(rows), [a, a], engine.n_shared, excluded))
        assert tokens[i] == np.argmax(want) and logprob[i] == pytest.approx(want.max(), abs=1e-4)


def test_the_blockwise_greedy_argmax_is_numpys_first_argmax():
    """rast_greedy_argmax (greedy rows of StepSampler and SamplerChain) against numpy over several
    blocks of 512 ids: ties inside and across blocks (the first id wins), excluded ids (even the
    largest), -inf and NaN logits, one and two pairs."""
    rng = np.random.default_rng(5)
    for trial in range(60):
        n_vocab = int(rng.integers(1, 2200))
        n_shared = int(rng.integers(1, n_vocab + 1))
        n_pairs = 1 + trial % 2
        rows = [rng.integers(-4, 5, n_vocab).astype(np.float32) / 4 for _ in range(1 + 2 * n_pairs)]  # many ties
        if trial % 3 == 0:
            rows[0][rng.integers(0, n_vocab, 5)] = -np.inf
            rows[1][rng.integers(0, n_vocab, 3)] = np.nan
        alphas = [float(a) for a in rng.choice([-1.0, 0.0, 0.5, 2.0], n_pairs)]
        excluded = sorted(set(rng.integers(0, n_shared, int(rng.integers(0, 8))).tolist()))
        delta = np.zeros(n_vocab, np.float32)
        for k, a in enumerate(alphas):
            delta += np.float32(a) * (rows[1 + 2 * k] - rows[2 + 2 * k])
        z = (rows[0] + delta if n_pairs > 1 else rows[0] + np.float32(alphas[0]) * (rows[1] - rows[2]))[:n_shared]
        if trial % 4 == 1 and n_shared > 1:  # an excluded id holds the largest value
            top = int(np.nanargmax(np.where(np.isnan(z), -np.inf, z)))
            excluded = sorted(set(excluded) | {top})
        allowed = np.ones(n_shared, bool)
        allowed[excluded] = False

        def first_argmax(v):  # -1: no allowed id above -inf
            v = np.where(allowed & ~np.isnan(v), v, -np.inf)
            return -1 if v.max() == -np.inf else int(np.argmax(v))

        token, large_top = _ext._greedy_argmax_check(rows[0], rows[1:], alphas, n_shared, excluded)
        assert token == first_argmax(z), trial
        assert large_top == first_argmax(rows[0][:n_shared]), trial


def test_the_one_pass_top_k_keeps_what_a_full_sort_keeps():
    """rast_top_k_combined (sampled rows with top-k of StepSampler) against numpy's sort of the
    combined row: the same k values (a tie on the k-th value may keep any of the tied ids, as
    llama.cpp's unstable partial sort), only allowed ids below n_shared, each with its own z; the
    large model's own first argmax beside it. Rows span many blocks, k from 1 to past the buffer's
    first trim, values with many ties, -inf, excluded ids (even the largest)."""
    rng = np.random.default_rng(11)
    for trial in range(80):
        n_vocab = int(rng.integers(2, 5000))
        n_shared = int(rng.integers(1, n_vocab + 1))
        n_pairs = 1 + trial % 2
        if trial % 2:
            rows = [rng.integers(-6, 7, n_vocab).astype(np.float32) / 4 for _ in range(1 + 2 * n_pairs)]  # ties
        else:
            rows = [rng.normal(0, 3, n_vocab).astype(np.float32) for _ in range(1 + 2 * n_pairs)]
        if trial % 5 == 0:
            rows[0][rng.integers(0, n_vocab, 9)] = -np.inf
        alphas = [float(a) for a in rng.choice([-1.0, 0.0, 0.5, 2.0], n_pairs)]
        delta = np.zeros(n_vocab, np.float32)
        for k, a in enumerate(alphas):
            delta += np.float32(a) * (rows[1 + 2 * k] - rows[2 + 2 * k])
        z = (rows[0] + delta if n_pairs > 1 else rows[0] + np.float32(alphas[0]) * (rows[1] - rows[2]))[:n_shared]
        excluded = sorted(set(rng.integers(0, n_shared, int(rng.integers(0, 12))).tolist()))
        if trial % 4 == 1:
            excluded = sorted(set(excluded) | {int(np.argmax(z))})
        allowed = np.ones(n_shared, bool)
        allowed[excluded] = False
        z_allowed = np.where(allowed, z, -np.inf)
        k = int(rng.choice([1, 5, 40, 64, 300, 1100]))
        k = min(k, n_shared)
        ids, values, large_top = _ext._top_k_combined_check(rows[0], rows[1:], alphas, n_shared, excluded, k)
        assert len(ids) == k == len(set(ids)), trial
        assert all(0 <= i < n_shared for i in ids), trial
        np.testing.assert_array_equal(np.asarray(values, np.float32), z_allowed[ids])  # each id's own z
        want = np.sort(z_allowed)[::-1][:k]
        np.testing.assert_array_equal(np.sort(np.asarray(values, np.float32))[::-1], want)  # the k largest values
        first = np.where(allowed, rows[0][:n_shared], -np.inf)
        assert large_top == (-1 if first.max() == -np.inf else int(np.argmax(first))), trial


def test_greedy_chain_and_sample_rows_match_numpy(stepped):
    """The single-sequence chain's greedy fast path and the scheduler's sample_rows: numpy's argmax of
    the combined logits, each row's logprobs only as its request asked."""
    engine, rows, logits, excluded = stepped
    chain = engine.sampler(SamplingParams(temp=0))
    try:
        for i, row in enumerate(rows):
            assert chain.sample(row) == np.argmax(combined(logits, i, [0.5, 1.0], engine.n_shared, excluded))
    finally:
        chain.close()
    sampler = StepSampler(engine)
    asked = [None, 0, 3, None]
    handles = [sampler.open(request(alpha=2.0, n_logprobs=k)) for k in asked]
    tokens, changed, logprob, top = sampler.sample_rows(rows, handles)
    for i, k in enumerate(asked):
        want = log_softmax(combined(logits, i, [2.0, 2.0], engine.n_shared, excluded))
        order = np.argsort(-want, kind="stable")
        assert tokens[i] == order[0] and isinstance(tokens[i], int)
        assert changed[i] == (tokens[i] != large_top(logits, i, engine.n_shared, excluded))
        if k is None:
            assert logprob[i] is None and top[i] is None
            continue
        assert logprob[i] == pytest.approx(want[order[0]], abs=1e-4)
        if k == 0:
            assert top[i] is None
        else:
            assert [t for t, _ in top[i]] == list(order[:k])
            np.testing.assert_allclose([v for _, v in top[i]], want[order[:k]], atol=1e-4)
    for h in handles:
        sampler.close(h)
