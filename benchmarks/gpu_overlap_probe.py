"""How much of the small pair's GPU work hides behind the large model's: per-token time of decoding
one token in a set of contexts (queued one after another from this thread, then waiting for all),
with no sampling, for the large model alone, one small model, the pair, and all three.

If the three together take about as long as the large one alone, the GPU runs the graphs side by
side; if they take the sum, it runs them one after another (or the pair's time is bandwidth the
large model was already using).

    python benchmarks/gpu_overlap_probe.py LARGE.gguf TUNED.gguf BASE.gguf [-n 96]
"""

import rast_gguf  # noqa: F401  (first: one libstdc++, then libllama)

import argparse
import statistics
import time

from gpu_contexts import ProbeTriple

parser = argparse.ArgumentParser()
parser.add_argument("large"), parser.add_argument("tuned"), parser.add_argument("base")
parser.add_argument("-n", type=int, default=96)
parser.add_argument("--n-past", type=int, default=512)
parser.add_argument("--only", help="run one set (for a profiler): large, tuned, pair, large+tuned, all three")
args = parser.parse_args()

probe = ProbeTriple([args.large, args.tuned, args.base], n_past=args.n_past, n_ctx=args.n_past + 4 * args.n + 64)
issue_ms: dict[str, list[float]] = {}


def per_token_ms(which: list[int], n: int, name: str) -> float:
    """Median time per token of n tokens decoded in the chosen contexts, from just after the prompt."""
    probe.rewind()
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        issue_ms.setdefault(name, []).append(probe.step(which, probe.prompt[i % len(probe.prompt)], args.n_past + i))
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[8:])


sets = {"large": [0], "tuned": [1], "pair": [1, 2], "large+tuned": [0, 1], "all three": [0, 1, 2],
        "all three, pair first": [1, 2, 0]}
profiler = None
if args.only:
    sets = {args.only: sets[args.only]}
    import ctypes

    for soname in ("libcudart.so.13", "libcudart.so.12"):
        try:
            profiler = ctypes.CDLL(soname)  # already loaded by ggml-cuda: the same runtime
            break
        except OSError:
            pass
results = {name: [] for name in sets}
for _ in range(1 if args.only else 3):
    for name, which in sets.items():
        if profiler is not None:
            profiler.cudaProfilerStart()
        results[name].append(per_token_ms(which, args.n, name))
        if profiler is not None:
            profiler.cudaProfilerStop()
for name, r in results.items():
    print(f"{name:22s} {statistics.median(r):6.3f} ms/token (queuing the decodes {statistics.median(issue_ms[name]):.3f} ms)"
          f"   runs {[round(x, 3) for x in r]}")
m = {name: statistics.median(r) for name, r in results.items()}
if not args.only:
    print(f"all three - large = {m['all three'] - m['large']:.3f} ms; pair alone = {m['pair']:.3f} ms; "
          f"hidden fraction of the pair = {1 - (m['all three'] - m['large']) / m['pair']:.2f}")
probe.close()
