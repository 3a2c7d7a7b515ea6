"""`rast batch`: JSONL prompts in, JSONL completions out, several sequences in parallel; resumable."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rast_gguf.cli import options as o
from rast_gguf.cli.models import resolve_models


def batch_command(
    input_path: Annotated[Path, typer.Argument(
        metavar="IN.jsonl", help="One record per line: id, prompt or messages, optional n, max_tokens, stop, alpha, "
                                 "temp, top_k, top_p, min_p, seed.")],
    output: Annotated[Path, typer.Option(
        "-o", "--output", help="Results, one line per record; an existing file is resumed (records already there "
                               "are not decoded again).")],
    parallel: Annotated[int, typer.Option("-np", "--parallel", help="Sequences decoded together in each context.")] = 4,
    strict: Annotated[bool, typer.Option("--strict", help="Abort on the first bad input line, before decoding.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Discard the records already in the output (made "
                                            "with other settings) instead of resuming.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress",
                                           help="Show a progress bar on stderr (when it is a terminal).")] = True,
    large: o.Large = None, base: o.Base = None, tuned: o.Tuned = None, alpha: o.Alpha = None,
    n_predict: o.NPredict = 256, ctx_size: o.CtxSize = 4096, batch_size: o.BatchSize = 512,
    n_gpu_layers: o.NGpuLayers = 0, n_gpu_layers_small: o.NGpuLayersSmall = None, threads: o.Threads = None,
    temp: o.Temp = 0.8, top_k: o.TopK = 40, top_p: o.TopP = 0.95, min_p: o.MinP = 0.05,
    seed: Annotated[int, typer.Option("-s", "--seed", help="Seed; each sample's own seed is derived from it, the "
                                      "record id and the sample index, so runs repeat exactly.")] = 0,
    sampler_order: o.SamplerOrder = "llama", verbose: o.Verbose = False, overlap: o.Overlap = False,
):
    """Generate completions for every record of a JSONL file (-c is the context of each sequence).

    Example: rast batch problems.jsonl -o answers.jsonl -m Qwen/Qwen2.5-7B-GGUF:Q4_K_M
    --base Qwen2.5-1.5B-Q8_0.gguf --tuned SimpleRL-1.5B-Q8_0.gguf -np 8 -n 1024 --temp 1.0 --top-p 0.95
    """
    from rast_gguf import _llama
    from rast_gguf.batch import run_batch
    from rast_gguf.engine import RastEngine
    from rast_gguf.jsonl import read_records
    from rast_gguf.sampling import SamplingParams

    _llama.set_verbose(verbose)
    sampling = SamplingParams(temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed, order=sampler_order)
    records, problems = read_records(input_path, sampling, n_predict)
    large_path, pairs = resolve_models(large, base, tuned, alpha, n_gpu_layers, n_gpu_layers_small)
    with RastEngine(large_path, pairs, n_ctx=ctx_size, n_batch=batch_size, n_threads=threads,
                    n_gpu_layers=n_gpu_layers, n_seq_max=parallel, overlap=overlap) as engine:
        summary = run_batch(engine, records, output, problems=problems, strict=strict, progress=progress,
                            input_path=input_path, overwrite=overwrite)
    skipped = f", {len(summary.bad_lines)} bad lines skipped" if summary.bad_lines else ""
    print(f"{output}: wrote {summary.n_written} records ({summary.n_resumed} already there{skipped}) | "
          f"{summary.generated_tokens} tokens in {summary.seconds:.1f} s, {summary.tokens_per_second:.1f} tokens/s",
          file=sys.stderr)
