"""Sampling of every generating row of a scheduler step.

`StepSampler(engine)` keeps one sampler state per sequence (`open(request)` -> handle, `close`),
and `sample(rows, handles)` draws the next token of each sequence at its output row of the last
decode: the RAST delta of every pair (with the sequence's own alpha), then its own chain and
seed. It returns, per row, (token, changed, logprob, top_logprobs): `changed` is whether RAST's
choice differs from the large model's own argmax; logprob (when the request asked) is log p of
the token under the distribution it was drawn from (after truncation and temperature), and
top_logprobs the k most likely ids of that distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _log_softmax(z: np.ndarray) -> np.ndarray:
    finite = np.isfinite(z)
    out = np.full(z.shape, -np.inf)
    m = z[finite].max()
    shifted = z[finite].astype(np.float64) - m
    out[finite] = shifted - np.log(np.exp(shifted).sum())
    return out


class StepSampler:
    """One SamplerChain per sequence, called row after row (the reference implementation)."""

    def __init__(self, engine):
        self.engine = engine

    def open(self, request, engine=None):
        chain = self.engine.sampler(request.sampling)
        if request.alpha is not None:
            for pair_index in range(len(self.engine.pairs)):
                chain.set_alpha(pair_index, request.alpha)
        chain.set_track_delta(True)
        chain.set_record(request.n_logprobs is not None)
        return (chain, request.n_logprobs)

    def close(self, handle) -> None:
        handle[0].close()

    def sample(self, rows: Sequence[int], handles: Sequence) -> list[tuple[int, bool, float | None, tuple | None]]:
        out = []
        for row, (chain, n_logprobs) in zip(rows, handles):
            token = chain.sample(row)
            large_top, _, _ = chain.delta_stats()
            logprob = top = None
            if n_logprobs is not None:
                lp = _log_softmax(chain.recorded_logits())
                logprob = float(lp[token])
                if n_logprobs > 0:
                    ids = np.argsort(-lp, kind="stable")[:n_logprobs]
                    top = tuple((int(i), float(lp[i])) for i in ids if np.isfinite(lp[i]))
            out.append((token, token != large_top, logprob, top))
        return out
