"""`rast generate`: one raw-text prompt; the completion on stdout, stats on stderr."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from rast_gguf.cli import options as o
from rast_gguf.cli.models import placement, resolve_models


def generate_command(
    prompt: Annotated[str, typer.Option("-p", "--prompt", help="Prompt, tokenized as raw text (no chat template).")],
    large: o.Large = None, base: o.Base = None, tuned: o.Tuned = None, alpha: o.Alpha = None,
    n_predict: o.NPredict = 256, ctx_size: o.CtxSize = 4096, batch_size: o.BatchSize = 512,
    n_gpu_layers: o.NGpuLayers = 0, n_gpu_layers_small: o.NGpuLayersSmall = None, threads: o.Threads = None,
    rpc: o.Rpc = None, rpc_small: o.RpcSmall = None, tensor_split: o.TensorSplit = None,
    temp: o.Temp = 0.8, top_k: o.TopK = 40, top_p: o.TopP = 0.95, min_p: o.MinP = 0.05,
    seed: o.Seed = 0xFFFFFFFF, sampler_order: o.SamplerOrder = "llama",
    stop: Annotated[Optional[list[str]], typer.Option("--stop", help="Stop string; repeatable.")] = None,
    verbose: o.Verbose = False, overlap: o.Overlap = False,
):
    """Generate a completion with RAST.

    Example: rast generate -m Qwen2.5-7B-Q4_K_M.gguf --base Qwen2.5-1.5B-Q8_0.gguf
    --tuned Qwen2.5-1.5B-SimpleRL-Zoo-Q8_0.gguf --alpha 1.0 -p "Question: ..." -n 512 --temp 0
    """
    from rast_gguf import _llama
    from rast_gguf.engine import RastEngine
    from rast_gguf.generate import stream_generate
    from rast_gguf.sampling import SamplingParams

    _llama.set_verbose(verbose)
    sampling = SamplingParams(temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed, order=sampler_order)
    large_path, pairs = resolve_models(large, base, tuned, alpha, n_gpu_layers, n_gpu_layers_small)
    last = None
    with RastEngine(large_path, pairs, n_ctx=ctx_size, n_batch=batch_size, n_threads=threads,
                    n_gpu_layers=n_gpu_layers, **placement(rpc, rpc_small, tensor_split),
                    overlap=overlap) as engine:
        for last in stream_generate(engine, prompt, max_tokens=n_predict, sampling=sampling, stop=stop or ()):
            sys.stdout.write(last.text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    print(f"prompt: {last.prompt_tokens} tokens, {last.prompt_tps:.1f} tokens/s | generation: "
          f"{last.generation_tokens} tokens, {last.generation_tps:.1f} tokens/s | finish: {last.finish_reason} | "
          f"seed: {sampling.resolved_seed}", file=sys.stderr)
