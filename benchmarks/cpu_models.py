"""The synthetic triple the CPU benchmarks share: Qwen2.5's vocabulary (151936 ids) on CPU-sized
layers, or any SHAPES name, written once into a cache folder (random weights, real BPE tokenizer)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from rast_gguf.synth import SHAPES, write_synthetic_gguf

QWEN_VOCAB = 151936
SMALL_CPU = dataclasses.replace(SHAPES["tiny-qwen2"], n_vocab=QWEN_VOCAB, n_pad_tokens=271, n_embd=256,
                                n_layer=4, n_head=4, n_head_kv=2, n_ff=1024, tie_embeddings=True)
LARGE_CPU = dataclasses.replace(SMALL_CPU, n_embd=512, n_layer=8, n_head=8, n_head_kv=2, n_ff=2048)


def add_model_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--large", default=None, help="a SHAPES name (default: a CPU-sized Qwen-vocab model)")
    ap.add_argument("--small", default=None, help="a SHAPES name (default: a CPU-sized Qwen-vocab model)")
    ap.add_argument("--large-type", default="q8_0")
    ap.add_argument("--small-type", default="q8_0")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/rast-gguf/bench"))


def model_file(cache: Path, name: str, shape, ftype: str, seed: int, derive_from=None) -> Path:
    path = cache / f"{name}-{ftype}.gguf"
    if not path.exists():
        t0 = time.perf_counter()
        write_synthetic_gguf(path, shape, seed=seed, ftype=ftype, derive_from=derive_from, derive_scale=0.2,
                             fast_random=True)
        print(f"wrote {path.name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path


def model_triple(args: argparse.Namespace) -> tuple[Path, Path, Path, str, str]:
    """(large, base, tuned, large label, small label) for the parsed add_model_args options."""
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    large_shape = SHAPES[args.large] if args.large else LARGE_CPU
    small_shape = SHAPES[args.small] if args.small else SMALL_CPU
    large_name, small_name = args.large or "cpu-large", args.small or "cpu-small"
    large = model_file(cache, large_name, large_shape, args.large_type, seed=1)
    base = model_file(cache, small_name, small_shape, args.small_type, seed=2)
    tuned = model_file(cache, small_name + "-tuned", small_shape, args.small_type, seed=3, derive_from=2)
    return (large, base, tuned, f"{large_name} {args.large_type} ({large_shape.n_params / 1e6:.0f}M params)",
            f"{small_name} {args.small_type} ({small_shape.n_params / 1e6:.0f}M params)")
