"""Sampling of every generating row of a scheduler step, in one call.

`StepSampler(engine)` wraps the C++ `_ext.StepSampler` (bindings/step_sampler.*): one sampler state
per sequence (`open(request)` -> handle with its own alpha, chain and seed; `close(handle)`), and
`sample(rows, handles, k_max)` draws the next token of every sequence at its output row of the last
decode, rows spread over a small thread pool, greedy rows by a direct argmax of
z_large + sum alpha * (z_tuned - z_base). It returns numpy arrays: tokens, changed (RAST's choice
differs from the large model's own argmax), logprob (of the token under the distribution it was
drawn from, after truncation and temperature; NaN where not asked) and the top k_max ids and
log-probabilities of that distribution (-1 / NaN padded). `sample_rows(rows, handles)` is the
same as plain lists, each row's logprobs as its request asked (what the scheduler calls every
step). `ChainStepSampler` does the same one row at a time through `SamplerChain` (the reference
the C++ path is tested against).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from rast_gguf import _ext

DEFAULT_THREADS = 8  # rows of a step spread over at most this many threads (the caller included)


def _alphas(engine, request) -> list[float]:
    if request.alpha is not None:
        return [float(request.alpha)] * len(engine.pairs)
    return [p.alpha for p in engine.pairs]


class StepSampler:
    def __init__(self, engine, n_threads: int | None = None):
        self.engine = engine
        n_threads = n_threads or min(DEFAULT_THREADS, os.cpu_count() or 1)
        pairs = [(tuned.address, base.address) for tuned, base in engine.pair_contexts]
        self._c = _ext.StepSampler(engine.ctx_large.address, pairs, engine.n_shared, n_threads)

    def open(self, request) -> int:
        s = request.sampling
        n_logprobs = -1 if request.n_logprobs is None else request.n_logprobs
        return self._c.open(s.temp, s.top_k, s.top_p, s.min_p, s.resolved_seed, s.order,
                            _alphas(self.engine, request), n_logprobs)

    def close(self, handle: int) -> None:
        self._c.close(handle)

    def sample(self, rows: Sequence[int], handles: Sequence[int], k_max: int = 0):
        return self._c.sample(rows, handles, k_max)

    def sample_rows(self, rows: Sequence[int], handles: Sequence[int]):
        """The scheduler's call: lists (tokens, changed, logprob or None, top tuple of (id, logprob) or None),
        each row's logprobs as its request asked."""
        return self._c.sample_rows(rows, handles)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    finite = np.isfinite(z)
    out = np.full(z.shape, -np.inf)
    shifted = z[finite].astype(np.float64) - z[finite].max()
    out[finite] = shifted - np.log(np.exp(shifted).sum())
    return out


class ChainStepSampler:
    """One SamplerChain per sequence, called row after row (slow; the reference)."""

    def __init__(self, engine):
        self.engine = engine

    def open(self, request):
        chain = self.engine.sampler(request.sampling)
        for pair_index, alpha in enumerate(_alphas(self.engine, request)):
            chain.set_alpha(pair_index, alpha)
        chain.set_track_delta(True)
        chain.set_record(request.n_logprobs is not None)
        return chain, request.n_logprobs

    def close(self, handle) -> None:
        handle[0].close()

    def sample(self, rows: Sequence[int], handles: Sequence, k_max: int = 0):
        n = len(rows)
        tokens, changed = np.zeros(n, np.int32), np.zeros(n, bool)
        logprob = np.full(n, np.nan, np.float32)
        top_ids, top_lp = np.full((n, k_max), -1, np.int32), np.full((n, k_max), np.nan, np.float32)
        for i, (row, (chain, n_logprobs)) in enumerate(zip(rows, handles)):
            tokens[i] = token = chain.sample(row)
            changed[i] = token != chain.delta_stats()[0]
            if n_logprobs is not None:
                lp = _log_softmax(chain.recorded_logits())
                logprob[i] = lp[token]
                ids = [j for j in np.argsort(-lp, kind="stable")[:min(n_logprobs, k_max)] if np.isfinite(lp[j])]
                top_ids[i, :len(ids)] = ids
                top_lp[i, :len(ids)] = lp[ids]
        return tokens, changed, logprob, top_ids, top_lp

    def sample_rows(self, rows: Sequence[int], handles: Sequence):
        k_max = max((k or 0 for _, k in handles), default=0)
        tokens, changed, logprob, top_ids, top_lp = self.sample(rows, handles, k_max)
        lps = [None if k is None else float(logprob[i]) for i, (_, k) in enumerate(handles)]
        tops = [tuple((t, v) for t, v in zip(top_ids[i].tolist(), top_lp[i].tolist()) if t >= 0) if k else None
                for i, (_, k) in enumerate(handles)]
        return tokens.tolist(), changed.tolist(), lps, tops
