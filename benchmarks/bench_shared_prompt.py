"""Prefill cost of n samples of one prompt against one sample, through the scheduler (shared prompts).

The n requests of a group with one prompt decode it once and copy its KV to the other slots; this
times, side by side (alternating, median of the repeats), the wall time until every sample has its
first token, for 1 sample and for n, on the CPU-sized Qwen-vocabulary triple of cpu_models.py.

    python benchmarks/bench_shared_prompt.py -t 1 --n 8 --prompt 128
"""

from __future__ import annotations

import llama_cpp  # noqa: F401

import argparse
import random
import statistics
import time

from rast_gguf import DeltaPair, RastEngine, SamplingParams
from rast_gguf.scheduler import Scheduler, SeqRequest

from cpu_models import add_model_args, model_triple


def prefill_seconds(engine: RastEngine, prompt: tuple[int, ...], n: int) -> tuple[float, int, int]:
    sched = Scheduler(engine)  # a fresh scheduler forgets every cached prompt
    first, mark = set(), {}

    def on_event(event) -> None:
        first.add(event.index)
        if len(first) == n and "t" not in mark:
            mark["t"] = time.perf_counter()

    t0 = time.perf_counter()
    sched.submit([SeqRequest(prompt, SamplingParams(temp=0.8, seed=i), 1) for i in range(n)], on_event)
    sched.run_until_idle()
    stats = sched.stats
    return mark["t"] - t0, stats.prompt_tokens_decoded, stats.prompt_tokens_requested


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens (random ids)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("-ngl", "--n-gpu-layers", type=int, default=0)
    args = ap.parse_args()
    large, base, tuned, _, _ = model_triple(args)
    rng = random.Random(0)
    with RastEngine(large, [DeltaPair(str(tuned), str(base), 1.0, args.n_gpu_layers)], n_ctx=args.prompt + 64,
                    n_threads=args.threads, n_gpu_layers=args.n_gpu_layers, n_seq_max=args.n) as engine:
        prompt = tuple(rng.randrange(1000, engine.n_shared - 1000) for _ in range(args.prompt))
        prefill_seconds(engine, prompt[:16], 1)  # warm-up
        runs = {1: [], args.n: []}
        for _ in range(args.repeats):
            for n in runs:
                runs[n].append(prefill_seconds(engine, prompt, n))
    for n, rs in runs.items():
        print(f"{n} sample(s): prefill {statistics.median(r[0] for r in rs):.3f} s (runs "
              f"{', '.join(f'{r[0]:.3f}' for r in rs)}), prompt tokens decoded {rs[0][1]} of {rs[0][2]}")
    ratio = statistics.median(r[0] for r in runs[args.n]) / statistics.median(r[0] for r in runs[1])
    print(f"prefill of {args.n} samples / 1 sample: {ratio:.3f}")


if __name__ == "__main__":
    main()
