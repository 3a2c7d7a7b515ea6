"""The OpenAI wire format of `rast serve`: JSON bodies in, typed requests out; results and events
in, response objects and stream chunks out.

`parse_chat(body, defaults)` and `parse_completion(body, defaults)` check a decoded JSON body
field by field and return a `GenerationRequest` (prompt still text or messages: templating and
tokenizing need the model, which is the app's business), or raise `ApiError`, which carries the
HTTP status and the OpenAI error object {"error": {"message", "type", "param", "code"}}. Unknown
fields are ignored, as llama-server does; wrong types and out-of-range values are 400s that name
the field. `model` may be omitted (llama-server ignores it); `max_tokens` beyond the room left in
a slot's context is clamped to that room (as llama-server, which stops at the context's end with
finish_reason "length"). The builders at the bottom make the response objects and
`chat.completion.chunk` / `text_completion` stream chunks; they know nothing about the engine.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

SEED_RANDOM = 0xFFFFFFFF
MAX_N = 128            # OpenAI's limit on choices per request
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat; completions allow 5, we allow 20 for both
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


class ApiError(Exception):
    """A request the server refuses: HTTP status + OpenAI error object."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass(frozen=True)
class Defaults:
    """The server's settings that a request may override (from `rast serve`'s flags)."""

    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    seed: int = SEED_RANDOM
    max_tokens: int | None = None  # None: until the context is full


@dataclass(frozen=True)
class GenerationRequest:
    """One /v1/chat/completions or /v1/completions request, checked."""

    kind: str                               # "chat" | "completion"
    model: str | None
    messages: list[dict] | None             # chat
    prompts: list[str | list[int]] | None   # completion: one or several prompts (text or token ids)
    max_tokens: int | None                  # None: until the context is full
    temp: float
    top_k: int
    top_p: float
    min_p: float
    seed: int                               # SEED_RANDOM: a random seed per choice
    n: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    n_logprobs: int | None                  # None: no logprobs; 0: the chosen token's; k: also the top k
    alpha: float | None
    ignore_eos: bool = False
    created: int = field(default_factory=lambda: int(time.time()))


# ---- field checks -------------------------------------------------------------------------------

