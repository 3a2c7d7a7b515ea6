"""`rast bench`: the large model alone vs RAST (sequential and overlapped) on synthetic models of real
shapes, plus the PyTorch + Transformers baseline when torch is installed; table, JSON and plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from rast_gguf.cli import options as o


def bench_command(
    large: Annotated[list[str], typer.Option("--large", help="Large model shape (repeat for several configurations), e.g. qwen2.5-7b, qwen2.5-32b, llama-3.1-8b.")] = ["qwen2.5-7b"],
    small: Annotated[list[str], typer.Option("--small", help="Small pair shape, one per --large or one for all, e.g. qwen2.5-1.5b, qwen2.5-0.5b, llama-3.2-1b.")] = ["qwen2.5-1.5b"],
    quant_large: Annotated[str, typer.Option("--quant-large", help="llama.cpp type of the large model.")] = "q4_k_m",
    quant_small: Annotated[str, typer.Option("--quant-small", help="llama.cpp type of the small pair.")] = "q8_0",
    n_gpu_layers: o.NGpuLayers = -1, n_gpu_layers_small: o.NGpuLayersSmall = None,
    n_prompt: Annotated[int, typer.Option("-p", "--n-prompt", help="Prompt tokens (random ids).")] = 512,
    n_gen: Annotated[int, typer.Option("-n", "--n-gen", help="Generated tokens per run (EOS ignored).")] = 128,
    repeat: Annotated[int, typer.Option("-r", "--repeat", help="Timed runs per mode; the best is reported.")] = 2,
    modes: Annotated[str, typer.Option("--modes", help="Comma-separated: alone, sequential, overlap.")] = "alone,sequential,overlap",
    transformers: Annotated[bool, typer.Option("--transformers/--no-transformers", help="Also time the PyTorch + Transformers baseline (needs torch and a CUDA GPU).")] = True,
    workdir: Annotated[Path, typer.Option("--models-dir", help="Where synthetic models are written and reused.")] = Path("bench-models"),
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the results as JSON here.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG bar chart here (needs matplotlib).")] = None,
    from_json: Annotated[Optional[list[Path]], typer.Option("--from-json", help="Run nothing: merge the results of earlier --json files (repeat) into one table, JSON and plot.")] = None,
    threads: o.Threads = None, verbose: o.Verbose = False,
    speculative: Annotated[bool, typer.Option("--speculative", help="Also time speculative RAST: cycles at fixed accepted lengths on the synthetic models (tok/s per acceptance, beside the large model alone and RAST) and the real acceptance and speedup on the toy triple.")] = False,
    draft_lengths: Annotated[str, typer.Option("--draft-lengths", help="With --speculative: draft lengths k to time (comma-separated).")] = "1,2,3,4,6,8",
) -> None:
    """Time prompt processing and generation: large model alone, RAST sequential, RAST overlapped."""
    from rast_gguf import _llama
    from rast_gguf.bench import BenchSetup, load_results, run_bench, write_plot
    from rast_gguf.errors import UsageError

    if from_json:
        results = [res for path in from_json for res in load_results(path)]
        if json_out:
            json_out.write_text(json.dumps(results, indent=2))
        print(format_table(results))
        if plot:
            write_plot(results, plot)
        return
    _llama.set_verbose(verbose)
    if len(small) not in (1, len(large)):
        raise UsageError("give one --small for all configurations or one per --large")
    smalls = small * len(large) if len(small) == 1 else small
    results = []
    for large_shape, small_shape in zip(large, smalls):
        setup = BenchSetup(large=large_shape, small=small_shape, ftype_large=quant_large, ftype_small=quant_small,
                           n_gpu_layers=n_gpu_layers,
                           n_gpu_layers_small=n_gpu_layers if n_gpu_layers_small is None else n_gpu_layers_small,
                           n_prompt=n_prompt, n_gen=n_gen, n_repeat=repeat, n_threads=threads, workdir=workdir,
                           modes=tuple(m.strip() for m in modes.split(",") if m.strip()), transformers=transformers)
        if speculative:
            from rast_gguf.bench_spec import cycle_bench

            ks = tuple(int(k) for k in draft_lengths.split(",") if k.strip())
            results.append({"speculative": cycle_bench(setup, ks=ks)})
        else:
            results.append(run_bench(setup))
        if json_out:  # after every configuration, so a cut-off run keeps what it measured
            json_out.write_text(json.dumps(results, indent=2))
    if speculative:
        from rast_gguf.bench_spec import toy_acceptance

        results.append({"toy_triple": toy_acceptance(n_threads=threads)})
        if json_out:
            json_out.write_text(json.dumps(results, indent=2))
        print(format_speculative(results))
        return
    print(format_table(results))
    if plot:
        write_plot(results, plot)


def format_table(results: list[dict]) -> str:
    rows = ["| configuration | mode | prompt tok/s | gen tok/s | gen vs alone | GPU MiB | host MiB |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for res in results:
        for r in res["runs"]:
            ratio = r.get("tg_ratio_vs_alone")
            rows.append(f"| {res['config']} | {r['mode']} | {r['pp_tps']:.0f} | {r['tg_tps']:.1f} | "
                        f"{'' if ratio is None else f'{ratio:.2f}'} | {r['gpu_mib'] if r['gpu_mib'] is not None else ''} | "
                        f"{r['host_mib'] if r['host_mib'] is not None else ''} |")
    return "\n".join(rows)


def format_speculative(results: list[dict]) -> str:
    rows = ["| configuration | mode | acceptance | best k | tok/s | vs large alone | vs RAST |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for res in results:
        spec = res.get("speculative")
        if not spec:
            continue
        rows.append(f"| {spec['config']} | large alone | | | {spec['alone_tps']:.1f} | 1.00 | |")
        rows.append(f"| {spec['config']} | RAST | | | {spec['rast_tps']:.1f} | {spec['rast_tps'] / spec['alone_tps']:.2f} | 1.00 |")
        for mode, data in spec["modes"].items():
            for r in data["by_acceptance"]:
                rows.append(f"| {spec['config']} | {mode} (forced acceptance) | {r['acceptance']:.1f} | {r['k']} | "
                            f"{r['tps']:.1f} | {r['vs_alone']:.2f} | {r['vs_rast']:.2f} |")
    for res in results:
        for r in res.get("toy_triple", []):
            rows.append(f"| toy triple, alpha {r['alpha']:g} | speculative RAST (measured) | {r['acceptance']:.2f} | | "
                        f"{r['speculative_tps']:.1f} | {r['speculative_vs_alone']:.2f} | {r['speedup_vs_rast']:.2f} |")
    return "\n".join(rows)
