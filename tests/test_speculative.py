"""Speculative RAST is exact: greedy output is token for token plain RAST's, sampled tokens follow
RAST's distribution (chi-square against the distribution computed in numpy from each model run
alone), and a deliberately wrong residual is caught by the same test."""

import llama_cpp  # noqa: F401

import math

import numpy as np
import pytest

from conftest import Triple, make_triple, tiny_shape
from oracle import GPU_BATCH_TOLERANCE, N_GPU_LAYERS, AloneModel, combine, unused_ids
from rast_gguf import DeltaPair, RastEngine, SamplingParams, _ext, generate
from rast_gguf.speculative import DraftParams, make_speculator
from rast_gguf.synth import write_synthetic_gguf

N_RUNS = 20_000


def chi2_pvalue(counts, probs, min_expected=5.0):
    """Pearson's chi-square goodness of fit; cells expected below min_expected are pooled.
    p-value by the Wilson-Hilferty approximation (accurate to ~1e-3 for df >= 3)."""
    counts, probs = np.asarray(counts, float), np.asarray(probs, float)
    assert counts[probs == 0].sum() == 0, f"ids of probability 0 came out: {np.nonzero(counts * (probs == 0))[0]}"
    expected = probs * counts.sum()
    big = expected >= min_expected
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    x2, df = float(np.sum((obs - exp) ** 2 / exp)), len(obs) - 1
    if df == 0:  # one cell of probability 1, and nothing came out elsewhere (asserted above)
        return 1.0
    z = ((x2 / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_chi2_helper_against_known_quantiles():
    # chi-square quantiles (df, x, upper tail) from tables
    for df, x, tail in ((10, 18.307, 0.05), (30, 50.892, 0.01), (5, 1.145, 0.95)):
        p = np.full(df + 1, 1 / (df + 1))
        # counts giving exactly statistic x: (o - e)^2 / e summed; put all deviation in two cells
        n = 1_000_000
        e = n / (df + 1)
        d = math.sqrt(x * e / 2)
        counts = np.full(df + 1, e)
        counts[0] += d
        counts[1] -= d
        assert abs(chi2_pvalue(counts, p) - tail) < 0.004


@pytest.mark.parametrize("case", ["disjoint", "overlapping", "q_misses_p", "p_point"])
def test_accept_step_on_fixed_vectors(case):
    rng = np.random.default_rng(7)
    n = 50
    if case == "disjoint":
        p = np.zeros(n); p[:10] = rng.random(10)
        q = np.zeros(n); q[20:30] = rng.random(10)
    elif case == "overlapping":
        p, q = rng.random(n) ** 3, rng.random(n) ** 3
    elif case == "q_misses_p":   # p has mass where q has none
        p = rng.random(n); q = rng.random(n); q[:25] = 0
    else:                        # p a point mass the drafter rarely proposes
        p = np.zeros(n); p[3] = 1.0; q = rng.random(n)
    p, q = (p / p.sum()).astype(np.float32), (q / q.sum()).astype(np.float32)
    good = _ext.accept_histogram(p, q, 200_000, 11, False)
    assert chi2_pvalue(good, p) > 0.01
    wrong = _ext.accept_histogram(p, q, 200_000, 11, True)
    if case in ("overlapping", "q_misses_p"):  # elsewhere max(0, p - q) is p up to a factor: p is right there
        assert chi2_pvalue(wrong, p) < 1e-6


@pytest.mark.parametrize("case", ["disjoint", "q_misses_p", "p_point", "sparse_both"])
def test_draws_over_the_support_are_the_draws_over_the_whole_vocabulary(case):
    """The speculator draws over the ids of nonzero probability only (top-k leaves 40 of 152k): the
    same uniforms must give the same ids, run for run, as the walk over every id."""
    rng = np.random.default_rng(11)
    n = 400
    p, q = rng.random(n), rng.random(n)
    if case == "disjoint":
        p[200:] = 0; q[:200] = 0
    elif case == "q_misses_p":
        q[:25] = 0; p[300:] = 0
    elif case == "p_point":
        p[:] = 0; p[3] = 1.0; q[::2] = 0
    else:
        p[rng.random(n) < 0.9] = 0; q[rng.random(n) < 0.9] = 0
    p, q = (p / p.sum()).astype(np.float32), (q / q.sum()).astype(np.float32)
    for wrong in (False, True):
        dense = _ext.accept_histogram(p, q, 20_000, 3, wrong, False)
        sparse = _ext.accept_histogram(p, q, 20_000, 3, wrong, True)
        assert sparse == dense
        assert all(c == 0 for c, pi, qi in zip(sparse, p, q) if pi == 0 and qi == 0)


def numpy_post_chain(row, excluded, temp, top_k, top_p, min_p, reference):
    """llama.cpp's top-k, top-p, min-p and temperature links in RAST's order, then softmax, in numpy."""
    z = row.astype(np.float64)
    z[excluded] = -np.inf
    if reference:
        z = z / temp
    ids = np.argsort(-z, kind="stable")
    if top_k > 0:
        ids = ids[:top_k]
    if top_p < 1.0:
        e = np.exp(z[ids] - z[ids[0]])
        cum = np.cumsum(e / e.sum())
        ids = ids[:int(np.argmax(cum >= top_p)) + 1]
    if min_p > 0.0:
        ids = ids[z[ids] >= z[ids[0]] + np.log(min_p)]
    out = np.zeros(len(row))
    zk = z[ids] if reference else z[ids] / temp
    out[ids] = np.exp(zk - zk.max())
    return out / out.sum()


@pytest.mark.parametrize("temp, top_k, top_p, min_p, reference", [
    (0.8, 40, 0.95, 0.05, False),   # llama.cpp's defaults: top-k picked in one pass over the row
    (0.6, 25, 0.9, 0.0, True),      # temperature first (the RAST reference's order)
    (1.3, 7, 1.0, 0.0, False),
    (0.9, 0, 0.8, 0.1, False),      # no top-k: the whole candidate array
])
def test_post_chain_probabilities_match_numpy(temp, top_k, top_p, min_p, reference):
    """p and q of the speculator: the chain over a row (ids excluded, a block with none allowed),
    rows applied in turn into one buffer as the speculator reuses it, against numpy."""
    rng = np.random.default_rng(top_k + 1)
    n = 3000
    rows = (rng.standard_normal((6, n)) * 3).astype(np.float32)
    rows[2, 1024:2048] += 6.0                       # the best ids in one block
    rows[3] = rows[3] * 0.05                        # nearly flat: many ids pass top-p
    excluded = sorted(set(range(1500, 2100)) | set(int(i) for i in rng.choice(n, 60, replace=False)))
    rows[4, excluded[:50]] = 100.0                  # excluded ids would win
    got, supports = _ext.post_chain_probs(rows, excluded, temp, top_k, top_p, min_p, reference)
    for row, probs, support in zip(rows, got, supports):
        want = numpy_post_chain(row, excluded, temp, top_k, top_p, min_p, reference)
        np.testing.assert_allclose(np.asarray(probs), want, rtol=2e-5, atol=1e-7)
        assert list(support) == [int(i) for i in np.nonzero(want)[0]]
        assert 0 < len(support) <= (top_k or n)


PROMPT = "Question: what is 12 + 35?\nAnswer: 12 + 35"
CHAIN = dict(temp=1.5, top_k=6, top_p=1.0, min_p=0.0)  # llama order: top-k, then temperature
CHAIN_NO_TEMP = {key: value for key, value in CHAIN.items() if key != "temp"}


@pytest.fixture(scope="module")
def small_vocab_triple(tmp_path_factory):
    """300 ids (8 of them padding), so the joint distribution of two tokens is a small table; the
    large and the tuned model both perturb the base one, so the drafter's top ids and RAST's overlap
    (drafts get accepted and rejected) without being the same."""
    root = tmp_path_factory.mktemp("small_vocab")
    shape = tiny_shape("qwen2", 64, 2, 300, 8)
    base = write_synthetic_gguf(root / "base.gguf", shape, seed=41, ftype="f32")
    tuned = write_synthetic_gguf(root / "tuned.gguf", shape, seed=42, ftype="f32", derive_from=41, derive_scale=0.3)
    large = write_synthetic_gguf(root / "large.gguf", shape, seed=43, ftype="f32", derive_from=41, derive_scale=0.3)
    return Triple(large, base, tuned)


def numpy_chain(z, temp, top_k):
    """llama.cpp's top-k then temperature, then softmax, in numpy."""
    keep = np.argsort(-z, kind="stable")[:top_k]
    out = np.zeros_like(z)
    zk = z[keep] / temp
    out[keep] = np.exp(zk - zk.max())
    return out / out.sum()


def exact_table(t, prompt_tokens, alpha, n_tokens):
    """RAST's P(first token) (n_tokens=1) or P(first, second) (n_tokens=2), from each model run alone
    and combined in numpy."""
    models = [AloneModel(p, n_ctx=64) for p in (t.large, t.tuned, t.base)]
    excluded = np.union1d(unused_ids(t.large), unused_ids(t.base))
    n_vocab = len(models[0].start(prompt_tokens))

    def p_next(z):
        return numpy_chain(combine(z[0], [(alpha, z[1], z[2])], n_vocab, excluded), CHAIN["temp"], CHAIN["top_k"])

    try:
        p1 = p_next([m.start(prompt_tokens) for m in models])
        if n_tokens == 1:
            return p1
        table = np.zeros((n_vocab, n_vocab))
        for t1 in np.nonzero(p1)[0]:
            for m in models:
                m.start(prompt_tokens)
            table[t1] = p1[t1] * p_next([m.step(int(t1)) for m in models])
        return table
    finally:
        for m in models:
            m.close()


def speculative_counts(t, alpha, drafter, n_runs, n_tokens, *, wrong_residual=False, n_max=2, eager=False,
                       stats=None):
    """How often each first token (or pair of first tokens) came out of n_runs seeded speculative runs
    from the same prompt; the cycle is called directly so a run costs one or two cycles. eager: the
    drafter's last decode in the verify round, and its pre-draft (what a GPU runs). stats (a dict):
    also counts the cycles that started from a pre-draft ("carried")."""
    draft = DraftParams(str(t.base) if drafter == "model" else drafter, n_max=n_max, adaptive=False, eager=eager)
    with RastEngine(t.large, [DeltaPair(str(t.tuned), str(t.base), alpha)], n_ctx=64, n_threads=1,
                    flash_attn="off", draft=draft) as engine:
        prompt = engine.tokenize(PROMPT)
        engine.feed(prompt[:-1])
        spec = make_speculator(engine, SamplingParams(seed=5, **CHAIN))
        spec.set_wrong_residual(wrong_residual)
        counts = np.zeros((engine.n_vocab,) * n_tokens, dtype=np.int64)
        n_drafted = n_accepted = 0
        try:
            for run in range(n_runs):
                engine.rewind(len(prompt) - 1)
                spec.set_seed(run)  # the draws are keyed by (seed, position): a new seed per run
                spec.start(prompt)
                tokens, drafted, accepted, *_ = spec.cycle(n_max, 0.0, 0, 1, 4)
                n_drafted, n_accepted = n_drafted + drafted, n_accepted + accepted
                if len(tokens) < n_tokens:
                    more = spec.cycle(n_max, 0.0, 0, 1, 4)
                    tokens = tokens + more[0]
                    if stats is not None:
                        stats["carried"] = stats.get("carried", 0) + more[6]
                counts[tuple(tokens[:n_tokens])] += 1
        finally:
            spec.close()
    return prompt, counts, n_drafted, n_accepted


@pytest.mark.parametrize("drafter, n_tokens, n_runs, eager", [
    ("tuned", 1, N_RUNS, False), ("tuned", 2, 4000, False), ("model", 2, 4000, False),
    ("tuned", 2, 4000, True), ("model", 2, 4000, True)])
def test_first_tokens_follow_rast_distribution(small_vocab_triple, drafter, n_tokens, n_runs, eager):
    prompt, counts, n_drafted, n_accepted = speculative_counts(small_vocab_triple, 1.0, drafter, n_runs, n_tokens,
                                                               eager=eager)
    table = exact_table(small_vocab_triple, prompt, 1.0, n_tokens)
    # both the accept branch and the residual branch ran many times
    assert n_drafted >= n_runs and 0.1 * n_drafted < n_accepted < 0.9 * n_drafted
    assert chi2_pvalue(counts.ravel(), table.ravel()) > 0.01


@pytest.mark.parametrize("drafter", ["tuned", "model"])
def test_tokens_after_a_predraft_follow_rast_distribution(small_vocab_triple, drafter):
    """No drafts (k = 0): each cycle's one token is decided from the drafter's proposal, which the
    eager drafter also decodes beside the verify; when the token is that proposal, the second cycle
    starts from the row that decode left. The pairs of first tokens still follow RAST's."""
    stats = {}
    prompt, counts, _, _ = speculative_counts(small_vocab_triple, 1.0, drafter, 4000, 2, n_max=0, eager=True,
                                              stats=stats)
    assert 0.1 * 4000 < stats["carried"] < 0.9 * 4000  # both the carried and the fresh second cycle ran
    assert chi2_pvalue(counts.ravel(), exact_table(small_vocab_triple, prompt, 1.0, 2).ravel()) > 0.01


@pytest.mark.parametrize("drafter", ["tuned", "model"])
def test_predrafting_changes_no_token(small_vocab_triple, drafter):
    """Greedy and seeded sampling with the eager drafter, with and without its pre-draft: the same
    tokens (every proposal and draw is keyed by its position, whatever decode produced the row), and
    the pre-draft did save decodes."""
    t = small_vocab_triple
    outputs, carried = {}, {}
    for predraft in (False, True):
        # a fixed draft length: the adaptive one follows timings, and cycles that draft nothing do not pre-draft
        draft = DraftParams(str(t.base) if drafter == "model" else drafter, n_max=1, adaptive=False, eager=True,
                            predraft=predraft)
        with RastEngine(t.large, [DeltaPair(str(t.tuned), str(t.base), 1.0)], n_ctx=256, n_threads=2,
                        flash_attn="off", draft=draft) as engine:
            runs = [generate(engine, prompt, max_tokens=32, ignore_eos=True, sampling=sampling)
                    for prompt in SYNTH_PROMPTS[:4]
                    for sampling in (SamplingParams(temp=0), SamplingParams(temp=1.0, seed=17))]
        outputs[predraft] = [r.tokens for r in runs]
        carried[predraft] = sum(r.speculative.n_carried for r in runs)
    assert outputs[True] == outputs[False]
    assert carried[False] == 0 and carried[True] >= 10


def test_wrong_residual_fails_the_distribution_test(small_vocab_triple):
    prompt, counts, _, _ = speculative_counts(small_vocab_triple, 1.0, "tuned", 4000, 1, wrong_residual=True)
    assert chi2_pvalue(counts, exact_table(small_vocab_triple, prompt, 1.0, 1)) < 1e-6


def top2_margins(step_logits):
    margins = []
    for z in step_logits:
        top2 = np.sort(z[np.isfinite(z)])[-2:]
        margins.append(float(top2[1] - top2[0]))
    return margins


# llama.cpp's logits for a token decoded alone and inside a batch differ (measured on these f32 models on
# a CPU: up to 1e-2 for the small ones, a few 1e-6 between batches of 2 and 8): speculation verifies in
# batches, so where RAST's top two are closer than this the greedy pick may legitimately differ.
MARGIN = 0.05
SYNTH_PROMPTS = ["The answer is", "Question: what is 12 + 35?\\nAnswer:", "a b a b a b a b", "Once upon a time",
                 "def f(x):\\n    return", "1, 2, 3, 4, 5,", "x = y + z; y = x + z; x =", "The the the the"]


def assert_greedy_identical(t, pairs, draft, prompts, max_tokens=24):
    """Greedy speculative output equals plain RAST's token for token, except after a step where RAST's
    top two are closer than MARGIN: the first difference, if any, must be at such a near-tie (shown
    in the message); most tokens must be covered. Returns (drafted, accepted) over all prompts."""
    with RastEngine(t.large, pairs, n_ctx=256, n_threads=2, flash_attn="off") as plain, \
            RastEngine(t.large, pairs, n_ctx=256, n_threads=2, flash_attn="off", draft=draft) as spec:
        n_same, n_total, drafted, accepted = 0, 0, 0, 0
        for prompt in prompts:
            want = generate(plain, prompt, max_tokens=max_tokens, record_logits=True, ignore_eos=True,
                            sampling=SamplingParams(temp=0))
            got = generate(spec, prompt, max_tokens=max_tokens, ignore_eos=True, sampling=SamplingParams(temp=0))
            margins = top2_margins(want.step_logits)
            drafted += got.speculative.n_drafted
            accepted += got.speculative.n_accepted
            assert len(got.tokens) == len(want.tokens) == max_tokens
            first_diff = next((i for i, (a, b) in enumerate(zip(got.tokens, want.tokens)) if a != b), max_tokens)
            if first_diff < max_tokens:
                assert margins[first_diff] < MARGIN, (
                    f"{prompt!r}: speculative greedy output differs from RAST's at step {first_diff}, where RAST's "
                    f"top-2 margin is {margins[first_diff]:.3g} (not a near-tie)")
            n_same += first_diff
            n_total += max_tokens
    assert n_same >= 0.6 * n_total, f"only {n_same} of {n_total} tokens compared before a near-tie"
    return drafted, accepted


@pytest.mark.parametrize("drafter, alpha, eager", [("tuned", 0.5, False), ("tuned", 2.0, False), ("ngram", 1.0, False),
                                                   ("model", 1.0, False), ("tuned", 1.0, True), ("model", 1.0, True)])
def test_greedy_output_is_rast_output_on_synthetic_models(small_vocab_triple, drafter, alpha, eager):
    t = small_vocab_triple
    # a fixed draft length: the adaptive one follows this machine's timings, and may not draft at all
    draft = DraftParams(str(t.base) if drafter == "model" else drafter, n_max=4, adaptive=False, eager=eager)
    drafted, accepted = assert_greedy_identical(t, [DeltaPair(str(t.tuned), str(t.base), alpha)], draft, SYNTH_PROMPTS)
    assert drafted > 0 and accepted > 0  # the accept path ran, not only plain steps


@pytest.mark.parametrize("eager", [False, True])
def test_greedy_output_with_short_drafts_dropped_and_cut_by_p_min(small_vocab_triple, eager):
    """--draft-p-min ends drafts early and --draft-min drops short ones (with eager, a dropped draft's
    queued decode too): the output stays RAST's."""
    t = small_vocab_triple
    draft = DraftParams("tuned", n_max=4, n_min=2, p_min=0.3, adaptive=False, eager=eager)
    assert_greedy_identical(t, [DeltaPair(str(t.tuned), str(t.base), 1.0)], draft, SYNTH_PROMPTS[:4])


def test_greedy_output_with_two_pairs_and_a_padded_vocabulary(padded_triple):
    t = padded_triple
    pairs = [DeltaPair(str(t.tuned), str(t.base), 1.0), DeltaPair(str(t.base), str(t.tuned), 0.25)]
    for eager in (False, True):
        draft = DraftParams("tuned", n_max=3, adaptive=False, eager=eager)
        drafted, _ = assert_greedy_identical(t, pairs, draft, SYNTH_PROMPTS[:4])
        assert drafted >= 4 * 10


TOY_PROMPTS = ["Q: 12+345+67+890\\n", "Q: 101+202+303+404\\n"]


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_greedy_output_is_rast_output_on_the_toy_triple(alpha):
    from rast_gguf.defaults import default_triple

    large, base, tuned = default_triple()
    t = Triple(large, base, tuned)
    drafted, accepted = assert_greedy_identical(t, [DeltaPair(str(tuned), str(base), alpha)],
                                                DraftParams("tuned", n_max=4, adaptive=False), TOY_PROMPTS, max_tokens=40)
    assert accepted > 0.5 * drafted  # the tuned model drafts well for its own task


def test_every_step_distribution_matches_the_oracle(triple):
    """What each emitted token is drawn from (recorded post-chain logits) is RAST's distribution at
    that position, whether it came from an accepted draft, a residual draw or the bonus draw; up to
    llama.cpp's batched-vs-single-token difference (see MARGIN; plain RAST matches to 1e-4)."""
    from test_oracle import FULL_DISTRIBUTION, oracle_logprobs
    from oracle import log_softmax

    alpha = 1.0
    with RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base), alpha, N_GPU_LAYERS)], n_ctx=256,
                    n_gpu_layers=N_GPU_LAYERS, n_threads=2,
                    flash_attn="off", draft=DraftParams("tuned", n_max=3, adaptive=False)) as engine:
        prompt_tokens = engine.tokenize(PROMPT)
        result = generate(engine, PROMPT, max_tokens=40, record_logits=True, ignore_eos=True,
                          sampling=SamplingParams(temp=1.0, seed=99, **FULL_DISTRIBUTION))
        n_shared = engine.n_shared
    assert result.speculative.n_drafted >= 30
    expected = oracle_logprobs(triple, result.tokens, prompt_tokens, alpha, n_shared)
    worst = max(float(np.max(np.abs(log_softmax(got)[np.isfinite(want)] - want[np.isfinite(want)])))
                for got, want in zip(result.step_logits, expected))
    assert worst <= (MARGIN if N_GPU_LAYERS == 0 else GPU_BATCH_TOLERANCE)


