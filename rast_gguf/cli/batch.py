"""`rast batch`: JSONL prompts in, JSONL completions out, several sequences in parallel; resumable;
`--shard I/N` runs one share of the records, `rast batch merge` joins the shards' outputs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

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
    rpc: o.Rpc = None, rpc_small: o.RpcSmall = None, tensor_split: o.TensorSplit = None,
    flash_attn: o.FlashAttn = o.FLASH_ATTN, temp: o.Temp = o.TEMP, top_k: o.TopK = o.TOP_K, top_p: o.TopP = o.TOP_P,
    min_p: o.MinP = o.MIN_P, seed: Annotated[int, typer.Option("-s", "--seed", help="Seed; each sample's own seed is derived from it, the "
                                      "record id and the sample index, so runs repeat exactly.")] = 0,
    sampler_order: o.SamplerOrder = o.ORDER, convert_type: o.ConvertType = o.CONVERT_TYPE, verbose: o.Verbose = False,
    overlap: o.Overlap = False,
    shard: Annotated[Optional[str], typer.Option(
        "--shard", metavar="I/N", show_default=False,
        help="Run only shard I of N (I from 0 to N-1), a fixed share of the records chosen by a hash of their id; "
             "auto/N takes I from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX. Writes OUT.shard-I-of-N.jsonl "
             "(or OUT with {i} and {n} filled in); join the shards with rast batch merge.")] = None,
):
    """Generate completions for every record of a JSONL file (-c is the context of each sequence).

    Example: rast batch problems.jsonl -o answers.jsonl -m Qwen/Qwen2.5-7B-GGUF:Q4_K_M
    --base Qwen2.5-1.5B-Q8_0.gguf --tuned SimpleRL-1.5B-Q8_0.gguf -np 8 -n 1024 --temp 1.0 --top-p 0.95

    Sharded over a job array: rast batch problems.jsonl -o answers.jsonl --shard auto/8 ... in each task,
    then rast batch merge answers.shard-*.jsonl -o answers.jsonl --input problems.jsonl
    """
    from rast_gguf.batch import run_batch
    from rast_gguf.jsonl import read_records

    flags = locals()
    sampling = sampling_from_flags(flags)
    records, problems = read_records(input_path, sampling, n_predict)
    where = ""
    if shard is not None:
        from rast_gguf.shard import Shard, check_output_belongs, select_records, shard_output_path

        this_shard = Shard.parse(shard)
        n_input = len(records)
        records = select_records(records, this_shard)
        output = shard_output_path(output, this_shard)
        if not overwrite:  # --overwrite empties the file anyway
            check_output_belongs(output, this_shard)
        where = f" (shard {this_shard}: {len(records)} of {n_input} records)"
    with from_flags(flags, sampling=sampling).engine(n_seq_max=parallel) as engine:
        summary = run_batch(engine, records, output, problems=problems, strict=strict, progress=progress,
                            input_path=input_path, overwrite=overwrite)
    skipped = f", {len(summary.bad_lines)} bad lines skipped" if summary.bad_lines else ""
    print(f"{output}{where}: wrote {summary.n_written} records ({summary.n_resumed} already there{skipped}) | "
          f"{summary.generated_tokens} tokens in {summary.seconds:.1f} s, {summary.tokens_per_second:.1f} tokens/s",
          file=sys.stderr)


def merge_command(
    shards: Annotated[list[Path], typer.Argument(
        metavar="SHARD.jsonl...", help="The outputs of rast batch --shard runs (e.g. answers.shard-*.jsonl).",
        show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="The merged results (written whole, atomically).")],
    input_path: Annotated[Optional[Path], typer.Option(
        "--input", metavar="IN.jsonl", show_default=False,
        help="The batch input: every record's id must be in exactly one shard output, and the merged file "
             "follows its order. Without it only duplicates and absent shard files are found.")] = None,
    allow_missing: Annotated[bool, typer.Option(
        "--allow-missing", help="Write the merge even when input ids are missing (they are listed on stderr); "
                                "duplicated ids are always an error.")] = False,
):
    """Join the outputs of sharded batch runs into one file, checking each id is there exactly once.

    Example: rast batch merge answers.shard-*.jsonl -o answers.jsonl --input problems.jsonl
    """
    from rast_gguf.jsonl import parse_lines
    from rast_gguf.sampling import SamplingParams
    from rast_gguf.shard import merge_shards

    input_ids = None
    if input_path is not None:
        try:
            lines = input_path.read_bytes().splitlines()
        except OSError as e:
            from rast_gguf.errors import RastError

            raise RastError(f"cannot read the batch input {input_path}: {e.strerror or e}") from None
        records, _ = parse_lines(lines, SamplingParams(seed=0), 1)
        input_ids = [r.key for r in records]
    summary = merge_shards(shards, output, input_ids=input_ids, allow_missing=allow_missing)
    if summary.missing:
        shown = ", ".join(summary.missing[:10]) + (f" and {len(summary.missing) - 10} more"
                                                    if len(summary.missing) > 10 else "")
        print(f"warning: {len(summary.missing)} input ids are in no shard output: {shown}", file=sys.stderr)
    print(f"{output}: {summary.n_records} records from {summary.n_files} shard outputs", file=sys.stderr)
