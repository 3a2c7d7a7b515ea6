"""The dataset and model arguments shared by `rast eval` and `rast analyze`.

DATASET is a JSONL file of problems or `toy:N` (N held-out problems of the shipped toy task, whose
shipped triple is then the default when no models are given). Model arguments may be paths or hub
references, as everywhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from rast_gguf.errors import UsageError

Dataset = Annotated[str, typer.Argument(metavar="DATASET", help="JSONL file of problems (question, answer), or "
                                        "toy:N for N held-out problems of the shipped toy task.")]
LargeRL = Annotated[Optional[Path], typer.Option("--large-rl", help="RL-trained large model: evaluated alone, and "
                                                 "the base's path coverage along its greedy output.",
                                                 show_default=False)]
Template = Annotated[Optional[str], typer.Option("--template", help="Prompt with a {question} slot. [default: "
                                                 "the RAST paper's]", show_default=False)]
QuestionKey = Annotated[str, typer.Option("--question-key", help="Field holding the question.")]
AnswerKey = Annotated[str, typer.Option("--answer-key", help="Field holding the reference answer.")]
Limit = Annotated[Optional[int], typer.Option("--limit", help="Use the first N problems only.", show_default=False)]


@dataclass
class Workload:
    problems: list
    template: str
    name: str
    grader: Callable[[str, str], bool] | None
    large: Path
    base: Path | None
    tuned: Path | None
    large_rl: Path | None


def resolve_workload(dataset: str, *, template: str | None, question_key: str, answer_key: str, limit: int | None,
                     toy_default_n: int, large: Path | None, base: list[Path] | None, tuned: list[Path] | None,
                     large_rl: Path | None, convert_type: str | None = None) -> Workload:
    from rast_gguf.evaluate import PAPER_TEMPLATE, load_dataset
    from rast_gguf.hub import resolve_model_ref

    base, tuned, grader = base or [], tuned or [], None
    toy = re.fullmatch(r"toy(?::(\d+))?", dataset)
    if toy:
        from rast_gguf.demo import TEMPLATE, ToyTriple, toy_grader, toy_problems

        problems, template, grader, name = toy_problems(int(toy.group(1) or toy_default_n)), template or TEMPLATE, \
            toy_grader, "toy sums"
        if large is None and not base and not tuned:
            triple = ToyTriple.shipped()
            large, base, tuned = triple.large, [triple.small_base], [triple.small_tuned]
            large_rl = large_rl or triple.large_rl
    else:
        problems = load_dataset(dataset, question_key=question_key, answer_key=answer_key, limit=limit)
        template, name = template or PAPER_TEMPLATE, Path(dataset).stem
    if large is None:
        raise UsageError("give the large model with -m/--large (only toy:N has default models)")
    if len(base) != len(tuned) or len(base) > 1:
        raise UsageError("give at most one pair: --base S --tuned S_RL")
    if "{question}" not in template:
        raise UsageError("the prompt template needs a {question} slot")
    resolve = lambda ref: resolve_model_ref(ref, convert_type) if ref is not None else None  # noqa: E731
    return Workload(problems, template, name, grader, resolve(large), resolve(base[0] if base else None),
                    resolve(tuned[0] if tuned else None), resolve(large_rl))
