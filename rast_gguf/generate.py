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
    """One generated token, as stream_generate / stream_continue yield it.

    Fields:
        text: the text this token adds (may be "" while a UTF-8 character or a possible stop string is
            incomplete; held-back text comes with a later token). Never includes a stop string.
        token: the token id sampled.
        prompt_tokens: tokens in the prompt (for stream_continue: the n_prompt it was given).
        prompt_tps: prompt tokens decoded per second (wall clock).
        generation_tokens: tokens generated so far, this one included.
        generation_tps: generation_tokens per second of wall clock since generation started.
        finish_reason: None while generation goes on; on the last response "stop" (an end-of-generation
            token or a stop string), "length" (max_tokens reached) or "context" (the context is full).
        logits: with record_logits, this step's final candidate logits (n_vocab float32, after the delta,
            temperature and truncation; -inf marks removed ids); else None.
        delta: with track_delta, how the small pair moved this step's choice (DeltaStats); else None.
        speculative: when the engine speculates, the running draft/accept totals (SpecStats); else None.
    """

    text: str
    token: int
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    finish_reason: str | None = None
    logits: np.ndarray | None = None
    delta: DeltaStats | None = None
    speculative: "SpecStats | None" = None


@dataclass
class GenerationResult:
    """A whole generation (generate): `text` (all pieces joined), `tokens` (the ids), the prompt and
    generation counts and speeds and the finish reason of the last GenerationResponse, and `step_logits`
    (one array per token with record_logits, else empty)."""

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
        found = [at for stop in self.stops if (at := self.pending.find(stop)) >= 0]
        if found:  # the earliest stop, whichever of them it is
            out, self.pending = self.pending[:min(found)], ""
            return out, True
        out = self.pending[:len(self.pending) - self._held_back()]
        self.pending = self.pending[len(out):]
        return out, False

    def _held_back(self) -> int:
        """How many trailing characters of `pending` could start a stop string."""
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        return hold

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class TextSteps:
    """Sampled tokens of one sequence -> its text pieces, and the finish rule: an end-of-generation
    token or a stop string ("stop"), max_tokens ("length"), no room for the next token ("context")."""

    def __init__(self, model, *, stop: Sequence[str] = (), max_tokens: int, n_ctx: int, ignore_eos: bool = False):
        self.model, self.max_tokens, self.n_ctx, self.ignore_eos = model, max_tokens, n_ctx, ignore_eos
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = _StopStringFilter(stop) if any(stop) else None  # None: nothing to watch for
        self.n_tokens = 0

    def push(self, token: int, next_pos: int) -> tuple[str, str | None]:
        """The text this token adds and the finish reason (None: go on, decoding it at next_pos)."""
        self.n_tokens += 1
        model = self.model
        if not self.ignore_eos and model.is_eog(token):
            return self._flush(), "stop"
        text = self.decoder.decode(model.token_bytes(token))
        if self.stops is not None:
            text, hit_stop = self.stops.push(text)
            if hit_stop:
                return text, "stop"
        if self.n_tokens >= self.max_tokens:
            return text + self._flush(), "length"
        if next_pos >= self.n_ctx:
            return text + self._flush(), "context"
        return text, None

    def _flush(self) -> str:
        return (self.stops.flush() if self.stops is not None else "") + self.decoder.decode(b"", final=True)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences (how much of a cache can be kept)."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


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
    """Generate from `prompt` with RAST, one GenerationResponse per token.

    The engine's contexts are reset and the prompt fed, then tokens are sampled one at a time (each fed
    before the next is drawn) until a stop condition (see GenerationResponse.finish_reason).

    Args:
        engine: an open RastEngine (its alphas as set when the generator starts).
        prompt: raw text (tokenized with the large model's tokenizer, BOS as the model asks; no chat
            template) or token ids.
        max_tokens: most tokens to generate.
        sampling: temperature / top-k / top-p / min-p / seed / order; None uses SamplingParams().
        stop: stop strings; the text is cut before the first one and the response ends with "stop".
        record_logits: attach each step's final candidate logits to its response (a copy of n_vocab
            floats per token: for tests and analysis).
        ignore_eos: keep generating past end-of-generation tokens (benchmarks: every run the same length).
        track_delta: attach DeltaStats to each response (one more pass over the vocabulary per token).

    Yields:
        GenerationResponse, the last one with finish_reason set.

    Raises:
        PromptTooLongError: the prompt is empty or does not fit in the context (before decoding anything).
        DecodeError: llama_decode failed. ClosedError: the engine is closed.
    """
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
    """Generate from the logits of the last token the engine was fed, without resetting anything (a chat
    turn whose prompt was fed incrementally). Each sampled token is fed before the next is drawn; the
    last one is not.

    Args:
        engine: an open RastEngine whose last feed() left logits for its last token.
        n_prompt, prompt_tps: only label the responses (GenerationResponse.prompt_tokens / prompt_tps).
        max_tokens, sampling, stop, record_logits, ignore_eos, track_delta: as in stream_generate.
        history: the tokens the engine's contexts hold; needed when the engine speculates (draft=...),
            which yields tokens distributed exactly as without it (rast_gguf.speculative).

    Yields:
        GenerationResponse, the last one with finish_reason set. The sampler chain is closed when the
        generator finishes or is closed.

    Raises:
        DecodeError: llama_decode failed. ClosedError: the engine is closed.
    """
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
    """stream_generate(engine, prompt, **kwargs) collected into one GenerationResult (same arguments and
    errors)."""
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
