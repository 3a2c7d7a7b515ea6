"""Speed of RAST against the large model alone, measured on the machine it runs on.

`run_bench(BenchSetup(...))` writes (or reuses) synthetic GGUF models of real shapes
(`rast_gguf.synth.SHAPES`: random weights, quantized as asked), then runs in one process: the large
model alone through the same llama.cpp build and decode loop, RAST with the contexts decoded one
after another, and RAST overlapped (`RastEngine(overlap=True)`). Each run reads a prompt of random
tokens (prompt processing tokens/s) and then generates `n_gen` greedy tokens with EOS ignored
(generation tokens/s); peak GPU memory (NVML, whole device, minus what was in use before) and peak
host memory (VmHWM) are taken per run. With torch present, the same three-model logit arithmetic in
PyTorch + Transformers (bf16, KV cache, random weights from the same configs) runs last as the
baseline a researcher would otherwise write. Results are plain dicts (JSON-ready);
`write_plot` draws them (matplotlib, optional).
"""

from __future__ import annotations

import dataclasses
import gc
import time
from pathlib import Path

from rast_gguf import memory
from rast_gguf.engine import RastEngine
from rast_gguf.errors import UsageError
from rast_gguf.sampling import DeltaPair, SamplingParams
from rast_gguf.synth import SHAPES, write_synthetic_gguf

MODES = ("alone", "sequential", "overlap")


@dataclasses.dataclass
class BenchSetup:
    large: str = "qwen2.5-7b"
    small: str = "qwen2.5-1.5b"
    ftype_large: str = "q4_k_m"
    ftype_small: str = "q8_0"
    n_gpu_layers: int = -1
    n_gpu_layers_small: int = -1
    n_prompt: int = 512
    n_gen: int = 128
    n_repeat: int = 2
    alpha: float = 1.0
    n_threads: int | None = None
    flash_attn: str = "auto"
    workdir: Path = Path("bench-models")
    modes: tuple[str, ...] = MODES
    transformers: bool = True

    def label(self) -> str:
        where = "" if self.n_gpu_layers_small != 0 else ", pair on CPU"
        return f"{self.large} {self.ftype_large} + {self.small} {self.ftype_small}{where}"


def check_setup(setup: BenchSetup) -> None:
    for name in (setup.large, setup.small):
        if name not in SHAPES:
            raise UsageError(f"unknown model shape '{name}'; choose one of: {', '.join(s for s in SHAPES if not s.startswith('tiny'))}")
    large, small = SHAPES[setup.large], SHAPES[setup.small]
    if large.arch != small.arch or large.n_real_vocab != small.n_real_vocab:
        raise UsageError(f"{setup.large} and {setup.small} do not share a vocabulary; pair shapes of one family")
    for mode in setup.modes:
        if mode not in MODES:
            raise UsageError(f"unknown mode '{mode}'; choose from {', '.join(MODES)}")
    if setup.n_prompt < 1 or setup.n_gen < 1 or setup.n_repeat < 1:
        raise UsageError("--n-prompt, --n-gen and --repeat must be >= 1")


def synthetic_models(setup: BenchSetup) -> tuple[Path, Path, Path]:
    """(large, tuned, base) files in setup.workdir, written once and reused (the names say the shape)."""
    setup.workdir.mkdir(parents=True, exist_ok=True)

    def model(shape: str, ftype: str, seed: int, derive_from: int | None = None) -> Path:
        path = setup.workdir / f"{shape}-{ftype}-s{seed}.gguf"
        if not path.exists():
            write_synthetic_gguf(path, SHAPES[shape], seed=seed, ftype=ftype, fast_random=True,
                                 derive_from=derive_from, name=f"rast-bench-{shape}")
        return path

    return (model(setup.large, setup.ftype_large, 1), model(setup.small, setup.ftype_small, 3, derive_from=2),
            model(setup.small, setup.ftype_small, 2))


def _timed_run(engine: RastEngine, prompt: list[int], n_gen: int) -> tuple[float, float]:
    """(prompt tokens/s, generation tokens/s) of one prompt + n_gen greedy tokens, EOS ignored."""
    engine.reset()
    chain = engine.sampler(SamplingParams(temp=0))
    try:
        t0 = time.perf_counter()
        engine.feed(prompt)
        token = chain.sample(-1)  # waits for the prompt's logits: prompt processing ends here
        t1 = time.perf_counter()
        for _ in range(n_gen - 1):
            engine.feed([token])
            token = chain.sample(-1)
        t2 = time.perf_counter()
    finally:
        chain.close()
    return len(prompt) / (t1 - t0), (n_gen - 1) / (t2 - t1)


