"""Kernel timeline of the three contexts on a GPU, recorded with CUPTI through torch.profiler (no
Nsight needed): per stream, kernels and busy time, the union of busy time over all streams, and the
large model's own kernel time alone vs beside the small pair. Kernels whose summed time exceeds the
union ran side by side; a large model whose kernel time grows beside the pair shares bandwidth/SMs.

    python benchmarks/gpu_timeline.py LARGE.gguf TUNED.gguf BASE.gguf [-n 24] [--trace-dir DIR]
"""

import rast_gguf  # noqa: F401  (first: one libstdc++, then libllama)

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

from gpu_contexts import ProbeTriple

parser = argparse.ArgumentParser()
parser.add_argument("large"), parser.add_argument("tuned"), parser.add_argument("base")
parser.add_argument("-n", type=int, default=24)
parser.add_argument("--n-past", type=int, default=512)
parser.add_argument("--trace-dir", default="/tmp")
args = parser.parse_args()

import torch  # noqa: E402  (after llama.cpp: CUPTI then sees every kernel of the process's context)
from torch.profiler import ProfilerActivity, profile  # noqa: E402

probe = ProbeTriple([args.large, args.tuned, args.base], n_past=args.n_past, n_ctx=args.n_past + 8 * args.n + 64)
torch.cuda.init()


def run(which: list[int], n: int) -> float:
    probe.rewind()
    t0 = time.perf_counter()
    for i in range(n):
        probe.step(which, probe.prompt[i], args.n_past + i)
    return (time.perf_counter() - t0) * 1e3 / n


def summarize(trace_path: Path, label: str) -> dict:
    events = json.load(open(trace_path))["traceEvents"]
    kernels = [e for e in events if e.get("cat") == "kernel" and e.get("ph") == "X"]
    per_stream, count = defaultdict(float), defaultdict(int)
    spans = []
    for e in kernels:
        stream = e.get("args", {}).get("stream")
        per_stream[stream] += e["dur"]
        count[stream] += 1
        spans.append((e["ts"], e["ts"] + e["dur"]))
    spans.sort()
    union, cur = 0.0, None
    for s, t in spans:
        if cur is None or s > cur[1]:
            if cur is not None:
                union += cur[1] - cur[0]
            cur = [s, t]
        else:
            cur[1] = max(cur[1], t)
    if cur is not None:
        union += cur[1] - cur[0]
    total = sum(per_stream.values())
    print(f"== {label}: {len(kernels)} kernels")
    for stream, busy in sorted(per_stream.items(), key=lambda kv: -kv[1]):
        print(f"  stream {stream}: {count[stream]:6d} kernels  {busy / 1e3:8.2f} ms busy")
    if spans:
        print(f"  summed {total / 1e3:.2f} ms, any kernel running {union / 1e3:.2f} ms, wall {(spans[-1][1] - spans[0][0]) / 1e3:.2f} ms,"
              f" side-by-side factor {total / max(union, 1e-9):.2f}")
    return {s: busy for s, busy in per_stream.items()}


for which in ([0], [0, 1, 2]):
    run(which, 8)  # warm: CUDA graphs captured
results = {}
for label, which in (("large alone", [0]), ("all three", [0, 1, 2]), ("pair", [1, 2])):
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        ms = run(which, args.n)
    path = Path(args.trace_dir) / f"timeline-{label.replace(' ', '_')}.json"
    prof.export_chrome_trace(str(path))
    print(f"{label}: {ms:.3f} ms/token under the profiler")
    results[label] = summarize(path, label)
probe.close()
