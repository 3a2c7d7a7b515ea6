"""`rast generate`: one raw-text prompt; the completion on stdout, stats on stderr."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from rast_gguf.cli import options as o
from rast_gguf.cli.engine_setup import from_flags


def generate_command(
    prompt: Annotated[str, typer.Option("-p", "--prompt", help="Prompt, tokenized as raw text (no chat template).")],
    large: o.Large = None, base: o.Base = None, tuned: o.Tuned = None, alpha: o.Alpha = None,
    n_predict: o.NPredict = 256, ctx_size: o.CtxSize = 4096, batch_size: o.BatchSize = 512,
    n_gpu_layers: o.NGpuLayers = 0, n_gpu_layers_small: o.NGpuLayersSmall = None, threads: o.Threads = None,
    rpc: o.Rpc = None, rpc_small: o.RpcSmall = None, tensor_split: o.TensorSplit = None,
    flash_attn: o.FlashAttn = o.FLASH_ATTN, temp: o.Temp = o.TEMP, top_k: o.TopK = o.TOP_K, top_p: o.TopP = o.TOP_P,
    min_p: o.MinP = o.MIN_P, seed: o.Seed = o.SEED, sampler_order: o.SamplerOrder = o.ORDER,
    stop: Annotated[Optional[list[str]], typer.Option("--stop", help="Stop string; repeatable.")] = None,
    ignore_eos: o.IgnoreEos = False, convert_type: o.ConvertType = o.CONVERT_TYPE, verbose: o.Verbose = False,
    overlap: o.Overlap = False,
    draft: o.Draft = o.DRAFT, draft_max: o.DraftMax = 8, draft_min: o.DraftMin = 0, draft_p_min: o.DraftPMin = 0.0,
):
    """Generate a completion with RAST.

    Example: rast generate -m Qwen2.5-7B-Q4_K_M.gguf --base Qwen2.5-1.5B-Q8_0.gguf
    --tuned Qwen2.5-1.5B-SimpleRL-Zoo-Q8_0.gguf --alpha 1.0 -p "Question: ..." -n 512 --temp 0
    """
    from rast_gguf.generate import stream_generate

    setup = from_flags(locals())
    sampling, last = setup.sampling, None
    with setup.engine() as engine:
        for last in stream_generate(engine, prompt, max_tokens=n_predict, sampling=sampling, stop=stop or (),
                                    ignore_eos=ignore_eos):
            sys.stdout.write(last.text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    print(f"prompt: {last.prompt_tokens} tokens, {last.prompt_tps:.1f} tokens/s | generation: "
          f"{last.generation_tokens} tokens, {last.generation_tps:.1f} tokens/s | finish: {last.finish_reason} | "
          f"seed: {sampling.resolved_seed}" + (f" | {last.speculative.line()}" if last.speculative else ""),
          file=sys.stderr)
