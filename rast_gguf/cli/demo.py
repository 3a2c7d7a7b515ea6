"""`rast demo`: the shipped toy triple solving held-out problems, then the accuracy table."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from rast_gguf.cli import options as o


def demo_command(
    show: Annotated[int, typer.Option("--show", help="Problems solved on screen, large base vs RAST.")] = 3,
    problems: Annotated[int, typer.Option("--problems", help="Held-out problems in the accuracy table (0: none).")] = 200,
    alpha: Annotated[Optional[list[float]], typer.Option("--alpha", help="RAST alphas in the table; repeatable. "
                                                         "[default: 0.5 1 1.5 2]", show_default=False)] = None,
    show_alpha: Annotated[float, typer.Option("--show-alpha", help="Alpha of the solutions shown.")] = 1.0,
    seed: Annotated[int, typer.Option("-s", "--seed", help="Which held-out problems (a seed of the generator).")] = 0,
    parallel: Annotated[int, typer.Option("-np", "--parallel", help="Sequences decoded together.")] = 16,
    threads: Annotated[int, typer.Option("-t", "--threads", help="CPU threads per model (the models are tiny: "
                                         "more threads mostly add synchronisation).")] = 1,
    color: Annotated[Optional[bool], typer.Option("--color/--no-color", help="Colour tokens by the delta. "
                                                  "[default: on a terminal]", show_default=False)] = None,
    n_gpu_layers: o.NGpuLayers = 0,
    rpc: o.Rpc = None, rpc_small: o.RpcSmall = None, tensor_split: o.TensorSplit = None,
    verbose: o.Verbose = False,
):
    """See RAST work on the small trained triple shipped with the package (no download, ~1 minute on 2 cores).

    The models solve sums of four numbers: the bases mostly guess the answer, RL taught the small
    model to work it out, and RAST carries that to the large model at decode time.
    """
    from rast_gguf import _llama
    from rast_gguf.cli.models import placement
    from rast_gguf.delta_view import use_color
    from rast_gguf.demo import DEMO_ALPHAS, run_demo
    from rast_gguf.errors import UsageError

    _llama.set_verbose(verbose)
    if show < 0 or problems < 0:
        raise UsageError("--show and --problems must be >= 0")
    run_demo(n_show=show, n_eval=problems, alphas=tuple(alpha or DEMO_ALPHAS), show_alpha=show_alpha, seed=seed,
             n_threads=threads, n_parallel=parallel, color=use_color(sys.stdout) if color is None else color,
             n_gpu_layers=n_gpu_layers, placement=placement(rpc, rpc_small, tensor_split))
