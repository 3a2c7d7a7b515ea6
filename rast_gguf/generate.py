"""Generation on a RastEngine, in layers: `stream_generate` yields one `GenerationResponse` per
token (token id, its text piece, running stats, and on the last one the finish reason);
`generate` collects a stream into a `GenerationResult`. `stream_continue` is the same loop started
from whatever the engine's contexts already hold (a chat turn whose prompt was fed incrementally).
With `track_delta`, each response carries `DeltaStats`: how the small pair moved that step's choice.

Prompts are raw text (tokenized with the large model's tokenizer, BOS as the model asks) or token
ids; no chat template here. Stops: an end-of-generation token ("stop"), a stop string ("stop";
the text is cut before it and text that could still become a stop string is held back), max
tokens ("length"), a full context ("context"). A prompt that does not fit raises
PromptTooLongError before anything is decoded. `ignore_eos` (benchmarks) decodes past end-of-generation
tokens so every run makes the same number of tokens.
"""

from __future__ import annotations

import codecs
import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rast_gguf.engine import RastEngine
from rast_gguf.errors import PromptTooLongError
from rast_gguf.sampling import SamplingParams

if TYPE_CHECKING:
    from rast_gguf.speculative import SpecStats


@dataclass(frozen=True)
class DeltaStats:
    """One step: the large model's own top id, and log p(chosen) for the large model alone and for RAST
    (log-softmax over the allowed ids, before temperature and truncation)."""

    token: int
    large_top: int
    logp_large: float
    logp_rast: float

    @property
    def changed(self) -> bool:
        """RAST chose another token than the large model's own top one."""
        return self.token != self.large_top

    @property
    def shift(self) -> float:
        """log p_rast(chosen) - log p_large(chosen), in nats."""
        return self.logp_rast - self.logp_large


@dataclass
class GenerationResponse:
    text: str
    token: int
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    finish_reason: str | None = None
    logits: np.ndarray | None = None  # final candidate logits of this step, when record_logits
    delta: DeltaStats | None = None     # when track_delta
    speculative: "SpecStats | None" = None  # running draft/accept totals, when the engine speculates


@dataclass
class GenerationResult:
    text: str
    tokens: list[int]
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    finish_reason: str | None
    step_logits: list[np.ndarray] = field(default_factory=list)
    speculative: "SpecStats | None" = None


