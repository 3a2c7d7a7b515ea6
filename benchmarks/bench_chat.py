"""Chat turn cost as a conversation grows: per turn, the conversation's length, how many prompt tokens
were decoded and how long the prompt took (it must not grow with the conversation); then the cost
of --show-delta's per-step stats (generation tokens/s with and without them).

    python benchmarks/bench_chat.py [-m LARGE --base BASE --tuned TUNED] [--turns 8] [-n 64] [-t 2]

Without models it writes the tiny synthetic test triple into a temporary directory.
"""

import llama_cpp  # noqa: F401

import argparse
import tempfile
import time
from pathlib import Path

from rast_gguf import DeltaPair, RastEngine, SamplingParams
from rast_gguf.chat import ChatSession


def synthetic_triple(root: Path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_triple

    t = make_triple(root)
    return t.large, t.base, t.tuned


def run_turns(engine, args, track_delta):
    session = ChatSession(engine, sampling=SamplingParams(temp=0), max_tokens=args.n_predict,
                          ignore_eos=True, track_delta=track_delta)
    rows = []
    for turn in range(args.turns):
        t0 = time.perf_counter()
        stream = session.stream_turn(f"Question {turn}: what comes next after {turn}?")
        next(stream)
        first_token_s = time.perf_counter() - t0
        for _ in stream:
            pass
        rows.append((turn + 1, session.last.prompt_tokens, session.last.prompt_decoded, first_token_s,
                     session.last.generation_tps))
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("-m", "--large")
    p.add_argument("--base")
    p.add_argument("--tuned")
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("-n", "--n-predict", type=int, default=64)
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("-c", "--ctx-size", type=int, default=8192)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.large:
            large, base, tuned = args.large, args.base, args.tuned
        else:
            large, base, tuned = synthetic_triple(Path(tmp))
        with RastEngine(large, [DeltaPair(str(tuned), str(base))], n_ctx=args.ctx_size,
                        n_threads=args.threads) as engine:
            rows = run_turns(engine, args, track_delta=False)
            print("turn  conversation  decoded  time-to-first-token  gen tokens/s")
            for turn, n_prompt, n_decoded, ttft, tps in rows:
                print(f"{turn:4d}  {n_prompt:12d}  {n_decoded:7d}  {ttft * 1e3:16.1f} ms  {tps:12.1f}")
            engine.reset()
            tracked = run_turns(engine, args, track_delta=True)
        plain_tps = sum(r[4] for r in rows) / len(rows)
        tracked_tps = sum(r[4] for r in tracked) / len(tracked)
        print(f"generation tokens/s, mean over turns: {plain_tps:.1f} plain, {tracked_tps:.1f} with delta stats "
              f"(--show-delta)")


if __name__ == "__main__":
    main()
