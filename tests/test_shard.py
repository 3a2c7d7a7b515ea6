"""`rast batch --shard I/N` and `rast batch merge`: the share of each shard against a hash computed
here, merge checks on hand-made outputs, and 4 shard processes (one SIGKILLed and resumed) that
merge to exactly the bytes of an unsharded run."""

import llama_cpp  # noqa: F401

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rast_gguf.errors import BatchOutputError, ShardMergeError, UsageError
from rast_gguf.jsonl import parse_lines
from rast_gguf.sampling import SamplingParams
from rast_gguf.shard import Shard, check_output_belongs, merge_shards, select_records, shard_output_path

RAST = Path(sys.executable).parent / "rast"  # the installed entry point, as a user runs it


def expected_shard(record_id, n):
    """An independent statement of the rule: sha256 of the id's JSON text, first 8 bytes big-endian, mod N."""
    text = json.dumps(record_id, ensure_ascii=False)
    return int(hashlib.sha256(text.encode()).hexdigest()[:16], 16) % n


def records_of(ids):
    lines = [json.dumps({"id": i, "prompt": f"p{i}"}).encode() for i in ids]
    records, problems = parse_lines(lines, SamplingParams(seed=0), 8)
    assert problems == []
    return records


def test_shards_split_by_id_hash_whatever_the_order():
    ids = [f"q{i}" for i in range(200)] + list(range(100)) + ["é", "1"]
    records = records_of(ids)
    shuffled = records_of(random.Random(3).sample(ids, len(ids)))
    for n in (1, 3, 4):
        shares = [select_records(records, Shard(i, n)) for i in range(n)]
        assert sorted(len(s) for s in shares)[0] > 0
        assert sum(len(s) for s in shares) == len(ids)
        for i, share in enumerate(shares):
            assert [r.id for r in share] == [x for x in ids if expected_shard(x, n) == i]  # input order kept
            assert {r.key for r in select_records(shuffled, Shard(i, n))} == {r.key for r in share}
    # 1 and "1" are different ids and may land in different shards, each exactly once
    assert sum(any(r.id == 1 for r in select_records(records, Shard(i, 4))) for i in range(4)) == 1


def test_parse_shard_spec_and_environment():
    assert Shard.parse("3/8") == Shard(3, 8) and str(Shard(3, 8)) == "3/8"
    assert Shard.parse("auto/8", {"SLURM_ARRAY_TASK_ID": "5"}) == Shard(5, 8)
    assert Shard.parse("/4", {"JOB_COMPLETION_INDEX": "0"}) == Shard(0, 4)
    for bad, match in [("8", "I/N"), ("3/0", "I/N"), ("-1/4", "I/N"), ("x/4", "I/N"), ("4/4", "0 to 3"),
                       ("auto/4", "neither is set")]:
        with pytest.raises(UsageError, match=match):
            Shard.parse(bad, {})
    with pytest.raises(UsageError, match=r"shard index 9 \(from SLURM_ARRAY_TASK_ID\) is out of range.*--array=0-3"):
        Shard.parse("auto/4", {"SLURM_ARRAY_TASK_ID": "9"})


def test_shard_output_names():
    assert shard_output_path("out/answers.jsonl", Shard(3, 8)) == Path("out/answers.shard-3-of-8.jsonl")
    assert shard_output_path("answers", Shard(0, 2)) == Path("answers.shard-0-of-2")
    assert shard_output_path("part-{i}-{n}.jsonl", Shard(1, 4)) == Path("part-1-4.jsonl")


def write_lines(path, rows, tail=b""):
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + tail)
    return path


def test_merge_checks_every_id_once_and_writes_input_order(tmp_path):
    ids = [f"r{i}" for i in range(10)]
    keys = [json.dumps(i) for i in ids]
    shards = [write_lines(tmp_path / f"a.shard-{s}-of-3.jsonl", [{"id": i, "text": i.upper()} for i in ids
                                                                 if expected_shard(i, 3) == s]) for s in range(3)]
    out = tmp_path / "merged.jsonl"
    summary = merge_shards(list(reversed(shards)), out, input_ids=keys)
    assert summary.n_records == 10 and [json.loads(line)["id"] for line in out.read_text().splitlines()] == ids

    # without the input: shard files in index order, each in its own order
    merge_shards(shards[::-1], tmp_path / "no_input.jsonl")
    expected = b"".join(p.read_bytes() for p in shards)
    assert (tmp_path / "no_input.jsonl").read_bytes() == expected

    before = out.read_bytes()
    with pytest.raises(ShardMergeError, match=r'2 of the 12 input ids missing \("x", "y"'):
        merge_shards(shards, out, input_ids=keys + ['"x"', '"y"'])
    dup = write_lines(tmp_path / "dup.jsonl", [{"id": "r4", "text": "again"}])
    with pytest.raises(ShardMergeError, match=r'1 ids in more than one place \("r4" in .*a.shard-\d-of-3.jsonl and '
                                              r'.*dup.jsonl\)'):
        merge_shards([*shards, dup], out, input_ids=keys)
    with pytest.raises(ShardMergeError, match=r'1 ids not in the input \("r9"'):
        merge_shards(shards, out, input_ids=keys[:-1])
    with pytest.raises(ShardMergeError, match="no output given for shard 1 of 3"):
        merge_shards([shards[0], shards[2]], out)
    torn = write_lines(tmp_path / "torn.jsonl", [{"id": "r0"}], tail=b'{"id": "r1", "te')
    with pytest.raises(ShardMergeError, match="torn.jsonl ends in a torn line"):
        merge_shards([torn], out)
    assert out.read_bytes() == before  # a failed merge writes nothing
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left

    partial = merge_shards(shards[:2], tmp_path / "partial.jsonl", input_ids=keys, allow_missing=True)
    assert partial.missing == [k for k in keys if expected_shard(json.loads(k), 3) == 2]


