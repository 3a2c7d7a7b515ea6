"""`rast eval`: accuracy and pass@k of large alone, small alone and RAST at each alpha, side by side."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from rast_gguf.cli import options as o


def eval_command(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="JSONL file of problems (question, answer), or "
                                           "toy:N for N held-out problems of the shipped toy task.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for results.{json,md,png} and the samples; "
                                         "an existing one is resumed.")],
    large: o.Large = None, base: o.Base = None, tuned: o.Tuned = None,
    alpha: Annotated[Optional[list[float]], typer.Option("--alpha", help="RAST alpha; repeat to compare several. "
                                                         "[default: 1.0]", show_default=False)] = None,
    large_rl: Annotated[Optional[Path], typer.Option("--large-rl", help="Also evaluate this model alone (e.g. the "
                                                     "RL-trained large model).", show_default=False)] = None,
    small_alone: Annotated[bool, typer.Option("--small/--no-small", help="Also evaluate the small models alone.")] = True,
    samples: Annotated[int, typer.Option("--samples", help="Samples per problem (pass@k up to this k).")] = 1,
    template: Annotated[Optional[str], typer.Option("--template", help="Prompt with a {question} slot. [default: "
                                                    "the RAST paper's]", show_default=False)] = None,
    question_key: Annotated[str, typer.Option("--question-key", help="Field holding the question.")] = "question",
    answer_key: Annotated[str, typer.Option("--answer-key", help="Field holding the reference answer.")] = "answer",
    limit: Annotated[Optional[int], typer.Option("--limit", help="Use the first N problems only.",
                                                 show_default=False)] = None,
    stop: Annotated[Optional[list[str]], typer.Option("--stop", help="Stop string; repeatable.")] = None,
    parallel: Annotated[int, typer.Option("-np", "--parallel", help="Sequences decoded together.")] = 8,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr.")] = True,
    n_predict: o.NPredict = 1024, ctx_size: o.CtxSize = 2048, n_gpu_layers: o.NGpuLayers = 0,
    threads: o.Threads = None, temp: o.Temp = 0.0, top_k: o.TopK = 0, top_p: o.TopP = 1.0, min_p: o.MinP = 0.0,
    seed: o.Seed = 0, sampler_order: o.SamplerOrder = "reference", verbose: o.Verbose = False,
):
    """Evaluate decoding configurations on a dataset: answers extracted (\\boxed{}, ####, last number) and graded
    by mathematical equivalence; pass@k with the unbiased estimator.

    Example: rast eval math500.jsonl -o runs/math500 -m Qwen2.5-7B-Q8_0.gguf --base Qwen2.5-1.5B-Q8_0.gguf
    --tuned SimpleRL-1.5B-Q8_0.gguf --alpha 0.5 --alpha 1 --samples 8 --temp 1 --top-p 0.95 -n 2048
    """
    from rast_gguf import _llama
    from rast_gguf.errors import UsageError
    from rast_gguf.evaluate import PAPER_TEMPLATE, evaluate, load_dataset, markdown_table, standard_configs, write_report
    from rast_gguf.sampling import SamplingParams

    _llama.set_verbose(verbose)
    if seed == 0xFFFFFFFF:
        raise UsageError("an evaluation needs a fixed --seed so that a resumed run makes the same samples")
    sampling = SamplingParams(temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed, order=sampler_order)
    alphas = alpha or [1.0]
    grader = None
    toy = re.fullmatch(r"toy(?::(\d+))?", dataset)
    if toy:
        from rast_gguf.demo import TEMPLATE, ToyTriple, toy_grader, toy_problems

        problems = toy_problems(int(toy.group(1) or 500))
        template, grader, name = template or TEMPLATE, toy_grader, "toy sums"
        if large is None and not base and not tuned:
            triple = ToyTriple.shipped()
            large, base, tuned = triple.large, [triple.small_base], [triple.small_tuned]
            large_rl = large_rl or triple.large_rl
    else:
        problems = load_dataset(dataset, question_key=question_key, answer_key=answer_key, limit=limit)
        template, name = template or PAPER_TEMPLATE, Path(dataset).stem
    if large is None:
        raise UsageError("give the large model with -m/--large (only toy:N has default models)")
    if len(base or []) != len(tuned or []) or len(base or []) > 1:
        raise UsageError("give at most one pair: --base S --tuned S_RL")
    configs = standard_configs(str(large), str(base[0]) if base else None, str(tuned[0]) if tuned else None, alphas,
                               large_rl=str(large_rl) if large_rl else None, small_alone=small_alone)
    report = evaluate(configs, problems, output, template=template, n=samples, sampling=sampling,
                      max_tokens=n_predict, stop=stop or (), n_parallel=parallel, n_ctx=ctx_size, n_threads=threads,
                      n_gpu_layers=n_gpu_layers, progress=progress, grader=grader, dataset_name=name)
    written = write_report(report, output)
    print(markdown_table(report))
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
