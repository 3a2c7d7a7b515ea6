"""Speed of RAST against the plainest llama.cpp loop, measured on the machine it runs on.

`run_bench(BenchSetup(...))` writes (or reuses) synthetic GGUF models of real shapes
(`rast_gguf.synth.SHAPES`: random weights, quantized as asked), then runs in one process, for each
batch width B of `parallel` (B sequences, each decoding one token per step):
- "plain": the large model alone in the plainest llama.cpp loop (`rast_gguf.bench_plain`: only
  llama-cpp-python calls, llama_decode + one greedy llama_sampler per row) - the reference every
  ratio is taken against; "plain3": the same loop over the three files (the pair's logits fetched,
  not combined): the floor of RAST's cost;
- "sched-alone" / "sched": the project's own scheduler path (`rast_gguf.scheduler`, the one
  `rast batch`, `rast eval` and the server use) with the large model alone / with the pair;
- at B=1 also the single-stream path of `rast generate`: "alone", "sequential" (RAST) and
  "overlap" (RAST, contexts decoded concurrently).
Each run decodes random-token prompts, then `n_gen` greedy tokens with EOS ignored; generation
tokens/s counts the steps where every sequence generates. Per run: ms per step, and the host
overhead over its reference (plain for the alone modes, plain3 for RAST); peak GPU memory (NVML)
and host memory (VmHWM). With the scheduler, two workloads more: "sharing" (8 samples of one prompt
vs 1: prompt tokens decoded and prefill time) and "mixed" (4B sequences whose max_tokens spread from
n_gen/16 to n_gen on B slots: slot occupancy, overall and over the steps while requests still wait,
and aggregate tokens/s against plain at B). With
torch present, the PyTorch + Transformers baseline runs last. Results are plain dicts (JSON-ready);
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
from rast_gguf.handles import FLASH_ATTN_TYPES
from rast_gguf.sampling import DeltaPair, SamplingParams
from rast_gguf.synth import SHAPES, write_synthetic_gguf

MODES = ("plain", "plain3", "alone", "sequential", "overlap", "sched-alone", "sched")
BATCH_MODES = ("plain", "plain3", "sched-alone", "sched")  # the ones that run at B > 1
REFERENCE = {"alone": "plain", "sched-alone": "plain", "sequential": "plain3", "overlap": "plain3", "sched": "plain3"}


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
    parallel: tuple[int, ...] = (1,)
    rpc: tuple[str, ...] = ()  # RPC servers for the large model's offloaded layers (in every mode, the plain loop's too)

    def label(self) -> str:
        where = "" if self.n_gpu_layers_small != 0 else ", pair on CPU"
        where += f", large model over RPC ({', '.join(self.rpc)})" if self.rpc else ""
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
    if setup.n_prompt < 1 or setup.n_gen < 2 or setup.n_repeat < 1:
        raise UsageError("--n-prompt and --repeat must be >= 1, --n-gen >= 2")
    if not setup.parallel or any(b < 1 for b in setup.parallel):
        raise UsageError("--parallel takes batch widths >= 1, e.g. 1,8,32")


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


def _prompts(setup: BenchSetup, n_seq: int, seed: int = 0) -> list[list[int]]:
    """Random ordinary-text token ids (away from bytes and specials), the same in every mode."""
    import random

    n = min(SHAPES[setup.large].n_real_vocab, SHAPES[setup.small].n_real_vocab)
    low = min(1000, n // 4)
    rng = random.Random(seed)
    return [[rng.randrange(low, n - low) for _ in range(setup.n_prompt)] for _ in range(n_seq)]


class _Memory:
    """Peak GPU memory (whole device, minus what was in use before) and peak host memory of one run."""

    def __init__(self):
        self.gpu_before = memory.gpu_used_bytes()
        self.gpu_peak = None
        memory.reset_peak_rss()

    def sample(self) -> None:  # call while the models are loaded
        self.gpu_peak = memory.gpu_used_bytes()

    def fields(self) -> dict:
        host = memory.peak_rss_bytes()
        gpu = None if self.gpu_peak is None or self.gpu_before is None else round((self.gpu_peak - self.gpu_before) / 2**20)
        return {"gpu_mib": gpu, "host_mib": round(host / 2**20) if host else None}


def _n_ctx(setup: BenchSetup) -> int:
    return setup.n_prompt + setup.n_gen + 16


def bench_plain_mode(setup: BenchSetup, mode: str, paths: tuple[Path, Path, Path], n_seq: int) -> dict:
    from rast_gguf.bench_plain import plain_loop

    files = paths[:1] if mode == "plain" else paths
    fa = FLASH_ATTN_TYPES[setup.flash_attn]
    devices = None
    if setup.rpc:
        from rast_gguf import rpc

        devices = rpc.model_devices(rpc.connect(setup.rpc))
    mem = _Memory()
    t_load = time.perf_counter()
    prompts = _prompts(setup, n_seq)
    plain_loop(files, [p[:32] for p in prompts], 4, n_ctx=_n_ctx(setup), n_batch=512,  # warm-up
               n_gpu_layers=setup.n_gpu_layers, n_threads=setup.n_threads, flash_attn=fa, devices_large=devices)
    t_load = time.perf_counter() - t_load
    result = plain_loop(files, prompts, setup.n_gen, n_ctx=_n_ctx(setup), n_batch=min(512, setup.n_prompt * n_seq),
                        n_gpu_layers=setup.n_gpu_layers, n_threads=setup.n_threads, flash_attn=fa,
                        n_repeat=setup.n_repeat, devices_large=devices)
    mem.sample()
    gc.collect()
    return {"mode": mode, "parallel": n_seq, "load_s": round(t_load, 2), **result, **mem.fields()}


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
    """The single-stream path (engine.feed + SamplerChain), batch 1."""
    large, tuned, base = paths
    pairs = [] if mode == "alone" else [DeltaPair(str(tuned), str(base), setup.alpha, setup.n_gpu_layers_small)]
    n_ctx = _n_ctx(setup)
    placed = [(large, setup.n_gpu_layers)] + [(p, setup.n_gpu_layers_small) for p in (tuned, base) if pairs]
    estimate = sum(memory.estimate(p, ngl, n_ctx, min(512, setup.n_prompt)).total for p, ngl in placed)
    mem = _Memory()
    t_load = time.perf_counter()
    with RastEngine(large, pairs, n_ctx=n_ctx, n_batch=min(512, setup.n_prompt), n_threads=setup.n_threads,
                    n_gpu_layers=setup.n_gpu_layers, flash_attn=setup.flash_attn,
                    overlap=(mode == "overlap"), rpc=list(setup.rpc)) as engine:
        t_load = time.perf_counter() - t_load
        prompt = _prompts(setup, 1)[0]
        _timed_run(engine, prompt[:32], 8)  # warm-up: CUDA graphs, allocations
        runs = [_timed_run(engine, prompt, setup.n_gen) for _ in range(setup.n_repeat)]
        mem.sample()
    gc.collect()
    fields = mem.fields()
    return {"mode": mode, "parallel": 1, "load_s": round(t_load, 2),
            "pp_tps": round(max(r[0] for r in runs), 1), "tg_tps": round(max(r[1] for r in runs), 1),
            "tg_tps_runs": [round(r[1], 1) for r in runs], **fields,
            "gpu_mib_estimated": None if fields["gpu_mib"] is None or not estimate else
            round((estimate + memory.CUDA_CONTEXT_BYTES) / 2**20)}  # what check_fits compared with free memory


def _sched_run(engine: RastEngine, requests: list, ) -> dict:
    """Run requests on a fresh Scheduler; generation tokens/s over the steps where all of the first
    n_slots sequences generate (from the last first token to the first end), plus the totals."""
    from rast_gguf.scheduler import Scheduler

    sched = Scheduler(engine)
    n_full = min(len(requests), engine.n_seq_max)
    started, marks = set(), {}
    n_tokens = 0

    def on_event(event) -> None:
        nonlocal n_tokens
        n_tokens += event.token >= 0
        if event.index not in started:
            started.add(event.index)
            if len(started) == n_full:
                marks["start"] = (time.perf_counter(), n_tokens)
        if event.finish_reason and "end" not in marks:
            marks["end"] = (time.perf_counter(), n_tokens)

    t0 = time.perf_counter()
    sched.submit(requests, on_event)
    sched.run_until_idle()
    seconds = time.perf_counter() - t0
    (t_start, n_start), (t_end, n_end) = marks["start"], marks["end"]
    stats = sched.stats
    return {"tg_tps": (n_end - n_start) / max(t_end - t_start, 1e-9) if n_end > n_start else 0.0,
            "prefill_s": t_start - t0, "seconds": seconds, "tokens": n_tokens, "stats": stats}


def bench_sched_mode(setup: BenchSetup, mode: str, paths: tuple[Path, Path, Path], n_seq: int,
                     extras: bool = False, log=print) -> list[dict]:
    """The scheduler path at B = n_seq; with extras the sharing and mixed-length workloads too."""
    from rast_gguf.scheduler import SeqRequest

    large, tuned, base = paths
    pairs = [] if mode == "sched-alone" else [DeltaPair(str(tuned), str(base), setup.alpha, setup.n_gpu_layers_small)]
    greedy = SamplingParams(temp=0, seed=0)
    n_batch = min(512, setup.n_prompt * n_seq)
    mem = _Memory()
    t_load = time.perf_counter()
    out = []
    with RastEngine(large, pairs, n_ctx=_n_ctx(setup), n_batch=n_batch, n_threads=setup.n_threads,
                    n_gpu_layers=setup.n_gpu_layers, flash_attn=setup.flash_attn, n_seq_max=n_seq,
                    rpc=list(setup.rpc)) as engine:
        t_load = time.perf_counter() - t_load
        prompts = _prompts(setup, n_seq)
        _sched_run(engine, [SeqRequest(tuple(p[:32]), greedy, 4, ignore_eos=True) for p in prompts])  # warm-up
        runs = [_sched_run(engine, [SeqRequest(tuple(p), greedy, setup.n_gen, ignore_eos=True) for p in prompts])
                for _ in range(setup.n_repeat)]
        mem.sample()
        best = max(runs, key=lambda r: r["tg_tps"])
        out.append({"mode": mode, "parallel": n_seq, "load_s": round(t_load, 2),
                    "pp_tps": round(setup.n_prompt * n_seq / best["prefill_s"], 1), "tg_tps": round(best["tg_tps"], 1),
                    "tg_tps_runs": [round(r["tg_tps"], 1) for r in runs], **mem.fields(),
                    "occupancy": round(best["stats"].occupancy, 3)})
        if extras:
            out.append(_sharing(engine, setup, greedy, log))
            out.append(_mixed(engine, setup, greedy, log))
    gc.collect()
    return out


def _sharing(engine: RastEngine, setup: BenchSetup, greedy: SamplingParams, log) -> dict:
    """Prefill of n samples of one prompt (n = min(8, slots)) against one: tokens decoded and time."""
    from rast_gguf.scheduler import SeqRequest

    n = min(8, engine.n_seq_max)
    prompt = tuple(_prompts(setup, 1, seed=7)[0])
    result = {"mode": "sharing", "parallel": engine.n_seq_max, "n_samples": n}
    for k in (1, n):
        runs = [_sched_run(engine, [SeqRequest(prompt, dataclasses.replace(greedy, seed=i), 2, ignore_eos=True)
                                    for i in range(k)]) for _ in range(setup.n_repeat)]
        best = min(runs, key=lambda r: r["prefill_s"])
        stats = best["stats"]
        result[f"n{k}"] = {"prefill_s": round(best["prefill_s"], 4), "prompt_tokens_requested": stats.prompt_tokens_requested,
                           "prompt_tokens_decoded": stats.prompt_tokens_decoded}
    result["prefill_ratio"] = round(result[f"n{n}"]["prefill_s"] / result["n1"]["prefill_s"], 3)
    log(f"shared prompt: {n} samples decode {result[f'n{n}']['prompt_tokens_decoded']} of "
        f"{result[f'n{n}']['prompt_tokens_requested']} prompt tokens; prefill {result['prefill_ratio']:.2f} x one sample's")
    return result


def _mixed(engine: RastEngine, setup: BenchSetup, greedy: SamplingParams, log) -> dict:
    """4 * slots sequences, max_tokens spread evenly from n_gen/16 to n_gen: submitted longest first
    (as rast batch does) and in a shuffled order (as a server may get them)."""
    import random

    from rast_gguf.scheduler import SeqRequest

    n_slots = engine.n_seq_max
    n = 4 * n_slots
    low = max(1, setup.n_gen // 16)
    lengths = sorted((low + (setup.n_gen - low) * i // max(1, n - 1) for i in range(n)), reverse=True)
    prompts = _prompts(setup, n, seed=11)
    result = {"mode": "mixed", "parallel": n_slots, "n_sequences": n, "max_tokens": [low, setup.n_gen]}
    for order in ("longest-first", "shuffled"):
        if order == "shuffled":
            random.Random(3).shuffle(lengths)
        run = _sched_run(engine, [SeqRequest(tuple(p[:max(8, setup.n_prompt // 4)]), greedy, m, ignore_eos=True)
                                  for p, m in zip(prompts, lengths)])
        key = "" if order == "longest-first" else "_shuffled"
        result.update({f"occupancy{key}": round(run["stats"].occupancy, 3),
                       f"occupancy_queued{key}": round(run["stats"].occupancy_queued, 3), f"tokens{key}": run["tokens"],
                       f"seconds{key}": round(run["seconds"], 3),
                       f"aggregate_tps{key}": round(run["tokens"] / run["seconds"], 1)})
    log(f"mixed lengths ({low}..{setup.n_gen}) on {n_slots} slots: occupancy {result['occupancy']:.3f} longest first, "
        f"{result['occupancy_shuffled']:.3f} shuffled (while requests wait: {result['occupancy_queued']:.3f} / "
        f"{result['occupancy_queued_shuffled']:.3f}; the rest is the run's tail, fewer sequences than slots); "
        f"{result['aggregate_tps']:.1f} tok/s over the whole run")
    return result


def _add_ratios(runs: list[dict]) -> None:
    """Ratios to plain (and to alone) at the same B, ms per step and host overhead over the reference."""
    by = {(r["mode"], r["parallel"]): r for r in runs if "tg_tps" in r}
    for r in runs:
        if "tg_tps" in r and r["tg_tps"] > 0:
            r["ms_per_step"] = round(1000 * r["parallel"] / r["tg_tps"], 4)
    for r in runs:
        b = r["parallel"]
        plain = by.get(("plain", b))
        if r["mode"] == "mixed" and plain:
            r["ratio_vs_plain"] = round(r["aggregate_tps"] / plain["tg_tps"], 3)
        if "tg_tps" not in r:
            continue
        if plain:
            r["tg_ratio_vs_plain"] = round(r["tg_tps"] / plain["tg_tps"], 3)
        alone = by.get(("alone" if b == 1 and ("alone", 1) in by else "sched-alone", b))
        if alone:
            r["tg_ratio_vs_alone"] = round(r["tg_tps"] / alone["tg_tps"], 3)
        ref = by.get((REFERENCE.get(r["mode"], ""), b))
        if ref and "ms_per_step" in ref and "ms_per_step" in r:
            r["overhead_ms_vs_" + ref["mode"]] = round(r["ms_per_step"] - ref["ms_per_step"], 4)


def run_bench(setup: BenchSetup, log=print) -> dict:
    """One configuration: every mode at every batch width, then the Transformers baseline when asked."""
    check_setup(setup)
    t0 = time.perf_counter()
    paths = synthetic_models(setup)
    log(f"models ready in {time.perf_counter() - t0:.0f} s: {', '.join(p.name for p in paths)}")
    memory.check_fits([(paths[0], setup.n_gpu_layers), (paths[1], setup.n_gpu_layers_small),
                       (paths[2], setup.n_gpu_layers_small)], n_ctx=_n_ctx(setup),
                      n_batch=min(512, setup.n_prompt))
    result = {"config": setup.label(), "setup": {k: str(v) if isinstance(v, Path) else v
                                                   for k, v in dataclasses.asdict(setup).items()},
              "files_mib": {p.name: round(p.stat().st_size / 2**20) for p in paths}, "runs": []}
    widest = max(setup.parallel)
    for n_seq in setup.parallel:
        for mode in setup.modes:
            if n_seq > 1 and mode not in BATCH_MODES:
                continue
            if mode in ("plain", "plain3"):
                runs = [bench_plain_mode(setup, mode, paths, n_seq)]
            elif mode in ("sched", "sched-alone"):
                runs = bench_sched_mode(setup, mode, paths, n_seq, extras=mode == "sched" and n_seq == widest, log=log)
            else:
                runs = [bench_engine(setup, mode, paths)]
            run = runs[0]
            log(f"{setup.label()}: B={n_seq:<3d} {mode:12s} pp {run['pp_tps']:8.1f} tok/s  tg {run['tg_tps']:8.1f} tok/s  "
                f"{1000 * n_seq / run['tg_tps']:.3f} ms/step  gpu {run['gpu_mib']} MiB  host {run['host_mib']} MiB")
            result["runs"].extend(runs)
    _add_ratios(result["runs"])
    if setup.transformers:
        from rast_gguf.bench_hf import bench_transformers

        hf = bench_transformers(setup)
        if hf is not None:
            log(f"{setup.label()}: transformers pp {hf['pp_tps']:8.1f} tok/s  tg {hf['tg_tps']:7.1f} tok/s  "
                f"gpu {hf['gpu_mib']} MiB")
            result["runs"].append({**hf, "parallel": 1})
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
        values = [next((r["tg_tps"] for r in res["runs"] if r["mode"] == mode and r.get("parallel", 1) == 1), None)
                  for res in results]
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
