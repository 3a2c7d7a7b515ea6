"""Bad input gives a typed exception in the library and one line (exit 1) in the CLI, never a crash."""

import llama_cpp  # noqa: F401

import math
import subprocess
import sys

import pytest

from rast_gguf import DeltaPair, RastEngine, SamplingParams, generate
from rast_gguf.errors import (GGUFFileError, PromptTooLongError, SamplingParamsError, VocabMismatchError)
from conftest import make_triple


def rast_cli(*args):
    return subprocess.run([sys.executable, "-m", "rast_gguf.cli.app", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, triple):
    root = tmp_path_factory.mktemp("bad")
    data = triple.base.read_bytes()
    (root / "truncated.gguf").write_bytes(data[: len(data) // 2])
    (root / "notes.gguf").write_text("these are my notes, not a model\n")
    return root


@pytest.fixture(scope="module")
def llama_arch_small(tmp_path_factory):
    """A small pair whose tokenizer adds BOS (llama-style) unlike the qwen2-style large model."""
    return make_triple(tmp_path_factory.mktemp("llama_small"), arch="llama", seed=31)


def test_truncated_file(triple, bad_files):
    with pytest.raises(GGUFFileError, match="truncated"):
        RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(bad_files / "truncated.gguf"))])
    assert_one_line_error(rast_cli("generate", "-p", "hi", "-m", triple.large, "--base", bad_files / "truncated.gguf",
                                   "--tuned", triple.tuned), "truncated.gguf")


def test_not_a_gguf_file(triple, bad_files):
    with pytest.raises(GGUFFileError, match="notes.gguf"):
        RastEngine(bad_files / "notes.gguf", [DeltaPair(str(triple.tuned), str(triple.base))])
    assert_one_line_error(rast_cli("generate", "-p", "hi", "-m", bad_files / "notes.gguf", "--base", triple.base,
                                   "--tuned", triple.tuned), "notes.gguf")


def test_missing_file(triple, tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(GGUFFileError):
        RastEngine(missing, [])
    assert_one_line_error(rast_cli("generate", "-p", "hi", "-m", missing, "--base", triple.base,
                                   "--tuned", triple.tuned), "nope.gguf")


def test_vocabulary_mismatch(triple, llama_arch_small):
    with pytest.raises(VocabMismatchError, match="BOS"):
        RastEngine(triple.large, [DeltaPair(str(llama_arch_small.tuned), str(llama_arch_small.base))])
    assert_one_line_error(rast_cli("generate", "-p", "hi", "-m", triple.large, "--base", llama_arch_small.base,
                                   "--tuned", llama_arch_small.tuned), "BOS")


def test_prompt_longer_than_context(triple):
    long_prompt = "word " * 400
    with RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base))], n_ctx=64) as engine:
        assert len(engine.tokenize(long_prompt)) > engine.n_ctx  # llama.cpp rounds n_ctx up to 256
        with pytest.raises(PromptTooLongError, match=f"context holds {engine.n_ctx}"):
            generate(engine, long_prompt, max_tokens=4)
    assert_one_line_error(rast_cli("generate", "-p", long_prompt, "-c", 64, "-m", triple.large, "--base",
                                   triple.base, "--tuned", triple.tuned), "context")


@pytest.mark.parametrize("kwargs, flag", [
    (dict(temp=-0.5), "--temp"), (dict(top_p=1.5), "--top-p"), (dict(top_p=0.0), "--top-p"),
    (dict(min_p=-0.1), "--min-p"), (dict(top_k=-3), "--top-k"), (dict(temp=math.nan), "--temp"),
    (dict(order="sideways"), "--sampler-order"),
])
def test_invalid_sampling_values(kwargs, flag):
    with pytest.raises(SamplingParamsError, match=flag):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("alpha", [math.nan, math.inf])
def test_invalid_alpha(alpha, triple):
    with pytest.raises(SamplingParamsError, match="--alpha"):
        DeltaPair(str(triple.tuned), str(triple.base), alpha)


@pytest.mark.parametrize("args, flag", [
    (["--temp", "-1"], "--temp"), (["--top-p", "1.5"], "--top-p"), (["--alpha", "nan"], "--alpha"),
    (["--min-p", "2"], "--min-p"),
])
def test_cli_invalid_sampling_values(triple, args, flag):
    proc = rast_cli("generate", "-p", "hi", "-m", triple.large, "--base", triple.base, "--tuned", triple.tuned, *args)
    assert_one_line_error(proc, flag)


def test_cli_unpaired_models(triple):
    assert_one_line_error(rast_cli("generate", "-p", "hi", "-m", triple.large, "--base", triple.base), "pairs")


def test_context_full_stops_cleanly(triple):
    with RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base))], n_ctx=32) as engine:
        prompt = engine.tokenize("Question: what is 1 + 1?")
        result = generate(engine, prompt, max_tokens=1000, ignore_eos=True,
                          sampling=SamplingParams(temp=1.0, seed=5, top_k=0, top_p=1.0, min_p=0.0))
        n_ctx = engine.n_ctx
    assert result.finish_reason == "context"
    assert len(prompt) + len(result.tokens) == n_ctx + 1  # the last token is emitted but not decoded


def test_vocabulary_text_mismatch_names_first_differing_token(triple, tmp_path):
    """Same tokenizer type and BOS/EOS handling, but the small pair's vocabulary places its control tokens
    where the large one still has ordinary tokens: refused, naming the first differing id and both texts."""
    from gguf import GGUFReader

    from conftest import tiny_shape
    from rast_gguf.synth import write_synthetic_gguf

    shape = tiny_shape("qwen2", 64, 2, 600, 0)
    base = write_synthetic_gguf(tmp_path / "base600.gguf", shape, seed=5, ftype="f32")
    tuned = write_synthetic_gguf(tmp_path / "tuned600.gguf", shape, seed=6, ftype="f32", derive_from=5)
    large_tokens = GGUFReader(str(triple.large)).fields["tokenizer.ggml.tokens"].contents()
    small_tokens = GGUFReader(str(base)).fields["tokenizer.ggml.tokens"].contents()
    first = next(i for i, (a, b) in enumerate(zip(large_tokens, small_tokens)) if a != b)
    with pytest.raises(VocabMismatchError, match=f"differ at token {first}: ") as info:
        RastEngine(triple.large, [DeltaPair(str(tuned), str(base))])
    assert repr(large_tokens[first]) in str(info.value) and repr(small_tokens[first]) in str(info.value)
    assert_one_line_error(rast_cli("generate", "-p", "hi", "-m", triple.large, "--base", base, "--tuned", tuned),
                          f"differ at token {first}")


def test_small_context_feeds_long_prompts_in_pieces(triple):
    """llama.cpp caps a context's batch at its requested n_ctx (64) while padding the context itself (256):
    a prompt longer than 64 tokens must be fed in pieces, not abort in llama_decode."""
    prompt = "word " * 90
    with RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base))], n_ctx=64, n_threads=2) as engine:
        n_prompt = len(engine.tokenize(prompt))
        assert engine.n_batch < n_prompt < engine.n_ctx
        result = generate(engine, prompt, max_tokens=4, sampling=SamplingParams(temp=0))
    assert result.prompt_tokens == n_prompt and result.generation_tokens == 4
