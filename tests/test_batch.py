"""`rast batch`: records parsed with line numbers, parallel sequences equal to one-at-a-time
generation, outputs independent of -np, SIGKILL at random points and resume, bad lines, determinism.

One thread per model: on a loaded machine llama.cpp's spinning worker threads slow tiny models
down many times over."""

import llama_cpp  # noqa: F401

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from rast_gguf import DeltaPair, RastEngine, SamplingParams, generate
from rast_gguf.batch import batch_file, derive_seed, run_batch
from rast_gguf.errors import BatchInputError, BatchOutputError
from rast_gguf.jsonl import parse_lines, read_records

DEFAULTS = SamplingParams(temp=0.8, seed=7)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def model_args(t):
    return ["-m", t.large, "--base", t.base, "--tuned", t.tuned]


def rast_batch(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "rast_gguf.cli.app", "batch", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_parse_lines_reports_every_bad_line_by_number():
    lines = [
        '{"id": 1, "prompt": "a", "answer": 42}',
        'not json',
        '',
        '{"prompt": "no id"}',
        '{"id": 2, "prompt": "a", "messages": [{"role": "user", "content": "b"}]}',
        '{"id": 3, "prompt": "a", "temp": -1}',
        '{"id": 1, "prompt": "duplicate"}',
        '[1, 2]',
        '{"id": true, "prompt": "bool id"}',
        '{"id": 4, "prompt": "a", "n": 0}',
        '{"id": 5, "messages": [{"role": "user"}]}',
        '{"id": "5", "prompt": "b", "n": 3, "top_k": 5, "stop": "\\n", "max_tokens": 9, "alpha": 0.5}',
        '{"id": 5, "prompt": "int 5 differs from string 5"}',
        b'{"id": 6, "prompt": "\xff"}',
    ]
    records, problems = parse_lines([x if isinstance(x, bytes) else x.encode() for x in lines], DEFAULTS, 16)
    assert [r.id for r in records] == [1, "5", 5]
    bad = dict(problems)
    assert sorted(bad) == [2, 4, 5, 6, 7, 8, 9, 10, 11, 14]
    assert "not valid JSON" in bad[2] and "'id'" in bad[4] and "exactly one" in bad[5]
    assert "'temp' must be >= 0" in bad[6] and "duplicate id 1 (first on line 1)" in bad[7]
    assert "'n'" in bad[10] and "messages" in bad[11] and "UTF-8" in bad[14]
    first, second = records[0], records[1]
    assert first.line == 1 and first.fields["answer"] == 42 and first.sampling == DEFAULTS and first.max_tokens == 16
    assert second.line == 12 and second.n == 3 and second.stop == ("\n",) and second.max_tokens == 9
    assert second.alpha == 0.5 and second.sampling.top_k == 5 and second.sampling.temp == DEFAULTS.temp


@pytest.fixture(scope="module")
def pairs(triple):
    return [DeltaPair(str(triple.tuned), str(triple.base), 0.5)]


def test_parallel_sequences_equal_one_at_a_time_generation(triple, pairs, tmp_path):
    """Every sample of a 4-sequence batch equals generate() alone with that sample's seed: the
    sequences neither mix their KV caches nor read each other's logits rows."""
    rows = [{"id": "greedy", "prompt": "Once upon a time", "temp": 0},
            {"id": 2, "prompt": "Question: 3 + 4 = ?\nAnswer:", "n": 3},
            {"id": "short", "prompt": "Hello", "max_tokens": 5, "top_k": 3},
            {"id": "alpha", "prompt": "The quick brown fox", "alpha": -1.0, "n": 2, "temp": 1.0},
            {"id": "stop", "prompt": "One, two, three,", "stop": [" t", "e"], "seed": 123}]
    records, problems = read_records(write_jsonl(tmp_path / "in.jsonl", rows), DEFAULTS, 20)
    assert problems == []
    with RastEngine(triple.large, pairs, n_ctx=128, n_threads=1, n_seq_max=4) as engine:
        summary = run_batch(engine, records, tmp_path / "out.jsonl", progress=False)
    assert summary.n_written == 5 and summary.generated_tokens > 0
    by_id = {o["id"]: o for o in read_jsonl(tmp_path / "out.jsonl")}
    assert sorted(by_id, key=str) == sorted((r["id"] for r in rows), key=str)
    out = [by_id[r["id"]] for r in rows]

    texts = set()
    with RastEngine(triple.large, pairs, n_ctx=128, n_threads=1) as alone:
        for record, result in zip(records, out):
            if record.alpha is not None:
                alone.set_alpha(record.alpha)
            for k in range(record.n):
                seed = derive_seed(record.sampling.seed, record.key, k)
                expected = generate(alone, record.prompt, max_tokens=record.max_tokens, stop=record.stop,
                                    sampling=dataclasses.replace(record.sampling, seed=seed))
                got = [result[f] if record.n == 1 else result[f][k] for f in ("text", "finish_reason", "n_tokens")]
                assert got == [expected.text, expected.finish_reason, expected.generation_tokens], (record.id, k)
                assert result["prompt_tokens"] == expected.prompt_tokens
                texts.add(expected.text)
            alone.set_alpha(0.5)
    assert len(texts) == 8  # the samples of one record differ (their seeds do)
    assert out[4]["finish_reason"] == "stop" and out[2]["n_tokens"] == 5


def test_runs_repeat_exactly_and_ignore_their_own_output(triple, pairs, tmp_path):
    rows = [{"id": i, "prompt": f"Number {i} is", "n": 1 + i % 2} for i in range(7)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    with RastEngine(triple.large, pairs, n_ctx=128, n_threads=1, n_seq_max=3) as engine:
        batch_file(engine, src, tmp_path / "a.jsonl", sampling=DEFAULTS, max_tokens=12, progress=False)
        batch_file(engine, src, tmp_path / "b.jsonl", sampling=DEFAULTS, max_tokens=12, progress=False)
        again = batch_file(engine, src, tmp_path / "a.jsonl", sampling=DEFAULTS, max_tokens=12, progress=False)
        other_seed = tmp_path / "c.jsonl"
        batch_file(engine, src, other_seed, sampling=dataclasses.replace(DEFAULTS, seed=8), max_tokens=12,
                   progress=False)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert again.n_written == 0 and again.n_resumed == 7 and again.generated_tokens == 0
    assert read_jsonl(other_seed) != read_jsonl(tmp_path / "a.jsonl")


def test_torn_last_line_is_cut_and_rewritten(triple, pairs, tmp_path):
    rows = [{"id": f"r{i}", "prompt": f"Item {i}:"} for i in range(6)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    full, torn = tmp_path / "full.jsonl", tmp_path / "torn.jsonl"
    with RastEngine(triple.large, pairs, n_ctx=128, n_threads=1, n_seq_max=2) as engine:
        batch_file(engine, src, full, sampling=DEFAULTS, max_tokens=10, progress=False)
        lines = full.read_bytes().splitlines(keepends=True)
        torn.write_bytes(b"".join(lines[:3]) + lines[3][:17])
        resumed = batch_file(engine, src, torn, sampling=DEFAULTS, max_tokens=10, progress=False)
        (tmp_path / "foreign.jsonl").write_text('{"no": "id"}\n')
        with pytest.raises(BatchOutputError, match="foreign.jsonl line 1 is not a result record"):
            batch_file(engine, src, tmp_path / "foreign.jsonl", sampling=DEFAULTS, max_tokens=10, progress=False)
        with pytest.raises(BatchInputError, match="fixed --seed"):
            batch_file(engine, src, torn, sampling=SamplingParams(), max_tokens=10, progress=False)
    assert resumed.n_resumed == 3 and resumed.n_written == 3
    assert sorted(torn.read_bytes().splitlines()) == sorted(full.read_bytes().splitlines())


def test_sigkill_at_random_points_then_resume_equals_uninterrupted_run(triple, tmp_path):
    rows = [{"id": f"q{i}", "prompt": f"Question {i}: what is {i} + {3 * i}?\nAnswer:", "n": 1 + i % 3,
             "gold": i} for i in range(60)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    common = [src, *model_args(triple), "-n", "40", "-c", "128", "-t", "1", "-np", "4", "--temp", "0",
              "--seed", "5", "--no-progress"]
    reference = tmp_path / "reference.jsonl"
    proc = rast_batch(*common, "-o", reference)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    expected = reference.read_bytes()
    assert len(expected.splitlines()) == 60

    out = tmp_path / "killed.jsonl"
    rng = random.Random(1234)
    targets = sorted(rng.sample(range(1, 58), 4))
    killed_mid_run = 0
    for target in targets:
        proc = rast_batch(*common, "-o", out)
        size = -1
        while proc.poll() is None:
            if out.exists() and out.stat().st_size != size:
                size = out.stat().st_size
                if out.read_bytes().count(b"\n") >= target:
                    time.sleep(rng.uniform(0, 0.02))
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.002)
        rc = proc.wait(timeout=300)
        if rc == -signal.SIGKILL:
            killed_mid_run += 1
            written = out.read_bytes()
            complete = written[:written.rfind(b"\n") + 1].splitlines()
            assert set(complete) <= set(expected.splitlines()) and len(set(complete)) == len(complete)
        else:
            assert rc == 0, proc.stderr.read()
    assert killed_mid_run >= 3
    assert len(out.read_bytes().splitlines()) < 60

    proc = rast_batch(*common, "-o", out)
    assert proc.wait(timeout=300) == 0
    stderr = proc.stderr.read()
    assert "already there" in stderr
    ids = [r["id"] for r in read_jsonl(out)]
    assert sorted(ids) == sorted(r["id"] for r in rows) and len(set(ids)) == 60
    assert sorted(out.read_bytes().splitlines()) == sorted(expected.splitlines())  # lines in completion order


def test_cli_reports_bad_lines_and_strict_aborts(triple, tmp_path):
    long_prompt = "word " * 400
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "prompt": "Good one"}, "{oops", {"id": "a", "prompt": "again"},
        {"id": "long", "prompt": long_prompt}, {"id": "b", "prompt": "Another", "top_p": 2}, {"id": "c", "prompt": "Last"}])
    args = [src, *model_args(triple), "-n", "6", "-c", "128", "-t", "1", "-np", "2", "--no-progress"]
    proc = rast_batch(*args, "-o", tmp_path / "out.jsonl")
    assert proc.wait(timeout=120) == 0
    err = proc.stderr.read()
    assert "line 2: not valid JSON" in err and "line 3: duplicate id \"a\"" in err
    assert "line 4: the prompt has" in err and "line 5: 'top_p' must be in (0, 1]" in err
    assert "wrote 2 records" in err and "4 bad lines skipped" in err
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "out.jsonl")) == ["a", "c"]

    proc = rast_batch(*args, "-o", tmp_path / "strict.jsonl", "--strict")
    assert proc.wait(timeout=120) == 1
    err = proc.stderr.read()
    assert err.strip().splitlines() == ["error: line 2: not valid JSON (Expecting property name enclosed in double "
                                        "quotes at column 2) (run without --strict to skip bad lines)"]
    assert not (tmp_path / "strict.jsonl").exists()


