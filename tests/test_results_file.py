"""Batch/eval outputs lose nothing: foreign files are never cut, the input is never the output,
two runs never share an output, and a resume refuses results made with other settings."""

import llama_cpp  # noqa: F401

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rast_gguf import DeltaPair, RastEngine, SamplingParams
from rast_gguf.batch import batch_file
from rast_gguf.errors import BatchOutputError
from rast_gguf.results_file import ResultsFile, lock_folder

DEFAULTS = SamplingParams(temp=0.8, seed=7)
FP = {"models": "m", "prompt": "p", "temp": 0.8}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ours(record_id, **extra):
    return json.dumps({"id": record_id, "text": "x", **extra, "fingerprint": FP})


@pytest.mark.parametrize("content", [b"my notes, no newline", b'{"a": 1}', b"[1, 2", b"\xff\xfe"])
def test_a_one_line_file_without_newline_that_is_not_ours_is_refused_and_kept(tmp_path, content):
    notes = tmp_path / "notes.json"
    notes.write_bytes(content)
    with pytest.raises(BatchOutputError, match="is not a results file.*give another -o"):
        ResultsFile(notes, {'"a"': FP})
    assert notes.read_bytes() == content


def test_a_foreign_line_anywhere_refuses_without_cutting(tmp_path):
    out = tmp_path / "out.jsonl"
    content = (ours("a") + "\nnot ours\n" + '{"id": "b", "te').encode()
    out.write_bytes(content)
    with pytest.raises(BatchOutputError, match="line 2 is not a result record"):
        ResultsFile(out, {})
    assert out.read_bytes() == content


