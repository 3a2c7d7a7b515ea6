"""`rast bench` and `rast doctor` end to end on tiny shapes (CPU): every mode runs, the JSON holds
the numbers the table shows, the plot is a PNG, bad choices are one-line errors."""

import rast_gguf  # noqa: F401

import json
import subprocess
import sys

RAST = [sys.executable, "-c", "from rast_gguf.cli.app import main; main()"]


def rast(*args, cwd):
    return subprocess.run([*RAST, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_bench_runs_every_mode_and_writes_json_and_plot(tmp_path):
    proc = rast("bench", "--large", "tiny-qwen2-large", "--small", "tiny-qwen2", "--quant-large", "f16",
                "--quant-small", "f16", "-p", "24", "-n", "6", "-r", "1", "-t", "1", "--parallel", "1,2",
                "--no-transformers", "--models-dir", "m", "--json", "b.json", "--plot", "b.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "b.json").read_text())
    assert len(results) == 1
    runs = {(r["mode"], r["parallel"]): r for r in results[0]["runs"]}
    assert set(runs) == {(m, 1) for m in ("plain", "plain3", "alone", "sequential", "overlap", "sched-alone", "sched")} | \
        {(m, 2) for m in ("plain", "plain3", "sched-alone", "sched", "sharing", "mixed")}
    for (mode, b), r in runs.items():
        if mode in ("sharing", "mixed"):
            continue
        assert r["pp_tps"] > 0 and r["tg_tps"] > 0 and r["host_mib"] > 0
        assert r["tg_ratio_vs_plain"] == round(r["tg_tps"] / runs["plain", b]["tg_tps"], 3)
        assert r["ms_per_step"] == round(1000 * b / r["tg_tps"], 4)
        reference = {"alone": "plain", "sched-alone": "plain", "sequential": "plain3", "overlap": "plain3",
                     "sched": "plain3"}.get(mode)
        if reference:
            assert r[f"overhead_ms_vs_{reference}"] == round(r["ms_per_step"] - runs[reference, b]["ms_per_step"], 4)
        assert f"| {b} | {mode} |" in proc.stdout and f"| {r['tg_tps']:.1f} |" in proc.stdout
    sharing, mixed = runs["sharing", 2], runs["mixed", 2]
    assert sharing["n_samples"] == 2 and sharing["n1"]["prompt_tokens_requested"] == 24
    assert sharing["n2"]["prompt_tokens_requested"] == 48 and sharing["n2"]["prompt_tokens_decoded"] == 24
    assert mixed["n_sequences"] == 8 and 0 < mixed["occupancy"] <= 1 and 0 < mixed["occupancy_shuffled"] <= 1
    assert mixed["tokens"] == mixed["tokens_shuffled"] > 8  # the same sequences, in two orders
    assert "shared prompt, 2 samples vs 1: prompt tokens decoded 24 of 48" in proc.stdout
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((tmp_path / "m").glob("*.gguf"))) == 3  # large, tuned, base; reused by a second run


def test_bench_merges_earlier_runs_into_one_table_json_and_plot(tmp_path):
    runs = [{"mode": "alone", "parallel": 1, "pp_tps": 100.0, "tg_tps": 50.0, "gpu_mib": 10, "host_mib": 20,
             "tg_ratio_vs_alone": 1.0},
            {"mode": "sequential", "parallel": 1, "pp_tps": 90.0, "tg_tps": 41.25, "gpu_mib": 12, "host_mib": 21,
             "tg_ratio_vs_alone": 0.825}]
    (tmp_path / "a.json").write_text(json.dumps([{"config": "A + a", "runs": runs}]))
    (tmp_path / "b.json").write_text(json.dumps([{"config": "B + b", "runs": runs[:1]}]))
    proc = rast("bench", "--from-json", "a.json", "--from-json", "b.json", "--json", "all.json",
                "--plot", "all.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| A + a | 1 | sequential | 90 | 41.2 |  |  |  | 0.82 | 12 | 21 |" in proc.stdout
    assert "| B + b | 1 | alone | 100 | 50.0 |  |  |  | 1.00 | 10 | 20 |" in proc.stdout
    assert [r["config"] for r in json.loads((tmp_path / "all.json").read_text())] == ["A + a", "B + b"]
    assert (tmp_path / "all.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "bad.json").write_text('{"not": "a list"}')
    for bad, message in (("bad.json", "not a rast bench JSON file"), ("missing.json", "no such file")):
        proc = rast("bench", "--from-json", bad, cwd=tmp_path)
        assert proc.returncode == 1 and message in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_bench_rejects_unknown_shape_and_mismatched_families(tmp_path):
    proc = rast("bench", "--large", "qwen9-400b", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.startswith("error: unknown model shape 'qwen9-400b'")
    proc = rast("bench", "--large", "llama-3.1-8b", "--small", "qwen2.5-0.5b", cwd=tmp_path)
    assert proc.returncode == 1 and "do not share a vocabulary" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_doctor_reports_the_backend(tmp_path):
    proc = rast("doctor", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert any(d["type"] == "CPU" for d in info["devices"])
    assert info["llama_cpp_python"] == "0.3.36"
    assert "libstdc++.so" in info["libstdcxx"]["global"]
    text = rast("doctor", cwd=tmp_path).stdout
    assert "active backend:" in text
