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
    """How each token is drawn after the delta is added; validated on creation (SamplingParamsError).

    Fields (defaults are llama.cpp's, and the CLI's: rast_gguf.cli.options takes them from here):
        temp: temperature; 0 means greedy (the argmax of the RAST logits). Default 0.8.
        top_k: keep the k most likely tokens; 0 disables. Default 40.
        top_p: keep the smallest set of tokens whose probability sums to top_p; 1.0 disables. Default 0.95.
        min_p: drop tokens less likely than min_p times the most likely one; 0.0 disables. Default 0.05.
        seed: RNG seed in [0, 2**32 - 1]; SEED_RANDOM (4294967295, the default) draws one.
        order: "llama" (truncation, then temperature: llama.cpp's chain) or "reference" (temperature
            first, as the RAST reference implementation).
        resolved_seed: the seed actually used (seed, or the one drawn for SEED_RANDOM); not an argument.
    """

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
        """temp <= 0: the chain ends in llama.cpp's greedy sampler."""
        return self.temp <= 0


@dataclass(frozen=True)
class DeltaPair:
    """One term of the delta: alpha * (logits of `tuned` - logits of `base`).

    Fields:
        tuned: path of the small RL-tuned model's GGUF file.
        base: path of the small base model's GGUF file (the model `tuned` was trained from).
        alpha: the coefficient (any finite number; 0 turns the pair off, negative subtracts it). Default 1.0.
        n_gpu_layers: layers of each of the two models on the GPU (-1: all). Default 0.
    """

    tuned: str
    base: str
    alpha: float = 1.0
    n_gpu_layers: int = 0

    def __post_init__(self):
        object.__setattr__(self, "alpha", check_alpha(self.alpha))
