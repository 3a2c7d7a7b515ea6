"""`rast batch`: JSONL prompts in, JSONL completions out, several sequences in parallel; resumable."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rast_gguf.cli import options as o
from rast_gguf.cli.engine_setup import from_flags, sampling_from_flags


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
    flash_attn: o.FlashAttn = o.FLASH_ATTN, temp: o.Temp = o.TEMP, top_k: o.TopK = o.TOP_K, top_p: o.TopP = o.TOP_P,
    min_p: o.MinP = o.MIN_P, seed: Annotated[int, typer.Option("-s", "--seed", help="Seed; each sample's own seed is derived from it, the "
                                      "record id and the sample index, so runs repeat exactly.")] = 0,
    sampler_order: o.SamplerOrder = o.ORDER, convert_type: o.ConvertType = o.CONVERT_TYPE, verbose: o.Verbose = False,
    overlap: o.Overlap = False,
):
    """Generate completions for every record of a JSONL file (-c is the context of each sequence).

    Example: rast batch problems.jsonl -o answers.jsonl -m Qwen/Qwen2.5-7B-GGUF:Q4_K_M
    --base Qwen2.5-1.5B-Q8_0.gguf --tuned SimpleRL-1.5B-Q8_0.gguf -np 8 -n 1024 --temp 1.0 --top-p 0.95
    """
    from rast_gguf.batch import run_batch
    from rast_gguf.jsonl import read_records

    flags = locals()
    sampling = sampling_from_flags(flags)
    records, problems = read_records(input_path, sampling, n_predict)
    with from_flags(flags, sampling=sampling).engine(n_seq_max=parallel) as engine:
        summary = run_batch(engine, records, output, problems=problems, strict=strict, progress=progress,
                            input_path=input_path, overwrite=overwrite)
    skipped = f", {len(summary.bad_lines)} bad lines skipped" if summary.bad_lines else ""
    print(f"{output}: wrote {summary.n_written} records ({summary.n_resumed} already there{skipped}) | "
          f"{summary.generated_tokens} tokens in {summary.seconds:.1f} s, {summary.tokens_per_second:.1f} tokens/s",
          file=sys.stderr)
