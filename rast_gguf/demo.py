"""`rast demo`: RAST in miniature on the triple that ships with the package, no download.

The shipped models (rast_gguf/data/, made by recipes/toy_reasoning) were pretrained on sums of four
numbers with mixed solution styles, so the bases mostly guess the answer directly and are often
wrong; RL taught the small model to work the sum out. `run_demo` first solves a few held-out
problems with the large base alone and with RAST (tokens coloured by how the small pair's delta
moved them, as `rast generate --show-delta` does), then prints the accuracy of every configuration
on held-out problems, greedy: small base, small tuned, large base, large + RAST at several alphas,
and the large model after the same RL.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from rast_gguf import toy_task
from rast_gguf.errors import UsageError

DATA_DIR = Path(__file__).resolve().parent / "data"
TEMPLATE = "Q: {question}\n"
DEMO_ALPHAS = (0.5, 1.0, 1.5, 2.0)
MAX_TOKENS = 96


@dataclass(frozen=True)
class ToyTriple:
    large: Path
    small_base: Path
    small_tuned: Path
    large_rl: Path

    @classmethod
    def shipped(cls, root: Path = DATA_DIR) -> "ToyTriple":
        triple = cls(root / "toy-large.gguf", root / "toy-small-base.gguf", root / "toy-small-tuned.gguf",
                     root / "toy-large-rl.gguf")
        missing = [p.name for p in (triple.large, triple.small_base, triple.small_tuned, triple.large_rl)
                   if not p.is_file()]
        if missing:
            raise UsageError(f"the shipped toy models are missing from {root} ({', '.join(missing)}); "
                             "reinstall rast-gguf or rebuild them with recipes/toy_reasoning")
        return triple


def toy_problems(n: int, seed: int = 0):
    """`n` held-out toy problems as evaluation problems (question text, answer)."""
    from rast_gguf.evaluate import EvalProblem

    return [EvalProblem(f"toy-{seed}-{i}", p.question, str(p.answer))
            for i, p in enumerate(toy_task.problems(seed, n, held_out=True))]


def toy_grader(completion: str, answer: str) -> bool:
    """Right when the completion's `Answer: N` line holds the answer (no other number counts)."""
    return toy_task.extract_answer(completion) == int(answer)


def toy_configs(triple: ToyTriple, alphas: Sequence[float]):
    from rast_gguf.evaluate import EvalConfig

    pair = (str(triple.small_tuned), str(triple.small_base))
    return [EvalConfig("small base", str(triple.small_base)), EvalConfig("small tuned", str(triple.small_tuned)),
            EvalConfig("large base", str(triple.large)),
            *[EvalConfig(f"large + RAST a={a:g}", str(triple.large), pair, float(a)) for a in alphas],
            EvalConfig("large RL", str(triple.large_rl))]


def show_solutions(triple: ToyTriple, problems, *, alpha: float, color: bool, out: TextIO,
                   n_threads: int | None, n_gpu_layers: int = 0, placement: dict | None = None) -> None:
    from rast_gguf.delta_view import colorize, legend
    from rast_gguf.engine import RastEngine
    from rast_gguf.generate import stream_generate
    from rast_gguf.sampling import DeltaPair, SamplingParams

    greedy = SamplingParams(temp=0.0, seed=0)
    pair = DeltaPair(str(triple.small_tuned), str(triple.small_base), alpha, n_gpu_layers)
    with RastEngine(triple.large, [pair], n_ctx=256, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                    **(placement or {})) as engine:
        if color:
            print(legend(color), file=out)
        for problem in problems:
            prompt = TEMPLATE.format(question=problem.question)
            print(f"\n{prompt.strip()}   (answer {problem.answer})", file=out)
            for label, a in (("large base", 0.0), (f"large + RAST a={alpha:g}", alpha)):
                engine.set_alpha(a)
                pieces = [colorize(r.text, r.delta, color and a != 0.0)
                          for r in stream_generate(engine, prompt, max_tokens=MAX_TOKENS, sampling=greedy,
                                                   track_delta=a != 0.0)]
                text = "".join(pieces)
                mark = "right" if toy_grader(text, problem.answer) else "wrong"
                print(f"  {label:<18} [{mark}] {text.strip()}", file=out)


def run_demo(*, triple: ToyTriple | None = None, n_show: int = 3, n_eval: int = 200,
             alphas: Sequence[float] = DEMO_ALPHAS, show_alpha: float = 1.0, seed: int = 0,
             n_threads: int | None = 1, n_parallel: int = 16, color: bool = False, out: TextIO = sys.stdout,
             n_gpu_layers: int = 0, placement: dict | None = None):
    """Print the worked examples and the accuracy table; returns the evaluation report. `n_gpu_layers`
    and `placement` (RastEngine's rpc / rpc_small / tensor_split) place the models as in every engine."""
    from rast_gguf.evaluate import evaluate, markdown_table

    triple = triple or ToyTriple.shipped()
    problems = toy_problems(max(n_show, n_eval), seed)
    if n_show:
        print(f"Held-out problems, greedy decoding (RAST: large + {show_alpha:g} * (small tuned - small base)):",
              file=out)
        show_solutions(triple, problems[:n_show], alpha=show_alpha, color=color, out=out, n_threads=n_threads,
                       n_gpu_layers=n_gpu_layers, placement=placement)
    if not n_eval:
        return None
    print(f"\nAccuracy on {n_eval} held-out problems (greedy):", file=out)
    with tempfile.TemporaryDirectory(prefix="rast-demo-") as tmp:
        report = evaluate(toy_configs(triple, alphas), problems[:n_eval], tmp, template=TEMPLATE, n=1,
                          max_tokens=MAX_TOKENS, n_parallel=n_parallel, n_ctx=256, n_threads=n_threads,
                          n_gpu_layers=n_gpu_layers, placement=placement, progress=False, grader=toy_grader, dataset_name="toy sums")
    print(markdown_table(report), file=out)
    return report
