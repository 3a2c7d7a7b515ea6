"""Small-count runs of the input fuzzers (tests/fuzz_inputs.py; large counts: run that file)."""

import llama_cpp  # noqa: F401

from fuzz_inputs import fuzz_chat, fuzz_convert, fuzz_jsonl, tiny_checkpoint


def models(t):
    return ["-m", str(t.large), "--base", str(t.base), "--tuned", str(t.tuned)]


def test_fuzzed_jsonl_records(triple, tmp_path):
    tally = fuzz_jsonl(150, models(triple), tmp_path, seed=11)
    assert tally["tracebacks"] == 0 and tally["first exit 0"] == 1 and tally["resume exit 0"] == 1, tally
    assert tally["good"] > 20 and tally["good written once"] == tally["good"], tally
    assert tally["written twice"] == 0 and tally["lines unaccounted"] == 0, tally


def test_fuzzed_chat_commands(triple, tmp_path):
    tally = fuzz_chat(40, models(triple), tmp_path, seed=12)
    assert tally["tracebacks"] == 0 and tally["exit 0"] == 1 and tally["reached the end"] == 1, tally
    assert tally["error lines"] >= 10, tally


def test_fuzzed_config_and_safetensors_headers(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path)
    (tmp_path / "work").mkdir()
    tally = fuzz_convert(40, checkpoint, tmp_path / "work", seed=13)
    assert tally["tracebacks"] == 0 and tally["refused otherwise"] == 0, tally
    assert tally["files left after a refusal"] == 0 and tally["files left besides the output"] == 0, tally
    assert tally["refused with one line"] >= 20, tally