def kv_lengths(engine):
    from rast_gguf._llama import C

    return [C.llama_memory_seq_pos_max(C.llama_get_memory(ctx.handle), 0) + 1 for ctx in engine.contexts]


@pytest.mark.parametrize("drafter, eager", [("tuned", False), ("model", False), ("tuned", True), ("model", True)])
def test_contexts_hold_exactly_the_accepted_tokens(small_vocab_triple, drafter, eager):
    """After a generation (or a stream closed early) every context, the drafter's included, holds the
    prompt and every token but the last, as after plain RAST, and goes on from there as plain RAST."""
    from rast_gguf.generate import stream_generate

    t = small_vocab_triple
    pairs = [DeltaPair(str(t.tuned), str(t.base), 1.0)]
    with RastEngine(t.large, pairs, n_ctx=256, n_threads=2) as plain:
        full = generate(plain, PROMPT, max_tokens=21, ignore_eos=True, sampling=SamplingParams(temp=0))
    draft = DraftParams(str(t.base) if drafter == "model" else drafter, n_max=5, adaptive=False, eager=eager)
    with RastEngine(t.large, pairs, n_ctx=256, n_threads=2, draft=draft) as e:
        n_prompt = len(e.tokenize(PROMPT))
        for n_take in (1, 2, 7, 20):
            stream = stream_generate(e, PROMPT, max_tokens=50, ignore_eos=True, sampling=SamplingParams(temp=0))
            taken = [next(stream).token for _ in range(n_take)]
            stream.close()
            assert e.n_past == n_prompt + n_take - 1
            assert kv_lengths(e) == [e.n_past] * len(e.contexts)
            assert full.tokens[:n_take] == taken
            e.feed(taken[-1:])
            chain = e.sampler(SamplingParams(temp=0))
            try:
                assert chain.sample(-1) == full.tokens[n_take]
            finally:
                chain.close()


