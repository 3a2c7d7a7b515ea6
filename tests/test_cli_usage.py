"""Usage errors through the installed entry point (.venv/bin/rast), as a user meets them: one
`error:` line, no traceback, exit code 2, whatever exception types the pinned Typer raises."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

RAST = Path(sys.executable).parent / "rast"

CASES = [
    (["generate", "--temp", "abc"], "Invalid value for '--temp'"),
    (["generate", "-p", "x", "--top-k", "1.5"], "Invalid value for '--top-k'"),
    (["batch"], "Missing argument 'IN.jsonl'"),
    (["batch", "in.jsonl"], "Missing option '-o' / '--output'"),
    (["generate", "--bogus"], "No such option: --bogus"),
    (["chat", "-c"], "Option '-c' requires an argument"),
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
    (["eval", "toy:3", "-o", "x", "--samples", "many"], "Invalid value for '--samples'"),
]


@pytest.mark.parametrize("argv, fragment", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_usage_errors_are_one_line_exit_2(argv, fragment, tmp_path):
    assert RAST.is_file(), "run scripts/setup.sh: the entry point is missing"
    proc = subprocess.run([str(RAST), *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env=dict(os.environ, RAST_CACHE=str(tmp_path / "cache")))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert "--help" in lines[0] and proc.stdout == ""


def test_no_arguments_prints_the_help():
    proc = subprocess.run([str(RAST)], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "generate" in proc.stdout + proc.stderr and proc.returncode in (0, 2)
