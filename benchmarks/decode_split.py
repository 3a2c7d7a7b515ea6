"""Where a generated token's time goes: issuing the decodes (engine.feed) vs waiting for the logits
and sampling (chain.sample), for the large model alone, RAST sequential and RAST overlapped. If feed
returns in well under the token time, llama_decode is asynchronous on this backend and the sequential
loop already overlaps the small pair's CPU work with the GPU.

    python benchmarks/decode_split.py LARGE.gguf TUNED.gguf BASE.gguf [-ngl 99] [-n 64]
"""

import rast_gguf  # noqa: F401  (first: one libstdc++, then libllama)

import argparse
import statistics
import time

from rast_gguf import DeltaPair, RastEngine, SamplingParams

parser = argparse.ArgumentParser()
parser.add_argument("large"), parser.add_argument("tuned"), parser.add_argument("base")
parser.add_argument("-ngl", type=int, default=99)
parser.add_argument("-n", type=int, default=64)
args = parser.parse_args()

for mode in ("alone", "sequential", "overlap"):
    pairs = [] if mode == "alone" else [DeltaPair(args.tuned, args.base, 1.0, args.ngl)]
    with RastEngine(args.large, pairs, n_ctx=512, n_gpu_layers=args.ngl, overlap=mode == "overlap") as engine:
        chain = engine.sampler(SamplingParams(temp=0))
        engine.feed(engine.tokenize("Question: what is 12 + 35? Answer:"))
        token = chain.sample(-1)
        feed_ms, sample_ms = [], []
        for _ in range(args.n):
            t0 = time.perf_counter()
            engine.feed([token])
            t1 = time.perf_counter()
            token = chain.sample(-1)
            t2 = time.perf_counter()
            feed_ms.append((t1 - t0) * 1e3)
            sample_ms.append((t2 - t1) * 1e3)
        chain.close()
    f, s = statistics.median(feed_ms[8:]), statistics.median(sample_ms[8:])
    print(f"{mode:10s} per token: feed {f:.2f} ms + logits wait/sample {s:.2f} ms = {f + s:.2f} ms "
          f"({1e3 / (f + s):.0f} tok/s)")