class _StopStringFilter:
    """Feeds text through, cutting at the first stop string and holding back possible prefixes."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        self.pending += text
        for stop in self.stops:
            at = self.pending.find(stop)
            if at >= 0:
                out, self.pending = self.pending[:at], ""
                return out, True
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class TextSteps:
    """Sampled tokens of one sequence -> its text pieces, and the finish rule: an end-of-generation
    token or a stop string ("stop"), max_tokens ("length"), no room for the next token ("context")."""

    def __init__(self, model, *, stop: Sequence[str] = (), max_tokens: int, n_ctx: int, ignore_eos: bool = False):
        self.model, self.max_tokens, self.n_ctx, self.ignore_eos = model, max_tokens, n_ctx, ignore_eos
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = _StopStringFilter(stop)
        self.n_tokens = 0

    def push(self, token: int, next_pos: int) -> tuple[str, str | None]:
        """The text this token adds and the finish reason (None: go on, decoding it at next_pos)."""
        self.n_tokens += 1
        if self.model.is_eog(token) and not self.ignore_eos:
            return self._flush(), "stop"
        text, hit_stop = self.stops.push(self.decoder.decode(self.model.token_bytes(token)))
        if hit_stop:
            return text, "stop"
        if self.n_tokens >= self.max_tokens:
            return text + self._flush(), "length"
        if next_pos >= self.n_ctx:
            return text + self._flush(), "context"
        return text, None

    def _flush(self) -> str:
        return self.stops.flush() + self.decoder.decode(b"", final=True)


def prompt_tokens_for(engine: RastEngine, prompt: str | Sequence[int]) -> list[int]:
    tokens = engine.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
    if not tokens:
        raise PromptTooLongError("the prompt is empty after tokenization; give some text with -p")
    if len(tokens) >= engine.n_ctx:
        raise PromptTooLongError(
            f"the prompt has {len(tokens)} tokens but the context holds {engine.n_ctx}; "
            "use a larger -c/--ctx-size or a shorter prompt")
    return tokens


def stream_generate(engine: RastEngine, prompt: str | Sequence[int], *, max_tokens: int = 256,
                    sampling: SamplingParams | None = None, stop: Sequence[str] = (),
                    record_logits: bool = False, ignore_eos: bool = False,
                    track_delta: bool = False) -> Iterator[GenerationResponse]:
    tokens = prompt_tokens_for(engine, prompt)
    t0 = time.perf_counter()
    engine.reset()
    # speculating, the last prompt token is decoded inside the first verify batch
    engine.feed(tokens[:-1] if engine.draft else tokens)
    prompt_tps = len(tokens) / max(time.perf_counter() - t0, 1e-9)
    yield from stream_continue(engine, n_prompt=len(tokens), prompt_tps=prompt_tps, max_tokens=max_tokens,
                               sampling=sampling, stop=stop, record_logits=record_logits, ignore_eos=ignore_eos,
                               track_delta=track_delta, history=tokens)


def stream_continue(engine: RastEngine, *, n_prompt: int, prompt_tps: float = 0.0, max_tokens: int = 256,
                    sampling: SamplingParams | None = None, stop: Sequence[str] = (),
                    record_logits: bool = False, ignore_eos: bool = False,
                    track_delta: bool = False, history: Sequence[int] | None = None) -> Iterator[GenerationResponse]:
    """Generate from the logits of the last token the engine was fed (n_prompt and prompt_tps only
    label the responses). Each sampled token is fed before the next is drawn; the last one is not.
    An engine made with draft=... speculates (rast_gguf.speculative) and then needs `history`, the
    tokens its contexts hold; the tokens come out distributed exactly as without it."""
    sampling = sampling or SamplingParams()
    if engine.draft:
        yield from _stream_speculative(engine, history, n_prompt, prompt_tps, max_tokens, sampling, stop,
                                       record_logits, ignore_eos, track_delta)
        return
    sampler = engine.sampler(sampling)
    sampler.set_record(record_logits)
    sampler.set_track_delta(track_delta)
    steps = TextSteps(engine.model_large, stop=stop, max_tokens=max_tokens, n_ctx=engine.n_ctx, ignore_eos=ignore_eos)
    t_gen = time.perf_counter()
    try:
        for n_generated in range(1, max_tokens + 1):
            token = sampler.sample(-1)
            logits = sampler.recorded_logits() if record_logits else None
            delta = DeltaStats(token, *sampler.delta_stats()) if track_delta else None
            text, finish = steps.push(token, engine.n_past)
            gen_tps = n_generated / max(time.perf_counter() - t_gen, 1e-9)
            yield GenerationResponse(text, token, n_prompt, prompt_tps, n_generated, gen_tps, finish, logits, delta)
            if finish:
                return
            engine.feed([token])
    finally:
        sampler.close()


def _stream_speculative(engine, history, n_prompt, prompt_tps, max_tokens, sampling, stop, record_logits,
                        ignore_eos, track_delta) -> Iterator[GenerationResponse]:
    from rast_gguf.speculative import stream_speculative

    steps = TextSteps(engine.model_large, stop=stop, max_tokens=max_tokens, n_ctx=engine.n_ctx, ignore_eos=ignore_eos)
    tokens = stream_speculative(engine, history=history or (), max_tokens=max_tokens, sampling=sampling, steps=steps,
                                record_logits=record_logits, track_delta=track_delta)
    try:
        for n_generated, (token, text, finish, logits, delta, stats, gen_tps) in enumerate(tokens, 1):
            delta = DeltaStats(token, *delta) if delta else None
            yield GenerationResponse(text, token, n_prompt, prompt_tps, n_generated, gen_tps, finish, logits, delta,
                                     dataclasses.replace(stats))
    finally:
        tokens.close()  # settles the contexts at once, also when the caller stops early


def generate(engine: RastEngine, prompt: str | Sequence[int], **kwargs) -> GenerationResult:
    pieces, tokens, step_logits = [], [], []
    last = None
    for last in stream_generate(engine, prompt, **kwargs):
        pieces.append(last.text)
        tokens.append(last.token)
        if last.logits is not None:
            step_logits.append(last.logits)
    return GenerationResult("".join(pieces), tokens, last.prompt_tokens, last.prompt_tps,
                            last.generation_tokens, last.generation_tps, last.finish_reason, step_logits,
                            last.speculative)
