"""Aggregate generation speed of `rast batch` with 1, 4 and 16 parallel sequences, side by side.

The same records (n samples each, EOS ignored so every sample makes exactly -n tokens) go through
`rast_gguf.batch.run_batch` on one RAST engine per setting (models loaded once, outside the
timing); the settings take turns over the repeats and the median is printed. tokens/s counts
generated tokens over the whole run (prompts included in the time). Synthetic models with Qwen2.5's
vocabulary size by default, written once into a cache folder.

    python benchmarks/bench_batch.py                         # CPU-sized default shapes
    python benchmarks/bench_batch.py -ngl 99 --large qwen2.5-0.5b --parallel 1 4 16 64
"""

from __future__ import annotations

import llama_cpp  # noqa: F401

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from rast_gguf import DeltaPair, RastEngine, SamplingParams
from rast_gguf.batch import run_batch
from rast_gguf.jsonl import parse_lines

from cpu_models import add_model_args, model_triple


def one_run(engine: RastEngine, lines: list[bytes], max_tokens: int) -> tuple[int, float]:
    records, problems = parse_lines(lines, SamplingParams(temp=0.8, seed=1), max_tokens)
    assert not problems, problems
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_batch(engine, records, Path(tmp) / "out.jsonl", ignore_eos=True, progress=False)
    expected = sum(r.n for r in records) * max_tokens
    assert summary.generated_tokens == expected, (summary.generated_tokens, expected)
    return summary.generated_tokens, summary.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--records", type=int, default=16)
    ap.add_argument("--samples", type=int, default=2, help="n per record (pass@k style)")
    ap.add_argument("-n", "--n-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("-ngl", "--n-gpu-layers", type=int, default=0)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    large, base, tuned, _, _ = model_triple(args)
    pairs = [DeltaPair(str(tuned), str(base), 1.0, args.n_gpu_layers)]
    lines = [json.dumps({"id": i, "prompt": f"Question {i}: a train travels {40 + i} km in {1 + i % 3} hours. "
                         "What is its average speed?\nAnswer:", "n": args.samples}).encode()
             for i in range(args.records)]

    n_ctx = 64 + args.n_tokens + 64
    engines = {p: RastEngine(large, pairs, n_ctx=n_ctx, n_threads=args.threads, n_gpu_layers=args.n_gpu_layers,
                             n_seq_max=p) for p in args.parallel}
    try:
        for engine in engines.values():  # warm-up (first-use allocations, GPU kernels)
            one_run(engine, lines[:1], 4)
        seconds = {p: [] for p in args.parallel}
        tokens = {}
        for _ in range(args.repeats):
            for p, engine in engines.items():
                tokens[p], s = one_run(engine, lines, args.n_tokens)
                seconds[p].append(s)
    finally:
        for engine in engines.values():
            engine.close()

    base_tps = tokens[args.parallel[0]] / statistics.median(seconds[args.parallel[0]])
    print(f"large {large.name}, pair {tuned.name} - {base.name}, {args.records} records x {args.samples} samples x "
          f"{args.n_tokens} tokens, threads {args.threads or os.cpu_count()}, -ngl {args.n_gpu_layers}, "
          f"median of {args.repeats}")
    print(f"{'parallel':>8}  {'tokens':>7}  {'seconds':>8}  {'tokens/s':>9}  {'vs ' + str(args.parallel[0]):>6}")
    results = []
    for p in args.parallel:
        med = statistics.median(seconds[p])
        tps = tokens[p] / med
        results.append({"parallel": p, "tokens": tokens[p], "seconds": med, "tokens_per_s": tps,
                        "all_seconds": seconds[p]})
        print(f"{p:>8}  {tokens[p]:>7}  {med:>8.2f}  {tps:>9.1f}  {tps / base_tps:>5.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
