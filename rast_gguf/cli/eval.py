"""`rast eval`: accuracy and pass@k of large alone, small alone and RAST at each alpha, side by side."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from rast_gguf.cli import datasets as d
from rast_gguf.cli import options as o
from rast_gguf.cli.models import placement


def eval_command(
    dataset: d.Dataset,
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for results.{json,md,png} and the samples; "
                                         "an existing one is resumed.")],
    large: o.Large = None, base: o.Base = None, tuned: o.Tuned = None,
    alpha: Annotated[Optional[list[float]], typer.Option("--alpha", help="RAST alpha; repeat to compare several. "
                                                         "[default: 1.0]", show_default=False)] = None,
    large_rl: d.LargeRL = None,
    small_alone: Annotated[bool, typer.Option("--small/--no-small", help="Also evaluate the small models alone.")] = True,
    samples: Annotated[int, typer.Option("--samples", help="Samples per problem (pass@k up to this k).")] = 1,
    template: d.Template = None, question_key: d.QuestionKey = "question", answer_key: d.AnswerKey = "answer",
    limit: d.Limit = None,
    stop: Annotated[Optional[list[str]], typer.Option("--stop", help="Stop string; repeatable.")] = None,
    parallel: Annotated[int, typer.Option("-np", "--parallel", help="Sequences decoded together.")] = 8,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr.")] = True,
    rpc: o.Rpc = None, rpc_small: o.RpcSmall = None, tensor_split: o.TensorSplit = None,
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
    from rast_gguf.evaluate import evaluate, markdown_table, standard_configs, write_report
    from rast_gguf.sampling import SamplingParams

    _llama.set_verbose(verbose)
    if seed == 0xFFFFFFFF:
        raise UsageError("an evaluation needs a fixed --seed so that a resumed run makes the same samples")
    sampling = SamplingParams(temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed, order=sampler_order)
    work = d.resolve_workload(dataset, template=template, question_key=question_key, answer_key=answer_key,
                              limit=limit, toy_default_n=500, large=large, base=base, tuned=tuned, large_rl=large_rl)
    optional = lambda path: str(path) if path else None  # noqa: E731
    configs = standard_configs(str(work.large), optional(work.base), optional(work.tuned), alpha or [1.0],
                               large_rl=optional(work.large_rl), small_alone=small_alone)
    report = evaluate(configs, work.problems, output, template=work.template, n=samples, sampling=sampling,
                      max_tokens=n_predict, stop=stop or (), n_parallel=parallel, n_ctx=ctx_size, n_threads=threads,
                      n_gpu_layers=n_gpu_layers, progress=progress, grader=work.grader, dataset_name=work.name,
                      placement=placement(rpc, rpc_small, tensor_split))
    written = write_report(report, output)
    print(markdown_table(report))
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