def _type_name(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _invalid_type(name: str, expected: str, value) -> ApiError:
    return ApiError(400, f"Invalid type for '{name}': expected {expected}, but got {_type_name(value)} instead.",
                    param=name, code="invalid_type")


def _get(body: dict, name: str):
    value = body.get(name)
    return None if value is None else value


def _number(body: dict, name: str, default: float, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False) -> float:
    value = _get(body, name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid_type(name, "a number", value)
    value = float(value)
    if not math.isfinite(value):
        raise bad_request(f"Invalid '{name}': expected a finite number, got {value}.", name)
    if low is not None and (value < low or (low_open and value == low)):
        raise bad_request(f"Invalid '{name}': expected a value {'>' if low_open else '>='} {low:g}, but got "
                          f"{value:g} instead.", name, "decimal_below_min_value")
    if high is not None and (value > high or (high_open and value == high)):
        raise bad_request(f"Invalid '{name}': expected a value {'<' if high_open else '<='} {high:g}, but got "
                          f"{value:g} instead.", name, "decimal_above_max_value")
    return value


def _integer(body: dict, name: str, default, *, low: int | None = None, high: int | None = None):
    value = _get(body, name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid_type(name, "an integer", value)
    if low is not None and value < low:
        raise bad_request(f"Invalid '{name}': expected a value >= {low}, but got {value} instead.", name,
                          "integer_below_min_value")
    if high is not None and value > high:
        raise bad_request(f"Invalid '{name}': expected a value <= {high}, but got {value} instead.", name,
                          "integer_above_max_value")
    return value


def _boolean(body: dict, name: str, default: bool = False) -> bool:
    value = _get(body, name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid_type(name, "a boolean", value)
    return value


def _stop(body: dict) -> tuple[str, ...]:
    value = _get(body, "stop")
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise _invalid_type("stop", "a string or an array of strings", value)
    return tuple(s for s in value if s)


def _seed(body: dict, default: int) -> int:
    seed = _integer(body, "seed", None)
    if seed is None or seed == -1:
        return default if seed is None else SEED_RANDOM
    if not 0 <= seed <= SEED_RANDOM:
        raise bad_request(f"Invalid 'seed': expected -1 (random) or a value in [0, {SEED_RANDOM}], got {seed}.",
                          "seed")
    return seed


def _text_content(content, i: int) -> str:
    """A message's content: a string, or an array of parts of which only text ones are supported."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else _type_name(part)
                raise bad_request(f"Invalid 'messages[{i}].content': only text parts are supported, got a "
                                  f"{kind!r} part.", f"messages[{i}].content")
            pieces.append(part["text"])
        return "".join(pieces)
    raise _invalid_type(f"messages[{i}].content", "a string or an array of text parts", content)


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if messages is None:
        raise bad_request("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise _invalid_type("messages", "an array of message objects", messages)
    if not messages:
        raise bad_request("Invalid 'messages': empty array. Expected an array with minimum length 1.",
                          "messages", "empty_array")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _invalid_type(f"messages[{i}]", "an object", m)
        role = m.get("role")
        if role not in ROLES:
            raise bad_request(f"Invalid 'messages[{i}].role': expected one of {', '.join(ROLES)}, got {role!r}.",
                              f"messages[{i}].role")
        content = m.get("content")
        if content is None and role == "assistant":
            content = ""
        out.append({"role": ROLES[role], "content": _text_content(content, i)})
    return out


def _prompts(body: dict) -> list[str | list[int]]:
    prompt = body.get("prompt")
    if prompt is None:
        raise bad_request("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    expected = "a string, an array of strings, or an array of token ids (or of such arrays)"
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise _invalid_type("prompt", expected, prompt) if not isinstance(prompt, list) else \
            bad_request("Invalid 'prompt': empty array.", "prompt", "empty_array")
    if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return [list(prompt)]
    out: list[str | list[int]] = []
    for item in prompt:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, list) and item and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            out.append(list(item))
        else:
            raise _invalid_type("prompt", expected, prompt)
    return out


def _model(body: dict) -> str | None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _invalid_type("model", "a string", model)
    return model


def _max_tokens(body: dict, default: int | None) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):  # the newer name wins, as in OpenAI's API
        if body.get(name) is not None:
            return _integer(body, name, None, low=1)
    return default


def _common(body, kind: str, defaults: Defaults, *, messages=None, prompts=None, n_logprobs=None) -> GenerationRequest:
    stream = _boolean(body, "stream")
    options = _get(body, "stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise _invalid_type("stream_options", "an object", options)
        if not stream:
            raise bad_request("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                              "stream_options")
        include_usage = _boolean(options, "include_usage")
    return GenerationRequest(
        kind=kind, model=_model(body), messages=messages, prompts=prompts,
        max_tokens=_max_tokens(body, defaults.max_tokens),
        temp=_number(body, "temperature", defaults.temp, low=0),
        top_k=_integer(body, "top_k", defaults.top_k, low=0),
        top_p=_number(body, "top_p", defaults.top_p, low=0, low_open=True, high=1),
        min_p=_number(body, "min_p", defaults.min_p, low=0, high=1, high_open=True),
        seed=_seed(body, defaults.seed),
        n=_integer(body, "n", 1, low=1, high=MAX_N),
        stop=_stop(body), stream=stream, include_usage=include_usage, n_logprobs=n_logprobs,
        alpha=None if _get(body, "alpha") is None else _number(body, "alpha", 0.0),
        ignore_eos=_boolean(body, "ignore_eos"))


def _require_object(body) -> dict:
    if not isinstance(body, dict):
        raise bad_request(f"The request body must be a JSON object, got {_type_name(body)}.", None, None)
    return body


def parse_chat(body, defaults: Defaults) -> GenerationRequest:
    body = _require_object(body)
    messages = _messages(body)
    logprobs = _boolean(body, "logprobs")
    top = _integer(body, "top_logprobs", None, low=0, high=MAX_TOP_LOGPROBS)
    if top is not None and not logprobs:
        raise bad_request("Invalid 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.",
                          "top_logprobs")
    return _common(body, "chat", defaults, messages=messages, n_logprobs=(top or 0) if logprobs else None)


def parse_completion(body, defaults: Defaults) -> GenerationRequest:
    body = _require_object(body)
    prompts = _prompts(body)
    logprobs = _integer(body, "logprobs", None, low=0, high=MAX_TOP_LOGPROBS)
    return _common(body, "completion", defaults, prompts=prompts, n_logprobs=logprobs)


# ---- responses --------------------------------------------------------------------------------

FINISH_REASONS = {"stop": "stop", "length": "length", "context": "length", "cancelled": "stop", "error": "error"}


def finish_reason(reason: str | None) -> str | None:
    return None if reason is None else FINISH_REASONS.get(reason, reason)


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@dataclass
class TokenLogprob:
    """One generated token with its logprob and the top alternatives, as text and bytes."""

    text: str
    raw: bytes
    logprob: float
    top: list[tuple[str, bytes, float]]


def chat_logprobs(tokens: Sequence[TokenLogprob]) -> dict:
    return {"content": [{"token": t.text, "logprob": t.logprob, "bytes": list(t.raw),
                         "top_logprobs": [{"token": s, "logprob": lp, "bytes": list(b)} for s, b, lp in t.top]}
                        for t in tokens],
            "refusal": None}


def completion_logprobs(tokens: Sequence[TokenLogprob], offset0: int = 0) -> dict:
    offsets, at = [], offset0
    for t in tokens:
        offsets.append(at)
        at += len(t.text)
    return {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{s: lp for s, _, lp in t.top} for t in tokens], "text_offset": offsets}


def response(req: GenerationRequest, rid: str, model: str, choices: list[dict], prompt_tokens: int,
             completion_tokens: int) -> dict:
    """The whole (non-streamed) answer; `choices` hold text, finish_reason and logprobs (or None)."""
    out = []
    for i, c in enumerate(choices):
        if req.kind == "chat":
            lp = None if c["logprobs"] is None else chat_logprobs(c["logprobs"])
            out.append({"index": i, "message": {"role": "assistant", "content": c["text"]}, "logprobs": lp,
                        "finish_reason": finish_reason(c["finish_reason"])})
        else:
            lp = None if c["logprobs"] is None else completion_logprobs(c["logprobs"])
            out.append({"index": i, "text": c["text"], "logprobs": lp,
                        "finish_reason": finish_reason(c["finish_reason"])})
    return {"id": rid, "object": "chat.completion" if req.kind == "chat" else "text_completion",
            "created": req.created, "model": model, "system_fingerprint": None, "choices": out,
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk(req: GenerationRequest, rid: str, model: str, index: int, *, text: str | None = None,
          role: bool = False, logprobs: Sequence[TokenLogprob] | None = None, finish: str | None = None,
          text_offset: int = 0) -> dict:
    """One stream chunk for one choice: a role announcement, a text piece, or the finish."""
    if req.kind == "chat":
        delta: dict = {}
        if role:
            delta["role"] = "assistant"
            delta["content"] = ""
        if text is not None:
            delta["content"] = text
        choice = {"index": index, "delta": delta,
                  "logprobs": None if logprobs is None else chat_logprobs(logprobs),
                  "finish_reason": finish_reason(finish)}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": index, "text": text or "",
                  "logprobs": None if logprobs is None else completion_logprobs(logprobs, text_offset),
                  "finish_reason": finish_reason(finish)}
        obj = "text_completion"
    out = {"id": rid, "object": obj, "created": req.created, "model": model, "system_fingerprint": None,
           "choices": [choice]}
    if req.include_usage:
        out["usage"] = None
    return out


def usage_chunk(req: GenerationRequest, rid: str, model: str, prompt_tokens: int, completion_tokens: int) -> dict:
    """The last chunk when stream_options.include_usage: no choices, the usage of the whole request."""
    return {"id": rid, "object": "chat.completion.chunk" if req.kind == "chat" else "text_completion",
            "created": req.created, "model": model, "system_fingerprint": None, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}