def test_messages_records_use_the_chat_template(triple, pairs, tmp_path):
    from rast_gguf.chat_template import prompt_tokens

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "chat", "messages": chat, "temp": 0},
                                              {"id": "bad", "messages": [{"role": "robot", "content": "x"}]}])
    reported = []
    records, problems = read_records(src, DEFAULTS, 12)
    with RastEngine(triple.large, pairs, n_ctx=128, n_threads=1, n_seq_max=2) as engine:
        run_batch(engine, records, tmp_path / "out.jsonl", problems=problems, progress=False,
                  report=lambda line, reason: reported.append((line, reason)))
        tokens = prompt_tokens(engine, chat)
        expected = generate(engine, tokens, max_tokens=12, sampling=SamplingParams(temp=0))
        assert engine.model_large.token_text(tokens[0]) == "<|im_start|>"
    [out] = read_jsonl(tmp_path / "out.jsonl")
    assert out["text"] == expected.text and out["prompt_tokens"] == len(tokens) and "messages" not in out
    assert len(reported) == 1 and reported[0][0] == 2 and "role" in reported[0][1]


def test_outputs_do_not_depend_on_the_number_of_parallel_sequences(tmp_path):
    """The toy triple, -np 1 vs -np 16: greedy texts identical, and the sampled ones too (each sample
    has its own seed; llama.cpp's CPU numerics do not depend on the batch here)."""
    from rast_gguf.defaults import default_triple

    large, base, tuned = default_triple()
    rows = [{"id": i, "prompt": f"Q: {3 * i}+{17 * i}+{i}+{40 + i}\n", "n": 1 + i % 3,
             "max_tokens": 8 + 5 * (i % 4)} for i in range(12)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    outputs = {}
    for temp in (0.0, 0.9):
        for n_parallel in (1, 16):
            with RastEngine(large, [DeltaPair(str(tuned), str(base), 1.0)], n_ctx=128, n_threads=1,
                            n_seq_max=n_parallel) as engine:
                out = tmp_path / f"out-{temp}-{n_parallel}.jsonl"
                summary = batch_file(engine, src, out, sampling=SamplingParams(temp=temp, seed=3), max_tokens=8,
                                     progress=False)
            assert summary.n_written == 12
            outputs[temp, n_parallel] = {r["id"]: r for r in read_jsonl(out)}
            if n_parallel == 16:  # the samples of a record shared one prefill
                assert summary.stats.prompt_tokens_decoded < summary.stats.prompt_tokens_requested
    assert outputs[0.0, 1] == outputs[0.0, 16]
    assert outputs[0.9, 1] == outputs[0.9, 16]
    assert outputs[0.0, 1] != outputs[0.9, 1]
