"""`rast convert` / `rast quantize` leave nothing half-written: partial files of a killed run are
removed by the next run (which says so), an exception or Ctrl-C mid-way removes the partial output,
and out-of-range config.json values are one line each."""

import llama_cpp  # noqa: F401

import json
import os
import shutil
import subprocess
import sys

import pytest

from hf_fixtures import Case, cached_checkpoint
from rast_convert import convert_hf_to_gguf
from rast_gguf.quantize import quantize_gguf

BASE = Case(arch="llama", dtype="f32", shards=2, seed=30)


def rast_cli(*args):
    return subprocess.run([sys.executable, "-m", "rast_gguf.cli.app", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def model(tmp_path_factory, tmp_path):
    return shutil.copytree(cached_checkpoint(BASE, tmp_path_factory).path, tmp_path / "model")


def plant_leftovers(out):
    """What a SIGKILLed convert (temp folder with an f16 intermediate) and quantize (.part) leave, and
    the partial file of a run that is still going (this test process), which must stay."""
    dead = dead_pid()
    stale_part = out.with_name(f".{out.name}.{dead}.1a2b3c4d.part")
    stale_part.write_bytes(b"GGUF half")
    stale_dir = out.with_name(f".{out.name}.{dead}.k2j4h5g6")
    stale_dir.mkdir()
    (stale_dir / "m.f16.gguf").write_bytes(b"GGUF intermediate")
    legacy = out.with_name(out.name + ".part")
    legacy.write_bytes(b"GGUF old-style part")
    live = out.with_name(f".{out.name}.{os.getpid()}.99aa88bb.part")
    live.write_bytes(b"someone is writing this")
    return [stale_part, stale_dir, legacy], live


def test_next_quantize_removes_what_a_killed_run_left_and_says_so(triple, tmp_path):
    out = tmp_path / "m.q8_0.gguf"
    stale, live = plant_leftovers(out)
    proc = rast_cli("quantize", triple.large, "-o", out, "--type", "q8_0")
    assert proc.returncode == 0, proc.stderr
    removed = [line for line in proc.stderr.splitlines() if line.startswith("removed ")]
    assert removed == [f"removed 3 partial file(s) left by an interrupted run for {out}: "
                       + ", ".join(sorted(p.name for p in stale))]
    assert not any(p.exists() for p in stale) and live.exists() and out.exists()


def test_next_convert_removes_what_a_killed_run_left(model, tmp_path):
    out = tmp_path / "m.gguf"
    stale, live = plant_leftovers(out)
    proc = rast_cli("convert", model, "-o", out, "--type", "f16")
    assert proc.returncode == 0, proc.stderr
    assert "removed 3 partial file(s) left by an interrupted run" in proc.stderr
    assert not any(p.exists() for p in stale) and live.exists() and out.exists()


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, RuntimeError])
def test_ctrl_c_or_error_during_quantization_leaves_no_partial_output(triple, tmp_path, monkeypatch, interrupt):
    from llama_cpp import llama_cpp as C

    real, parts = C.llama_model_quantize, []

    def quantize_then_interrupt(src, dst, params):
        rc = real(src, dst, params)  # the .part is complete: Ctrl-C lands as the C call returns
        parts.append(dst.decode())
        assert os.path.getsize(parts[-1]) > 0
        raise interrupt()

    monkeypatch.setattr(C, "llama_model_quantize", quantize_then_interrupt)
    out = tmp_path / "m.q8_0.gguf"
    with pytest.raises(interrupt):
        quantize_gguf(triple.large, out, "q8_0")
    assert len(parts) == 1 and not os.path.exists(parts[0])
    assert sorted(tmp_path.iterdir()) == []


def test_exception_in_the_middle_of_a_convert_leaves_nothing(model, tmp_path, monkeypatch):
    import rast_gguf.quantize
    from rast_convert import gguf_output

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    seen = []

    def fail_after_intermediate(src, dst, *args, **kwargs):
        seen.append(sorted(p.name for p in out_dir.iterdir()))
        assert os.path.getsize(src) > 0
        raise RuntimeError("injected")

    monkeypatch.setattr(rast_gguf.quantize, "quantize_gguf", fail_after_intermediate)
    with pytest.raises(RuntimeError, match="injected"):
        convert_hf_to_gguf(model, out_dir / "m.gguf", out_type="q4_k_m", progress=False)
    assert len(seen) == 1 and len(seen[0]) == 1 and seen[0][0].startswith(".m.gguf.")  # the temp folder
    assert list(out_dir.iterdir()) == []

    real_tofile, calls = gguf_output.StreamedTensor.tofile, []

    def tofile_then_interrupt(self, fout):
        calls.append(self.source.gguf_name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_tofile(self, fout)

    monkeypatch.setattr(gguf_output.StreamedTensor, "tofile", tofile_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        convert_hf_to_gguf(model, out_dir / "m.gguf", out_type="f16", progress=False)
    assert len(calls) == 3 and list(out_dir.iterdir()) == []


CONFIG_CASES = {
    "context 2**32": ({"max_position_embeddings": 2**32}, "'max_position_embeddings' must be an integer in"),
    "llama3 low_freq_factor 0": ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 0,
                                                   "high_freq_factor": 4.0,
                                                   "original_max_position_embeddings": 8192}},
                                 "'low_freq_factor' must be a positive float32 number"),
    "llama3 factor text": ({"rope_scaling": {"rope_type": "llama3", "factor": "eight"}},
                           "'factor' must be a positive float32 number, got 'eight'"),
    "llama3 high <= low": ({"rope_scaling": {"rope_type": "llama3", "low_freq_factor": 4, "high_freq_factor": 4}},
                           "needs high_freq_factor (4) > low_freq_factor (4)"),
    "nested architectures": ({"architectures": [["LlamaForCausalLM"]]}, "architecture ['LlamaForCausalLM'] is not supported"),
    "rope_theta inf": ({"rope_theta": float("inf")}, "'rope_theta' must be a positive float32 number"),
    "rms_norm_eps 1e300": ({"rms_norm_eps": 1e300}, "'rms_norm_eps' must be a positive float32 number"),
    "yarn orig ctx huge": ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                             "original_max_position_embeddings": 2**40}},
                           "'original_max_position_embeddings' must be an integer in"),
    "rope type list": ({"rope_scaling": {"rope_type": ["llama3"]}}, "'rope_type' must be a string"),
    "hidden_act list": ({"hidden_act": ["silu"]}, "hidden_act ['silu'] is not supported"),
}


@pytest.mark.parametrize("what", list(CONFIG_CASES))
def test_out_of_range_config_values_are_one_line(what, model, tmp_path):
    changes, fragment = CONFIG_CASES[what]
    config = json.loads((model / "config.json").read_text())
    config.update(changes)
    (model / "config.json").write_text(json.dumps(config).replace("Infinity", "1e999"))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = rast_cli("convert", model, "-o", out_dir / "m.gguf", "--type", "q4_k_m")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(("error: config.json", "error: architecture")), lines
    assert fragment in lines[0], lines
    assert list(out_dir.iterdir()) == []
