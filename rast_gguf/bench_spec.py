"""Speculative RAST timings for `rast bench --speculative`, side by side in one process.

`cycle_bench(setup)`: on the synthetic models of `rast_gguf.bench` (real shapes, random weights, so
drafts are never accepted on their own) the speculator is forced to accept exactly m of its k
drafts per cycle (`Speculator.set_forced_accept`: TIMING ONLY, the output is then not RAST's) and the
mean seconds of a cycle T(k, m) is measured for every m <= k, for speculative RAST (drafted by the
tuned model) and for the large model drafted by the small base model alone (plain speculative
decoding, no delta). Tokens/s at a per-token acceptance a: a draft is accepted with probability a
until the first rejection, so P(m) = a^m (1 - a) for m < k and a^k for m = k, and tokens/s(a) =
max over k of E[m + 1] / E[T(k, m)]. The large model alone and plain RAST are timed in the same run
(`rast_gguf.bench.bench_engine`), so the ratios are side by side. The cycle is the one generation
runs (with the drafter on a GPU, its last decode inside the verify round, and its pre-draft); each
T(k, m) comes with its drafting and verifying parts, the rest being host work. With pre-drafting,
T(k, m) is timed after cycles that did not end on their pre-draft, and a run of cycles that all
do (`Speculator.set_forced_hit`) gives S(k), what starting from a pre-drafted row saves: at
acceptance a a cycle ends on its pre-draft with probability a^(k + 1) (all k drafts and the
proposal after them accepted), so E[T] drops by a^(k + 1) S(k).
The cycles are greedy, and timed once more with llama.cpp's default sampling chain (temperature
0.8, top-k 40, top-p 0.95, min-p 0.05: p and q through the chain at every row, the acceptance
test, residual draws) beside them; alone and RAST stay greedy (RAST's own sampling costs about
what its greedy choice does, so the sampled ratios are if anything understated).

`auto_end_to_end`: on the same models, end to end, what `--draft auto` costs where drafts are never
accepted, beside --draft off.
`toy_cycle_bench()`: the same forced-acceptance timing on the shipped toy triple (its own
vocabulary and trained weights), the large model alone and RAST timed over the same positions.
`toy_acceptance()`: the real thing on the shipped toy triple: acceptance and end-to-end tokens/s of
speculative vs plain RAST (greedy) per alpha, over the same prompts.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time

from rast_gguf.bench import BenchSetup, bench_engine, check_setup, synthetic_models
from rast_gguf.engine import RastEngine
from rast_gguf.generate import generate
from rast_gguf.sampling import DeltaPair, SamplingParams
from rast_gguf.speculative import DraftParams, eager_draft, make_speculator, predraft_on

ACCEPTANCES = (0.5, 0.6, 0.7, 0.8, 0.9)
GREEDY = SamplingParams(temp=0)
DRAFT_LENGTHS = (1, 2, 3, 4, 6, 8)


def _cycle_times(engine: RastEngine, prompt: list[int], ks, n_cycles: int, eager: bool, predraft: bool = False,
                 sampling: SamplingParams = GREEDY):
    """({(k, m): median seconds of a cycle with k drafts of which exactly m are accepted},
    {(k, m): (median seconds drafting, verifying)}, {k: seconds a cycle saves by starting from a
    pre-drafted row}): the rest of a cycle is host work (combining rows, the acceptance test, the
    rollback, the Python call)."""
    spec = make_speculator(engine, sampling, eager, predraft)
    times: dict[tuple[int, int], float] = {}
    parts: dict[tuple[int, int], tuple[float, float]] = {}
    saved: dict[int, float] = {}
    try:
        def restart():
            engine.rewind(len(prompt) - 1)
            spec.start(prompt)

        def timed(k, m, hit):
            spec.set_forced_accept(m)
            spec.set_forced_hit(hit)
            runs, drafting, verifying = [], [], []
            skip = 2  # cycles not timed: warming this length up, then setting the row the next one starts from
            while len(runs) < n_cycles:
                if spec.n_past + k + 3 >= engine.n_ctx:
                    restart()
                    skip = max(skip, 1)
                t0 = time.perf_counter()
                _, _, _, t_draft, t_verify, _, carried, _, _ = spec.cycle(k, 0.0, 0, 1, 4)
                if skip:
                    skip -= 1
                    continue
                assert carried == hit, "a forced pre-draft hit did not carry over"
                runs.append(time.perf_counter() - t0)
                drafting.append(t_draft)
                verifying.append(t_verify)
            return statistics.median(runs), (statistics.median(drafting), statistics.median(verifying))

        restart()
        for k in ks:
            for m in range(k + 1):
                times[(k, m)], parts[(k, m)] = timed(k, m, False)
            if predraft:
                saved[k] = times[(k, k)] - timed(k, k, True)[0]
    finally:
        spec.close()
    return times, parts, saved


def tokens_per_second(times: dict[tuple[int, int], float], a: float, saved: dict[int, float] | None = None
                      ) -> tuple[float, int]:
    """(best expected tokens/s, its k) at per-token acceptance a; saved: {k: S(k)} with pre-drafting."""
    best = (0.0, 0)
    for k in sorted({k for k, _ in times}):
        probs = [a ** m * (1 - a) for m in range(k)] + [a ** k]
        tokens = sum(p * (m + 1) for m, p in enumerate(probs))
        seconds = sum(p * times[(k, m)] for m, p in enumerate(probs)) - a ** (k + 1) * (saved or {}).get(k, 0.0)
        best = max(best, (tokens / seconds, k))
    return best


def cycle_bench(setup: BenchSetup, ks=DRAFT_LENGTHS, n_cycles: int = 5, log=print) -> dict:
    check_setup(setup)
    paths = synthetic_models(setup)
    large, tuned, base = paths
    log(f"models ready: {', '.join(p.name for p in paths)}")
    runs = {mode: bench_engine(setup, mode, paths) for mode in ("alone", "sequential")}
    alone, rast = runs["alone"]["tg_tps"], runs["sequential"]["tg_tps"]
    rng = random.Random(0)

    def prompt(engine):
        low = min(1000, engine.n_shared // 4)
        return [rng.randrange(low, engine.n_shared - low) for _ in range(setup.n_prompt)]

    pair = DeltaPair(str(tuned), str(base), setup.alpha, setup.n_gpu_layers_small)
    engine_kwargs = dict(n_ctx=setup.n_prompt + 512, n_batch=min(512, setup.n_prompt), n_threads=setup.n_threads,
                         n_gpu_layers=setup.n_gpu_layers)
    result = forced_acceptance(setup.label(), paths, pair, alone, rast, prompt, ks, n_cycles, log=log, **engine_kwargs)
    result["auto"] = auto_end_to_end(large, pair, prompt, setup.n_gen, setup.n_repeat, log=log, **engine_kwargs)
    return result


def auto_end_to_end(large, pair: DeltaPair, prompt, n_gen: int, n_repeat: int, log=print, **engine_kwargs) -> list[dict]:
    """What `--draft auto` (generate's and chat's default) costs where drafting does not pay: these
    synthetic models' drafts are never accepted (random weights), so the draft length rule settles
    on k = 0 (no probing drafts: those cycles tell whether a draft would have been accepted; on a
    CPU auto is off and both rows time the same thing). Generation tokens/s with --draft off and auto,
    side by side, greedy and with llama.cpp's default sampling chain (best of n_repeat)."""
    rows = []
    for label, sampling in (("greedy", GREEDY), ("default chain", SamplingParams(seed=1))):
        row = {"sampling": label}
        for name, draft in (("off", None), ("auto", "auto")):
            with RastEngine(large, [pair], draft=draft, **engine_kwargs) as engine:
                tokens = prompt(engine)
                generate(engine, tokens[:32], max_tokens=8, ignore_eos=True, sampling=sampling)  # warm-up, calibration
                runs = [generate(engine, tokens, max_tokens=n_gen, ignore_eos=True, sampling=sampling)
                        for _ in range(n_repeat)]
                row[f"{name}_tps"] = round(max(r.generation_tps for r in runs), 1)
                if name == "auto":
                    stats = runs[-1].speculative
                    row["speculating"] = stats is not None
                    row["acceptance"] = round(stats.acceptance_rate, 3) if stats else None
                    row["drafted_per_cycle"] = round(stats.n_drafted / stats.n_cycles, 2) if stats else None
        row["auto_vs_off"] = round(row["auto_tps"] / row["off_tps"], 3)
        log(f"--draft auto, {label}: {row['auto_tps']} tok/s vs {row['off_tps']} off = {row['auto_vs_off']:.2f} x"
            + (f" (speculating: acceptance {row['acceptance']:.2f}, {row['drafted_per_cycle']} drafted per cycle)"
               if row["speculating"] else " (off here: the drafter is not on a GPU)"))
        rows.append(row)
    return rows


