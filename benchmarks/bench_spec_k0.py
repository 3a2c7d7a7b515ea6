"""A speculative cycle that drafts nothing (k = 0) against a plain RAST step, phase by phase.

Where drafting does not pay, `--draft auto` runs such cycles; they should cost what a plain step
does. This times, on the bench's synthetic models (`rast_gguf.bench.synthetic_models`: real shapes,
random weights), N plain steps (engine.feed + SamplerChain.sample) and N k = 0 cycles of the
speculator (with the drafter's decode inside the verify round, as on a GPU, and after it, as on a
CPU), greedy and with llama.cpp's default sampling chain, and prints the median milliseconds of
each with its parts: for a cycle, drafting + verifying (the decodes, synchronised) + host work
after the large model's logits are there.

    python benchmarks/bench_spec_k0.py -ngl 99                       # on a GPU (7B + 0.5B)
    python benchmarks/bench_spec_k0.py -ngl 0 --large qwen2.5-1.5b --small qwen2.5-0.5b -t 16
"""

from __future__ import annotations

import llama_cpp  # noqa: F401

import argparse
import random
import statistics
import time
from pathlib import Path

from rast_gguf import DeltaPair, RastEngine, SamplingParams
from rast_gguf.bench import BenchSetup, synthetic_models
from rast_gguf.speculative import DraftParams, make_speculator


def plain_steps(engine, prompt, sampling, n):
    """Median (step, feed, sample) seconds of n plain RAST steps after the prompt."""
    engine.reset()
    engine.feed(prompt)
    chain = engine.sampler(sampling)
    try:
        token = chain.sample(-1)
        rows = []
        for _ in range(n):
            t0 = time.perf_counter()
            engine.feed([token])
            t1 = time.perf_counter()
            token = chain.sample(-1)
            rows.append((time.perf_counter() - t0, t1 - t0))
    finally:
        chain.close()
    rows = rows[n // 10:]  # warmed up
    step, feed = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
    return step, feed, step - feed


def k0_cycles(engine, prompt, sampling, n, eager):
    """Median (cycle, drafting, verifying, host) seconds of n speculative cycles with no drafts."""
    engine.reset()
    engine.feed(prompt[:-1])
    spec = make_speculator(engine, sampling, eager, False)
    try:
        spec.start(prompt)
        rows = []
        for _ in range(n):
            t0 = time.perf_counter()
            result = spec.cycle(0, 0.0, 0, 1, 4)
            rows.append((time.perf_counter() - t0, result[3], result[4]))
    finally:
        spec.close()
    rows = rows[n // 10:]
    cycle, draft, verify = (statistics.median(r[i] for r in rows) for i in range(3))
    return cycle, draft, verify, cycle - draft - verify


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--large", default="qwen2.5-7b")
    ap.add_argument("--small", default="qwen2.5-0.5b")
    ap.add_argument("-ngl", "--n-gpu-layers", type=int, default=-1)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("-p", "--prompt", type=int, default=512)
    ap.add_argument("-n", "--steps", type=int, default=200)
    ap.add_argument("--models-dir", default="/tmp/bm")
    args = ap.parse_args()
    setup = BenchSetup(large=args.large, small=args.small, workdir=Path(args.models_dir))
    large, tuned, base = synthetic_models(setup)
    pair = DeltaPair(str(tuned), str(base), 1.0, args.n_gpu_layers)
    rng = random.Random(0)
    kwargs = dict(n_ctx=args.prompt + args.steps + 16, n_batch=min(512, args.prompt), n_threads=args.threads,
                  n_gpu_layers=args.n_gpu_layers)
    for label, sampling in (("greedy", SamplingParams(temp=0)), ("sampled", SamplingParams(seed=1))):
        with RastEngine(large, [pair], draft=DraftParams("tuned", n_max=0, adaptive=False), **kwargs) as engine:
            low = min(1000, engine.n_shared // 4)  # as the bench's prompts
            prompt = [rng.randrange(low, engine.n_shared - low) for _ in range(args.prompt)]
            step, feed, sample = plain_steps(engine, prompt, sampling, args.steps)
            print(f"{label:8s} plain RAST step                         {1e3 * step:7.3f} ms  (feed {1e3 * feed:.3f}, sample {1e3 * sample:.3f})")
            for eager in (True, False):
                cycle, draft, verify, host = k0_cycles(engine, prompt, sampling, args.steps, eager)
                where = "in the verify round" if eager else "before the verify  "
                print(f"{label:8s} k = 0 cycle, drafter {where} {1e3 * cycle:7.3f} ms  "
                      f"(draft {1e3 * draft:.3f}, verify {1e3 * verify:.3f}, host {1e3 * host:.3f})", flush=True)


if __name__ == "__main__":
    main()
