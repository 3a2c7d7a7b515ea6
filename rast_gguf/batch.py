"""Batch generation: JSONL records in, one JSONL result per record out, several sequences decoding
in parallel in each context, resumable after a kill.

Each record asks for `n` samples; every (record, sample) is a job, and the jobs, in input order,
are cut into fixed waves of `engine.n_seq_max`. A wave is decoded together: all its prompts in
shared batches, then one batch per step holding the next token of every unfinished sequence, the
same batch in all three contexts, each sequence sampled by its own chain (seeded from the seed,
the record id and the sample index) at its own output row. llama.cpp's numerics can depend on the
company a sequence is decoded in, so the waves never change: a resumed run decodes again, whole,
every wave that holds a missing record, and writes only the missing records. Records are written
in input order, one line each, flushed, so a run's output is always a prefix of the full output;
a line torn by a kill is cut off when the run restarts (rast_gguf.results_file: the output is
locked for the run, and resumed only with the settings that made it). Bad records are reported
with their line number and skipped, or abort everything before decoding when `strict`.
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
from rast_gguf.generate import TextSteps
from rast_gguf.jsonl import BatchRecord, read_records
from rast_gguf.results_file import ResultsFile, engine_fingerprints
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


class _Sequence:
    """One job while it decodes: its sampler chain, detokenizer, stop strings and finish rule."""

    def __init__(self, engine: RastEngine, job: Job, ignore_eos: bool):
        self.sampler = engine.sampler(job.sampling)
        if job.record.alpha is not None:
            for pair_index in range(len(engine.pairs)):
                self.sampler.set_alpha(pair_index, job.record.alpha)
        self.steps = TextSteps(engine.model_large, stop=job.record.stop, max_tokens=job.record.max_tokens,
                               n_ctx=engine.n_ctx, ignore_eos=ignore_eos)
        self.pieces: list[str] = []
        self.finish_reason: str | None = None

    def next_token(self, row: int, pos: int) -> int | None:
        """Sample at output row `row`; the token to decode at `pos` next, or None when finished."""
        token = self.sampler.sample(row)
        text, self.finish_reason = self.steps.push(token, pos)
        self.pieces.append(text)
        return None if self.finish_reason else token

    def close(self) -> Sample:
        self.sampler.close()
        return Sample("".join(self.pieces), self.finish_reason or "aborted", self.steps.n_tokens)


def decode_wave(engine: RastEngine, jobs: Sequence[Job], *, ignore_eos: bool = False) -> list[Sample]:
    """Decode up to engine.n_seq_max jobs together, sequence i in KV sequence i."""
    for ctx in engine.contexts:  # forget every sequence; unlike reset() this does not zero the KV buffers
        ctx.remove_from(0, seq_id=-1)
    prefill = [(token, pos, seq) for seq, job in enumerate(jobs) for pos, token in enumerate(job.tokens[:-1])]
    for start in range(0, len(prefill), engine.n_batch):
        chunk = prefill[start:start + engine.n_batch]
        engine.decode_entries(*zip(*chunk), [False] * len(chunk))
    seqs = [_Sequence(engine, job, ignore_eos) for job in jobs]
    try:
        step = [(job.tokens[-1], len(job.tokens) - 1, seq) for seq, job in enumerate(jobs)]
        while step:
            tokens, positions, seq_ids = zip(*step)
            engine.decode_entries(tokens, positions, seq_ids, [True] * len(step))
            step = [(token, pos + 1, seq) for row, (_, pos, seq) in enumerate(step)
                    if (token := seqs[seq].next_token(row, pos + 1)) is not None]
    finally:
        samples = [s.close() for s in seqs]
    return samples


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

    n_prompt = {job.record_index: len(job.tokens) for job in jobs}
    slots: dict[int, list[Sample | None]] = {}
    wave_size = engine.n_seq_max
    t0 = time.perf_counter()
    with results, \
            tqdm(total=len(n_prompt), initial=summary.n_resumed, unit="rec", file=sys.stderr, dynamic_ncols=True,
                 disable=None if progress else True) as bar:
        for start in range(0, len(jobs), wave_size):
            wave = jobs[start:start + wave_size]
            if all(job.record.key in done for job in wave):
                continue
            samples = decode_wave(engine, wave, ignore_eos=ignore_eos)
            summary.generated_tokens += sum(s.n_tokens for s in samples)
            for job, sample in zip(wave, samples):
                slots.setdefault(job.record_index, [None] * job.record.n)[job.sample_index] = sample
            for index in sorted({job.record_index for job in wave}):
                record = records[index]
                if None in slots[index]:
                    continue  # its other samples are in the next wave
                record_samples = slots.pop(index)
                if record.key in done:
                    continue
                results.write(result_record(record, record_samples, n_prompt[index]), record.key)
                summary.n_written += 1
                bar.update(1)
            summary.seconds = time.perf_counter() - t0
            bar.set_postfix_str(f"{summary.tokens_per_second:.1f} tok/s", refresh=False)
    summary.seconds = time.perf_counter() - t0
    return summary


def batch_file(engine: RastEngine, in_path: str | os.PathLike, out_path: str | os.PathLike, *,
               sampling: SamplingParams, max_tokens: int, **kwargs) -> BatchSummary:
    """run_batch over a JSONL file, with `sampling` and `max_tokens` as the records' defaults."""
    records, problems = read_records(in_path, sampling, max_tokens)
    return run_batch(engine, records, out_path, problems=problems, input_path=in_path, **kwargs)
