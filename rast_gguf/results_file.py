"""The results file of `rast batch` (and of each `rast eval` configuration): one JSON line per
record, appended as records finish, resumable, held by one run at a time, and tied to the settings
that made it.

`ResultsFile(out_path, fingerprints, input_path=...)` opens the output for one run: it refuses an
output that is the input (same file, also through a link: compared by st_dev/st_ino), takes an
exclusive `flock` on it (a second run on the same output is refused, not interleaved), and reads
what is there. Every complete line must be a record of ours (a JSON object with an `id` and a
`fingerprint`), or the file is refused as not a results file; only then is a torn last line (a
kill mid-write) cut off, so a file that is not ours is never shortened. A record whose id is
asked for again must carry the same fingerprint as now, or the run is refused, naming the setting
that changed: the fingerprint holds what shapes a result (the model files' identity, alpha,
sampling, max tokens, stop strings, samples per record and a hash of the prompt). `overwrite`
empties the file instead (after taking the lock). `write(result, key)` appends one line and
flushes it. `lock_folder(path)` holds an eval run folder the same way.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from rast_gguf.errors import BatchOutputError

FINGERPRINT_FIELD = "fingerprint"
_SAMPLE_BYTES = 1 << 20        # bytes hashed at each end of a model file
_MIDDLE_SAMPLES = 16           # and this many 64 KiB blocks spread between
_HASHED = {"models", "prompt"}  # fingerprint keys stored as hashes (no values to show)
_RECORD_START = b'{"id": '     # how every line we write begins


def short_hash(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:16]


_identity_cache: dict[tuple, str] = {}


def model_identity(path: str | os.PathLike) -> str:
    """A content identity of a model file (its size and hashes of its head, tail and spread
    blocks), the same for a copy or a move of the file, different for other weights."""
    path = Path(path)
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _identity_cache:
        digest = hashlib.sha256(str(st.st_size).encode())
        with open(path, "rb") as f:
            digest.update(f.read(_SAMPLE_BYTES))
            for i in range(1, _MIDDLE_SAMPLES + 1):
                f.seek(st.st_size * i // (_MIDDLE_SAMPLES + 1))
                digest.update(f.read(1 << 16))
            f.seek(max(0, st.st_size - _SAMPLE_BYTES))
            digest.update(f.read(_SAMPLE_BYTES))
        _identity_cache[key] = digest.hexdigest()[:16]
    return _identity_cache[key]


def models_identity(paths) -> str:
    return short_hash("\0".join(model_identity(p) for p in paths))


def _describe(name: str, old, new) -> str:
    if name in _HASHED:
        return {"models": "the model files differ", "prompt": "the prompt (or messages) differs"}[name]
    return f"{name} was {json.dumps(old)}, now {json.dumps(new)}"


def fingerprint_difference(old: Mapping, new: Mapping) -> str | None:
    """None when equal, else a phrase naming the first setting that differs."""
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            return _describe(name, old.get(name), new.get(name))
    return None


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _lock(fd: int, what: Path, hint: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BatchOutputError(f"{what} is in use by another rast run; wait for it to finish or {hint}") from None


class FolderLock:
    """An exclusive flock on a folder (an eval run folder), released by close()."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_RDONLY)
        _lock(self.fd, self.path, "give another -o folder")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the lock
            self.fd = -1

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def lock_folder(path: str | os.PathLike) -> FolderLock:
    return FolderLock(path)


def _our_record(raw: bytes):
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if isinstance(obj, dict) and "id" in obj and isinstance(obj.get(FINGERPRINT_FIELD), dict):
        return obj
    return None


