"""The CLI passes every flag where it belongs: `rast generate`, `batch` and `chat` with two
--base/--tuned pairs, one --alpha per pair and `--sampler-order reference` at a temperature with a
seed make exactly what the library makes with the same settings. Each test also checks that the
settings are discriminating: the alphas reversed, or the other sampler order, give other text, so
a CLI that swapped or ignored them would fail."""

import llama_cpp  # noqa: F401

import json
from dataclasses import replace
import os
import subprocess
import sys

import pytest

from conftest import make_triple
from rast_gguf import DeltaPair, RastEngine, SamplingParams, generate
from rast_gguf.batch import derive_seed
from rast_gguf.chat import ChatSession

ALPHAS = (1.5, -0.5)
SAMPLING = SamplingParams(temp=1.7, top_k=40, top_p=0.9, min_p=0.05, seed=5, order="reference")
PROMPT = "Question: what is 12 + 35?\nAnswer:"
N = 24


@pytest.fixture(scope="module")
def two_pairs(triple, tmp_path_factory):
    other = make_triple(tmp_path_factory.mktemp("second_pair"), seed=31)
    return triple.large, [(triple.tuned, triple.base), (other.tuned, other.base)]


def pairs_with(pairs, alphas):
    return [DeltaPair(str(t), str(b), a) for (t, b), a in zip(pairs, alphas)]


def cli_model_args(large, pairs, alphas):
    args = ["-m", str(large)]
    for tuned, base in pairs:
        args += ["--base", str(base), "--tuned", str(tuned)]
    for alpha in alphas:
        args += ["--alpha", str(alpha)]
    return args


def rast(*args, stdin=None):
    proc = subprocess.run([sys.executable, "-m", "rast_gguf.cli.app", *map(str, args)],
                          input=stdin.encode() if stdin else None, capture_output=True, timeout=600,
                          env=dict(os.environ, NO_COLOR="1", RAST_CACHE=os.devnull + ".unused"))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode("utf-8")  # bytes decoded here: no newline translation (answers may hold \r)


def library_text(large, pairs, alphas, sampling=SAMPLING, prompt=PROMPT):
    with RastEngine(large, pairs_with(pairs, alphas), n_ctx=256, n_threads=1) as engine:
        return generate(engine, prompt, max_tokens=N, sampling=sampling).text


SAMPLING_FLAGS = ["--temp", "1.7", "--top-k", "40", "--top-p", "0.9", "--min-p", "0.05", "--seed", "5",
                  "--sampler-order", "reference", "-n", str(N), "-c", "256", "-t", "1"]


def test_generate_two_pairs_two_alphas_reference_order(two_pairs):
    large, pairs = two_pairs
    expected = library_text(large, pairs, ALPHAS)
    assert expected != library_text(large, pairs, ALPHAS[::-1])
    assert expected != library_text(large, pairs, ALPHAS, replace(SAMPLING, order="llama"))
    out = rast("generate", *cli_model_args(large, pairs, ALPHAS), "-p", PROMPT, *SAMPLING_FLAGS)
    assert out == expected + "\n"


def test_batch_two_pairs_two_alphas_reference_order(two_pairs, tmp_path):
    large, pairs = two_pairs
    prompts = {"a": PROMPT, "b": "Once upon a time"}
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": k, "prompt": p}) + "\n" for k, p in prompts.items()))
    out = tmp_path / "out.jsonl"
    rast("batch", src, "-o", out, *cli_model_args(large, pairs, ALPHAS), *SAMPLING_FLAGS, "-np", "2",
         "--no-progress")
    got = {r["id"]: r["text"] for r in map(json.loads, out.read_text().splitlines())}
    for key, prompt in prompts.items():
        seeded = replace(SAMPLING, seed=derive_seed(5, json.dumps(key), 0))
        expected = library_text(large, pairs, ALPHAS, seeded, prompt)
        assert got[key] == expected, key
        assert expected != library_text(large, pairs, ALPHAS[::-1], seeded, prompt)


def test_chat_two_pairs_two_alphas_reference_order(two_pairs):
    large, pairs = two_pairs

    def library_answer(alphas, order="reference"):
        sampling = replace(SAMPLING, order=order)
        with RastEngine(large, pairs_with(pairs, alphas), n_ctx=256, n_threads=1) as engine:
            return ChatSession(engine, sampling=sampling, max_tokens=N).ask("Hello there")

    expected = library_answer(ALPHAS)
    assert expected != library_answer(ALPHAS[::-1]) and expected != library_answer(ALPHAS, "llama")
    out = rast("chat", *cli_model_args(large, pairs, ALPHAS), *SAMPLING_FLAGS, stdin="Hello there\n")
    assert "alpha 1.5, -0.5" in out
    answer = out.split(">>> ")[1]
    assert answer.startswith(expected + "\n"), (answer, expected)
