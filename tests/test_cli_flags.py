"""Flags users bring from llama.cpp reach the engine: `-fa/--flash-attn on|off` (the CLI's greedy output
equals the library's with the same setting, and llama.cpp's own log says each of the three contexts got
it) on every command that builds an engine, and `--ignore-eos` on generate; the sampling defaults are
SamplingParams'."""

import llama_cpp  # noqa: F401

import subprocess
import sys

import pytest

from conftest import make_triple
from rast_gguf import DeltaPair, RastEngine, SamplingParams, generate

PROMPT = "Once upon a time there was a"
N = 48


def rast(*args):
    return subprocess.run([sys.executable, "-m", "rast_gguf.cli.app", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def f16_triple(tmp_path_factory):
    return make_triple(tmp_path_factory.mktemp("f16"), ftype="f16", seed=5)


def test_flash_attn_reaches_the_engine(f16_triple):
    t = f16_triple
    for setting in ("on", "off"):
        with RastEngine(t.large, [DeltaPair(str(t.tuned), str(t.base), 1.0)], n_ctx=128, n_threads=2,
                        flash_attn=setting) as engine:
            expected = generate(engine, PROMPT, max_tokens=N, sampling=SamplingParams(temp=0), ignore_eos=True).text
        proc = rast("generate", "-m", t.large, "--base", t.base, "--tuned", t.tuned, "-p", PROMPT, "-n", N,
                    "--temp", 0, "-c", 128, "-t", 2, "--ignore-eos", "-fa", setting, "-v")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == expected + "\n"
        # llama.cpp's log line for each context it creates (-v shows the log)
        log = [line.split("=")[1].strip() for line in proc.stderr.splitlines()
               if line.startswith("llama_context: flash_attn")]
        assert log == [{"on": "enabled", "off": "disabled"}[setting]] * 3, proc.stderr[-2000:]


@pytest.mark.parametrize("command", ["generate", "chat", "batch", "eval", "analyze", "bench"])
def test_every_engine_command_has_flash_attn(command):
    proc = rast(command, "--help")
    assert proc.returncode == 0 and "--flash-attn" in proc.stdout and "-fa" in proc.stdout


def test_bad_flash_attn_value_is_one_line(triple):
    proc = rast("generate", "-m", triple.large, "-p", "x", "-n", 2, "--flash-attn", "maybe")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["error: --flash-attn must be one of auto, off, on, got 'maybe'"]


def test_ignore_eos_on_generate():
    # the shipped toy triple answers and stops with an end-of-generation token well before 80 tokens (67 here)
    args = ["generate", "-p", "Q: 12+345+67+890\n", "--temp", "0", "-n", 80, "-t", 2]
    stops = rast(*args)
    assert stops.returncode == 0, stops.stderr
    assert "finish: stop" in stops.stderr and "Answer: 1314" in stops.stdout
    goes_on = rast(*args, "--ignore-eos")
    assert goes_on.returncode == 0, goes_on.stderr
    assert "generation: 80 tokens" in goes_on.stderr and "finish: length" in goes_on.stderr
    assert goes_on.stdout.startswith(stops.stdout.rstrip("\n"))


def test_sampling_defaults_come_from_sampling_params():
    proc = rast("generate", "--help")
    help_text = " ".join(proc.stdout.split())
    d = SamplingParams
    for flag, value in (("--temp", d.temp), ("--top-k", d.top_k), ("--top-p", d.top_p), ("--min-p", d.min_p)):
        assert flag in help_text
    from rast_gguf.cli import options as o

    assert (o.TEMP, o.TOP_K, o.TOP_P, o.MIN_P, o.SEED, o.ORDER) == (d.temp, d.top_k, d.top_p, d.min_p, d.seed, d.order)
    assert (d.temp, d.top_k, d.top_p, d.min_p) == (0.8, 40, 0.95, 0.05)