def test_torn_lines_after_our_records_are_cut_and_whole_ones_kept(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes((ours("a") + "\n" + ours("b")[:9]).encode())
    with ResultsFile(out, {'"a"': FP}) as results:
        assert results.done == {'"a"'}
    assert out.read_text() == ours("a") + "\n"
    out.write_bytes(ours("a")[:12].encode())  # killed during the very first write: our line's start
    with ResultsFile(out, {}) as results:
        assert results.done == set()
    assert out.read_bytes() == b""
    out.write_bytes(ours("a").encode())  # whole record, its newline not written: kept
    with ResultsFile(out, {}) as results:
        assert results.done == {'"a"'}
    assert out.read_text() == ours("a") + "\n"


def test_output_that_is_the_input_is_refused_also_through_links(tmp_path):
    src = write_jsonl(tmp_path / "same.jsonl", [{"id": 1, "prompt": "a"}])
    before = src.read_bytes()
    os.symlink(src, tmp_path / "sym.jsonl")
    os.link(src, tmp_path / "hard.jsonl")
    for out in ("same.jsonl", "sym.jsonl", "hard.jsonl"):
        with pytest.raises(BatchOutputError, match="is the input file"):
            ResultsFile(tmp_path / out, {}, input_path=src)
    assert src.read_bytes() == before


def test_a_locked_output_or_folder_is_refused(tmp_path):
    out = tmp_path / "out.jsonl"
    with ResultsFile(out, {}):
        with pytest.raises(BatchOutputError, match="in use by another rast run"):
            ResultsFile(out, {})
    with ResultsFile(out, {}):  # released on close
        pass
    with lock_folder(tmp_path):
        with pytest.raises(BatchOutputError, match="in use by another rast run"):
            lock_folder(tmp_path)


@pytest.fixture(scope="module")
def pairs(triple):
    return [DeltaPair(str(triple.tuned), str(triple.base), 0.5)]


def test_resume_refuses_other_settings_and_names_them(triple, pairs, tmp_path):
    rows = [{"id": i, "prompt": f"Number {i} is"} for i in range(3)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    run = lambda engine, sampling=DEFAULTS, max_tokens=8, **kw: batch_file(  # noqa: E731
        engine, src, out, sampling=sampling, max_tokens=max_tokens, progress=False, **kw)
    with RastEngine(triple.large, pairs, n_ctx=128, n_threads=1, n_seq_max=3) as engine:
        run(engine)
        first = out.read_bytes()
        assert all(json.loads(line)["fingerprint"]["temp"] == 0.8 for line in first.splitlines())
        with pytest.raises(BatchOutputError, match=r"line 1 \(id 0\) was made with other settings: temp was 0.8, "
                                                   r"now 1.0; give a new -o .* or --overwrite"):
            run(engine, dataclasses.replace(DEFAULTS, temp=1.0))
        with pytest.raises(BatchOutputError, match="max_tokens was 8, now 9"):
            run(engine, max_tokens=9)
        engine.set_alpha(1.0)
        with pytest.raises(BatchOutputError, match=r"alpha was \[0.5\], now \[1.0\]"):
            run(engine)
        engine.set_alpha(0.5)
        rows[1]["prompt"] = "A changed prompt"
        write_jsonl(src, rows)
        with pytest.raises(BatchOutputError, match=r"line 2 \(id 1\) .*the prompt \(or messages\) differs"):
            run(engine)
        assert out.read_bytes() == first
        summary = run(engine, dataclasses.replace(DEFAULTS, temp=1.0), overwrite=True)
        assert summary.n_written == 3 and summary.n_resumed == 0
        assert all(json.loads(line)["fingerprint"]["temp"] == 1.0 for line in out.read_bytes().splitlines())
    swapped = [DeltaPair(str(triple.base), str(triple.tuned), 0.5)]
    with RastEngine(triple.large, swapped, n_ctx=128, n_threads=1, n_seq_max=3) as engine:
        with pytest.raises(BatchOutputError, match="the model files differ"):
            run(engine, dataclasses.replace(DEFAULTS, temp=1.0))


def rast(*args):
    return subprocess.Popen([sys.executable, "-m", "rast_gguf.cli.app", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_concurrent_batch_runs_second_refused_records_written_once(triple, tmp_path):
    rows = [{"id": f"q{i}", "prompt": f"Question {i}: what is {i} + 1?\nAnswer:"} for i in range(24)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    args = ["batch", src, "-o", out, "-m", triple.large, "--base", triple.base, "--tuned", triple.tuned,
            "-n", "24", "-c", "128", "-t", "1", "-np", "2", "--no-progress"]
    first = rast(*args)
    deadline = time.monotonic() + 300
    while not (out.exists() and out.stat().st_size) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(first.pid, signal.SIGSTOP)  # mid-run, holding its output, however fast the machine is
    try:
        assert first.poll() is None and len(out.read_text().splitlines()) < len(rows)
        second = rast(*args)
        assert second.wait(timeout=300) == 1
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.stderr.read().splitlines() == [f"error: {out} is in use by another rast run; wait for it to "
                                                 "finish or give another -o"]
    assert first.wait(timeout=300) == 0, first.stderr.read()
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == [r["id"] for r in rows]


def test_cli_refuses_input_as_output(triple, tmp_path):
    src = write_jsonl(tmp_path / "same.jsonl", [{"id": 1, "prompt": "a"}, {"id": 2, "prompt": "b"}])
    before = src.read_bytes()
    proc = rast("batch", src, "-o", src, "-m", triple.large, "-n", "4", "-c", "64", "-t", "1", "--no-progress")
    assert proc.wait(timeout=120) == 1
    err = proc.stderr.read().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the output") and "is the input file" in err[0]
    assert src.read_bytes() == before


def test_eval_refuses_other_settings_and_a_locked_folder(tmp_path):
    from rast_gguf.demo import TEMPLATE, ToyTriple, toy_configs, toy_grader, toy_problems
    from rast_gguf.evaluate import evaluate

    toy = ToyTriple.shipped()
    configs = [c for c in toy_configs(toy, [1.0]) if c.name == "large base"]
    problems = toy_problems(3)

    def run(**kw):
        kw = {"n": 1, "sampling": SamplingParams(temp=0.0, seed=0), **kw}
        return evaluate(configs, problems, tmp_path, template=TEMPLATE, max_tokens=32, n_parallel=3, n_ctx=128,
                        n_threads=1, progress=False, grader=toy_grader, **kw)

    greedy = run()
    with pytest.raises(BatchOutputError, match="other settings: n was 1, now 4"):
        run(n=4, sampling=SamplingParams(temp=1.0, seed=0))
    with pytest.raises(BatchOutputError, match="temp was 0.0, now 1.0"):
        run(sampling=SamplingParams(temp=1.0, seed=0))
    with lock_folder(tmp_path):
        with pytest.raises(BatchOutputError, match="in use by another rast run"):
            run()
    again = run()
    assert again.results[0].correct == greedy.results[0].correct
    sampled = run(n=4, sampling=SamplingParams(temp=1.0, seed=0), overwrite=True)
    assert sampled.n_samples == 4
