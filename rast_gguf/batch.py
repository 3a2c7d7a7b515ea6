"""Batch generation: JSONL records in, one JSONL result per record out, many sequences decoding
together on a `rast_gguf.scheduler.Scheduler`, resumable after a kill.

Each record asks for `n` samples; every (record, sample) is a sequence, the n sequences of a
record one group (they share the prompt's prefill), each sampled by its own chain seeded from
the seed, the record id and the sample index, so a record's samples do not depend on -np or on
which records run beside it (where llama.cpp's numerics allow). Groups are submitted longest
max_tokens first and the scheduler keeps every slot busy; a record is written, one line, flushed,
as soon as its last sample ends, so lines come in completion order. A line torn by a kill is cut
off when the run restarts, and a resumed run decodes only the records missing from the output:
every id ends up exactly once (rast_gguf.results_file: the output is locked for the run, and
resumed only with the settings that made it). Bad records are reported with their line number and skipped, or
abort everything before decoding when `strict`.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from rast_gguf.engine import RastEngine
from rast_gguf.errors import BatchInputError, RastError
from rast_gguf.jsonl import BatchRecord, read_records
from rast_gguf.results_file import ResultsFile, engine_fingerprints
from rast_gguf.scheduler import Scheduler, SchedulerStats, SeqRequest, TokenEvent
from rast_gguf.sampling import SEED_RANDOM, SamplingParams

_INPUT_ONLY_FIELDS = ("id", "prompt", "messages")


@dataclass(frozen=True)
class Job:
    record_index: int
    sample_index: int
    tokens: list[int]
    sampling: SamplingParams
    record: BatchRecord


@dataclass
class Sample:
    text: str
    finish_reason: str
    n_tokens: int


@dataclass
class BatchSummary:
    n_records: int = 0      # good records in the input
    n_resumed: int = 0      # already in the output when the run started
    n_written: int = 0      # written by this run
    bad_lines: list[int] = field(default_factory=list)
    generated_tokens: int = 0
    seconds: float = 0.0
    stats: SchedulerStats | None = None  # the scheduler's counters (prompt tokens decoded, occupancy, ...)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


def derive_seed(seed: int, record_key: str, sample_index: int) -> int:
    digest = hashlib.sha256(f"{seed}\0{record_key}\0{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % SEED_RANDOM


def _prompt_tokens(engine: RastEngine, record: BatchRecord) -> list[int]:
    if record.prompt is not None:
        tokens = engine.tokenize(record.prompt)
    else:
        from rast_gguf.chat_template import prompt_tokens

        tokens = prompt_tokens(engine, record.messages)
    if not tokens:
        raise BatchInputError("the prompt is empty after tokenization")
    if len(tokens) >= engine.n_ctx:
        raise BatchInputError(f"the prompt has {len(tokens)} tokens but each sequence's context holds "
                              f"{engine.n_ctx}; use a larger -c/--ctx-size or a shorter prompt")
    return tokens


def plan_jobs(engine: RastEngine, records: Sequence[BatchRecord]) -> tuple[list[Job], list[tuple[int, str]]]:
    """Every (record, sample) job in input order, and (line, reason) for records that cannot run."""
    jobs, problems = [], []
    for index, record in enumerate(records):
        try:
            tokens = _prompt_tokens(engine, record)
        except RastError as e:
            problems.append((record.line, str(e)))
            continue
        for k in range(record.n):
            seed = derive_seed(record.sampling.seed, record.key, k)
            jobs.append(Job(index, k, tokens, replace(record.sampling, seed=seed), record))
    return jobs, problems


def result_record(record: BatchRecord, samples: Sequence[Sample], n_prompt: int) -> dict:
    """The output line of a record: its id, the input's other fields (not the prompt), the samples."""
    out = {"id": record.id}
    out.update((k, v) for k, v in record.fields.items() if k not in _INPUT_ONLY_FIELDS)
    one = record.n == 1
    out["text"] = samples[0].text if one else [s.text for s in samples]
    out["finish_reason"] = samples[0].finish_reason if one else [s.finish_reason for s in samples]
    out["n_tokens"] = samples[0].n_tokens if one else [s.n_tokens for s in samples]
    out["prompt_tokens"] = n_prompt
    return out


def _print_problem(line: int, reason: str) -> None:
    print(f"line {line}: {reason}; skipped", file=sys.stderr)