def forced_acceptance(label: str, paths, pair: DeltaPair, alone: float, rast: float, prompt, ks, n_cycles: int,
                      log=print, **engine_kwargs) -> dict:
    """Cycle times at forced accepted lengths and tokens/s per acceptance, for speculative RAST (with
    and, where it applies, without the pre-draft) and for the large model drafted by the small base
    model alone, beside `alone` and `rast` (tokens/s measured by the caller at the same positions).
    paths: (large, tuned, base); prompt(engine): the prompt's token ids; engine_kwargs: RastEngine's."""
    large, _, base = paths
    ks = tuple(ks)
    log(f"{label}: large alone {alone:.1f} tok/s, RAST {rast:.1f} tok/s")
    result = {"config": label, "alone_tps": alone, "rast_tps": rast, "modes": {}}
    tuned = DraftParams("tuned", n_max=max(ks), adaptive=False)
    for mode, pairs, draft, sampling in (
            ("speculative RAST (tuned drafts)", [pair], tuned, GREEDY),
            ("speculative RAST, sampled", [pair], tuned, SamplingParams(seed=1)),
            ("speculative RAST, no pre-draft", [pair], dataclasses.replace(tuned, predraft=False), GREEDY),
            ("large + small base drafter (no delta)", [], DraftParams(str(base), n_max=max(ks), adaptive=False),
             GREEDY)):
        with RastEngine(large, pairs, draft=draft, **engine_kwargs) as engine:
            if draft.predraft is False and not eager_draft(engine):
                continue  # without the eager drafter there is no pre-draft to leave out: the first mode already is this
            tokens = prompt(engine)
            engine.feed(tokens[:-1])
            eager = eager_draft(engine)
            predraft = predraft_on(engine, eager)
            times, parts, saved = _cycle_times(engine, tokens, ks, n_cycles, eager, predraft, sampling)
        log(f"{label}: {mode}, cycle ms T(k,m) = draft + verify + host"
            + (" (drafter's last decode in the verify round)" if eager else "") + ": "
            + ", ".join(f"({k},{m}) {1e3 * t:.2f} = {1e3 * parts[(k, m)][0]:.2f} + {1e3 * parts[(k, m)][1]:.2f} + "
                        f"{1e3 * (t - sum(parts[(k, m)])):.2f}" for (k, m), t in times.items()))
        if saved:
            log(f"{label}: {mode}, ms saved by a cycle that starts from its pre-draft, S(k): "
                + ", ".join(f"k={k} {1e3 * s:.2f}" for k, s in saved.items()))
        rows = []
        for a in ACCEPTANCES:
            tps, k = tokens_per_second(times, a, saved)
            rows.append({"acceptance": a, "tps": round(tps, 1), "k": k, "vs_alone": round(tps / alone, 3),
                         "vs_rast": round(tps / rast, 3)})
            log(f"{label}: {mode:38s} a={a:.1f} k={k}: {tps:7.1f} tok/s  {tps / alone:.2f} x alone  "
                f"{tps / rast:.2f} x RAST  [forced acceptance: timing only]")
        result["modes"][mode] = {"eager_draft": eager, "predraft": predraft, "temp": sampling.temp,
                                 "predraft_saved_ms": {str(k): round(1e3 * s, 3) for k, s in saved.items()},
                                 "cycle_ms": {f"{k},{m}": round(1e3 * t, 3) for (k, m), t in times.items()},
                                 "draft_verify_ms": {f"{k},{m}": [round(1e3 * d, 3), round(1e3 * v, 3)]
                                                     for (k, m), (d, v) in parts.items()},
                                 "by_acceptance": rows}
    return result


