"""Speculative RAST: the same token distribution as plain RAST, fewer sequential decodes.

A cycle (C++, bindings/speculative.cpp) drafts up to k tokens, verifies them with ONE batched
llama_decode of the k+1 positions in the large model and the small base model(s), accepts them
with the speculative-sampling rule (accept d with probability min(1, p(d)/q(d)); on rejection draw
from the normalised max(0, p - q) over the full vocabulary; after k acceptances draw one more from
p), and rolls every context back to the accepted length. p is RAST's distribution after the whole
chain, q the drafter's as it sampled, so every emitted token is distributed exactly as RAST's;
greedy output is token for token RAST's greedy output. Every draw for the token at position t is
keyed by (seed, t) and the token after the accepted drafts is decided from a draft the drafter
would have made there, so a seeded run repeats exactly even though the adaptive draft length
follows the machine's timings (the draws differ from plain RAST's for the same seed; the
distribution is the same). Drafters (`DraftParams.source`):
"tuned", the first pair's tuned model (its logits at the drafted positions are the z_tuned RAST
needs there, so it is left out of the verify batch), "ngram" (prompt lookup: the tokens that
followed the latest earlier occurrence of the longest matching suffix, no model), or the path of
a separate GGUF drafter (loaded by RastEngine, same vocabulary check as the pairs).

Draft length (`DraftLength`): each cycle takes the k in [draft_min, draft_max] that maximises the
expected emitted tokens per second, E(k) / T(k), with E(k) = 1 + a + ... + a^k for the running
acceptance rate a (accepted / (accepted + rejections), decayed per cycle, prior 1/2; the engine keeps
the rule, so a generation, a chat's next turn, starts from where the last one ended) and T(k) = (k +
1) t_draft + t_verify(k + 1): t_draft the drafter's time per decode, t_verify(n) the verify decode of
n positions, both timed once when the engine first speculates (`calibrate`) and then followed by an
exponential moving average of the cycles' own timings (with the drafter on a GPU its decode of the
last draft runs inside the verify round, so a cycle costs k drafter decodes instead of k + 1, see
`make_speculator`; with pre-drafting, a cycle that starts from the row the previous cycle's
pre-draft left costs one decode less, counted at the running rate of such cycles). On a GPU
t_verify steps up past a few tokens, on a CPU it grows about linearly; the rule follows whichever
the machine shows. When k = 0 wins, a cycle still drafts one token after 8 cycles, then after 16, 32,
... 256 while those probes find nothing (each changes the verify batch's shape, which a GPU pays
for), back to 8 once drafting pays again, so that the acceptance estimate can recover; with a
model drafter no probe is needed, as every cycle that ends with all its drafts accepted (every k = 0
cycle) also says whether the draft the drafter would have made next was accepted, and the
estimate counts that too.
Pre-drafting (`DraftParams.predraft`, on with the eager drafter): in the verify round the drafter
also decodes its own proposal for the token after the drafts, so when every draft and that
proposal are accepted the next cycle's first drafter decode is already done (speculative.h); not in
a cycle that drafts nothing, where it would be right about as often as the low acceptance that made
drafting not pay.
`--draft-p-min` (llama.cpp's rule) ends a draft early when the drafter's top probability falls
below it; drafts shorter than `--draft-min` are dropped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rast_gguf import _ext
from rast_gguf.errors import UsageError

DRAFT_KINDS = ("tuned", "ngram", "auto")
DEFAULT_DRAFT_MAX = 8
NGRAM_SIZES = (1, 4)      # prompt lookup tries suffixes of 4 tokens down to 1
_DECAY = 0.95             # weight of the past in the acceptance estimate, per cycle
_EMA = 0.2                # weight of a new timing in the cost averages
_PROBE_FIRST = 8          # when k = 0 is best, draft one token after this many cycles anyway,
_PROBE_LAST = 256         # then after twice as many while probes keep failing, up to this many


@dataclass(frozen=True)
class DraftParams:
    """--draft SOURCE (tuned | ngram | PATH), --draft-max, --draft-min, --draft-p-min.

    adaptive=False always asks for n_max drafts (benchmarks at fixed lengths, tests). eager: queue
    the drafter's decode of its last draft in the verify round (True), or decode it after the verify
    only when every draft was accepted (False); None (default): eager when the drafter is on a GPU
    (`drafter_on_gpu`). predraft: with eager, also decode the drafter's proposal for the token after
    the drafts in the verify round; None (default): with eager. The output is the same either way."""

    source: str = "tuned"
    n_max: int = DEFAULT_DRAFT_MAX
    n_min: int = 0
    p_min: float = 0.0
    adaptive: bool = True
    eager: bool | None = None
    predraft: bool | None = None

    def __post_init__(self):
        source = str(self.source)
        object.__setattr__(self, "source", source)
        if self.kind == "model" and not Path(source).expanduser().is_file():
            raise UsageError(f"--draft {source!r}: not auto, off, tuned, ngram or an existing GGUF file")
        if not 0 <= self.n_max <= 64:
            raise UsageError(f"--draft-max must be in [0, 64], got {self.n_max}")
        if not 0 <= self.n_min <= self.n_max:
            raise UsageError(f"--draft-min must be in [0, --draft-max], got {self.n_min} (--draft-max {self.n_max})")
        if not 0.0 <= self.p_min <= 1.0:
            raise UsageError(f"--draft-p-min must be in [0, 1], got {self.p_min}")

    @property
    def kind(self) -> str:
        """'tuned', 'ngram', 'auto' (RastEngine resolves it: `resolve_auto`) or 'model' (a separate drafter file)."""
        return self.source if self.source in DRAFT_KINDS else "model"


def resolve_auto(draft: DraftParams | None, *, n_pairs: int, drafter_n_gpu_layers: int, small_remote: bool,
                 n_seq_max: int) -> DraftParams | None:
    """--draft auto: drafting by the tuned model where it pays, the drafter on a local GPU (its
    decodes run beside the large model's verify: BENCHMARKS.md, speculative RAST), else no
    speculation; any other setting unchanged. Where drafting does not pay on such a machine either
    (a low acceptance rate, a drafter close to the large model in cost) the draft length rule
    settles on k = 0, whose cycles cost what a plain RAST step does (0.96-1.00 x --draft off on an
    H200 with drafts never accepted: BENCHMARKS.md)."""
    if draft is None or draft.kind != "auto":
        return draft
    from rast_gguf import memory

    on_gpu = n_pairs > 0 and drafter_n_gpu_layers != 0 and not small_remote and n_seq_max == 1
    return dataclasses.replace(draft, source="tuned") if on_gpu and memory.gpu_offload_supported() else None


def as_draft_params(draft: DraftParams | str | None) -> DraftParams | None:
    if draft is None or isinstance(draft, DraftParams):
        return draft
    return DraftParams(source=str(draft))


@dataclass
class SpecStats:
    """Running totals of one generation."""

    n_cycles: int = 0
    n_drafted: int = 0
    n_accepted: int = 0
    n_carried: int = 0  # cycles that started from the previous cycle's pre-draft (a drafter decode saved)

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafts / drafted tokens (llama.cpp's definition)."""
        return self.n_accepted / self.n_drafted if self.n_drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        """Accepted drafts per cycle (each cycle emits this plus one token)."""
        return self.n_accepted / self.n_cycles if self.n_cycles else 0.0

    def line(self) -> str:
        return (f"draft: {self.n_drafted} drafted, {self.n_accepted} accepted ({100 * self.acceptance_rate:.0f}%), "
                f"{self.mean_accepted:.2f} accepted per cycle"
                + (f", {self.n_carried} cycles started from a pre-draft" if self.n_carried else ""))


class DraftLength:
    """The adaptive draft-length rule of the module docstring."""

    def __init__(self, params: DraftParams, t_draft: float, t_verify: dict[int, float], eager: bool = False):
        self.params = params
        self.eager = eager  # the drafter's last decode is inside the verify round: k drafter decodes, not k + 1
        self.t_draft = t_draft
        self.t_verify = dict(t_verify)
        self.accepted, self.rejected = 1.0, 1.0  # prior: a = 1/2
        self.carried, self.cycles = 0.0, 1.0      # cycles that started from a pre-drafted row (prior: none)
        self.n_cycles = 0
        self.probe_gap, self.since_probe = _PROBE_FIRST, 0  # k = 0 cycles between probing drafts
        self.k0_observed = False  # k = 0 cycles tell whether a draft would have been accepted

    @property
    def acceptance(self) -> float:
        return self.accepted / (self.accepted + self.rejected)

    def expected_tokens(self, k: int) -> float:
        a = self.acceptance
        return float(k + 1) if a >= 1.0 else (1.0 - a ** (k + 1)) / (1.0 - a)

    def cost(self, k: int) -> float:
        n = k + 1
        if n not in self.t_verify:  # not timed: the nearest timed length below (or above)
            below = [m for m in self.t_verify if m < n]
            n = max(below) if below else min(self.t_verify)
        n_decodes = k - self.carried / self.cycles if self.eager else k + 1
        return max(n_decodes, 0.0) * self.t_draft + self.t_verify[n]

    def choose(self, k_cap: int) -> int:
        """k for the next cycle, at most k_cap (room left in the context and in max_tokens)."""
        p = self.params
        k_hi = min(p.n_max, k_cap)
        if not p.adaptive or k_hi <= 0:
            return max(0, k_hi)
        k_lo = min(p.n_min, k_hi)
        best = max(range(k_lo, k_hi + 1), key=lambda k: self.expected_tokens(k) / self.cost(k))
        if best > 0:
            self.probe_gap, self.since_probe = _PROBE_FIRST, 0
        elif not self.k0_observed:
            # a probing draft now and then lets the acceptance estimate recover; each one changes the
            # verify batch's shape (on a GPU the contexts re-capture their CUDA graphs), so they thin
            # out while they keep finding nothing to accept
            self.since_probe += 1
            if self.since_probe >= self.probe_gap and k_hi >= 1:
                best, self.since_probe = 1, 0
                self.probe_gap = min(2 * self.probe_gap, _PROBE_LAST)
        return best

    def update(self, n_drafted: int, n_accepted: int, t_draft: float, t_verify: float, n_decodes: int,
               carried: bool = False, bonus: int = -1) -> None:
        """After a cycle: its drafts and acceptances, its drafting and verifying seconds, the drafter
        decodes those drafting seconds paid for, whether it started from a pre-drafted row, and
        whether the draft the drafter would have made after an accepted run was accepted (1, 0;
        -1: not known): one more observation of the acceptance rate, the only one a k = 0 cycle has."""
        self.n_cycles += 1
        all_in = n_accepted == n_drafted
        self.accepted = _DECAY * self.accepted + n_accepted + (all_in and bonus == 1)
        self.rejected = _DECAY * self.rejected + (1 if not all_in or bonus == 0 else 0)
        if n_drafted == 0 and bonus >= 0:
            self.k0_observed = True  # cycles without drafts keep the estimate up to date: no probes needed
        self.carried = _DECAY * self.carried + carried
        self.cycles = _DECAY * self.cycles + 1
        if n_decodes:
            self.t_draft += _EMA * (t_draft / n_decodes - self.t_draft)
        n = n_drafted + 1
        self.t_verify[n] = t_verify if n not in self.t_verify else self.t_verify[n] + _EMA * (t_verify - self.t_verify[n])


def verifying_contexts(engine) -> list:
    """The contexts a verify batch goes to: all RAST contexts but the drafting tuned one."""
    skip = engine.pair_contexts[0][0] if engine.draft.kind == "tuned" else None
    ctxs = [engine.ctx_large] + [c for pair in engine.pair_contexts for c in pair]
    return [c for c in ctxs if c is not skip]


def drafter_context(engine):
    kind = engine.draft.kind
    return engine.pair_contexts[0][0] if kind == "tuned" else engine.ctx_draft if kind == "model" else None


def calibrate(engine, last_token: int) -> tuple[float, dict[int, float]]:
    """(seconds per drafter decode, {n: seconds of a verify decode of n positions}) timed right
    after the engine's current tokens; nothing stays in the contexts."""
    from rast_gguf.handles import Batch

    n_past, n_max = engine.n_past, engine.draft.n_max
    room = engine.n_ctx - n_past
    verify = verifying_contexts(engine)
    drafter = drafter_context(engine)
    t_verify: dict[int, float] = {}
    batch = Batch(n_max + 1)
    try:
        for n in range(1, min(n_max + 1, room) + 1):
            batch.set_entries([last_token] * n, list(range(n_past, n_past + n)), [0] * n, [True] * n)
            t0 = time.perf_counter()
            for ctx in verify:
                ctx.decode(batch)
            for ctx in verify:
                ctx.synchronize()
            t_verify[n] = time.perf_counter() - t0
            for ctx in verify:
                ctx.remove_from(n_past)
        t_draft = 0.0
        if drafter is not None and room > 0:
            batch.set_tokens([last_token], n_past)
            t0 = time.perf_counter()
            drafter.decode(batch)
            drafter.synchronize()
            t_draft = time.perf_counter() - t0
            drafter.remove_from(n_past)
    finally:
        batch.close()
    return t_draft, t_verify or {1: 1.0}


def drafter_on_gpu(engine) -> bool:
    """Whether the drafter decodes on a local GPU, where llama_decode only queues work: then its
    decode of the last draft joins the verify round (eager) instead of following it when needed."""
    from rast_gguf import memory

    if engine.draft.kind == "ngram" or not engine.draft_n_gpu_layers or getattr(engine, "remote_small", None):
        return False
    return memory.gpu_offload_supported()


def eager_draft(engine) -> bool:
    """DraftParams.eager, or where None whether the drafter is on a GPU."""
    eager = engine.draft.eager
    return drafter_on_gpu(engine) if eager is None else bool(eager) and engine.draft.kind != "ngram"


def predraft_on(engine, eager: bool) -> bool:
    """DraftParams.predraft, or where None whether the drafter is eager."""
    predraft = engine.draft.predraft
    return eager if predraft is None else bool(predraft) and eager


def make_speculator(engine, sampling, eager: bool | None = None, predraft: bool | None = None) -> "_ext.Speculator":
    """The C++ speculator over the engine's contexts; eager (None: `eager_draft`) queues the
    drafter's last decode in the verify round, predraft (None: `predraft_on`) its proposal for the
    token after the drafts too (speculative.h)."""
    pairs = [(p.alpha, tuned.address, base.address) for p, (tuned, base) in zip(engine.pairs, engine.pair_contexts)]
    kind = engine.draft.kind
    ctx_draft = engine.ctx_draft.address if kind == "model" else 0
    eager = eager_draft(engine) if eager is None else eager
    predraft = predraft_on(engine, eager) if predraft is None else predraft
    return _ext.Speculator(engine.ctx_large.address, pairs, engine.n_shared, sampling.temp, sampling.top_k,
                           sampling.top_p, sampling.min_p, sampling.resolved_seed, sampling.order, kind, ctx_draft,
                           min(engine.n_batch, engine.draft.n_max + 1), eager, predraft)


def stream_speculative(engine, *, history: Sequence[int], max_tokens: int, sampling, steps, record_logits: bool = False,
                       track_delta: bool = False) -> Iterator[tuple]:
    """Yield (token, text, finish, logits, delta_stats, SpecStats, generation tokens/s) per token.

    The engine must hold history[:-1] or history; on exit it holds history plus every yielded
    token but the last (as after plain RAST)."""
    history = list(history)
    if not history:
        raise UsageError("speculative decoding needs the tokens the engine holds (give history=...)")
    if engine.n_past == len(history):
        engine.rewind(len(history) - 1)  # the last token is decoded again, inside the first verify batch
    elif engine.n_past != len(history) - 1:
        raise UsageError(f"the engine holds {engine.n_past} tokens but the history has {len(history)}")
    p = engine.draft
    eager = eager_draft(engine)
    if engine._draft_rule is None:  # kept by the engine: the next generation (a chat's next turn) starts where this one ends
        engine._draft_rule = DraftLength(p, *calibrate(engine, history[-1]), eager=eager)
    rule = engine._draft_rule
    spec = make_speculator(engine, sampling, eager)
    spec.set_record(record_logits)
    spec.set_track_delta(track_delta)
    spec.start(history)
    stats = SpecStats()
    n_start = len(history) - 1
    n_yielded = 0
    t_gen = time.perf_counter()
    try:
        while True:
            n_held = spec.n_past  # tokens every context holds; the pending token goes at n_held
            k_cap = min(engine.n_ctx - n_held - 1, max_tokens - n_yielded - 1)
            k = rule.choose(k_cap)
            try:
                # no pre-draft when drafting does not pay: its hit rate is about the acceptance rate
                tokens, n_drafted, n_accepted, t_draft, t_verify, n_decodes, carried, _, bonus = spec.cycle(
                    k, p.p_min, p.n_min, *NGRAM_SIZES, k > 0)
            except RuntimeError as e:
                from rast_gguf.errors import DecodeError

                raise DecodeError(f"speculative decoding failed: {e}") from e
            engine.n_past = spec.n_past
            rule.update(n_drafted, n_accepted, t_draft, t_verify, n_decodes, carried, bonus)
            stats.n_cycles += 1
            stats.n_drafted += n_drafted
            stats.n_accepted += n_accepted
            stats.n_carried += carried
            deltas = spec.delta_stats() if track_delta else None
            for j, token in enumerate(tokens):
                pos = n_start + n_yielded + 1  # where this token would be decoded
                text, finish = steps.push(token, pos)
                n_yielded += 1
                logits = spec.recorded_logits(j) if record_logits else None
                gen_tps = n_yielded / max(time.perf_counter() - t_gen, 1e-9)
                yield token, text, finish, logits, deltas[j] if deltas else None, stats, gen_tps
                if finish:
                    return
    finally:
        spec.close()
        # as after plain RAST: history + the yielded tokens but the last one
        keep = n_start + max(n_yielded, 1)
        if engine.n_past >= keep:
            engine.rewind(keep)
        else:  # nothing decoded yet: give the last history token back, as it was
            engine.rewind(engine.n_past)
            engine.feed(history[-1:])
