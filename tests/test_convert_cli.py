"""`rast convert` / `rast quantize` as a user runs them: a converted triple passes `rast check` and runs
`rast generate`, and the CLI's errors are one line."""

import llama_cpp  # noqa: F401

import subprocess
import sys

import gguf

from hf_fixtures import Case, cached_checkpoint

LARGE = Case(arch="qwen2", n_embd=128, n_layer=3, n_ff=256, n_pad=8, dtype="bf16", seed=41)
SMALL_BASE = Case(arch="qwen2", n_embd=64, n_layer=2, n_ff=128, n_pad=8, dtype="bf16", seed=42)
SMALL_TUNED = Case(arch="qwen2", n_embd=64, n_layer=2, n_ff=128, n_pad=8, dtype="bf16", seed=43)


def rast_cli(*args):
    return subprocess.run([sys.executable, "-m", "rast_gguf.cli.app", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_converted_triple_checks_and_generates(tmp_path_factory, tmp_path):
    paths = {}
    for role, case, out_type in (("large", LARGE, "q4_k_m"), ("base", SMALL_BASE, "q8_0"),
                                 ("tuned", SMALL_TUNED, "q8_0")):
        ckpt = cached_checkpoint(case, tmp_path_factory)
        paths[role] = tmp_path / f"{role}.gguf"
        proc = rast_cli("convert", ckpt.path, "-o", paths[role], "--type", out_type, "--threads", "2")
        assert proc.returncode == 0, proc.stderr
        assert paths[role].exists() and "wrote" in proc.stderr
    types = {t.tensor_type for t in gguf.GGUFReader(str(paths["large"])).tensors}
    assert gguf.GGMLQuantizationType.Q4_K in types

    models = ["-m", paths["large"], "--base", paths["base"], "--tuned", paths["tuned"]]
    check = rast_cli("check", *models)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "verdict: compatible" in check.stdout
    assert "qwen2" in check.stdout and "Q4_K" in check.stdout and "Q8_0" in check.stdout

    gen = rast_cli("generate", *models, "-p", "The lighthouse keeper", "-n", "12", "--temp", "0", "-c", "128",
                   "-t", "2")
    assert gen.returncode == 0, gen.stderr
    assert "generation: 12 tokens" in gen.stderr or "finish: stop" in gen.stderr


def test_quantize_command_and_its_errors(tmp_path_factory, tmp_path):
    ckpt = cached_checkpoint(SMALL_BASE, tmp_path_factory)
    f16 = tmp_path / "m.f16.gguf"
    assert rast_cli("convert", ckpt.path, "-o", f16).returncode == 0
    q6 = tmp_path / "m.q6_k.gguf"
    proc = rast_cli("quantize", f16, "-o", q6, "--type", "q6_k")
    assert proc.returncode == 0, proc.stderr
    assert gguf.GGUFReader(str(q6)).fields["general.file_type"].contents() == 18  # LLAMA_FTYPE_MOSTLY_Q6_K

    again = rast_cli("quantize", f16, "-o", q6, "--type", "q6_k")
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr
    bad_type = rast_cli("convert", ckpt.path, "-o", tmp_path / "x.gguf", "--type", "q3_z")
    assert bad_type.returncode == 1 and bad_type.stderr.startswith("error: unknown output type")
    not_dir = rast_cli("convert", tmp_path / "nowhere", "-o", tmp_path / "y.gguf")
    assert not_dir.returncode == 1 and "is not a directory" in not_dir.stderr
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "y.gguf").exists()
