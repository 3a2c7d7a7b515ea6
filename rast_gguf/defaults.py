"""The built-in default triple, used when a command is given no models.

The default is the toy triple that ships inside the package (rast_gguf/data/, trained by
recipes/toy_reasoning on sums of four numbers: try `-p "Q: 12+345+67+890\n" --temp 0`). Only when
those files are missing (a source tree without them) does it fall back to a small synthetic triple
(random weights, the package's real BPE tokenizer) written once into the user cache
(`cache_dir()`), which exercises the whole pipeline but whose text is noise.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

DEFAULT_DIR_NAME = "default-synthetic-v1"


def cache_dir() -> Path:
    """$RAST_CACHE, else $XDG_CACHE_HOME/rast-gguf, else ~/.cache/rast-gguf."""
    if os.environ.get("RAST_CACHE"):
        return Path(os.environ["RAST_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rast-gguf"


def default_triple() -> tuple[Path, Path, Path]:
    """(large, small base, small tuned)."""
    from rast_gguf.demo import DATA_DIR

    shipped = DATA_DIR / "toy-large.gguf", DATA_DIR / "toy-small-base.gguf", DATA_DIR / "toy-small-tuned.gguf"
    if all(p.is_file() for p in shipped):
        return shipped
    return synthetic_triple()


def synthetic_triple() -> tuple[Path, Path, Path]:
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
