"""Batch input: JSONL lines parsed and validated into `BatchRecord`s, bad lines named by number.

One record per line: `id` (string or integer, unique), then `prompt` (raw text) or `messages`
(a chat, [{"role", "content"}], rendered with the large model's template later), and optionally
`n` (samples per record, for pass@k), `max_tokens`, `stop` (a string or a list), `alpha` (one
value for every pair) and the sampling fields `temp`, `top_k`, `top_p`, `min_p`, `seed`, which
override the defaults given by the caller. Any other field is passed through to the output.
`read_records` never raises for a bad line: it returns the good records and one (line number,
reason) per bad line, and leaves skipping or aborting to the caller. Blank lines are not records.
This module knows nothing about models: it does not tokenize, so a prompt too long for the
context is found later (rast_gguf.batch).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rast_gguf.errors import BatchInputError, RastError, SamplingParamsError
from rast_gguf.sampling import SEED_RANDOM, SamplingParams

SAMPLING_FIELDS = ("temp", "top_k", "top_p", "min_p", "seed")
_NUMBER_FIELDS = {"temp": float, "top_p": float, "min_p": float, "alpha": float,
                  "top_k": int, "seed": int, "n": int, "max_tokens": int}
_FLAG_NAMES = {"--top-k": "top_k", "--top-p": "top_p", "--min-p": "min_p", "--temp": "temp", "--seed": "seed"}
MAX_SAMPLES = 1024


@dataclass(frozen=True)
class BatchRecord:
    line: int                    # 1-based line number in the input
    id: str | int
    prompt: str | None           # exactly one of prompt / messages
    messages: list[dict] | None
    sampling: SamplingParams     # defaults with this record's overrides
    max_tokens: int
    n: int = 1
    stop: tuple[str, ...] = ()
    alpha: float | None = None   # None: the engine's alphas
    fields: dict = dataclasses.field(default_factory=dict)  # the input object, as read

    @property
    def key(self) -> str:
        return id_key(self.id)


class _BadLine(Exception):
    pass


def id_key(record_id) -> str:
    """A canonical text for an id (so 1 and "1" stay distinct)."""
    return json.dumps(record_id, ensure_ascii=False)


def _number(obj: dict, name: str):
    value = obj[name]
    kind = _NUMBER_FIELDS[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _BadLine(f"'{name}' must be a number, got {json.dumps(value)[:40]}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise _BadLine(f"'{name}' must be an integer, got {value}")
        return int(value)
    if not math.isfinite(value):
        raise _BadLine(f"'{name}' must be finite, got {value}")
    return float(value)


def _messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _BadLine("'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise _BadLine(f"'messages'[{i}] must be an object with string 'role' and 'content'")
    return value


def _check_text(obj) -> None:
    """Refuse strings that are not text: JSON can spell lone UTF-16 surrogates ("\\ud800"),
    which no tokenizer or UTF-8 output can hold."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise _BadLine(f"holds a lone UTF-16 surrogate ({e.object[e.start:e.end]!a}), which is not text") from None
    except (RecursionError, ValueError):
        raise _BadLine("not valid JSON here (nested too deeply)") from None


def parse_record(obj, line: int, sampling: SamplingParams, max_tokens: int) -> BatchRecord:
    if not isinstance(obj, dict):
        raise _BadLine(f"expected a JSON object, got {type(obj).__name__}")
    record_id = obj.get("id")
    if isinstance(record_id, bool) or not isinstance(record_id, (str, int)):
        raise _BadLine("missing 'id' (a string or an integer)")
    if ("prompt" in obj) == ("messages" in obj):
        raise _BadLine("give exactly one of 'prompt' (text) and 'messages' (a chat)")
    prompt = obj.get("prompt")
    if "prompt" in obj and (not isinstance(prompt, str) or not prompt):
        raise _BadLine("'prompt' must be a non-empty string")
    messages = _messages(obj["messages"]) if "messages" in obj else None
    overrides = {name: _number(obj, name) for name in SAMPLING_FIELDS if name in obj}
    if overrides.get("seed") == SEED_RANDOM:
        raise _BadLine(f"'seed' {SEED_RANDOM} means random; a batch needs fixed seeds")
    try:
        record_sampling = dataclasses.replace(sampling, **overrides)
    except SamplingParamsError as e:
        message = str(e)
        for flag, name in _FLAG_NAMES.items():
            message = message.replace(flag, f"'{name}'")
        raise _BadLine(message) from None
    n = _number(obj, "n") if "n" in obj else 1
    if not 1 <= n <= MAX_SAMPLES:
        raise _BadLine(f"'n' must be in [1, {MAX_SAMPLES}], got {n}")
    record_max_tokens = _number(obj, "max_tokens") if "max_tokens" in obj else max_tokens
    if record_max_tokens < 1:
        raise _BadLine(f"'max_tokens' must be >= 1, got {record_max_tokens}")
    stop = obj.get("stop", [])
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _BadLine("'stop' must be a string or a list of strings")
    alpha = _number(obj, "alpha") if "alpha" in obj else None
    return BatchRecord(line, record_id, prompt, messages, record_sampling, record_max_tokens, n, tuple(stop),
                       alpha, obj)


def parse_lines(lines: Iterable[bytes], sampling: SamplingParams, max_tokens: int
                ) -> tuple[list[BatchRecord], list[tuple[int, str]]]:
    """(good records, [(line number, reason)]) for JSONL lines given as bytes."""
    records, problems, seen = [], [], {}
    for line_no, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise _BadLine("not UTF-8 text") from None
            except json.JSONDecodeError as e:
                raise _BadLine(f"not valid JSON ({e.msg} at column {e.colno})") from None
            except RecursionError:
                raise _BadLine("not valid JSON here (nested too deeply)") from None
            except ValueError as e:  # Python's limit on integer literals (4300 digits)
                why = "an integer of more than 4300 digits" if "digits" in str(e) else str(e).splitlines()[0][:80]
                raise _BadLine(f"not valid JSON here ({why})") from None
            _check_text(obj)
            record = parse_record(obj, line_no, sampling, max_tokens)
            if record.key in seen:
                raise _BadLine(f"duplicate id {record.key} (first on line {seen[record.key]})")
        except _BadLine as e:
            problems.append((line_no, str(e)))
            continue
        seen[record.key] = line_no
        records.append(record)
    return records, problems


def read_records(path: str | Path, sampling: SamplingParams, max_tokens: int
                 ) -> tuple[list[BatchRecord], list[tuple[int, str]]]:
    """parse_lines over a file; the defaults must have a fixed seed (each sample's seed derives from it)."""
    if sampling.seed == SEED_RANDOM:
        raise BatchInputError("a batch needs a fixed --seed so that a restarted run makes the same outputs")
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RastError(f"cannot read the batch input {path}: {e.strerror or e}") from None
    return parse_lines(data.splitlines(), sampling, max_tokens)
