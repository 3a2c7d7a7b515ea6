"""The built-in default triple, used when a command is given no models.

Until a trained toy triple ships with the package, the default is a small synthetic triple (random
weights, the package's real BPE tokenizer) written once into the user cache
(`$RAST_CACHE` or `~/.cache/rast-gguf`). It exercises the whole pipeline; its text is noise.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

DEFAULT_DIR_NAME = "default-synthetic-v1"


def cache_dir() -> Path:
    return Path(os.environ.get("RAST_CACHE") or Path.home() / ".cache" / "rast-gguf")


def default_triple() -> tuple[Path, Path, Path]:
    from rast_gguf.synth import SHAPES, write_synthetic_gguf

    root = cache_dir() / DEFAULT_DIR_NAME
    root.mkdir(parents=True, exist_ok=True)
    small = dataclasses.replace(SHAPES["tiny-qwen2"], n_embd=64, n_layer=2)
    large = dataclasses.replace(small, n_embd=192, n_layer=4, n_ff=512)
    paths = root / "large.gguf", root / "base.gguf", root / "tuned.gguf"
    if not paths[0].exists():
        write_synthetic_gguf(paths[0], large, seed=100, ftype="f16")
    if not paths[1].exists():
        write_synthetic_gguf(paths[1], small, seed=101, ftype="f16")
    if not paths[2].exists():
        write_synthetic_gguf(paths[2], small, seed=102, ftype="f16", derive_from=101, derive_scale=0.3)
    return paths
