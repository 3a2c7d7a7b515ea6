"""The shared flags of a command -> the models, a SamplingParams and the RastEngine, in one place.

`from_flags(flags)` takes a command's parameters as a dict (`locals()` at the top of the command:
the names are those of rast_gguf.cli.options) and returns a `Setup`: llama.cpp's log set as -v
asks, the models resolved (paths, hub references, checkpoints converted once; the built-in triple
when none is given), the pairs with their alphas and GPU layers, and the sampling settings. Flags
a command does not have take RastEngine's and SamplingParams' defaults. `setup.engine()` opens the
RastEngine with the command's context, batch, thread, GPU, flash-attention, overlap and --draft flags,
and its placement flags (--rpc, --rpc-small, -ts), which `setup.placement` also gives alone for the
library functions that open their own engines (evaluate, analyze).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rast_gguf.sampling import DeltaPair, SamplingParams


@dataclass
class Setup:
    large: Path | None
    pairs: list[DeltaPair]
    sampling: SamplingParams
    engine_options: dict[str, Any] = field(default_factory=dict)

    def engine(self, **overrides):
        """A RastEngine of these models; `overrides` (e.g. n_seq_max) go to RastEngine as keywords."""
        from rast_gguf.engine import RastEngine

        return RastEngine(self.large, self.pairs, **{**self.engine_options, **overrides})

    @property
    def placement(self) -> dict[str, Any]:
        """RastEngine's rpc / rpc_small / tensor_split keywords from --rpc, --rpc-small and -ts."""
        return {name: self.engine_options[name] for name in _PLACEMENT_FLAGS if name in self.engine_options}


_ENGINE_FLAGS = {"ctx_size": "n_ctx", "batch_size": "n_batch", "threads": "n_threads", "n_gpu_layers": "n_gpu_layers",
                 "flash_attn": "flash_attn", "overlap": "overlap"}
_PLACEMENT_FLAGS = ("rpc", "rpc_small", "tensor_split")  # parsed by cli.models.placement, same names in RastEngine


def sampling_from_flags(flags: dict[str, Any]) -> SamplingParams:
    """--temp, --top-k, --top-p, --min-p, --seed, --sampler-order -> SamplingParams (its defaults where absent)."""
    d = SamplingParams
    return SamplingParams(temp=flags.get("temp", d.temp), top_k=flags.get("top_k", d.top_k),
                          top_p=flags.get("top_p", d.top_p), min_p=flags.get("min_p", d.min_p),
                          seed=flags.get("seed", d.seed), order=flags.get("sampler_order", d.order))


def from_flags(flags: dict[str, Any], *, models: bool = True, sampling: SamplingParams | None = None) -> Setup:
    """`models=False` skips model resolution (commands that resolve their models another way); `sampling`
    reuses settings already made from these flags."""
    from rast_gguf import _llama
    from rast_gguf.cli.models import placement, resolve_models

    _llama.set_verbose(bool(flags.get("verbose")))
    sampling = sampling or sampling_from_flags(flags)
    large, pairs = None, []
    if models:
        large, pairs = resolve_models(flags.get("large"), flags.get("base"), flags.get("tuned"), flags.get("alpha"),
                                      flags.get("n_gpu_layers", 0), flags.get("n_gpu_layers_small"),
                                      convert_type=flags.get("convert_type"))
    options = {name: flags[flag] for flag, name in _ENGINE_FLAGS.items() if flag in flags}
    if any(flag in flags for flag in _PLACEMENT_FLAGS):
        options.update(placement(flags.get("rpc"), flags.get("rpc_small"), flags.get("tensor_split")))
    if flags.get("draft") is not None:
        from rast_gguf.cli.options import draft_params

        options["draft"] = draft_params(flags["draft"], flags["draft_max"], flags["draft_min"], flags["draft_p_min"])
    return Setup(large, pairs, sampling, options)