def toy_cycle_bench(ks=DRAFT_LENGTHS, n_cycles: int = 5, n_prompt: int = 64, n_gen: int = 128, alpha: float = 1.0,
                    n_repeat: int = 3, n_threads: int | None = None, n_gpu_layers: int = -1, log=print) -> dict:
    """`forced_acceptance` on the shipped toy triple (trained weights, its own small vocabulary; the
    CPU-sized case of the issue): the large model alone and RAST are timed over the same positions
    as the cycles (a prompt of toy problems, then n_gen greedy tokens; the cycles restart there
    when the context fills)."""
    from rast_gguf.bench import _timed_run
    from rast_gguf.defaults import default_triple
    from rast_gguf.toy_task import problems

    large, base, tuned = default_triple()
    pair = DeltaPair(str(tuned), str(base), alpha, n_gpu_layers)
    kwargs = dict(n_ctx=n_prompt + n_gen + 16, n_threads=n_threads, n_gpu_layers=n_gpu_layers)
    tps = {}
    for mode, pairs in (("alone", []), ("rast", [pair])):
        with RastEngine(large, pairs, **kwargs) as engine:
            text = "".join(p.prompt for p in problems(0, 64, held_out=True))
            tokens = engine.tokenize(text)[:n_prompt]
            _timed_run(engine, tokens[:16], 8)  # warm-up
            tps[mode] = max(_timed_run(engine, tokens, n_gen)[1] for _ in range(n_repeat))
    return forced_acceptance("toy triple (CPU-sized, trained)", (large, tuned, base), pair, tps["alone"], tps["rast"],
                             lambda engine: tokens, ks, n_cycles, log=log, **kwargs)


