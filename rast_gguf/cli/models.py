"""Turn the model flags of a command into (large path, [DeltaPair]); hub references are downloaded
and checkpoints converted (rast_gguf.hub), the built-in default triple is used when no model is given."""

from __future__ import annotations

import sys
from pathlib import Path

from rast_gguf.errors import UsageError
from rast_gguf.hub import resolve_model_ref
from rast_gguf.sampling import DeltaPair


def resolve_models(large: Path | None, base: list[Path] | None, tuned: list[Path] | None,
                   alpha: list[float] | None, n_gpu_layers: int, n_gpu_layers_small: int | None,
                   *, quiet: bool = False, convert_type: str | None = None) -> tuple[Path, list[DeltaPair]]:
    """(large model path, pairs): hub references downloaded, checkpoints converted to `convert_type` once
    (rast_gguf.checkpoints), one alpha for all pairs or one per pair, -ngls defaulting to -ngl."""
    base, tuned, alpha = base or [], tuned or [], alpha or [1.0]
    if large is None and not base and not tuned:
        from rast_gguf.defaults import default_triple

        large, base_path, tuned_path = default_triple()
        base, tuned = [base_path], [tuned_path]
        if not quiet:
            print(f"no models given: using the built-in default triple in {large.parent}", file=sys.stderr)
    if large is None:
        raise UsageError("give the large base model with -m/--large")
    if len(base) != len(tuned):
        raise UsageError(f"got {len(base)} --base and {len(tuned)} --tuned; give them in pairs "
                         "(--base S --tuned S_RL, repeated for each pair)")
    if len(alpha) not in (1, len(base)) and base:
        raise UsageError(f"got {len(alpha)} --alpha values for {len(base)} pairs; give one, or one per pair")
    alphas = alpha * len(base) if len(alpha) == 1 else alpha
    large = resolve_model_ref(large, convert_type)
    base = [resolve_model_ref(b, convert_type) for b in base]
    tuned = [resolve_model_ref(t, convert_type) for t in tuned]
    ngl_small = n_gpu_layers if n_gpu_layers_small is None else n_gpu_layers_small
    pairs = [DeltaPair(str(t), str(b), a, ngl_small) for t, b, a in zip(tuned, base, alphas)]
    return large, pairs


def placement(rpc: str | None, rpc_small: str | None, tensor_split: str | None) -> dict:
    """RastEngine's keyword arguments for --rpc, --rpc-small and -ts/--tensor-split."""
    from rast_gguf.rpc import parse_endpoints

    split = None
    if tensor_split:
        try:
            split = [float(x) for x in tensor_split.replace("/", ",").split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--tensor-split takes numbers like 3,1, got {tensor_split!r}") from None
    return {"rpc": parse_endpoints(rpc), "rpc_small": parse_endpoints(rpc_small, "--rpc-small"), "tensor_split": split}
