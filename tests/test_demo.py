"""`rast demo`, the README's first command: no arguments, no download. (How fast it is belongs to
benchmarks, not to a test that a loaded machine would fail.)"""

import llama_cpp  # noqa: F401

import json
import os
import re
import subprocess
import sys

import pytest

ROW = re.compile(r"^\| (.+?) \| ([\d.]+) \|$")


def test_demo_runs_with_no_arguments_and_prints_its_table(tmp_path):
    env = dict(os.environ, NO_COLOR="1", RAST_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-m", "rast_gguf.cli.app", "demo"], capture_output=True,
                          text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Traceback" not in out + proc.stderr
    # three problems solved both ways; the RAST solutions are worked out and right
    assert len(re.findall(r"^Q: \d+(?:\+\d+){3}", out, re.M)) == 3
    rast_lines = re.findall(r"large \+ RAST a=1 +\[(right|wrong)\] (.*)", out)
    assert len(rast_lines) == 3 and all(mark == "right" and text.startswith("Steps:") for mark, text in rast_lines)
    table = {m.group(1): float(m.group(2)) for line in out.splitlines() if (m := ROW.match(line))}
    assert list(table) == ["small base", "small tuned", "large base", "large + RAST a=0.5", "large + RAST a=1",
                           "large + RAST a=1.5", "large + RAST a=2", "large RL"]
    assert "Accuracy on 200 held-out problems" in out
    assert table["large + RAST a=1"] >= table["large base"] + 50
    assert table["small tuned"] >= table["small base"] + 50


def test_demo_colours_tokens_by_the_delta():
    proc = subprocess.run([sys.executable, "-m", "rast_gguf.cli.app", "demo", "--show", "1", "--problems", "0",
                           "--color"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # the style token is the one RAST changes: bold magenta "Steps"
    assert "\x1b[1;35mSteps\x1b[0m" in proc.stdout
    assert "Accuracy" not in proc.stdout


def test_demo_rejects_bad_counts():
    proc = subprocess.run([sys.executable, "-m", "rast_gguf.cli.app", "demo", "--problems", "-1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["error: --show and --problems must be >= 0"]


def test_default_models_are_the_shipped_triple(tmp_path):
    """With no model flags every command runs the shipped triple: RAST at alpha 1 works the sum out."""
    proc = subprocess.run([sys.executable, "-m", "rast_gguf.cli.app", "generate", "-p", "Q: 12+345+67+890\n",
                           "--temp", "0", "-n", "96", "-c", "256", "-t", "1"], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, RAST_CACHE=str(tmp_path / "cache")))
    assert proc.returncode == 0, proc.stderr
    assert "built-in default triple" in proc.stderr and "data" in proc.stderr
    assert proc.stdout.startswith("Steps: 12+345=357, 357+67=424, 424+890=1314.")
    assert "Answer: 1314" in proc.stdout
    assert not (tmp_path / "cache").exists()  # no synthetic fallback was written


def test_analyze_command_on_the_toy_task(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rast_gguf.cli.app", "analyze", "toy:5", "-o", str(tmp_path),
                           "-n", "96", "-c", "256", "-t", "1"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"analysis.json", "analysis.md", "analysis.png"}
    saved = json.loads((tmp_path / "analysis.json").read_text())
    assert saved["n_problems"] == 5 and saved["n_changed"] >= 5
    assert saved["pcr_large_along_rast"] == pytest.approx(1 - saved["n_changed"] / saved["n_steps"])
    assert saved["promoted"][0] == ["Steps", 5] and saved["displaced"][0] == ["Answer", 5]
    assert "path coverage rate" in proc.stdout
