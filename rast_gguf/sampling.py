"""Sampling settings, validated once, and the sampler chain they build.

`SamplingParams` holds llama.cpp's knobs (temperature, top-k, top-p, min-p, seed) plus the order
of temperature against truncation: "llama" is llama.cpp's usual chain (truncate, then
temperature), "reference" is the RAST reference implementation's (temperature first). temp <= 0
means greedy. `DeltaPair` is one (alpha, tuned, base) term of the delta; several may be combined.
Invalid values raise SamplingParamsError with a message that names the flag.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from rast_gguf.errors import SamplingParamsError

ORDERS = ("llama", "reference")
SEED_RANDOM = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: draw a random seed
INT32_MAX = 2**31 - 1    # llama.cpp's top_k is an int32_t


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SamplingParamsError(message)


def check_alpha(alpha: float) -> float:
    _require(isinstance(alpha, (int, float)) and math.isfinite(alpha),
             f"--alpha must be a finite number, got {alpha!r}")
    return float(alpha)


@dataclass(frozen=True)
class SamplingParams:
    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    seed: int = SEED_RANDOM
    order: str = "llama"
    resolved_seed: int = field(init=False, default=0)

    def __post_init__(self):
        _require(math.isfinite(self.temp) and self.temp >= 0,
                 f"--temp must be >= 0 (0 means greedy), got {self.temp}")
        _require(0 <= self.top_k <= INT32_MAX, f"--top-k must be in [0, {INT32_MAX}] (0 disables it), got {self.top_k}")
        _require(math.isfinite(self.top_p) and 0 < self.top_p <= 1,
                 f"--top-p must be in (0, 1], got {self.top_p}")
        _require(math.isfinite(self.min_p) and 0 <= self.min_p < 1,
                 f"--min-p must be in [0, 1), got {self.min_p}")
        _require(0 <= self.seed <= 0xFFFFFFFF, f"--seed must be in [0, 4294967295], got {self.seed}")
        _require(self.order in ORDERS, f"--sampler-order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        seed = random.randrange(0, 0xFFFFFFFF) if self.seed == SEED_RANDOM else self.seed
        object.__setattr__(self, "resolved_seed", seed)

    @property
    def greedy(self) -> bool:
        return self.temp <= 0


@dataclass(frozen=True)
class DeltaPair:
    """alpha * (logits of `tuned` - logits of `base`); paths to GGUF files."""

    tuned: str
    base: str
    alpha: float = 1.0
    n_gpu_layers: int = 0

    def __post_init__(self):
        object.__setattr__(self, "alpha", check_alpha(self.alpha))