def test_seeded_sampling_repeats_and_the_seed_matters(small_vocab_triple):
    t = small_vocab_triple

    def run(seed):
        with RastEngine(t.large, [DeltaPair(str(t.tuned), str(t.base), 1.0)], n_ctx=256, n_threads=2,
                        draft="tuned") as engine:
            return generate(engine, PROMPT, max_tokens=40, ignore_eos=True,
                            sampling=SamplingParams(temp=1.0, seed=seed)).tokens

    first = run(3)
    assert run(3) == first
    assert run(4) != first


def test_chat_with_a_drafter_answers_as_without(small_vocab_triple):
    from rast_gguf.chat import ChatSession

    t = small_vocab_triple
    answers = []
    for draft in (None, DraftParams("tuned", n_max=4)):
        with RastEngine(t.large, [DeltaPair(str(t.tuned), str(t.base), 1.0)], n_ctx=512, n_threads=2,
                        flash_attn="off", draft=draft) as engine:
            session = ChatSession(engine, raw=True, sampling=SamplingParams(temp=0), max_tokens=12,
                                  track_delta=True)
            turns = []
            for line in ("Hello there", "And then?", "Once more"):
                text = "".join(r.text for r in session.stream_turn(line))
                turns.append((text, session.last.changed_tokens))
                assert engine.n_past == len(session.tokens)
                assert kv_lengths(engine) == [engine.n_past] * len(engine.contexts)
            answers.append(turns)
    assert answers[0] == answers[1]