def bench_engine(setup: BenchSetup, mode: str, paths: tuple[Path, Path, Path]) -> dict:
    large, tuned, base = paths
    pairs = [] if mode == "alone" else [DeltaPair(str(tuned), str(base), setup.alpha, setup.n_gpu_layers_small)]
    n_ctx = setup.n_prompt + setup.n_gen + 16
    placed = [(large, setup.n_gpu_layers)] + [(p, setup.n_gpu_layers_small) for p in (tuned, base) if pairs]
    estimate = sum(memory.estimate(p, ngl, n_ctx, min(512, setup.n_prompt)).total for p, ngl in placed)
    gpu_before = memory.gpu_used_bytes()
    memory.reset_peak_rss()
    t_load = time.perf_counter()
    with RastEngine(large, pairs, n_ctx=n_ctx, n_batch=min(512, setup.n_prompt), n_threads=setup.n_threads,
                    n_gpu_layers=setup.n_gpu_layers, flash_attn=setup.flash_attn,
                    overlap=(mode == "overlap")) as engine:
        t_load = time.perf_counter() - t_load
        import random

        rng = random.Random(0)
        low = min(1000, engine.n_shared // 4)  # ordinary text tokens: away from bytes and specials
        prompt = [rng.randrange(low, engine.n_shared - low) for _ in range(setup.n_prompt)]
        _timed_run(engine, prompt[:32], 8)  # warm-up: CUDA graphs, allocations
        runs = [_timed_run(engine, prompt, setup.n_gen) for _ in range(setup.n_repeat)]
        gpu_peak = memory.gpu_used_bytes()
    host_peak = memory.peak_rss_bytes()
    gc.collect()
    return {"mode": mode, "load_s": round(t_load, 2),
            "pp_tps": round(max(r[0] for r in runs), 1), "tg_tps": round(max(r[1] for r in runs), 1),
            "tg_tps_runs": [round(r[1], 1) for r in runs],
            "gpu_mib": None if gpu_peak is None or gpu_before is None else round((gpu_peak - gpu_before) / 2**20),
            "gpu_mib_estimated": None if gpu_peak is None or not estimate else
            round((estimate + memory.CUDA_CONTEXT_BYTES) / 2**20),  # what check_fits compared with free memory
            "host_mib": round(host_peak / 2**20) if host_peak else None}


def run_bench(setup: BenchSetup, log=print) -> dict:
    """One configuration: every mode, then the Transformers baseline when asked and available."""
    check_setup(setup)
    t0 = time.perf_counter()
    paths = synthetic_models(setup)
    log(f"models ready in {time.perf_counter() - t0:.0f} s: {', '.join(p.name for p in paths)}")
    memory.check_fits([(paths[0], setup.n_gpu_layers), (paths[1], setup.n_gpu_layers_small),
                       (paths[2], setup.n_gpu_layers_small)], n_ctx=setup.n_prompt + setup.n_gen + 16,
                      n_batch=min(512, setup.n_prompt))
    result = {"config": setup.label(), "setup": {k: str(v) if isinstance(v, Path) else v
                                                   for k, v in dataclasses.asdict(setup).items()},
              "files_mib": {p.name: round(p.stat().st_size / 2**20) for p in paths}, "runs": []}
    for mode in setup.modes:
        run = bench_engine(setup, mode, paths)
        log(f"{setup.label()}: {mode:10s} pp {run['pp_tps']:8.1f} tok/s  tg {run['tg_tps']:7.1f} tok/s  "
            f"gpu {run['gpu_mib']} MiB (estimated {run['gpu_mib_estimated']})  host {run['host_mib']} MiB")
        result["runs"].append(run)
    alone = next((r for r in result["runs"] if r["mode"] == "alone"), None)
    if alone:
        for r in result["runs"]:
            r["tg_ratio_vs_alone"] = round(r["tg_tps"] / alone["tg_tps"], 3)
    if setup.transformers:
        from rast_gguf.bench_hf import bench_transformers

        hf = bench_transformers(setup)
        if hf is not None:
            log(f"{setup.label()}: transformers pp {hf['pp_tps']:8.1f} tok/s  tg {hf['tg_tps']:7.1f} tok/s  "
                f"gpu {hf['gpu_mib']} MiB")
            result["runs"].append(hf)
    return result


def load_results(path: Path) -> list[dict]:
    """The configurations a `rast bench --json` file holds (for merging runs made apart)."""
    import json

    try:
        results = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file; give a JSON file written by rast bench --json") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a rast bench JSON file ({e})") from None
    if not isinstance(results, list) or not all(isinstance(r, dict) and "config" in r and "runs" in r
                                                for r in results):
        raise UsageError(f"{path}: not a rast bench JSON file (expected a list of configurations with runs)")
    return results


def write_plot(results: list[dict], path: Path) -> Path:
    """Bar chart of generation tokens/s per configuration and mode (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise UsageError("the plot needs matplotlib: pip install 'rast-gguf[plot]' (or omit --plot)") from e
    modes = [m for m in (*MODES, "transformers") if any(r["mode"] == m for res in results for r in res["runs"])]
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(results)), 4.5))
    width = 0.8 / len(modes)
    for j, mode in enumerate(modes):
        values = [next((r["tg_tps"] for r in res["runs"] if r["mode"] == mode), None) for res in results]
        bars = ax.bar([i + j * width for i in range(len(results))], [v or 0 for v in values], width, label=mode)
        ax.bar_label(bars, labels=["" if v is None else f"{v:.0f}" for v in values], fontsize=7)  # not run: no bar
    ax.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(results))])
    ax.set_xticklabels([res["config"].replace(" + ", "\n+ ") for res in results], fontsize=7)
    ax.set_ylabel("generation tokens/s (batch 1)")
    ax.legend(fontsize=8)
    ax.set_title("rast bench: large model alone vs RAST")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
