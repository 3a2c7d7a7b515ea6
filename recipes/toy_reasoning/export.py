"""Convert the recipe's four checkpoints to the GGUF files the package ships:
`python -m recipes.toy_reasoning.export DIR [--to rast_gguf/data]`.

DIR is train.py's --out (or the unpacked checkpoints.tar.* pieces). The small pair stays f16 (its
quantization noise would not cancel in the delta), the large models become q8_0, all through the
project's own converter (convert/rast_convert).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = {  # checkpoint folder -> (shipped file, type)
    "small_base": ("toy-small-base.gguf", "f16"),
    "small_rl": ("toy-small-tuned.gguf", "f16"),
    "large_base": ("toy-large.gguf", "q8_0"),
    "large_rl": ("toy-large-rl.gguf", "q8_0"),
}


def export(checkpoints: Path, dest: Path, n_threads: int = 2) -> list[Path]:
    import rast_gguf  # noqa: F401  (loads libllama before anything else)

    sys.path.insert(0, str(ROOT / "convert"))
    from rast_convert import convert_hf_to_gguf

    dest.mkdir(parents=True, exist_ok=True)
    return [convert_hf_to_gguf(checkpoints / folder, dest / name, out_type=out_type, overwrite=True,
                               progress=False, n_threads=n_threads) for folder, (name, out_type) in FILES.items()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", type=Path)
    ap.add_argument("--to", type=Path, default=ROOT / "rast_gguf" / "data")
    args = ap.parse_args(argv)
    for path in export(args.checkpoints, args.to):
        print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
