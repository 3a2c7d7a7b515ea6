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

from rast_gguf.handles import Batch, Context, Model

parser = argparse.ArgumentParser()
parser.add_argument("large"), parser.add_argument("tuned"), parser.add_argument("base")
parser.add_argument("-n", type=int, default=96)
parser.add_argument("--n-past", type=int, default=512)
parser.add_argument("--only", help="run one set (for a profiler): large, tuned, pair, large+tuned, all three")
args = parser.parse_args()

models = [Model(p, n_gpu_layers=-1) for p in (args.large, args.tuned, args.base)]
contexts = [Context(m, n_ctx=args.n_past + 4 * args.n + 64, n_batch=512, n_threads=4, n_seq_max=1,
                    flash_attn="auto") for m in models]
names = ["large", "tuned", "base"]
n_vocab = min(m.n_vocab for m in models)
prompt = [10 + (i * 7919) % (n_vocab // 2) for i in range(args.n_past)]
batch = Batch(512)
batch.set_tokens(prompt, 0)
for ctx in contexts:
    ctx.decode(batch)
    ctx.synchronize()
n_past = args.n_past


issue_ms: dict[str, list[float]] = {}


def per_token_ms(which: list[int], n: int, name: str = "") -> float:
    global n_past
    times = []
    for i in range(n):
        batch.set_tokens([prompt[i % len(prompt)]], n_past)
        t0 = time.perf_counter()
        for k in which:
            contexts[k].decode(batch)
        issue_ms.setdefault(name, []).append((time.perf_counter() - t0) * 1e3)
        for k in which:
            contexts[k].synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
        n_past += 1
    return statistics.median(times[8:])


def reset_to_prompt():
    global n_past
    for ctx in contexts:
        ctx.remove_from(args.n_past)
    n_past = args.n_past


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
        reset_to_prompt()
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
batch.close()
for ctx in contexts:
    ctx.close()
for model in models:
    model.close()
