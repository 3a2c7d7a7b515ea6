"""`rast bench`: RAST and the large model alone through the project's paths against the plainest
llama.cpp loop, at batch 1 and at --parallel B, on synthetic models of real shapes, plus the PyTorch +
Transformers baseline when torch is installed; table, JSON and plot."""

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
    modes: Annotated[str, typer.Option("--modes", help="Comma-separated: plain, plain3, alone, sequential, overlap, sched-alone, sched.")] = "plain,plain3,alone,sequential,overlap,sched-alone,sched",
    parallel: Annotated[str, typer.Option("-np", "--parallel", help="Comma-separated batch widths B (sequences decoding together), e.g. 1,8,32; at B > 1 only plain, plain3, sched-alone and sched run.")] = "1",
    transformers: Annotated[bool, typer.Option("--transformers/--no-transformers", help="Also time the PyTorch + Transformers baseline (needs torch and a CUDA GPU).")] = True,
    workdir: Annotated[Path, typer.Option("--models-dir", help="Where synthetic models are written and reused.")] = Path("bench-models"),
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the results as JSON here.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG bar chart here (needs matplotlib).")] = None,
    from_json: Annotated[Optional[list[Path]], typer.Option("--from-json", help="Run nothing: merge the results of earlier --json files (repeat) into one table, JSON and plot.")] = None,
    threads: o.Threads = None, flash_attn: o.FlashAttn = o.FLASH_ATTN, verbose: o.Verbose = False,
    rpc: o.Rpc = None,
    speculative: Annotated[bool, typer.Option("--speculative", help="Also time speculative RAST: cycles at fixed accepted lengths on the synthetic models and on the toy triple (tok/s per acceptance, beside the large model alone and RAST) and the real acceptance and speedup on the toy triple.")] = False,
    draft_lengths: Annotated[str, typer.Option("--draft-lengths", help="With --speculative: draft lengths k to time (comma-separated).")] = "1,2,3,4,6,8",
) -> None:
    """Time prompt processing and generation against the plain llama.cpp loop: large alone and RAST, batch 1 and --parallel B."""
    from rast_gguf import _llama
    from rast_gguf.bench import BenchSetup, load_results, run_bench, write_plot
    from rast_gguf.errors import UsageError
    from rast_gguf.rpc import parse_endpoints

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
    try:
        widths = tuple(int(b) for b in parallel.split(",") if b.strip())
    except ValueError:
        raise UsageError(f"--parallel takes comma-separated integers, e.g. 1,8,32; got {parallel!r}") from None
    results = []
    for large_shape, small_shape in zip(large, smalls):
        setup = BenchSetup(large=large_shape, small=small_shape, ftype_large=quant_large, ftype_small=quant_small,
                           n_gpu_layers=n_gpu_layers,
                           n_gpu_layers_small=n_gpu_layers if n_gpu_layers_small is None else n_gpu_layers_small,
                           n_prompt=n_prompt, n_gen=n_gen, n_repeat=repeat, n_threads=threads, flash_attn=flash_attn,
                           workdir=workdir,
                           modes=tuple(m.strip() for m in modes.split(",") if m.strip()), transformers=transformers,
                           parallel=widths, rpc=tuple(parse_endpoints(rpc)))
        if speculative:
            from rast_gguf.bench_spec import cycle_bench

            ks = tuple(int(k) for k in draft_lengths.split(",") if k.strip())
            results.append({"speculative": cycle_bench(setup, ks=ks)})
        else:
            results.append(run_bench(setup))
        if json_out:  # after every configuration, so a cut-off run keeps what it measured
            json_out.write_text(json.dumps(results, indent=2))
    if speculative:
        from rast_gguf.bench_spec import toy_acceptance, toy_cycle_bench

        results.append({"toy_triple": toy_acceptance(n_threads=threads)})
        results.append({"speculative": toy_cycle_bench(ks=tuple(int(k) for k in draft_lengths.split(",") if k.strip()),
                                                       n_threads=threads, n_gpu_layers=n_gpu_layers)})
        if json_out:
            json_out.write_text(json.dumps(results, indent=2))
        print(format_speculative(results))
        return
    print(format_table(results))
    if plot:
        write_plot(results, plot)


def _cell(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def format_table(results: list[dict]) -> str:
    """Every run with its ratios; then the shared-prompt and mixed-length workloads."""
    rows = ["| configuration | B | mode | prompt tok/s | gen tok/s | ms/step | vs plain | overhead ms/step | "
            "vs alone | GPU MiB | host MiB |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    extra = []
    for res in results:
        for r in res["runs"]:
            if r["mode"] == "sharing":
                n = r["n_samples"]
                extra.append(f"{res['config']}: shared prompt, {n} samples vs 1: prompt tokens decoded "
                             f"{r[f'n{n}']['prompt_tokens_decoded']} of {r[f'n{n}']['prompt_tokens_requested']} "
                             f"(1 sample: {r['n1']['prompt_tokens_decoded']}), prefill time {r['prefill_ratio']:.2f} x")
                continue
            if r["mode"] == "mixed":
                extra.append(f"{res['config']}: mixed max_tokens {r['max_tokens'][0]}..{r['max_tokens'][1]}, "
                             f"{r['n_sequences']} sequences on {r['parallel']} slots: occupancy {r['occupancy']:.3f} longest first "
                             f"({r['occupancy_shuffled']:.3f} shuffled), "
                             f"{r['aggregate_tps']:.1f} tok/s aggregate"
                             + (f" = {r['ratio_vs_plain']:.2f} x plain at B={r['parallel']}" if "ratio_vs_plain" in r else ""))
                continue
            overhead = next((v for k, v in r.items() if k.startswith("overhead_ms_vs_")), None)
            ref = next((k[len("overhead_ms_vs_"):] for k in r if k.startswith("overhead_ms_vs_")), "")
            rows.append(f"| {res['config']} | {r.get('parallel', 1)} | {r['mode']} | {r['pp_tps']:.0f} | {r['tg_tps']:.1f} | "
                        f"{_cell(r.get('ms_per_step'), '.3f')} | {_cell(r.get('tg_ratio_vs_plain'), '.2f')} | "
                        f"{'' if overhead is None else f'{overhead:+.3f} (vs {ref})'} | "
                        f"{_cell(r.get('tg_ratio_vs_alone'), '.2f')} | {_cell(r.get('gpu_mib'), '')} | "
                        f"{_cell(r.get('host_mib'), '')} |")
    return "\n".join(rows + ([""] + extra if extra else []))


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
