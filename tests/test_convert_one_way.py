"""rast_convert is a library of its own: it imports nothing from rast_gguf (rast_gguf calls it, never the
other way round). Checked twice: no rast_gguf module is loaded by importing and running the converter in a
fresh interpreter, and no rast_convert source file names rast_gguf in an import."""

import ast
import subprocess
import sys
from pathlib import Path

import rast_convert

SOURCE = Path(rast_convert.__file__).parent


def test_no_rast_gguf_module_is_loaded():
    code = ("import sys, rast_convert, rast_convert.quantize, rast_convert.convert\n"
            "from rast_convert import ConversionError, convert_hf_to_gguf, output_type_names\n"
            "try:\n"
            "    convert_hf_to_gguf('does-not-exist', 'out.gguf')\n"
            "except ConversionError:\n"
            "    pass\n"
            "print(len(output_type_names()))\n"
            "print(sorted(m for m in sys.modules if m == 'rast_gguf' or m.startswith('rast_gguf.')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    n_types, loaded = proc.stdout.strip().splitlines()
    assert int(n_types) > 4
    assert loaded == "[]"


def test_no_source_file_imports_rast_gguf():
    files = sorted(SOURCE.rglob("*.py"))
    assert len(files) > 5
    offenders = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "rast_gguf"]
    assert offenders == []