@pytest.mark.parametrize("n_pairs, ngl, small_remote, n_seq_max, gpu, want", [
    (1, -1, False, 1, True, "tuned"),     # the tuned model on a local GPU: drafting pays there
    (1, 0, False, 1, True, None),         # the small models on the CPU
    (1, -1, False, 1, False, None),       # a build without GPU offload
    (0, -1, False, 1, True, None),        # the large model alone: nothing to draft with
    (1, -1, True, 1, True, None),         # the small models on an RPC server
    (1, -1, False, 4, True, None),        # a batch engine: not speculative
])
def test_draft_auto_drafts_with_the_tuned_model_only_on_a_local_gpu(monkeypatch, n_pairs, ngl, small_remote,
                                                                    n_seq_max, gpu, want):
    from rast_gguf import memory
    from rast_gguf.speculative import resolve_auto

    monkeypatch.setattr(memory, "gpu_offload_supported", lambda: gpu)
    auto = DraftParams("auto", n_max=5, n_min=1, p_min=0.2)
    got = resolve_auto(auto, n_pairs=n_pairs, drafter_n_gpu_layers=ngl, small_remote=small_remote, n_seq_max=n_seq_max)
    assert (got and got.source) == want
    if got:
        assert (got.n_max, got.n_min, got.p_min) == (5, 1, 0.2)  # the user's other --draft-* settings stay
    for other in (None, DraftParams("ngram"), DraftParams("tuned", n_max=3)):
        assert resolve_auto(other, n_pairs=n_pairs, drafter_n_gpu_layers=ngl, small_remote=small_remote,
                            n_seq_max=n_seq_max) == other


