"""`rast analyze`: the token-level view of the delta over a dataset (change rate, PCR, top tokens)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rast_gguf.cli import datasets as d
from rast_gguf.cli import options as o


def analyze_command(
    dataset: d.Dataset,
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for analysis.{json,md,png}.")],
    large: o.Large = None, base: o.Base = None, tuned: o.Tuned = None,
    alpha: Annotated[float, typer.Option("--alpha", help="RAST alpha (one value).")] = 1.0,
    large_rl: d.LargeRL = None, template: d.Template = None, question_key: d.QuestionKey = "question",
    answer_key: d.AnswerKey = "answer", limit: d.Limit = None,
    top: Annotated[int, typer.Option("--top", help="Tokens listed per table.")] = 15,
    rpc: o.Rpc = None, rpc_small: o.RpcSmall = None, tensor_split: o.TensorSplit = None,
    n_predict: o.NPredict = 512, ctx_size: o.CtxSize = 2048, n_gpu_layers: o.NGpuLayers = 0,
    threads: o.Threads = None, flash_attn: o.FlashAttn = o.FLASH_ATTN, convert_type: o.ConvertType = o.CONVERT_TYPE,
    verbose: o.Verbose = False,
):
    """Where does the delta act? Greedy RAST over a dataset: how often it overrides the large model, the path
    coverage rate, and the tokens it promotes, displaces, raises and lowers most.

    Example: rast analyze toy:200 -o runs/toy-analysis
    """
    from rast_gguf.analyze import analyze, markdown, write_analysis
    from rast_gguf.cli.engine_setup import from_flags
    from rast_gguf.errors import UsageError

    setup = from_flags(locals(), models=False)  # -v, --rpc/-ts; the models come from the dataset's defaults below
    work = d.resolve_workload(dataset, template=template, question_key=question_key, answer_key=answer_key,
                              limit=limit, toy_default_n=200, large=large, base=base, tuned=tuned, large_rl=large_rl,
                              convert_type=convert_type)
    if work.base is None:
        raise UsageError("give one pair --base S --tuned S_RL to analyze (only toy:N has default models)")
    prompts = [work.template.format(question=p.question) for p in work.problems]
    analysis = analyze(str(work.large), str(work.base), str(work.tuned), prompts, alpha=alpha, max_tokens=n_predict,
                       top=top, large_rl=str(work.large_rl) if work.large_rl else None, n_ctx=ctx_size,
                       n_threads=threads, n_gpu_layers=n_gpu_layers, flash_attn=flash_attn,
                       placement=setup.placement)
    written = write_analysis(analysis, output)
    print(markdown(analysis))
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
