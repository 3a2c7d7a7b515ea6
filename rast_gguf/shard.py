"""Sharded batch runs: N processes (a Slurm job array, a Kubernetes indexed job) each take a fixed
share of a batch's records and write their own output; `merge_shards` joins the outputs into one.

A record belongs to shard `int(sha256(id_key(id))[:8]) % N`: its share depends only on its id and
on N, never on the input's order or on the other shards, so a shard can be run, killed and resumed
alone (rast_gguf.batch resumes each shard's own output as it resumes any output). Sample seeds
derive from the seed, the record id and the sample index (rast_gguf.batch.derive_seed), so a
record's result does not depend on N. `Shard.parse("I/N")` reads the index from the job
scheduler's environment when I is `auto` or left out (`/N`). `shard_output_path` names a shard's
output: OUT with `{i}`/`{n}` filled in when OUT is a template, else OUT with `.shard-I-of-N` put
before its extension. `merge_shards` checks that every id is present exactly once across the
outputs (and, given the input, that the outputs hold exactly the input's records), then writes the
lines unchanged, in input order when the input is given, to one file replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rast_gguf.errors import BatchOutputError, ShardMergeError, UsageError
from rast_gguf.jsonl import BatchRecord, id_key

INDEX_VARIABLES = ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")  # Slurm job arrays, Kubernetes indexed jobs
_SHARD_NAME = re.compile(r"\.shard-(\d+)-of-(\d+)(?=\.[^.]*$|$)")
_SHOW_IDS = 10


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, spec: str, environ: Mapping[str, str] = os.environ) -> "Shard":
        """'I/N', or 'auto/N' and '/N' for the index in SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX."""
        index_text, slash, count_text = spec.strip().partition("/")
        if not slash or not count_text.strip().isdigit() or int(count_text) < 1:
            raise UsageError(f"--shard must be I/N (I from 0 to N-1) or auto/N, got {spec!r}")
        count = int(count_text)
        index_text = index_text.strip()
        if index_text in ("", "auto"):
            found = [(name, environ[name]) for name in INDEX_VARIABLES if environ.get(name, "").strip()]
            if not found:
                raise UsageError(f"--shard {spec} takes the index from {' or '.join(INDEX_VARIABLES)}, but neither is "
                                 f"set; give it yourself: --shard 0/{count}")
            name, index_text = found[0]
            if not index_text.strip().isdigit():
                raise UsageError(f"{name}={index_text!r} is not a shard index (an integer from 0 to {count - 1})")
            source = f" (from {name})"
        elif index_text.isdigit():
            source = ""
        else:
            raise UsageError(f"--shard must be I/N (I from 0 to N-1) or auto/N, got {spec!r}")
        index = int(index_text)
        if index >= count:
            raise UsageError(f"shard index {index}{source} is out of range for {count} shards: indices count from 0 "
                             f"to {count - 1} (Slurm: --array=0-{count - 1}; Kubernetes: completions: {count})")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, record_key: str) -> bool:
        return shard_index(record_key, self.count) == self.index


def shard_index(record_key: str, n_shards: int) -> int:
    """The shard of a record, from its canonical id key (rast_gguf.jsonl.id_key) alone."""
    digest = hashlib.sha256(record_key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n_shards


def select_records(records: Sequence[BatchRecord], shard: Shard) -> list[BatchRecord]:
    """The records of one shard, in input order."""
    return [r for r in records if shard.holds(r.key)]


def shard_output_path(out: str | os.PathLike, shard: Shard) -> Path:
    """OUT with {i} and {n} filled in if it has them; else answers.jsonl -> answers.shard-3-of-8.jsonl."""
    text = str(out)
    if "{i}" in text:
        return Path(text.replace("{i}", str(shard.index)).replace("{n}", str(shard.count)))
    path = Path(text)
    suffix = path.suffix if path.suffix else ""
    return path.with_name(f"{path.name[:len(path.name) - len(suffix)]}.shard-{shard.index}-of-{shard.count}{suffix}")


def check_output_belongs(out_path: Path, shard: Shard) -> None:
    """Refuse to resume an output that holds another shard's records (written with another --shard)."""
    if not out_path.exists():
        return
    for line_no, raw in enumerate(out_path.read_bytes().splitlines(), start=1):
        try:
            key = id_key(json.loads(raw)["id"])
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line or a foreign file: rast_gguf.batch reports it
        if not shard.holds(key):
            raise BatchOutputError(f"{out_path} line {line_no} holds id {key}, which belongs to shard "
                                   f"{shard_index(key, shard.count)}/{shard.count}, not {shard}: was this file written "
                                   "with another --shard? Give another -o or delete the file")


