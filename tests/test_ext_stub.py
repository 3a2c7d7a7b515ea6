"""rast_gguf/_ext.pyi is what nanobind's stubgen makes of the built extension now: regenerated into a
temporary folder and compared with the checked-in file, so a binding change without a new stub fails CI."""

import subprocess
import sys
from pathlib import Path

import rast_gguf

STUB = Path(rast_gguf.__file__).parent / "_ext.pyi"
REGENERATE = "python -m nanobind.stubgen -m rast_gguf._ext -o rast_gguf/_ext.pyi"


def test_checked_in_stub_matches_the_extension(tmp_path):
    fresh = tmp_path / "_ext.pyi"
    proc = subprocess.run([sys.executable, "-m", "nanobind.stubgen", "-q", "-m", "rast_gguf._ext", "-o", str(fresh)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "class SamplerChain" in fresh.read_text()
    assert STUB.is_file(), f"rast_gguf/_ext.pyi is missing; regenerate it with: {REGENERATE}"
    assert STUB.read_text() == fresh.read_text(), (
        f"rast_gguf/_ext.pyi is out of date with the extension; regenerate it with: {REGENERATE}")