class ResultsFile:
    """One run's hold on its output (see the module docstring); use as a context manager."""

    def __init__(self, out_path: str | os.PathLike, fingerprints: Mapping[str, dict], *,
                 input_path: str | os.PathLike | None = None, overwrite: bool = False):
        from rast_gguf.jsonl import id_key

        self.path = Path(out_path)
        self.fingerprints = fingerprints
        if input_path is not None and same_file(input_path, self.path):
            raise BatchOutputError(f"the output {self.path} is the input file {input_path}; "
                                   "give another -o (the results must not overwrite the prompts)")
        if self.path.is_dir():
            raise BatchOutputError(f"the output {self.path} is a folder; give a file name with -o")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as e:
            raise BatchOutputError(f"cannot open the output {self.path}: {e.strerror or e}") from None
        _lock(fd, self.path, "give another -o")
        self._file = os.fdopen(fd, "r+b", buffering=0)
        try:
            if overwrite:
                os.ftruncate(fd, 0)
            self.done = self._read_done(id_key)
        except BaseException:
            self.close()
            raise

    def _refuse(self, why: str) -> BatchOutputError:
        return BatchOutputError(f"{self.path} {why}, so the run cannot resume from it; give another -o "
                                "(or --overwrite to replace the file)")

    def _read_done(self, id_key) -> set[str]:
        self._file.seek(0)
        data = self._file.read()
        lines = data.split(b"\n")
        tail = lines.pop()  # after the last newline: b"" or a line torn by a kill
        done = set()
        for line_no, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            record = _our_record(raw)
            if record is None:
                raise self._refuse(f"line {line_no} is not a result record of rast batch/eval "
                                   "(a JSON object with 'id' and 'fingerprint')")
            key = id_key(record["id"])
            expected = self.fingerprints.get(key)
            if expected is not None:
                difference = fingerprint_difference(record[FINGERPRINT_FIELD], expected)
                if difference:
                    raise BatchOutputError(
                        f"{self.path} line {line_no} (id {key}) was made with other settings: {difference}; "
                        "give a new -o for these settings, or --overwrite to discard the old results")
            done.add(key)
        if tail:
            if _our_record(tail) is not None:
                # a whole record whose newline was not written: keep it, complete the line
                self._file.write(b"\n")
                return self._read_done(id_key)
            if not done and not tail.startswith(_RECORD_START):
                raise self._refuse("is not a results file (its last line is not a result record and has "
                                   "no newline)")
            os.ftruncate(self._file.fileno(), len(data) - len(tail))  # cut the line torn by a kill
        return done

    def write(self, result: dict, key: str) -> None:
        """Append one result line (with its record's fingerprint) and flush it to the OS."""
        line = json.dumps({**result, FINGERPRINT_FIELD: self.fingerprints[key]}, ensure_ascii=False)
        self._file.write(line.encode("utf-8", "surrogatepass") + b"\n")
        self.done.add(key)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "ResultsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def record_fingerprint(record, models: str, engine_alphas: list[float], ignore_eos: bool = False) -> dict:
    """The settings that shape one batch record's result (see the module docstring)."""
    s = record.sampling
    prompt = record.prompt if record.prompt is not None else json.dumps(record.messages, ensure_ascii=False,
                                                                        sort_keys=True)
    alphas = [record.alpha] * len(engine_alphas) if record.alpha is not None else list(engine_alphas)
    fingerprint = {"models": models, "prompt": short_hash(prompt), "alpha": alphas, "temp": s.temp,
                   "top_k": s.top_k, "top_p": s.top_p, "min_p": s.min_p, "seed": s.seed,
                   "sampler_order": s.order, "max_tokens": record.max_tokens, "stop": list(record.stop),
                   "n": record.n}
    if ignore_eos:
        fingerprint["ignore_eos"] = True
    return fingerprint


def engine_fingerprints(engine, records, ignore_eos: bool = False) -> dict[str, dict]:
    """record key -> fingerprint, for records decoded by `engine` (its model files and alphas)."""
    paths = [engine.model_large.path] + [path for p in engine.pairs for path in (p.tuned, p.base)]
    models = models_identity(paths)
    alphas = [p.alpha for p in engine.pairs]
    return {r.key: record_fingerprint(r, models, alphas, ignore_eos) for r in records}
