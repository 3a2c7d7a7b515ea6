"""`rast analyze`: the token-level view of the delta over a dataset (change rate, PCR, top tokens)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from rast_gguf.cli import options as o


def analyze_command(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="JSONL file of problems (question field), or "
                                           "toy:N for N held-out problems of the shipped toy task.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for analysis.{json,md,png}.")],
    large: o.Large = None, base: o.Base = None, tuned: o.Tuned = None,
    alpha: Annotated[float, typer.Option("--alpha", help="RAST alpha.")] = 1.0,
    large_rl: Annotated[Optional[Path], typer.Option("--large-rl", help="RL-trained large model: also report the "
                                                     "paper's PCR of the large base along its greedy path.",
                                                     show_default=False)] = None,
    template: Annotated[Optional[str], typer.Option("--template", help="Prompt with a {question} slot. [default: "
                                                    "the RAST paper's]", show_default=False)] = None,
    question_key: Annotated[str, typer.Option("--question-key", help="Field holding the question.")] = "question",
    answer_key: Annotated[str, typer.Option("--answer-key", help="Field holding the reference answer.")] = "answer",
    limit: Annotated[Optional[int], typer.Option("--limit", help="Use the first N problems only.",
                                                 show_default=False)] = None,
    top: Annotated[int, typer.Option("--top", help="Tokens listed per table.")] = 15,
    n_predict: o.NPredict = 512, ctx_size: o.CtxSize = 2048, n_gpu_layers: o.NGpuLayers = 0,
    threads: o.Threads = None, verbose: o.Verbose = False,
):
    """Where does the delta act? Greedy RAST over a dataset: how often it overrides the large model, the path
    coverage rate, and the tokens it promotes, displaces, raises and lowers most.

    Example: rast analyze toy:200 -o runs/toy-analysis
    """
    from rast_gguf import _llama
    from rast_gguf.analyze import analyze, markdown, write_analysis
    from rast_gguf.errors import UsageError
    from rast_gguf.evaluate import PAPER_TEMPLATE, load_dataset

    _llama.set_verbose(verbose)
    toy = re.fullmatch(r"toy(?::(\d+))?", dataset)
    if toy:
        from rast_gguf.demo import TEMPLATE, ToyTriple, toy_problems

        problems, template = toy_problems(int(toy.group(1) or 200)), template or TEMPLATE
        if large is None and not base and not tuned:
            triple = ToyTriple.shipped()
            large, base, tuned = triple.large, [triple.small_base], [triple.small_tuned]
            large_rl = large_rl or triple.large_rl
    else:
        problems = load_dataset(dataset, question_key=question_key, answer_key=answer_key, limit=limit)
        template = template or PAPER_TEMPLATE
    if large is None or len(base or []) != 1 or len(tuned or []) != 1:
        raise UsageError("give -m/--large and one pair --base S --tuned S_RL (only toy:N has default models)")
    if "{question}" not in template:
        raise UsageError("the prompt template needs a {question} slot")
    prompts = [template.format(question=p.question) for p in problems]
    analysis = analyze(str(large), str(base[0]), str(tuned[0]), prompts, alpha=alpha, max_tokens=n_predict, top=top,
                       large_rl=str(large_rl) if large_rl else None, n_ctx=ctx_size, n_threads=threads,
                       n_gpu_layers=n_gpu_layers)
    written = write_analysis(analysis, output)
    print(markdown(analysis))
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
