"""Overlapped decoding (the contexts decode concurrently on C++ worker threads) gives the very
same logits as decoding one context after the other, and reports errors the same way."""

import rast_gguf  # noqa: F401

import numpy as np
import pytest

from oracle import N_GPU_LAYERS
from rast_gguf import DeltaPair, RastEngine
from rast_gguf.errors import PromptTooLongError

PROMPT = "Question: what is 12 + 35?\nAnswer:"


def logits_after(triple, overlap, tokens_after_prompt):
    with RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base), 1.0, N_GPU_LAYERS)],
                    n_ctx=128, n_threads=2, flash_attn="off", n_gpu_layers=N_GPU_LAYERS, overlap=overlap) as engine:
        assert engine.overlap == overlap
        engine.feed(engine.tokenize(PROMPT))
        rows = []
        for token in tokens_after_prompt:
            engine.feed([token])
            rows.append([ctx.logits(-1) for ctx in engine.contexts])
        return np.array(rows)


def test_overlap_gives_the_same_logits_in_every_context(triple):
    tokens = [5, 17, 230, 99, 4]
    sequential = logits_after(triple, False, tokens)
    overlapped = logits_after(triple, True, tokens)
    assert sequential.shape == (len(tokens), 3, sequential.shape[-1])
    assert np.array_equal(sequential, overlapped)
    # the three contexts hold different models: equal rows across contexts would hide a mix-up
    assert not np.array_equal(overlapped[:, 0], overlapped[:, 1])
    assert not np.array_equal(overlapped[:, 1], overlapped[:, 2])


def test_overlap_is_off_by_default_and_needs_two_contexts(triple):
    with RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base), 1.0, -1)], n_ctx=64,
                    n_threads=2, n_gpu_layers=-1) as engine:
        assert engine.overlap is False
    with RastEngine(triple.large, [], n_ctx=64, n_threads=2, overlap=True) as engine:
        assert engine.overlap is False  # one context: nothing to overlap


def test_full_context_through_the_parallel_decoder_is_a_clean_error(triple):
    with RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base), 1.0)], n_ctx=64, n_threads=2,
                    overlap=True) as engine:
        for _ in range(0, engine.n_ctx, 32):  # fill every cell (llama.cpp pads n_ctx up to 256)
            engine.feed(list(range(10, 42)))
        # feed() refuses before decoding; decode_entries goes to llama.cpp, which finds no KV slot
        with pytest.raises(PromptTooLongError):
            engine.decode_entries([5], [engine.n_ctx], [0], [True])


@pytest.mark.parametrize("command", ["generate", "batch"])
def test_cli_overlap_switch_gives_the_same_greedy_text(triple, tmp_path, command):
    import json
    import subprocess
    import sys

    models = ["-m", str(triple.large), "--base", str(triple.base), "--tuned", str(triple.tuned), "-t", "1"]
    outputs = []
    for switch in ("--no-overlap", "--overlap"):
        if command == "generate":
            args = ["generate", *models, "-p", "Hello", "-n", "12", "--temp", "0", switch]
        else:
            (tmp_path / "in.jsonl").write_text(json.dumps({"id": "a", "prompt": "Hello"}) + "\n")
            out = tmp_path / f"out{switch}.jsonl"
            args = ["batch", str(tmp_path / "in.jsonl"), "-o", str(out), *models, "-n", "12", "--temp", "0", switch]
        proc = subprocess.run([sys.executable, "-c", "from rast_gguf.cli.app import main; main()", *args],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        if command == "generate":
            outputs.append(proc.stdout.rsplit("prompt:", 1)[0])  # the text; the stats line has timings
        else:
            outputs.append(json.loads(out.read_text())["text"])
    assert outputs[0] == outputs[1] and outputs[0]
