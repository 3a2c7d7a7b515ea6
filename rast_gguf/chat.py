"""Multi-turn chat over a RastEngine whose three KV caches are kept in step with the conversation.

A `ChatSession` holds the messages and `tokens`, exactly what every context of the engine holds
(`engine.n_past == len(tokens)` between turns). A turn renders the whole conversation (the large
model's chat template, or plain text with `raw=True`); when the new text extends the text already
cached, only its tail is tokenized, otherwise the whole text is and the caches are rewound to the
longest common token prefix. Either way only tokens not yet in the caches are decoded, so a turn's
cost does not grow with the conversation. When a turn ends, every answer token but an
end-of-generation one is in the caches. An answer stopped early (Ctrl-C, closing the stream, an
exception) stays in the history as far as it got; the caches are rewound to the last token every
context decoded, so the history and the caches agree whatever was interrupted. The session knows
nothing about terminals; `rast chat` (rast_gguf.cli.chat) is the interactive front end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rast_gguf.chat_template import check_messages, render_messages
from rast_gguf.engine import RastEngine
from rast_gguf.errors import ChatFileError, ContextFullError, UsageError
from rast_gguf.generate import GenerationResponse, stream_continue
from rast_gguf.sampling import SamplingParams, check_alpha

SAVE_FORMAT = "rast-chat/1"


@dataclass
class TurnStats:
    prompt_tokens: int = 0      # the conversation's tokens when the answer started
    prompt_decoded: int = 0     # of which this turn decoded (the rest was already cached)
    prompt_tps: float = 0.0
    generation_tokens: int = 0
    generation_tps: float = 0.0
    finish_reason: str | None = None
    changed_tokens: int = 0     # answer tokens where RAST's pick differs from the large model's (track_delta)
    speculative: object = None  # SpecStats of the answer, when the engine speculates


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class ChatSession:
    def __init__(self, engine: RastEngine, *, system: str | None = None, raw: bool = False,
                 sampling: SamplingParams | None = None, max_tokens: int = 512, ignore_eos: bool = False,
                 track_delta: bool = False):
        self.engine = engine
        self.raw = raw
        self.system = system
        self.sampling = sampling or SamplingParams()
        self.max_tokens = max_tokens
        self.ignore_eos = ignore_eos
        self.track_delta = track_delta
        self.last = TurnStats()
        if not raw:
            render_messages(engine, [{"role": "user", "content": "hi"}])  # no template: fail now, not mid-chat
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays) and clear every cache."""
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []
        self.engine.reset()
        self.tokens: list[int] = []
        self._text: str | None = ""  # the text `tokens` spell, when known

    @property
    def n_past(self) -> int:
        return self.engine.n_past

    @property
    def n_ctx(self) -> int:
        return self.engine.n_ctx

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        if not self.raw:
            return render_messages(self.engine, messages, add_generation_prompt)
        return "".join(m["content"] if m["role"] == "assistant" else m["content"] + "\n" for m in messages)

    def _tokens_for(self, text: str) -> list[int]:
        if self.tokens and self._text is not None and text.startswith(self._text):
            return self.tokens + self.engine.tokenize(text[len(self._text):], add_special=False)
        # a template's text already holds its special tokens; raw text gets BOS as the model asks
        return self.engine.tokenize(text, add_special=None if self.raw else False)

    def _sync(self, tokens: list[int], text: str) -> int:
        """Make the caches hold `tokens` (the last one decoded now, for fresh logits); returns how
        many tokens were decoded."""
        if not tokens:
            raise UsageError("nothing to decode: the conversation is empty")
        if len(tokens) >= self.n_ctx:
            raise ContextFullError(f"the conversation needs {len(tokens)} tokens but the context holds {self.n_ctx}; "
                                   "reset the chat (/reset) or start again with a larger -c/--ctx-size")
        n_keep = min(common_prefix(self.tokens, tokens), len(tokens) - 1)
        self.engine.rewind(n_keep)
        self.tokens, self._text = self.tokens[:n_keep], None
        try:
            self.engine.feed(tokens[n_keep:])
        finally:
            self._settle(tokens)
        self._text = text
        return len(tokens) - n_keep

    def _settle(self, tokens: Sequence[int]) -> None:
        """After a feed that may have been cut anywhere: drop what not every context decoded."""
        self.engine.rewind(self.engine.n_past)
        self.tokens = list(tokens[:self.engine.n_past])

    def _detokenize(self, tokens: Sequence[int]) -> str:
        model = self.engine.model_large
        return b"".join(model.token_bytes(t) for t in tokens).decode("utf-8", errors="replace")

    def stream_turn(self, user_text: str) -> Iterator[GenerationResponse]:
        """Add a user message and stream the answer; the answer joins the history when the stream
        ends, however it ends (close the stream to stop early)."""
        messages = self.messages + [{"role": "user", "content": user_text}]
        text = self.render(messages)
        tokens = self._tokens_for(text)
        t0 = time.perf_counter()
        n_decoded = self._sync(tokens, text)
        prompt_tps = n_decoded / max(time.perf_counter() - t0, 1e-9)
        self.last = TurnStats(len(tokens), n_decoded, prompt_tps)

        answer: list[int] = []
        stream = stream_continue(self.engine, n_prompt=len(tokens), prompt_tps=prompt_tps,
                                 max_tokens=self.max_tokens, sampling=self.sampling, ignore_eos=self.ignore_eos,
                                 track_delta=self.track_delta, history=tokens)
        try:
            for response in stream:
                answer.append(response.token)
                self.last.generation_tokens = response.generation_tokens
                self.last.generation_tps = response.generation_tps
                self.last.finish_reason = response.finish_reason
                self.last.changed_tokens += bool(response.delta and response.delta.changed)
                self.last.speculative = response.speculative
                yield response
        finally:
            stream.close()
            self._settle(tokens + answer)
            model = self.engine.model_large
            shown = [t for t in answer if self.ignore_eos or not model.is_eog(t)]
            unfed = shown[len(self.tokens) - len(tokens):]
            if unfed and self.engine.n_past + len(unfed) < self.n_ctx:
                # the answer's last token(s) now rather than next turn: then the caches spell the
                # answer exactly as the history has it (no cut UTF-8 character at the end)
                try:
                    self.engine.feed(unfed)
                finally:
                    self._settle(tokens + shown)
            self.messages = messages + [{"role": "assistant", "content": self._detokenize(shown)}]
            self._text = text + self._detokenize(self.tokens[len(tokens):])

    def ask(self, user_text: str) -> str:
        """One whole turn; the answer's text."""
        return "".join(r.text for r in self.stream_turn(user_text))

    def set_alpha(self, alpha: float) -> None:
        """Alpha of every pair, from the next answer on."""
        if not self.engine.pairs:
            raise UsageError("no small pair is loaded, so there is no alpha to set")
        self.engine.set_alpha(alpha)

    def set_temp(self, temp: float) -> None:
        self.sampling = dataclasses.replace(self.sampling, temp=temp)

    def save(self, path: str | Path) -> Path:
        """The messages and settings as JSON (overwrites path)."""
        path = Path(path).expanduser()
        state = {"format": SAVE_FORMAT, "raw": self.raw, "system": self.system,
                 "alpha": [p.alpha for p in self.engine.pairs], "temp": self.sampling.temp,
                 "messages": self.messages}
        text = json.dumps(state, ensure_ascii=False, indent=1) + "\n"
        tmp = None
        try:  # a temporary file renamed over the old save: a crash mid-write never destroys it
            with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp", delete=False) as f:
                tmp = Path(f.name)
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, UnicodeEncodeError) as e:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            why = e.strerror if isinstance(e, OSError) and e.strerror else e
            raise ChatFileError(f"cannot save the chat to {path}: {why}") from e
        except BaseException:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise
        return path

    def load(self, path: str | Path) -> None:
        """Replace the conversation and settings by a saved chat, and decode it (reusing what the
        caches already share with it)."""
        path = Path(path).expanduser()
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ChatFileError(f"cannot read {path}: {e.strerror or e}") from e
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ChatFileError(f"{path} is not a saved chat (bad JSON: {e}); give a file written by /save") from e
        if not isinstance(state, dict) or state.get("format") != SAVE_FORMAT:
            raise ChatFileError(f"{path} is not a saved chat ({SAVE_FORMAT}); give a file written by /save")
        try:
            messages = check_messages(state.get("messages"))
            alphas = [check_alpha(a) for a in state.get("alpha", [])]
            temp = state.get("temp", self.sampling.temp)
            sampling = dataclasses.replace(self.sampling, temp=temp)
        except Exception as e:
            raise ChatFileError(f"{path}: {e}; give a file written by /save") from e
        if alphas and len(alphas) != len(self.engine.pairs):
            raise ChatFileError(f"{path} has {len(alphas)} alpha values but {len(self.engine.pairs)} pairs are "
                                "loaded; start rast chat with the same models")
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
        if messages:
            text = self.render(messages, add_generation_prompt=False)
            old_tokens, old_text = list(self.tokens), self._text
            try:
                self._sync(self._tokens_for(text), text)
            except BaseException:
                self._restore(old_tokens, old_text)  # a failed /load changes nothing
                raise
        for i, alpha in enumerate(alphas):
            self.engine.set_alpha(alpha, i)
        self.sampling = sampling
        self.system = system
        if not messages:
            self.reset()
            return
        self.messages = messages

    def _restore(self, tokens: list[int], text: str | None) -> None:
        """Put `tokens` back in the caches after a failed sync (which may have rewound them)."""
        if self.tokens == tokens:
            self._text = text
            return
        if not tokens:
            self.engine.reset()
            self.tokens, self._text = [], ""
            return
        self._sync(tokens, text)
        self._text = text
