"""`rast batch`'s throughput on the workload of issue 10 against the plainest llama.cpp loop.

Records with n samples each and max_tokens spread evenly from --min-tokens to --max-tokens (EOS
ignored, so each sample makes exactly its max_tokens) go through `rast_gguf.batch.run_batch` at
each -np (models loaded once per setting, outside the timing); aggregate tokens/s counts every
generated token over the whole run (prompts, scheduling and file writes included). Beside them, in
the same process: the plain llama-cpp-python loop (`rast_gguf.bench_plain`: llama_decode + one
greedy llama_sampler per row, no project code) over the large file alone and over the three files
at B = the widest -np, decoding the records' prompts and then --plain-tokens steps of B rows. Also
printed per -np: slot occupancy (overall, and over the steps that began with requests waiting for a
slot) and prompt tokens decoded vs requested (shared prompts).

    python benchmarks/bench_batch.py                                  # CPU-sized default shapes
    python benchmarks/bench_batch.py -ngl 99 --large qwen2.5-7b --small qwen2.5-1.5b --large-type q4_k_m \\
        --records 64 --samples 4 --min-tokens 32 --max-tokens 512 --parallel 1 32     # the issue's workload
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
from rast_gguf.bench_plain import plain_loop
from rast_gguf.jsonl import parse_lines

from cpu_models import add_model_args, model_triple


def records(n_records: int, n_samples: int, min_tokens: int, max_tokens: int) -> list[bytes]:
    step = (max_tokens - min_tokens) / max(1, n_records - 1)
    return [json.dumps({"id": i, "prompt": f"Question {i}: a train travels {40 + i} km in {1 + i % 3} hours. "
                        "What is its average speed?\nAnswer:", "n": n_samples,
                        "max_tokens": round(min_tokens + step * ((i * 7) % n_records))}).encode()
            for i in range(n_records)]


def one_run(engine: RastEngine, lines: list[bytes]) -> dict:
    recs, problems = parse_lines(lines, SamplingParams(temp=0.8, seed=1), 16)
    assert not problems, problems
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_batch(engine, recs, Path(tmp) / "out.jsonl", ignore_eos=True, progress=False)
    expected = sum(r.n * r.max_tokens for r in recs)
    assert summary.generated_tokens == expected, (summary.generated_tokens, expected)
    st = summary.stats
    return {"tokens": summary.generated_tokens, "seconds": summary.seconds, "occupancy": st.occupancy,
            "occupancy_queued": st.occupancy_queued,
            "prompt_tokens_requested": st.prompt_tokens_requested, "prompt_tokens_decoded": st.prompt_tokens_decoded}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--records", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4, help="n per record (pass@k style)")
    ap.add_argument("--min-tokens", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--plain-tokens", type=int, default=64, help="steps of the plain loop")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("-ngl", "--n-gpu-layers", type=int, default=0)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--overlap", choices=("off", "on", "both"), default="off",
                    help="decode the small models on worker threads (RastEngine overlap); both: each -np twice, side by side")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--files", nargs=3, metavar=("LARGE", "BASE", "TUNED"), default=None,
                    help="use these GGUF files (e.g. rast bench's synthetic models) instead of writing a triple")
    args = ap.parse_args()

    if args.files:
        large, base, tuned = map(Path, args.files)
        large_label, small_label = large.name, f"{tuned.name} - {base.name}"
    else:
        large, base, tuned, large_label, small_label = model_triple(args)
    pairs = [DeltaPair(str(tuned), str(base), 1.0, args.n_gpu_layers)]
    lines = records(args.records, args.samples, args.min_tokens, args.max_tokens)
    n_ctx = 64 + args.max_tokens + 64
    overlaps = {"off": [False], "on": [True], "both": [False, True]}[args.overlap]
    settings = [(p, ov) for p in args.parallel for ov in overlaps]
    engines = {(p, ov): RastEngine(large, pairs, n_ctx=n_ctx, n_threads=args.threads, n_gpu_layers=args.n_gpu_layers,
                                   n_seq_max=p, overlap=ov) for p, ov in settings}
    try:
        for engine in engines.values():  # warm-up (first-use allocations, GPU kernels)
            one_run(engine, records(1, 1, 4, 4))
        runs = {key: [] for key in settings}
        for _ in range(args.repeats):
            for key, engine in engines.items():
                runs[key].append(one_run(engine, lines))
        widest = max(args.parallel)
        prompts = [engines[settings[-1]].tokenize(json.loads(line)["prompt"]) for line in lines][:widest]
        prompts += [prompts[i % len(prompts)] for i in range(widest - len(prompts))]
    finally:
        for engine in engines.values():
            engine.close()
    plain = {}
    for name, files in (("plain", [large]), ("plain3", [large, tuned, base])):
        plain[name] = plain_loop(files, prompts, args.plain_tokens, n_ctx=n_ctx, n_batch=512,
                                 n_gpu_layers=args.n_gpu_layers, n_threads=args.threads, n_repeat=args.repeats)

    print(f"large {large_label}, pair {small_label}; {args.records} records x {args.samples} samples, max_tokens "
          f"{args.min_tokens}..{args.max_tokens}; threads {args.threads or os.cpu_count()}, -ngl {args.n_gpu_layers}, "
          f"median of {args.repeats}")
    print(f"plain llama.cpp loop at B={widest}: large alone {plain['plain']['tg_tps']:.1f} tok/s, "
          f"three models (no delta) {plain['plain3']['tg_tps']:.1f} tok/s")
    first = args.parallel[0]
    print(f"{'-np':>4}  {'overlap':>7}  {'tokens':>7}  {'seconds':>8}  {'tok/s':>8}  {'vs -np ' + str(first):>9}  {'vs plain':>8}  "
          f"{'vs plain3':>9}  {'occupancy':>9}  {'while queued':>12}  {'prompt decoded/requested':>24}")
    results = []
    base_tps = None
    for p, ov in settings:
        med = statistics.median(r["seconds"] for r in runs[(p, ov)])
        r0 = runs[(p, ov)][0]
        tps = r0["tokens"] / med
        base_tps = base_tps or tps
        row = {"parallel": p, "overlap": ov, "tokens": r0["tokens"], "seconds": med, "tokens_per_s": tps,
               "vs_first": tps / base_tps, "vs_plain": tps / plain["plain"]["tg_tps"],
               "vs_plain3": tps / plain["plain3"]["tg_tps"], "occupancy": r0["occupancy"],
               "occupancy_queued": r0["occupancy_queued"],
               "prompt_tokens_decoded": r0["prompt_tokens_decoded"],
               "prompt_tokens_requested": r0["prompt_tokens_requested"], "all_seconds": [r["seconds"] for r in runs[(p, ov)]]}
        results.append(row)
        print(f"{p:>4}  {'on' if ov else 'off':>7}  {row['tokens']:>7}  {med:>8.2f}  {tps:>8.1f}  {row['vs_first']:>8.2f}x  {row['vs_plain']:>7.2f}x  "
              f"{row['vs_plain3']:>8.2f}x  {row['occupancy']:>9.3f}  {row['occupancy_queued']:>12.3f}  "
              f"{row['prompt_tokens_decoded']:>11}/{row['prompt_tokens_requested']:<12}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "plain": plain, "results": results}, indent=2))


if __name__ == "__main__":
    main()