def test_an_engine_with_draft_auto_on_a_gpu_speculates_and_gives_rast_output(monkeypatch, small_vocab_triple):
    """RastEngine(draft="auto") resolves where the models are placed: with the tuned model offloaded
    (the build's GPU support reported on, so this runs on a CPU too) it drafts, and greedy output is
    plain RAST's; without offload it does not speculate."""
    from rast_gguf import memory

    t = small_vocab_triple
    monkeypatch.setattr(memory, "gpu_offload_supported", lambda: True)
    outputs = []
    for ngl, draft in ((-1, "auto"), (0, "auto"), (0, None)):
        with RastEngine(t.large, [DeltaPair(str(t.tuned), str(t.base), 1.0, ngl)], n_ctx=256, n_threads=2,
                        n_gpu_layers=ngl, flash_attn="off", draft=draft) as engine:
            assert (engine.draft and engine.draft.kind) == ("tuned" if ngl and draft else None)
            r = generate(engine, PROMPT, max_tokens=24, ignore_eos=True, sampling=SamplingParams(temp=0))
            assert (r.speculative is not None) == (engine.draft is not None)
            outputs.append(r.tokens)
    assert outputs[0] == outputs[1] == outputs[2]


def test_generation_pre_drafts_only_in_cycles_that_draft(small_vocab_triple):
    """A cycle with no drafts (k = 0: drafting does not pay at the running acceptance) leaves the
    pre-draft out, whose hit rate is then about that acceptance; cycles that draft keep it."""
    t = small_vocab_triple
    carried = {}
    for n_max in (0, 1):
        draft = DraftParams("tuned", n_max=n_max, adaptive=False, eager=True)
        with RastEngine(t.large, [DeltaPair(str(t.tuned), str(t.base), 1.0)], n_ctx=256, n_threads=2,
                        flash_attn="off", draft=draft) as engine:
            r = generate(engine, PROMPT, max_tokens=60, ignore_eos=True, sampling=SamplingParams(temp=0))
            carried[n_max] = r.speculative.n_carried
    assert carried[0] == 0 and carried[1] > 0


