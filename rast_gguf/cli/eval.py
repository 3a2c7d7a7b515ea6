"""`rast eval`: accuracy and pass@k of large alone, small alone and RAST at each alpha, side by side."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from rast_gguf.cli import datasets as d
from rast_gguf.cli import options as o


def eval_command(
    dataset: d.Dataset,
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for results.{json,md,png} and the samples; "
                                         "an existing one is resumed.")],
    large: o.Large = None, base: o.Base = None, tuned: o.Tuned = None,
    alpha: Annotated[Optional[list[float]], typer.Option("--alpha", help="Alphas to compare: each is evaluated as "
                                                         "its own RAST configuration, side by side (unlike generate, "
                                                         "where repeated --alpha values go one per pair). "
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
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Discard the samples already in the folder (made "
                                            "with other settings) instead of resuming.")] = False,
    n_predict: o.NPredict = 1024, ctx_size: o.CtxSize = 2048, n_gpu_layers: o.NGpuLayers = 0,
    threads: o.Threads = None, flash_attn: o.FlashAttn = o.FLASH_ATTN,
    # an evaluation defaults to the RAST paper's decoding (greedy, no truncation, temperature first), not to
    # SamplingParams' chat defaults
    temp: o.Temp = 0.0, top_k: o.TopK = 0, top_p: o.TopP = 1.0, min_p: o.MinP = 0.0,
    seed: o.Seed = 0, sampler_order: o.SamplerOrder = "reference", convert_type: o.ConvertType = o.CONVERT_TYPE,
    verbose: o.Verbose = False,
):
    """Evaluate decoding configurations on a dataset: answers extracted (\\boxed{}, ####, last number) and graded
    by mathematical equivalence; pass@k with the unbiased estimator.

    Example: rast eval math500.jsonl -o runs/math500 -m Qwen2.5-7B-Q8_0.gguf --base Qwen2.5-1.5B-Q8_0.gguf
    --tuned SimpleRL-1.5B-Q8_0.gguf --alpha 0.5 --alpha 1 --samples 8 --temp 1 --top-p 0.95 -n 2048
    """
    from rast_gguf.cli.engine_setup import from_flags
    from rast_gguf.errors import UsageError
    from rast_gguf.evaluate import evaluate, markdown_table, standard_configs, write_report

    if seed == 0xFFFFFFFF:
        raise UsageError("an evaluation needs a fixed --seed so that a resumed run makes the same samples")
    setup = from_flags(locals(), models=False)  # the models: dataset defaults, resolved below
    sampling = setup.sampling
    work = d.resolve_workload(dataset, template=template, question_key=question_key, answer_key=answer_key,
                              limit=limit, toy_default_n=500, large=large, base=base, tuned=tuned, large_rl=large_rl,
                              convert_type=convert_type)
    optional = lambda path: str(path) if path else None  # noqa: E731
    configs = standard_configs(str(work.large), optional(work.base), optional(work.tuned), alpha or [1.0],
                               large_rl=optional(work.large_rl), small_alone=small_alone)
    report = evaluate(configs, work.problems, output, template=work.template, n=samples, sampling=sampling,
                      max_tokens=n_predict, stop=stop or (), n_parallel=parallel, n_ctx=ctx_size, n_threads=threads,
                      n_gpu_layers=n_gpu_layers, flash_attn=flash_attn, progress=progress, grader=work.grader,
                      dataset_name=work.name, overwrite=overwrite, placement=setup.placement)
    written = write_report(report, output)
    print(markdown_table(report))
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
