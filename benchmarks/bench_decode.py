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
import json
import statistics
from pathlib import Path

from rast_gguf import DeltaPair, RastEngine, SamplingParams, stream_generate

from cpu_models import add_model_args, model_triple


def decode_tps(engine: RastEngine, prompt: str, n_tokens: int) -> tuple[float, float]:
    last = None
    for last in stream_generate(engine, prompt, max_tokens=n_tokens, ignore_eos=True,
                                sampling=SamplingParams(temp=0.8, seed=1)):
        pass
    assert last.generation_tokens == n_tokens
    return last.prompt_tps, last.generation_tps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("-n", "--n-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("-ngl", "--n-gpu-layers", type=int, default=0)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    large, base, tuned, large_label, small_label = model_triple(args)

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
        "large": large_label, "small": small_label,
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
