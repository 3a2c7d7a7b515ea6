"""Batch-1 host overhead of RAST's two decode paths over the plain three-model loop, in one process.

Per repetition, side by side on the same files, prompt and token count (greedy, EOS ignored):
- plain3: `rast_gguf.bench_plain.plain_loop` over the three files (llama-cpp-python calls only: one
  llama_decode per context per token, the pair's logits fetched, a greedy llama_sampler on the large);
- generate: `rast_gguf.generate.stream_generate` (the loop `rast generate` runs);
- sched: `rast_gguf.scheduler.Scheduler` at -np 1 (the path of `rast batch`, `rast eval`, the server).
Every token is time-stamped (plain3 after each step, the others as each response/event arrives), and
every llama_decode call is timed (all three paths call it through llama-cpp-python, wrapped here), so
each token's interval splits into decode time and host time (everything else: batch filling,
sampling, bookkeeping, detokenization, events). Per run the median interval is taken (robust to
the other jobs of a shared machine), then the median over repetitions; the overhead of a path is its
value minus plain3's. "host" is the steadier number on a busy machine: decode time, which dominates
on tiny models and moves with the load, is taken out.

    python benchmarks/bench_overhead.py -t 1 --repeats 7 --tokens 256            # the toy triple
"""

from __future__ import annotations

import llama_cpp  # noqa: F401

import argparse
import bisect
import json
import random
import statistics
import time
from pathlib import Path

from rast_gguf import DeltaPair, RastEngine, SamplingParams
from rast_gguf.bench_plain import plain_loop
from rast_gguf.generate import stream_generate
from rast_gguf.scheduler import Scheduler, SeqRequest

DATA = Path(__file__).resolve().parent.parent / "rast_gguf" / "data"
GREEDY = SamplingParams(temp=0, seed=0)


SPANS: list[tuple[float, float]] = []  # (start, end) of every llama_decode call
_llama_decode = llama_cpp.llama_cpp.llama_decode


def _timed_decode(ctx, batch):
    t0 = time.perf_counter()
    rc = _llama_decode(ctx, batch)
    SPANS.append((t0, time.perf_counter()))
    return rc


llama_cpp.llama_decode = llama_cpp.llama_cpp.llama_decode = _timed_decode  # what plain_loop and the engine call


def per_token(times: list[float]) -> tuple[float, float]:
    """(median ms per token, median host ms per token: the interval less the llama_decode time in it)."""
    starts = [s for s, _ in SPANS]
    total, host = [], []
    for a, b in zip(times, times[1:]):
        i, j = bisect.bisect_left(starts, a), bisect.bisect_left(starts, b)
        decode = sum(e - s for s, e in SPANS[i:j])
        total.append(b - a)
        host.append(b - a - decode)
    SPANS.clear()
    return 1000.0 * statistics.median(total), 1000.0 * statistics.median(host)


def run_plain3(files, prompt, n_gen, n_ctx, threads):
    times = []
    plain_loop(files, [prompt], n_gen, n_ctx=n_ctx, n_batch=512, n_gpu_layers=0, n_threads=threads,
               on_step=lambda: times.append(time.perf_counter()))
    return per_token(times)


def run_generate(engine, prompt, n_gen):
    SPANS.clear()
    times = [time.perf_counter() for _ in stream_generate(engine, prompt, max_tokens=n_gen, sampling=GREEDY,
                                                          ignore_eos=True)]
    return per_token(times)


def run_sched(engine, prompt, n_gen):
    sched = Scheduler(engine)
    SPANS.clear()
    times = []
    sched.submit([SeqRequest(tuple(prompt), GREEDY, n_gen, ignore_eos=True)],
                 lambda event: times.append(time.perf_counter()))
    sched.run_until_idle()
    return per_token(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", nargs=3, metavar=("LARGE", "BASE", "TUNED"),
                    default=[DATA / "toy-large.gguf", DATA / "toy-small-base.gguf", DATA / "toy-small-tuned.gguf"])
    ap.add_argument("--tokens", type=int, default=256, help="tokens generated per run")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens (random ids)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    large, base, tuned = map(Path, args.files)
    n_ctx = args.prompt + args.tokens + 16
    with RastEngine(large, [DeltaPair(str(tuned), str(base), 1.0)], n_ctx=n_ctx, n_threads=args.threads) as engine:
        rng = random.Random(0)
        prompt = [rng.randrange(engine.n_shared // 4, engine.n_shared - 8) for _ in range(args.prompt)]
        run_generate(engine, prompt, 8), run_sched(engine, prompt, 8)  # warm-up
        runs = []
        for _ in range(args.repeats):
            runs.append({"plain3": run_plain3([large, tuned, base], prompt, args.tokens, n_ctx, args.threads),
                         "generate": run_generate(engine, prompt, args.tokens),
                         "sched": run_sched(engine, prompt, args.tokens)})
    paths = list(runs[0])
    med = {k: [statistics.median(r[k][m] for r in runs) for m in (0, 1)] for k in paths}
    over = {k: [statistics.median(r[k][m] - r["plain3"][m] for r in runs) for m in (0, 1)] for k in paths[1:]}
    print(f"{large.name} + ({tuned.name} - {base.name}); {args.tokens} tokens, {args.threads} thread(s), "
          f"median of {args.repeats}")
    print(f"{'path':>9}  {'ms/token':>9}  {'vs plain3':>10}  {'host ms/token':>13}  {'vs plain3':>10}")
    for k in paths:
        o = over.get(k)
        print(f"{k:>9}  {med[k][0]:>9.4f}  {f'{o[0]:+.4f}' if o else '':>10}  {med[k][1]:>13.4f}  "
              f"{f'{o[1]:+.4f}' if o else '':>10}")
    if args.json:
        Path(args.json).write_text(json.dumps({"median_ms": med, "overhead_ms": over, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