@pytest.mark.parametrize("temp", [0.0, 1.0])
def test_cycles_without_drafts_say_whether_a_draft_would_have_been_accepted(small_vocab_triple, temp):
    """A k = 0 cycle reports whether the drafter's proposal for its token (the draft the token is
    decided from) was accepted: with the pre-draft on, that is exactly whether the cycle ended on
    its pre-draft; with it off (what generation runs at k = 0) the same cycles say the same."""
    t = small_vocab_triple
    reports = {}
    for predraft in (True, False):
        draft = DraftParams("tuned", n_max=0, adaptive=False, eager=True)
        with RastEngine(t.large, [DeltaPair(str(t.tuned), str(t.base), 1.0)], n_ctx=256, n_threads=2,
                        flash_attn="off", draft=draft) as engine:
            prompt = engine.tokenize(PROMPT)
            engine.feed(prompt[:-1])
            spec = make_speculator(engine, SamplingParams(temp=temp, seed=3, **({} if temp == 0 else CHAIN_NO_TEMP)),
                                   True, True)
            spec.start(prompt)
            rows = []
            for _ in range(60):
                tokens, _, _, _, _, _, _, hit, bonus = spec.cycle(0, 0.0, 0, 1, 4, predraft)
                rows.append((tokens[0], hit, bonus))
            spec.close()
        reports[predraft] = rows
    with_predraft, without = reports[True], reports[False]
    assert [tok for tok, _, _ in with_predraft] == [tok for tok, _, _ in without]
    assert all(bonus == int(hit) for _, hit, bonus in with_predraft)
    assert [b for _, _, b in without] == [b for _, _, b in with_predraft]
    assert 5 < sum(b for _, _, b in without) < 55  # both outcomes seen


def test_draft_length_counts_the_would_be_draft_and_stops_probing_with_it():
    from rast_gguf.speculative import DraftLength

    flat = {n: 1.0 for n in range(1, 10)}
    rule = DraftLength(DraftParams("tuned", n_max=4), 0.9, flat)  # drafting costs nearly a verify: k = 0 pays
    before = (rule.accepted, rule.rejected)
    rule.update(0, 0, 0.0, 1.0, 0, bonus=1)
    assert (rule.accepted, rule.rejected) == pytest.approx((0.95 * before[0] + 1, 0.95 * before[1]))
    rule.update(2, 2, 1.8, 1.0, 2, bonus=0)                # all drafts in, the next one would have been out
    rule.update(2, 1, 1.8, 1.0, 2, bonus=-1)               # a rejection: nothing more to know
    choices = []
    for i in range(100):
        k = rule.choose(100)
        choices.append(k)
        rule.update(k, 0, 0.9 * k, 1.0, k, bonus=0 if k == 0 else -1)
    assert choices[10:] == [0] * 90                        # observed every cycle: no probing drafts
    ngram_like = DraftLength(DraftParams("ngram", n_max=4), 0.9, flat)
    ks = []
    for i in range(100):
        k = ngram_like.choose(100)
        ks.append(k)
        ngram_like.update(k, 0, 0.9 * k, 1.0, k)           # no observation without drafts
    assert ks.count(1) >= 2                                # so it probes