def run_batch(engine: RastEngine, records: Sequence[BatchRecord], out_path: str | os.PathLike, *,
              problems: Sequence[tuple[int, str]] = (), strict: bool = False, ignore_eos: bool = False,
              progress: bool = True, report: Callable[[int, str], None] = _print_problem,
              input_path: str | os.PathLike | None = None, overwrite: bool = False) -> BatchSummary:
    """Decode every record missing from out_path and append it there; see the module docstring
    (and rast_gguf.results_file: the output is locked, checked against `input_path`, and its
    records' settings fingerprints must match the records', unless `overwrite` empties it).

    `problems` are (line, reason) pairs found while reading the input; with `strict` the first
    problem of all (these or a prompt that cannot run) raises BatchInputError before any decoding.
    """
    from tqdm import tqdm

    out_path = Path(out_path)
    jobs, plan_problems = plan_jobs(engine, records)
    all_problems = sorted([*problems, *plan_problems])
    if strict and all_problems:
        line, reason = all_problems[0]
        raise BatchInputError(f"line {line}: {reason} (run without --strict to skip bad lines)")
    for line, reason in all_problems:
        report(line, reason)
    results = ResultsFile(out_path, engine_fingerprints(engine, records, ignore_eos), input_path=input_path,
                          overwrite=overwrite)
    done = results.done
    summary = BatchSummary(n_records=len(records), bad_lines=[line for line, _ in all_problems])
    summary.n_resumed = sum(r.key in done for r in records)

    by_record: dict[int, list[Job]] = {}
    for job in jobs:
        if job.record.key not in done:
            by_record.setdefault(job.record_index, []).append(job)
    # longest first: the short ones fill the slots the long ones leave at the end (outputs do not depend on it)
    order = sorted(by_record, key=lambda index: -records[index].max_tokens)
    scheduler = Scheduler(engine)
    t0 = time.perf_counter()
    with results, \
            tqdm(total=len({job.record_index for job in jobs}),
                 initial=summary.n_resumed, unit="rec", file=sys.stderr, dynamic_ncols=True,
                 disable=None if progress else True) as bar:
        def write(record: BatchRecord, samples: list[Sample], n_prompt: int) -> None:
            results.write(result_record(record, samples, n_prompt), record.key)
            summary.n_written += 1
            summary.seconds = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix_str(f"{summary.tokens_per_second:.1f} tok/s", refresh=False)

        for index in order:
            record_jobs = by_record[index]
            requests = [SeqRequest(tuple(job.tokens), job.sampling, job.record.max_tokens, job.record.stop,
                                   job.record.alpha, ignore_eos=ignore_eos) for job in record_jobs]
            scheduler.submit(requests, _RecordCollector(records[index], len(record_jobs[0].tokens), summary, write))
        scheduler.run_until_idle()
    summary.seconds = time.perf_counter() - t0
    summary.stats = scheduler.stats
    return summary


class _RecordCollector:
    """on_event of one record's group: gathers each sample's text and writes the record when all are in."""

    def __init__(self, record: BatchRecord, n_prompt: int, summary: BatchSummary,
                 write: Callable[[BatchRecord, list[Sample], int], None]):
        self.record, self.n_prompt, self.summary, self.write = record, n_prompt, summary, write
        self.pieces: list[list[str]] = [[] for _ in range(record.n)]
        self.n_tokens = [0] * record.n
        self.samples: list[Sample | None] = [None] * record.n
        self.n_left = record.n

    def __call__(self, event: TokenEvent) -> None:
        if event.token >= 0:
            self.pieces[event.index].append(event.text)
            self.n_tokens[event.index] += 1
            self.summary.generated_tokens += 1
        if event.finish_reason is None:
            return
        self.samples[event.index] = Sample("".join(self.pieces[event.index]), event.finish_reason,
                                           self.n_tokens[event.index])
        self.n_left -= 1
        if self.n_left == 0:
            self.write(self.record, self.samples, self.n_prompt)


def batch_file(engine: RastEngine, in_path: str | os.PathLike, out_path: str | os.PathLike, *,
               sampling: SamplingParams, max_tokens: int, **kwargs) -> BatchSummary:
    """run_batch over a JSONL file, with `sampling` and `max_tokens` as the records' defaults."""
    records, problems = read_records(in_path, sampling, max_tokens)
    return run_batch(engine, records, out_path, problems=problems, input_path=in_path, **kwargs)
