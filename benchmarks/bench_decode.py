"""Decode speed of the large model alone vs RAST, side by side in one run, and the per-token cost of
the delta sampler itself at a 152k-entry vocabulary.

Builds synthetic models (random weights, real BPE tokenizer, Qwen2.5 vocabulary size) in a cache
folder, then alternates runs of "large alone" (the same engine and sampler chain with no pair) and
"RAST" (one pair), and prints medians and their ratio. EOS is ignored so every run makes the same
number of tokens.

    python benchmarks/bench_decode.py                       # CPU-sized default shapes
    python benchmarks/bench_decode.py --large qwen2.5-0.5b --large-type q8_0 --small-type f16
"""

from __future__ import annotations

import llama_cpp  # noqa: F401

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

from rast_gguf import DeltaPair, RastEngine, SamplingParams, stream_generate
from rast_gguf.synth import SHAPES, write_synthetic_gguf

QWEN_VOCAB = 151936
SMALL_CPU = dataclasses.replace(SHAPES["tiny-qwen2"], n_vocab=QWEN_VOCAB, n_pad_tokens=271, n_embd=256,
                                n_layer=4, n_head=4, n_head_kv=2, n_ff=1024, tie_embeddings=True)
LARGE_CPU = dataclasses.replace(SMALL_CPU, n_embd=512, n_layer=8, n_head=8, n_head_kv=2, n_ff=2048)


def model_file(cache: Path, name: str, shape, ftype: str, seed: int, derive_from=None) -> Path:
    path = cache / f"{name}-{ftype}.gguf"
    if not path.exists():
        t0 = time.perf_counter()
        write_synthetic_gguf(path, shape, seed=seed, ftype=ftype, derive_from=derive_from, derive_scale=0.2,
                             fast_random=True)
        print(f"wrote {path.name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path


def decode_tps(engine: RastEngine, prompt: str, n_tokens: int) -> tuple[float, float]:
    last = None
    for last in stream_generate(engine, prompt, max_tokens=n_tokens, ignore_eos=True,
                                sampling=SamplingParams(temp=0.8, seed=1)):
        pass
    assert last.generation_tokens == n_tokens
    return last.prompt_tps, last.generation_tps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--large", default=None, help="a SHAPES name (default: a CPU-sized Qwen-vocab model)")
    ap.add_argument("--small", default=None, help="a SHAPES name (default: a CPU-sized Qwen-vocab model)")
    ap.add_argument("--large-type", default="q8_0")
    ap.add_argument("--small-type", default="q8_0")
    ap.add_argument("-n", "--n-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("-ngl", "--n-gpu-layers", type=int, default=0)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/rast-gguf/bench"))
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    large_shape = SHAPES[args.large] if args.large else LARGE_CPU
    small_shape = SHAPES[args.small] if args.small else SMALL_CPU
    large_name, small_name = args.large or "cpu-large", args.small or "cpu-small"
    large = model_file(cache, large_name, large_shape, args.large_type, seed=1)
    base = model_file(cache, small_name, small_shape, args.small_type, seed=2)
    tuned = model_file(cache, small_name + "-tuned", small_shape, args.small_type, seed=3, derive_from=2)

    prompt = "Question: A train travels 120 km in 2 hours. What is its average speed?\nAnswer:"
    common = dict(n_ctx=512, n_threads=args.threads, n_gpu_layers=args.n_gpu_layers)
    with RastEngine(large, [], **common) as alone, \
            RastEngine(large, [DeltaPair(str(tuned), str(base), 1.0, args.n_gpu_layers)], **common) as rast:
        decode_tps(alone, prompt, 8)   # warm-up
        decode_tps(rast, prompt, 8)
        runs = {"alone": [], "rast": []}
        for _ in range(args.repeats):
            runs["alone"].append(decode_tps(alone, prompt, args.n_tokens)[1])
            runs["rast"].append(decode_tps(rast, prompt, args.n_tokens)[1])

        rast.feed(rast.tokenize(prompt))
        sampler = rast.sampler(SamplingParams(temp=0.8, seed=1))
        delta_ms = [sampler.time_delta_apply(-1, 200) * 1e3 for _ in range(5)]
        sampler.close()
        n_vocab = rast.n_vocab

    alone_tps, rast_tps = statistics.median(runs["alone"]), statistics.median(runs["rast"])
    result = {
        "large": f"{large_name} {args.large_type} ({large_shape.n_params / 1e6:.0f}M params)",
        "small": f"{small_name} {args.small_type} ({small_shape.n_params / 1e6:.0f}M params)",
        "n_vocab": n_vocab, "n_tokens": args.n_tokens, "repeats": args.repeats,
        "alone_tps": runs["alone"], "rast_tps": runs["rast"],
        "alone_tps_median": alone_tps, "rast_tps_median": rast_tps, "ratio": rast_tps / alone_tps,
        "delta_ms_per_token_median": statistics.median(delta_ms),
    }
    print(f"large: {result['large']}   small pair: {result['small']}   n_vocab {n_vocab}")
    print(f"{'':24}{'decode tokens/s (median of ' + str(args.repeats) + ')':>36}")
    print(f"{'large model alone':24}{alone_tps:>36.1f}")
    print(f"{'RAST (large + pair)':24}{rast_tps:>36.1f}")
    print(f"{'ratio RAST / alone':24}{rast_tps / alone_tps:>36.3f}")
    print(f"delta sampler apply, {n_vocab} candidates: {result['delta_ms_per_token_median']:.3f} ms/token "
          f"(median of 5 x 200)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