# --- merge ----------------------------------------------------------------------------------------

@dataclass
class MergeSummary:
    n_records: int = 0
    n_files: int = 0
    missing: list[str] = field(default_factory=list)  # ids of the input in no shard output (with allow_missing)


def _shown(keys: Sequence[str]) -> str:
    more = f" and {len(keys) - _SHOW_IDS} more" if len(keys) > _SHOW_IDS else ""
    return ", ".join(keys[:_SHOW_IDS]) + more


def _read_shard_lines(path: Path) -> list[tuple[str, bytes]]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ShardMergeError(f"cannot read the shard output {path}: {e.strerror or e}") from None
    if data and not data.endswith(b"\n"):
        raise ShardMergeError(f"{path} ends in a torn line: its run was killed before it finished; run that shard "
                              "again (it resumes) and merge after")
    lines = []
    for line_no, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            key = id_key(json.loads(raw)["id"])
        except (ValueError, KeyError, TypeError):
            raise ShardMergeError(f"{path} line {line_no} is not a result record of rast batch") from None
        lines.append((key, raw))
    return lines


def _shard_name_order(paths: Sequence[Path]) -> list[Path]:
    """Paths named *.shard-I-of-N* in index order (so shard-10 follows shard-9); others as given."""
    named = [_SHARD_NAME.search(p.name) for p in paths]
    if not all(named):
        return list(paths)
    return [p for _, p in sorted(zip(named, paths), key=lambda mp: int(mp[0].group(1)))]


def _missing_shard_files(paths: Sequence[Path]) -> str:
    named = [_SHARD_NAME.search(p.name) for p in paths]
    if not paths or not all(named):
        return ""
    counts = {int(m.group(2)) for m in named}
    if len(counts) != 1:
        return f"the outputs come from runs with different shard counts ({', '.join(map(str, sorted(counts)))})"
    count = counts.pop()
    absent = sorted(set(range(count)) - {int(m.group(1)) for m in named})
    if absent:
        return f"no output given for shard {', '.join(map(str, absent))} of {count}"
    return ""


def merge_shards(paths: Sequence[str | os.PathLike], out_path: str | os.PathLike, *,
                 input_ids: Sequence[str] | None = None, allow_missing: bool = False) -> MergeSummary:
    """Join shard outputs into out_path; see the module docstring.

    `input_ids` are the canonical id keys of the input's records in input order (None: no input,
    so shard files of our naming must all be there and the order is shard by shard). Raises
    ShardMergeError, and writes nothing, when an id is duplicated, or is missing (unless
    allow_missing), or is not in the input.
    """
    paths = [Path(p) for p in paths]
    out_path = Path(out_path)
    if not paths:
        raise UsageError("give the shard outputs to merge (e.g. answers.shard-*.jsonl)")
    if any(p.resolve() == out_path.resolve() for p in paths):
        raise UsageError(f"-o {out_path} is one of the shard outputs; give another file")
    if input_ids is None and (problem := _missing_shard_files(paths)):
        raise ShardMergeError(f"{problem}; nothing written")
    ordered = _shard_name_order(paths) if input_ids is None else paths
    found: dict[str, tuple[Path, bytes]] = {}
    duplicated: dict[str, list[str]] = {}
    for path in ordered:
        for key, raw in _read_shard_lines(path):
            if key in found:
                duplicated.setdefault(key, [str(found[key][0])]).append(str(path))
            else:
                found[key] = (path, raw)
    problems = []
    if duplicated:
        where = "; ".join(f"{k} in {' and '.join(v)}" for k, v in list(duplicated.items())[:_SHOW_IDS])
        problems.append(f"{len(duplicated)} ids in more than one place ({where})")
    missing: list[str] = []
    if input_ids is not None:
        wanted = set(input_ids)
        missing = [k for k in input_ids if k not in found]
        extra = [k for k in found if k not in wanted]
        if missing and not allow_missing:
            problems.append(f"{len(missing)} of the {len(input_ids)} input ids missing ({_shown(missing)}; a shard "
                            "that has not finished, or records its run skipped as bad)")
        if extra:
            problems.append(f"{len(extra)} ids not in the input ({_shown(extra)}: outputs of another input?)")
    if problems:
        raise ShardMergeError("; ".join(problems) + "; nothing written")

    keys = [k for k in input_ids if k in found] if input_ids is not None else list(found)
    _write_atomically(out_path, (found[k][1] for k in keys))
    return MergeSummary(n_records=len(keys), n_files=len(paths), missing=missing)


def _write_atomically(out_path: Path, lines) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for raw in lines:
                f.write(raw + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
