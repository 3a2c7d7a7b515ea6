"""`rast serve`: an OpenAI-compatible HTTP server for RAST (flag names and defaults of llama-server)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rast_gguf.cli import options as o


def serve_command(
    large: o.Large = None, base: o.Base = None, tuned: o.Tuned = None, alpha: o.Alpha = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port).")] = 8080,
    parallel: Annotated[int, typer.Option("-np", "--parallel", help="Slots: sequences decoded together.")] = 4,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar="RAST_API_KEY", show_default=False,
        help="Require 'Authorization: Bearer KEY' on every endpoint but /health and /v1/models.")] = None,
    alias: Annotated[Optional[str], typer.Option(
        "-a", "--alias", show_default=False,
        help="Model name the API reports and accepts. [default: the -m argument as given]")] = None,
    max_queue: Annotated[int, typer.Option(
        "--max-queue", help="Requests that may wait for a slot; beyond that the server answers 503 with "
                            "Retry-After (0: no limit).")] = 256,
    n_predict: Annotated[int, typer.Option(
        "-n", "--n-predict", help="Default max_tokens of a request (-1: until the context is full).")] = -1,
    ctx_size: Annotated[int, typer.Option(
        "-c", "--ctx-size", help="Context of each slot in tokens (prompt + answer), as in rast batch; the KV cache "
                                 "holds -np times this (llama-server instead splits -c among its slots).")] = 4096,
    batch_size: o.BatchSize = 512,
    n_gpu_layers: o.NGpuLayers = 0, n_gpu_layers_small: o.NGpuLayersSmall = None, threads: o.Threads = None,
    rpc: o.Rpc = None, rpc_small: o.RpcSmall = None, tensor_split: o.TensorSplit = None,
    temp: o.Temp = 0.8, top_k: o.TopK = 40, top_p: o.TopP = 0.95, min_p: o.MinP = 0.05,
    seed: o.Seed = 0xFFFFFFFF, sampler_order: o.SamplerOrder = "llama", verbose: o.Verbose = False,
    overlap: o.Overlap = False,
):
    """Serve RAST over the OpenAI API: /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics.

    Requests may override temperature, top_p, top_k, min_p, seed, max_tokens, stop, n and alpha
    (extra body); the flags here are the defaults.

    Example: rast serve -m Qwen/Qwen2.5-7B-Instruct-GGUF:Q4_K_M --base Qwen2.5-1.5B-Q8_0.gguf
    --tuned SimpleRL-1.5B-Q8_0.gguf --alpha 0.5 -ngl 99 -np 8 --port 8080
    """
    flags = locals()
    from rast_gguf.cli.engine_setup import from_flags
    from rast_gguf.engine import RastEngine
    from rast_gguf.errors import UsageError
    from rast_gguf.serve.app import ServeConfig
    from rast_gguf.serve.protocol import Defaults
    from rast_gguf.serve.server import run_server

    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be in [0, 65535], got {port}")
    if max_queue < 0:
        raise UsageError(f"--max-queue must be >= 0 (0: no limit), got {max_queue}")
    if n_predict == 0 or n_predict < -1:
        raise UsageError(f"-n must be -1 (until the context is full) or >= 1, got {n_predict}")
    setup = from_flags(flags)  # -v, the sampling flags checked, the models resolved, the engine's flags
    large_path = Path(setup.large)
    name = alias or (str(large) if large is not None else large_path.stem)
    accepted = {name, str(large_path), large_path.name, large_path.stem} | ({str(large)} if large else set())
    config = ServeConfig(model_name=name, accepted_names=frozenset(accepted), api_key=api_key or None,
                         defaults=Defaults(temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed,
                                           max_tokens=None if n_predict == -1 else n_predict),
                         order=sampler_order)

    def load_engine() -> RastEngine:
        return setup.engine(n_seq_max=parallel)

    def describe(engine: RastEngine) -> str:
        alphas = ", ".join(f"{pair.alpha:g}" for pair in engine.pairs) or "none"
        return f", {len(engine.pairs)} pair(s), alpha {alphas}, {engine.n_seq_max} slots x {engine.n_ctx} tokens"

    run_server(load_engine, config, host=host, port=port, max_queue=max_queue, verbose=verbose, describe=describe)