def test_the_draft_length_rule_carries_over_to_the_next_generation(small_vocab_triple):
    t = small_vocab_triple
    with RastEngine(t.large, [DeltaPair(str(t.tuned), str(t.base), 1.0)], n_ctx=256, n_threads=2,
                    flash_attn="off", draft="tuned") as engine:
        first = generate(engine, PROMPT, max_tokens=20, ignore_eos=True, sampling=SamplingParams(temp=0))
        rule = engine._draft_rule
        estimate = rule.acceptance
        second = generate(engine, SYNTH_PROMPTS[1], max_tokens=20, ignore_eos=True, sampling=SamplingParams(temp=0))
        assert engine._draft_rule is rule
        assert rule.n_cycles == first.speculative.n_cycles + second.speculative.n_cycles
        assert estimate != 0.5 and rule.acceptance != estimate  # started from the first one's estimate, moved on


def test_draft_length_follows_costs_and_acceptance():
    from rast_gguf.speculative import DraftLength

    params = DraftParams("tuned", n_max=8)
    gpu_like = {1: 1.0, 2: 1.05, 3: 1.1, 4: 1.6, 5: 1.65, 6: 1.7, 7: 1.75, 8: 1.8, 9: 2.4}
    flat = {n: 1.0 for n in range(1, 10)}
    rule = DraftLength(params, 0.05, flat)
    for _ in range(40):
        rule.update(8, 8, 0.05 * 9, 1.0, 9)    # every draft accepted, verification costs the same at any length
    assert rule.choose(100) == 8
    assert rule.choose(3) == 3                  # room left caps it
    rule = DraftLength(params, 0.05, gpu_like)
    for _ in range(40):
        rule.update(2, 1, 0.05 * 3, 1.05, 3)   # half the drafts accepted
    assert rule.choose(100) == 2                # the verify cost steps up past 3 positions
    choices = []
    for _ in range(1200):                       # nothing accepted any more
        k = rule.choose(100)
        choices.append(k)
        rule.update(k, 0, 0.05 * (k + 1), gpu_like[k + 1], k + 1)
    first_zero = choices.index(0)
    probes = [i for i in range(first_zero, len(choices)) if choices[i]]
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert set(choices[first_zero:]) == {0, 1} and len(probes) >= 5  # plain steps, and a probe now and then,
    assert gaps[:4] == [16, 32, 64, 128] and set(gaps[5:]) == {256}  # ever rarer while they fail
    choices = []
    for _ in range(300):                        # drafts accepted again: the next probe finds it out
        k = rule.choose(100)
        choices.append(k)
        rule.update(k, k, 0.05 * (k + 1), gpu_like[k + 1], k + 1)
    assert choices[-20:].count(0) == 0 and rule.probe_gap == 8
    eager = DraftLength(params, 0.05, flat, eager=True)   # the drafter's last decode inside the verify round
    assert eager.cost(0) == flat[1] and eager.cost(3) == 3 * 0.05 + flat[4]
    eager.update(3, 3, 0.3, 1.0, 3)                       # 3 drafter decodes of 0.1 s
    assert eager.t_draft == pytest.approx(0.05 + 0.2 * (0.1 - 0.05))
    t_draft = eager.t_draft
    for _ in range(200):                                  # every cycle starts from a pre-drafted row
        eager.update(3, 3, 0.2, 1.0, 2, carried=True)     # 2 drafter decodes of 0.1 s
    assert eager.carried / eager.cycles == pytest.approx(1.0, abs=0.01)
    assert eager.t_draft == pytest.approx(0.1, abs=1e-3) and t_draft < eager.t_draft
    assert eager.cost(3) == pytest.approx(2 * eager.t_draft + flat[4], rel=0.01)  # one decode fewer
    assert eager.cost(0) == flat[1]                       # never less than no decode


def test_bad_draft_settings_are_one_line_errors(triple, tmp_path):
    from rast_gguf.errors import UsageError

    with pytest.raises(UsageError, match="--draft-max"):
        DraftParams("tuned", n_max=-1)
    with pytest.raises(UsageError, match="--draft-min"):
        DraftParams("tuned", n_max=2, n_min=3)
    with pytest.raises(UsageError, match="not auto, off, tuned, ngram or an existing GGUF file"):
        DraftParams(str(tmp_path / "missing.gguf"))
    with pytest.raises(UsageError, match="no pair is loaded"):
        RastEngine(triple.large, [], n_ctx=64, draft="tuned")


