"""Host cost of sampling one scheduler step: `StepSampler.sample_rows` over B rows of a real vocabulary.

One batch of B single-token sequences is decoded once in the CPU-sized Qwen-vocabulary triple
(`cpu_models.py`: 151936 ids), then the same B output rows are sampled again and again (sampling
reads the logits, it does not consume them): greedy rows, sampled rows with llama.cpp's default
truncation (top-k 40, top-p 0.95, min-p 0.05, temperature 0.8: the k best picked in one pass over
the row, `rast_top_k_combined`) and sampled rows without top-k (top-p 0.95 alone: a candidate array
of the whole vocabulary, llama.cpp's own links). Prints the best of --repeats, in ms per step and
ms per row per thread, for 1 and --threads sampler threads.

    cd benchmarks && python bench_step_sampler.py --rows 32 --threads 2
"""

from __future__ import annotations

import llama_cpp  # noqa: F401

import argparse
import random
import time

from rast_gguf import DeltaPair, RastEngine, SamplingParams
from rast_gguf.scheduler import SeqRequest
from rast_gguf.step_sampler import StepSampler

from cpu_models import add_model_args, model_triple

KINDS = {"greedy": dict(temp=0.0), "top-k 40 (default chain)": dict(temp=0.8),
         "top-p only (full array)": dict(temp=0.8, top_k=0, min_p=0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="sampler threads (also tried: 1)")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    large, base, tuned, _, _ = model_triple(args)
    n = args.rows
    with RastEngine(large, [DeltaPair(str(tuned), str(base), 1.0)], n_ctx=64, n_seq_max=n, n_threads=2) as engine:
        rng = random.Random(0)
        tokens = [rng.randrange(1000, 100000) for _ in range(n)]
        engine.decode_entries(tokens, [0] * n, list(range(n)), [True] * n)
        print(f"{n} rows of {engine.n_vocab} ids, best of {args.repeats}")
        for n_threads in sorted({1, args.threads}):
            sampler = StepSampler(engine, n_threads=n_threads)
            for kind, chain in KINDS.items():
                handles = [sampler.open(SeqRequest((1,), SamplingParams(seed=i, **chain), 8)) for i in range(n)]
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    sampler.sample_rows(list(range(n)), handles)
                    times.append(time.perf_counter() - t0)
                for h in handles:
                    sampler.close(h)
                best = min(times)
                print(f"threads {n_threads}  {kind:26s} {1e3 * best:8.2f} ms per step  "
                      f"{1e3 * best * n_threads / n:6.3f} ms per row per thread")


if __name__ == "__main__":
    main()
