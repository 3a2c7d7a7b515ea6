"""Options shared by every command, declared once (names follow llama.cpp's flags). Sampling options
take their defaults from `SamplingParams`, the one place they are defined."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rast_gguf.checkpoints import DEFAULT_CONVERT_TYPE as CONVERT_TYPE  # noqa: F401
from rast_gguf.sampling import SamplingParams

_MODEL = "a GGUF file, a hub reference (owner/repo:QUANT, owner/repo:file.gguf), or a safetensors checkpoint (a local folder or owner/repo[@revision], converted once and cached)"
Large = Annotated[Optional[Path], typer.Option("-m", "--large", help=f"Large base model: {_MODEL}.", show_default=False)]
Base = Annotated[Optional[list[Path]], typer.Option("--base", help=f"Small base model ({_MODEL}); repeat for several pairs.", show_default=False)]
Tuned = Annotated[Optional[list[Path]], typer.Option("--tuned", help=f"Small RL-tuned model made from --base ({_MODEL}); repeat for several pairs.", show_default=False)]
ConvertType = Annotated[str, typer.Option("--convert-type", help="GGUF type for safetensors checkpoints given as models (f16, bf16, q8_0, q4_k_m, ...).")]
Alpha = Annotated[Optional[list[float]], typer.Option("--alpha", help="Delta coefficient; one value for all pairs or one per pair. [default: 1.0]", show_default=False)]
NGpuLayers = Annotated[int, typer.Option("-ngl", "--n-gpu-layers", help="Layers of the large model on the GPU (-1: all).")]
NGpuLayersSmall = Annotated[Optional[int], typer.Option("-ngls", "--n-gpu-layers-small", help="Layers of each small model on the GPU (-1: all). [default: same as -ngl]", show_default=False)]
CtxSize = Annotated[int, typer.Option("-c", "--ctx-size", help="Context size in tokens, shared by all models.")]
BatchSize = Annotated[int, typer.Option("-b", "--batch-size", help="Tokens per llama_decode call while reading the prompt.")]
FlashAttn = Annotated[str, typer.Option("-fa", "--flash-attn", help="Flash attention: on, off or auto (llama.cpp decides per device). Greedy outputs can differ between on and off.")]
Overlap = Annotated[bool, typer.Option("--overlap/--no-overlap", help="Decode the small models on worker threads beside the large one (on an H100 no faster than the plain loop, which already runs the three GPU graphs side by side; compare on your machine with rast bench).")]
Threads = Annotated[Optional[int], typer.Option("-t", "--threads", help="CPU threads per model. [default: all cores]", show_default=False)]
NPredict = Annotated[int, typer.Option("-n", "--n-predict", help="Maximum tokens to generate.")]
IgnoreEos = Annotated[bool, typer.Option("--ignore-eos", help="Generate past end-of-generation tokens (until -n).")]
Temp = Annotated[float, typer.Option("--temp", help="Temperature; 0 means greedy.")]
TopK = Annotated[int, typer.Option("--top-k", help="Top-k sampling (0 disables).")]
TopP = Annotated[float, typer.Option("--top-p", help="Top-p sampling (1.0 disables).")]
MinP = Annotated[float, typer.Option("--min-p", help="Min-p sampling (0.0 disables).")]
Seed = Annotated[int, typer.Option("-s", "--seed", help="RNG seed (4294967295: random).")]
SamplerOrder = Annotated[str, typer.Option("--sampler-order", help="'llama': truncation then temperature (llama.cpp); 'reference': temperature first (RAST reference).")]
Verbose = Annotated[bool, typer.Option("-v", "--verbose", help="Show llama.cpp's log.")]

Rpc = Annotated[Optional[str], typer.Option("--rpc", metavar="HOST:PORT,...", show_default=False, help="llama.cpp RPC servers (rast rpc-server) whose devices take the large model's offloaded layers (-ngl) with the local GPUs, servers first; the small pair stays local. Traffic is unencrypted and unauthenticated: private networks only.")]
RpcSmall = Annotated[Optional[str], typer.Option("--rpc-small", metavar="HOST:PORT,...", show_default=False, help="RPC servers for the small models' offloaded layers (-ngls). [default: local]")]
TensorSplit = Annotated[Optional[str], typer.Option("-ts", "--tensor-split", metavar="N0,N1,...", show_default=False, help="Share of the large model's offloaded layers for each device, RPC servers' devices first, then local GPUs (llama.cpp's -ts). [default: by free memory]")]

# Defaults of the sampling options, from SamplingParams (dataclass fields keep their defaults on the class).
TEMP, TOP_K, TOP_P, MIN_P = SamplingParams.temp, SamplingParams.top_k, SamplingParams.top_p, SamplingParams.min_p
SEED, ORDER = SamplingParams.seed, SamplingParams.order
FLASH_ATTN = "auto"  # RastEngine's default
Draft = Annotated[str, typer.Option("--draft", help="Speculative decoding (same output distribution, fewer sequential decodes): 'auto' drafts with the first pair's tuned model where it runs on a GPU (where drafting pays) and is off elsewhere; 'tuned' drafts with it anywhere, 'ngram' with prompt lookup, or a GGUF drafter file; 'off'.")]
DraftMax = Annotated[int, typer.Option("--draft-max", help="Most tokens drafted per cycle (the length adapts below it to the acceptance rate and the measured verify cost).")]
DraftMin = Annotated[int, typer.Option("--draft-min", help="Drafts shorter than this are dropped.")]
DraftPMin = Annotated[float, typer.Option("--draft-p-min", help="Stop a draft when the drafter's top probability falls below this.")]


DRAFT = "auto"  # generate's and chat's default


def draft_params(draft: Optional[str], draft_max: int, draft_min: int, draft_p_min: float):
    """The engine's draft= argument for the --draft* flags (None: no speculation)."""
    if draft is None or draft == "off":
        return None
    from pathlib import Path

    from rast_gguf.hub import resolve_model_ref
    from rast_gguf.speculative import DRAFT_KINDS, DraftParams

    source = draft if draft in DRAFT_KINDS else str(resolve_model_ref(Path(draft)))
    return DraftParams(source=source, n_max=draft_max, n_min=draft_min, p_min=draft_p_min)
