"""Generation tokens/s of the large model alone and of RAST: as RastEngine runs it (pair queued first,
large context's CUDA stream most urgent), with the large model queued first, with default stream
priorities, and with worker threads; side by side and interleaved (A B C A B C) in one process.

    python benchmarks/priority_probe.py LARGE.gguf TUNED.gguf BASE.gguf [-n 128] [-p 512] [-r 2]
"""

import rast_gguf  # noqa: F401  (first: one libstdc++, then libllama)

import argparse
import json
import statistics

from rast_gguf import _ext
from rast_gguf.bench import _timed_run
from rast_gguf.engine import RastEngine
from rast_gguf.sampling import DeltaPair

parser = argparse.ArgumentParser()
parser.add_argument("large"), parser.add_argument("tuned"), parser.add_argument("base")
parser.add_argument("-n", type=int, default=128)
parser.add_argument("-p", type=int, default=512)
parser.add_argument("-r", type=int, default=2)
parser.add_argument("--json")
args = parser.parse_args()

configs = {
    "large alone": dict(pairs=False),
    "rast large first": dict(pairs=True, large_first=True),
    "rast (default)": dict(pairs=True),
    "rast default prio": dict(pairs=True, stream_priority=False),
    "rast threads": dict(pairs=True, overlap=True),
}
results = {name: [] for name in configs}
for _ in range(args.r):
    for name, cfg in configs.items():
        pairs = [DeltaPair(args.tuned, args.base, 1.0, -1)] if cfg["pairs"] else []
        with RastEngine(args.large, pairs, n_ctx=args.p + args.n + 16, n_batch=512, n_gpu_layers=-1,
                        overlap=cfg.get("overlap", False), stream_priority=cfg.get("stream_priority", True)) as eng:
            if cfg.get("large_first"):
                eng._issue_order = eng.contexts
            prompt = [1000 + (i * 7919) % 100000 for i in range(args.p)]
            _timed_run(eng, prompt[:32], 8)
            pp, tg = _timed_run(eng, prompt, args.n)
            results[name].append(tg)
            print(f"{name:22s} raised={getattr(eng, 'stream_priority', None)!s:5s} pp {pp:8.1f}  tg {tg:7.1f} tok/s "
                  f"(streams raised so far: {_ext.stream_priority_n_raised()})", flush=True)
alone = statistics.median(results["large alone"])
summary = {name: {"tg_median": round(statistics.median(v), 1), "runs": [round(x, 1) for x in v],
                  "ratio_vs_large_alone": round(statistics.median(v) / alone, 3)} for name, v in results.items()}
for name, s in summary.items():
    print(f"{name:22s} {s['tg_median']:7.1f} tok/s  {s['ratio_vs_large_alone']:.3f} x  runs {s['runs']}")
print("install:", _ext.stream_priority_install())
if args.json:
    with open(args.json, "w") as f:
        json.dump(summary, f, indent=1)