def toy_acceptance(alphas=(0.5, 1.0, 2.0), n_prompts: int = 8, max_tokens: int = 64, n_threads: int | None = None,
                   log=print) -> list[dict]:
    """Acceptance and end-to-end speedup of speculative RAST on the shipped toy triple (greedy)."""
    from rast_gguf.defaults import default_triple
    from rast_gguf.toy_task import problems

    large, base, tuned = default_triple()
    prompts = [p.prompt for p in problems(0, n_prompts, held_out=True)]
    greedy = SamplingParams(temp=0)
    rows = []
    with RastEngine(large, [], n_ctx=512, n_threads=n_threads) as alone:
        t0, n_alone = time.perf_counter(), 0
        for prompt in prompts:
            n_alone += len(generate(alone, prompt, max_tokens=max_tokens, sampling=greedy).tokens)
        alone_tps = n_alone / (time.perf_counter() - t0)
    for alpha in alphas:
        pairs = [DeltaPair(str(tuned), str(base), alpha)]
        row = {"alpha": alpha, "alone_tps": round(alone_tps, 1)}
        for name, draft in (("rast", None), ("speculative", "tuned")):
            with RastEngine(large, pairs, n_ctx=512, n_threads=n_threads, draft=draft) as engine:
                n_tokens, drafted, accepted, cycles = 0, 0, 0, 0
                t0 = time.perf_counter()
                for prompt in prompts:
                    r = generate(engine, prompt, max_tokens=max_tokens, sampling=greedy)
                    n_tokens += len(r.tokens)
                    if r.speculative:
                        drafted += r.speculative.n_drafted
                        accepted += r.speculative.n_accepted
                        cycles += r.speculative.n_cycles
                row[f"{name}_tps"] = round(n_tokens / (time.perf_counter() - t0), 1)
                row[f"{name}_tokens"] = n_tokens
        row["acceptance"] = round(accepted / max(drafted, 1), 3)
        row["accepted_per_cycle"] = round(accepted / max(cycles, 1), 2)
        row["speedup_vs_rast"] = round(row["speculative_tps"] / row["rast_tps"], 2)
        row["speculative_vs_alone"] = round(row["speculative_tps"] / alone_tps, 2)
        log(f"toy triple alpha {alpha:g}: acceptance {row['acceptance']:.2f} ({row['accepted_per_cycle']} per cycle); "
            f"RAST {row['rast_tps']} tok/s, speculative {row['speculative_tps']} tok/s "
            f"({row['speedup_vs_rast']:.2f} x RAST, {row['speculative_vs_alone']:.2f} x large alone {alone_tps:.1f})")
        rows.append(row)
    return rows
