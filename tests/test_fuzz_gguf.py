"""GGUF fuzzing in CI (a small count; `python -m rast_gguf.fuzz_gguf --count 10000` runs the large one):
mutants of real model files are refused with one line or run, and never kill the process."""

import rast_gguf  # noqa: F401

import os
import random
import signal

from rast_gguf import fuzz_gguf
from rast_gguf.gguf_edit import GGUFImage


def test_mutants_are_refused_or_run_never_crash(tmp_path):
    result = fuzz_gguf.fuzz(count=150, seed=12345, workdir=tmp_path)
    assert result.count == 150
    assert result.failures == [], result.summary()
    # the mutants reach every stage: refused by the check, refused by llama.cpp's load, and run
    assert result.tallies["refused at check"] > 0 and result.tallies["ran"] > 0, result.summary()
    assert sum(result.tallies.values()) == 150


def test_mutants_change_the_file_and_are_reproducible(tmp_path):
    seeds = fuzz_gguf.write_seeds(tmp_path)
    seed_data = seeds[0].read_bytes()
    first = [fuzz_gguf.make_mutant(random.Random(7), seed_data) for _ in range(1)]
    again = [fuzz_gguf.make_mutant(random.Random(7), seed_data) for _ in range(1)]
    assert first == again
    rng = random.Random(8)
    mutants = [fuzz_gguf.make_mutant(rng, seed_data)[0] for _ in range(50)]
    assert sum(m != seed_data for m in mutants) >= 45  # an edit can rewrite a value with itself


def test_a_child_killed_by_a_signal_is_reported_as_a_crash(tmp_path):
    seeds = fuzz_gguf.write_seeds(tmp_path / "seeds")
    child = fuzz_gguf._Child(tmp_path / "stderr.log")
    try:
        assert child.ask(seeds[0], 120)["outcome"] == "ran"
        os.kill(child.proc.pid, signal.SIGABRT)
        child.proc.wait()
        assert child.ask(seeds[0], 120) is None
        assert child.death() == "signal SIGABRT"
    finally:
        child.close()


def test_serialize_round_trips(tmp_path):
    for path in fuzz_gguf.write_seeds(tmp_path):
        data = path.read_bytes()
        assert GGUFImage.parse(data).serialize() == data