def test_resuming_another_shards_output_is_refused(tmp_path):
    theirs = next(i for i in range(100) if expected_shard(f"r{i}", 2) == 1)
    out = write_lines(tmp_path / "a.jsonl", [{"id": f"r{theirs}", "text": "x"}])
    check_output_belongs(out, Shard(1, 2))
    with pytest.raises(BatchOutputError, match=f'holds id "r{theirs}", which belongs to shard 1/2, not 0/2'):
        check_output_belongs(out, Shard(0, 2))


def test_merge_cli_errors_are_one_line(tmp_path):
    good = write_lines(tmp_path / "a.shard-0-of-2.jsonl", [{"id": 1}])
    proc = subprocess.run([str(RAST), "batch", "merge", good, "-o", tmp_path / "m.jsonl"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "error: no output given for shard 1 of 2; nothing written"]
    assert not (tmp_path / "m.jsonl").exists()


def rast_batch(*args, env=None):
    return subprocess.Popen([str(RAST), "batch", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})


def test_four_shard_processes_one_killed_merge_to_the_unsharded_run(triple, tmp_path):
    rows = [{"id": f"q{i}", "prompt": f"Question {i}: what is {i} + {2 * i}?\nAnswer:", "gold": i}
            for i in range(36)]
    rows.insert(5, {"id": 1000, "prompt": "Two samples, sampled:", "n": 2, "temp": 0.9})
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [src, "-m", triple.large, "--base", triple.base, "--tuned", triple.tuned, "-n", "24", "-c", "128",
              "-t", "1", "-np", "2", "--temp", "0", "--seed", "3", "--no-progress"]
    unsharded = tmp_path / "unsharded.jsonl"
    proc = rast_batch(*common, "-o", unsharded)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()

    out = tmp_path / "answers.jsonl"
    # shards 0 and 1 name their index, 2 and 3 take it from the job scheduler's variable
    procs = [rast_batch(*common, "-o", out, "--shard", "0/4"), rast_batch(*common, "-o", out, "--shard", "1/4"),
             rast_batch(*common, "-o", out, "--shard", "auto/4", env={"SLURM_ARRAY_TASK_ID": "2"}),
             rast_batch(*common, "-o", out, "--shard", "/4", env={"JOB_COMPLETION_INDEX": "3"})]
    paths = [tmp_path / f"answers.shard-{i}-of-4.jsonl" for i in range(4)]
    victim = max(range(4), key=lambda i: sum(expected_shard(r["id"], 4) == i for r in rows))
    while procs[victim].poll() is None:  # SIGKILL the biggest shard once it has written two records
        if paths[victim].exists() and paths[victim].read_bytes().count(b"\n") >= 2:
            os.kill(procs[victim].pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    codes = [p.wait(timeout=300) for p in procs]
    assert codes[victim] == -signal.SIGKILL, "the shard finished before it could be killed"
    assert all(rc == 0 for i, rc in enumerate(codes) if i != victim), [p.stderr.read() for p in procs]
    with pytest.raises(subprocess.CalledProcessError):  # incomplete: the killed shard's records are missing
        subprocess.run([str(RAST), "batch", "merge", *paths, "-o", tmp_path / "early.jsonl", "--input", src],
                       check=True, capture_output=True, timeout=60)

    resumed = rast_batch(*common, "-o", out, "--shard", f"{victim}/4")
    assert resumed.wait(timeout=300) == 0
    assert "already there" in resumed.stderr.read()
    for i, path in enumerate(paths):  # each record once, in its own shard (lines come in completion order)
        ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
        expected = [r["id"] for r in rows if expected_shard(r["id"], 4) == i]
        assert len(ids) == len(expected) and sorted(map(str, ids)) == sorted(map(str, expected))

    merged = tmp_path / "merged.jsonl"
    proc = subprocess.run([str(RAST), "batch", "merge", *paths, "-o", merged, "--input", src],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"{merged}: 37 records from 4 shard outputs" in proc.stderr
    # the merge is in input order, an unsharded run in completion order: the same lines, byte for byte
    by_id = {json.loads(line)["id"]: line for line in unsharded.read_bytes().splitlines()}
    assert len(by_id) == len(rows)
    assert merged.read_bytes().splitlines() == [by_id[r["id"]] for r in rows]