def test_rast_generate_with_draft_prints_the_same_completion_and_the_stats(triple):
    from test_cli import rast_cli

    args = ["generate", "-p", "Once upon a time", "-m", triple.large, "--base", triple.base, "--tuned", triple.tuned,
            "-n", "16", "--temp", "0", "-c", "128", "-t", "2"]
    plain = rast_cli(*args, "--draft", "off")
    default = rast_cli(*args)  # --draft auto, the small models on the CPU (-ngl 0): no drafting
    spec = rast_cli(*args, "--draft", "tuned", "--draft-max", "4")
    assert plain.returncode == 0 and default.returncode == 0 and spec.returncode == 0, spec.stderr
    assert spec.stdout == plain.stdout == default.stdout and len(spec.stdout) > 4
    assert "accepted per cycle" in spec.stderr
    assert "accepted per cycle" not in plain.stderr and "accepted per cycle" not in default.stderr
    bad = rast_cli(*args, "--draft", "no-such-drafter.gguf")
    assert bad.returncode == 1 and "--draft" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) <= 2


def test_cycle_timing_forces_predraft_hits_and_counts_their_saving(small_vocab_triple):
    """`rast bench --speculative`'s cycle timer with the eager drafter: forced pre-draft hits do carry
    into the next cycle (the timer asserts it), every (k, m) and S(k) are timed; the expected speed
    subtracts a^(k+1) S(k) from the expected cycle time (checked by hand)."""
    from rast_gguf.bench_spec import _cycle_times, tokens_per_second

    t = small_vocab_triple
    draft = DraftParams("tuned", n_max=2, adaptive=False, eager=True)
    with RastEngine(t.large, [DeltaPair(str(t.tuned), str(t.base), 1.0)], n_ctx=96, n_threads=2,
                    draft=draft) as engine:
        prompt = engine.tokenize(PROMPT)
        engine.feed(prompt[:-1])
        times, parts, saved = _cycle_times(engine, prompt, (1, 2), 3, True, True)
    assert set(times) == set(parts) == {(1, 0), (1, 1), (2, 0), (2, 1), (2, 2)} and set(saved) == {1, 2}
    assert all(t > 0 for t in times.values())
    flat = {(k, m): 0.010 for k in (1, 2) for m in range(k + 1)}
    a = 0.7
    tps, k = tokens_per_second(flat, a, {1: 0.006, 2: 0.0})  # k = 1: 1.7 tokens in 10 - 0.49 x 6 ms
    assert k == 1 and tps == pytest.approx((1 + a) / (0.010 - a ** 2 * 0.006))
    assert tokens_per_second(flat, a)[0] == pytest.approx((1 + a + a * a) / 0.010)  # no saving: k = 2 wins


def test_toy_cycle_bench_reports_every_acceptance_beside_alone_and_rast():
    """`rast bench --speculative`'s forced-acceptance rows on the toy triple: alone and RAST measured,
    a row per acceptance for each mode whose ratios are its tokens/s over those two."""
    from rast_gguf.bench_spec import ACCEPTANCES, toy_cycle_bench

    result = toy_cycle_bench(ks=(1, 2), n_cycles=2, n_prompt=24, n_gen=24, n_repeat=1, n_threads=1, n_gpu_layers=0,
                             log=lambda line: None)
    assert result["alone_tps"] > 0 and result["rast_tps"] > 0
    assert "speculative RAST (tuned drafts)" in result["modes"]
    assert "speculative RAST, no pre-draft" not in result["modes"]  # a CPU drafter is not eager: nothing to leave out
    temps = {name: mode["temp"] for name, mode in result["modes"].items()}
    assert temps["speculative RAST, sampled"] == pytest.approx(0.8) and temps["speculative RAST (tuned drafts)"] == 0
    for mode in result["modes"].values():
        assert set(mode["cycle_ms"]) == {"1,0", "1,1", "2,0", "2,1", "2,2"}
        assert [r["acceptance"] for r in mode["by_acceptance"]] == list(ACCEPTANCES)
        for r in mode["by_acceptance"]:
            assert r["k"] in (1, 2)
            assert r["vs_alone"] == pytest.approx(r["tps"] / result["alone_tps"], rel=0.01)
            assert r["vs_rast"] == pytest.approx(r["tps"] / result["rast_tps"], rel=0.01)


@pytest.mark.parametrize("gpu", [False, True])
def test_auto_end_to_end_times_draft_auto_beside_draft_off(monkeypatch, small_vocab_triple, gpu):
    """`rast bench --speculative`'s end-to-end row for the default --draft auto: off where the
    drafter is not on a GPU, speculating (and counted) where it is; both timed beside --draft off."""
    from rast_gguf import memory
    from rast_gguf.bench_spec import auto_end_to_end

    monkeypatch.setattr(memory, "gpu_offload_supported", lambda: gpu)
    t = small_vocab_triple
    pair = DeltaPair(str(t.tuned), str(t.base), 1.0, -1)
    rows = auto_end_to_end(t.large, pair, lambda engine: engine.tokenize(PROMPT) * 3, 16, 1, log=lambda line: None,
                           n_ctx=256, n_threads=1, n_gpu_layers=-1)
    assert [r["sampling"] for r in rows] == ["greedy", "default chain"]
    for r in rows:
        assert r["speculating"] is gpu and (r["acceptance"] is None) is (not gpu)
        assert r["off_tps"] > 0 and r["auto_vs_off"] == pytest.approx(r["auto_tps"] / r["off_tps"], rel=0.01)
        if gpu:
            assert 0.0 <= r["acceptance"] <= 1.0 and r["drafted_per_cycle"] >= 0
