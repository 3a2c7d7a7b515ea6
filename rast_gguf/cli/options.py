"""Options shared by every command, declared once (names follow llama.cpp's flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Large = Annotated[Optional[Path], typer.Option("-m", "--large", help="Large base model: a GGUF file or a hub reference (owner/repo:QUANT, owner/repo:file.gguf).", show_default=False)]
Base = Annotated[Optional[list[Path]], typer.Option("--base", help="Small base model (GGUF file or hub reference); repeat for several pairs.", show_default=False)]
Tuned = Annotated[Optional[list[Path]], typer.Option("--tuned", help="Small RL-tuned model (GGUF file or hub reference), made from --base; repeat for several pairs.", show_default=False)]
Alpha = Annotated[Optional[list[float]], typer.Option("--alpha", help="Delta coefficient; one value for all pairs or one per pair. [default: 1.0]", show_default=False)]
NGpuLayers = Annotated[int, typer.Option("-ngl", "--n-gpu-layers", help="Layers of the large model on the GPU (-1: all).")]
NGpuLayersSmall = Annotated[Optional[int], typer.Option("-ngls", "--n-gpu-layers-small", help="Layers of each small model on the GPU (-1: all). [default: same as -ngl]", show_default=False)]
CtxSize = Annotated[int, typer.Option("-c", "--ctx-size", help="Context size in tokens, shared by all models.")]
BatchSize = Annotated[int, typer.Option("-b", "--batch-size", help="Tokens per llama_decode call while reading the prompt.")]
Overlap = Annotated[bool, typer.Option("--overlap/--no-overlap", help="Decode the small models on worker threads beside the large one (on an H100 no faster than the plain loop, which already runs the three GPU graphs side by side; compare on your machine with rast bench).")]
Threads = Annotated[Optional[int], typer.Option("-t", "--threads", help="CPU threads per model. [default: all cores]", show_default=False)]
NPredict = Annotated[int, typer.Option("-n", "--n-predict", help="Maximum tokens to generate.")]
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
