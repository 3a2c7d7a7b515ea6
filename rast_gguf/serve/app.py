"""The ASGI app of `rast serve` (Starlette): OpenAI-compatible endpoints over a `Backend`.

Routes: POST /v1/chat/completions and /v1/completions (also without the /v1 prefix), GET
/v1/models, /health (503 while the models load, then 200) and /metrics (Prometheus text). A
generation request is parsed and checked (`protocol`), templated and tokenized on a worker thread
(the large model's chat template, or plain text for a model without one, as `rast chat --raw`),
then submitted to the scheduler as one group of `n` sequences per prompt. The decode thread hands
the TokenEvents of a step to the event loop together (`EventRelay`: one `call_soon_threadsafe`),
which puts each into its request's own asyncio queue; the handler turns events into one JSON answer or into SSE chunks ending in `data: [DONE]`.
A client that disconnects cancels its ticket (the scheduler frees the slots at its next step); a
full queue is a 503 with Retry-After. With an API key every route but /health and /v1/models
needs `Authorization: Bearer KEY` (or `X-Api-Key: KEY`), as llama-server does.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from rast_gguf.serve import protocol as p
from rast_gguf.serve.backend import Backend
from rast_gguf.serve.metrics import ServerMetrics

PUBLIC_PATHS = frozenset({"/health", "/v1/health", "/models", "/v1/models"})
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class ServeConfig:
    model_name: str                          # the id /v1/models reports
    accepted_names: frozenset[str] = frozenset()  # also accepted in a request's "model" field
    api_key: str | None = None
    defaults: p.Defaults = p.Defaults()
    order: str = "llama"                     # sampler order (rast_gguf.sampling.ORDERS)


# ---- from an event of the decode thread to the request's coroutine --------------------------------

class EventRelay:
    """Carries TokenEvents from the decode thread to the event loop: events pushed while a delivery is
    pending join it, so the events of a step, whoever they are for, usually cross in one
    `call_soon_threadsafe` (one loop wake-up per step, not one per token)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list = []  # (inbox, event)

    def push(self, inbox: "Inbox", event) -> None:  # decode thread
        with self._lock:
            self._pending.append((inbox, event))
            if len(self._pending) > 1:
                return  # a delivery is already scheduled
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the event loop is closed: nobody will read these answers
            with self._lock:
                dead, self._pending = self._pending, []
            for inbox, _ in dead:
                inbox.dead()

    def _deliver(self) -> None:
        with self._lock:
            items, self._pending = self._pending, []
        for inbox, event in items:
            inbox.queue.put_nowait(event)


class Inbox:
    """The TokenEvents of one request, taken on the event loop."""

    def __init__(self, relay: EventRelay):
        self._relay = relay
        self.queue: asyncio.Queue = asyncio.Queue()
        self.on_dead: Callable[[], None] | None = None  # called once the loop is gone (cancels the ticket)

    def push(self, event) -> None:  # decode thread
        self._relay.push(self, event)

    def dead(self) -> None:
        if self.on_dead is not None:
            self.on_dead()
            self.on_dead = None

    async def take(self) -> list:
        """Every event waiting (at least one)."""
        events = [await self.queue.get()]
        while not self.queue.empty():
            events.append(self.queue.get_nowait())
        return events


@dataclass
class _Choice:
    pieces: list
    logprobs: list | None
    finish_reason: str | None = None
    n_tokens: int = 0


class Answer:
    """The choices of one request as their events come in."""

    def __init__(self, model, n_choices: int, want_logprobs: bool):
        self.model = model
        self.choices = [_Choice([], [] if want_logprobs else None) for _ in range(n_choices)]
        self.n_finished = 0

    @property
    def done(self) -> bool:
        return self.n_finished == len(self.choices)

    @property
    def completion_tokens(self) -> int:
        return sum(c.n_tokens for c in self.choices)

    def add(self, event) -> tuple[str, list | None]:
        """Record an event; returns its text and its logprob entries (None when not asked for)."""
        choice = self.choices[event.index]
        entries = None
        if event.token >= 0:
            choice.n_tokens += 1
            if choice.logprobs is not None:
                entries = [] if event.logprob is None or self.model.is_eog(event.token) else \
                    [self._token_logprob(event)]
                choice.logprobs.extend(entries)
        choice.pieces.append(event.text)
        if event.finish_reason is not None:
            choice.finish_reason = event.finish_reason
            self.n_finished += 1
        return event.text, entries

    def _piece(self, token: int) -> tuple[str, bytes]:
        raw = self.model.token_bytes(token)
        return raw.decode("utf-8", errors="replace"), raw

    def _token_logprob(self, event) -> p.TokenLogprob:
        text, raw = self._piece(event.token)
        top = [(*self._piece(t), lp) for t, lp in (event.top_logprobs or ())]
        return p.TokenLogprob(text, raw, event.logprob, top)

    def as_choices(self) -> list[dict]:
        return [{"text": "".join(c.pieces), "finish_reason": c.finish_reason, "logprobs": c.logprobs}
                for c in self.choices]


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class EventStreamResponse(Response):
    """Server-sent events from an async iterator of strings; `on_close` runs however it ends."""

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[str], on_close: Callable[[], None]):
        self.chunks, self.on_close = chunks, on_close
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope, receive, send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for text in self.chunks:
                await send({"type": "http.response.body", "body": text.encode("utf-8"), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-stream
        finally:
            self.on_close()
            await self.chunks.aclose()


# ---- the app --------------------------------------------------------------------------------------

class RastServer:
    """The routes and their shared state; `app` is the ASGI application."""

    def __init__(self, backend: Backend, config: ServeConfig, metrics: ServerMetrics | None = None):
        self.backend, self.config = backend, config
        self.metrics = metrics or ServerMetrics()
        self.created = int(time.time())
        self._raw_chat: bool | None = None
        self._open: set = set()  # tickets of requests being answered
        self._relay: EventRelay | None = None
        self.draining = False
        routes = [
            Route("/health", self.health), Route("/v1/health", self.health),
            Route("/v1/models", self.models), Route("/models", self.models),
            Route("/metrics", self.metrics_text),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/completions", self.completions, methods=["POST"]),
        ]
        middleware = [Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"]),
                      Middleware(ApiKeyMiddleware, api_key=config.api_key)]
        handlers = {p.ApiError: _api_error, HTTPException: _http_error, Exception: _server_error}
        self.app = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)

    # -- plain routes

    async def health(self, request: Request) -> Response:
        if self.backend.ready:
            return JSONResponse({"status": "ok"})
        if self.backend.error is not None:
            return JSONResponse({"error": {"code": 500, "message": f"the models failed to load: {self.backend.error}",
                                           "type": "server_error"}}, status_code=500)
        return JSONResponse({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
                            status_code=503)

    async def models(self, request: Request) -> Response:
        entry = {"id": self.config.model_name, "object": "model", "created": self.created, "owned_by": "rast-gguf"}
        engine = self.backend.engine if self.backend.ready else None
        if engine is not None:
            entry["meta"] = {"n_ctx": engine.n_ctx, "n_slots": engine.n_seq_max, "n_vocab": engine.n_vocab,
                             "large": engine.model_large.path.name,
                             "pairs": [{"tuned": pair.tuned, "base": pair.base, "alpha": pair.alpha}
                                       for pair in engine.pairs]}
        return JSONResponse({"object": "list", "data": [entry]})

    async def metrics_text(self, request: Request) -> Response:
        scheduler = self.backend.scheduler if self.backend.ready else None
        text = self.metrics.render(scheduler.stats if scheduler is not None else None,
                                   model=self.config.model_name, loading=not self.backend.ready)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- generation

    async def chat(self, request: Request) -> Response:
        return await self._counted("chat", request, p.parse_chat)

    async def completions(self, request: Request) -> Response:
        return await self._counted("completions", request, p.parse_completion)

    async def _counted(self, endpoint: str, request: Request, parse) -> Response:
        try:
            response = await self._generate(request, parse)
        except p.ApiError as e:
            self.metrics.count(endpoint, e.status)
            raise
        except Exception:
            self.metrics.count(endpoint, 500)
            raise
        self.metrics.count(endpoint, response.status_code)
        return response

    async def _generate(self, request: Request, parse) -> Response:
        if self.draining:
            raise p.ApiError(503, "the server is shutting down", type="server_error", code="shutting_down")
        if not self.backend.ready:
            raise p.ApiError(503, "Loading model", type="unavailable_error", code="loading",
                             headers={"Retry-After": str(RETRY_AFTER_S)})
        req = parse(await _json_body(request), self.config.defaults)
        self._check_model(req.model)
        engine, scheduler = self.backend.engine, self.backend.scheduler
        seqs, n_prompt_tokens = await run_in_threadpool(self._sequences, engine, req)

        from rast_gguf.errors import PromptTooLongError, QueueFullError, RastError

        if self._relay is None:
            self._relay = EventRelay(asyncio.get_running_loop())
        inbox = Inbox(self._relay)
        try:
            ticket = scheduler.submit(seqs, inbox.push)
        except QueueFullError as e:
            self.metrics.rejected_queue_full += 1
            raise p.ApiError(503, f"The server is busy: {e}", type="server_error", code="queue_full",
                             headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except PromptTooLongError as e:
            raise p.bad_request(str(e), "messages" if req.kind == "chat" else "prompt",
                                "context_length_exceeded") from None
        except RastError as e:
            raise p.bad_request(str(e)) from None

        inbox.on_dead = lambda: scheduler.cancel(ticket)
        self._open.add(ticket)
        self.metrics.in_flight += 1
        answer = Answer(engine.model_large, len(seqs), req.n_logprobs is not None)
        rid = p.new_id(req.kind)

        def close() -> None:  # the answer is complete, cut by an error or a shutdown, or its client went away
            if ticket not in self._open:
                return
            self._open.discard(ticket)
            self.metrics.in_flight -= 1
            if not answer.done:
                scheduler.cancel(ticket)
                if not self.draining:
                    self.metrics.cancelled_by_client += 1

        watcher = asyncio.ensure_future(_on_disconnect(request.receive, close))
        if req.stream:
            def on_close() -> None:
                watcher.cancel()
                close()

            return EventStreamResponse(self._stream(req, rid, answer, inbox, n_prompt_tokens), on_close)
        try:
            while not answer.done:
                for event in await inbox.take():
                    answer.add(event)
        finally:
            watcher.cancel()
            close()
        choices = answer.as_choices()
        for c in choices:
            if c["finish_reason"] in ("error", "cancelled"):
                raise self._cut_error(c["finish_reason"])
        return JSONResponse(p.response(req, rid, self.config.model_name, choices, n_prompt_tokens,
                                       answer.completion_tokens))

    def _cut_error(self, reason: str) -> p.ApiError:
        if reason == "error":
            return p.ApiError(500, "decoding failed inside llama.cpp; see the server's log", type="server_error",
                              code="decode_error")
        if not self.draining:  # its client went away (nginx's 499: nobody reads this answer)
            return p.ApiError(499, "the client closed the request", code="client_closed")
        return p.ApiError(503, "the server is shutting down; the answer was cut", type="server_error",
                          code="shutting_down")

    async def _stream(self, req: p.GenerationRequest, rid: str, answer: Answer, inbox: Inbox,
                      n_prompt_tokens: int) -> AsyncIterator[str]:
        name = self.config.model_name
        if req.kind == "chat":
            yield "".join(_sse(p.chunk(req, rid, name, i, role=True)) for i in range(len(answer.choices)))
        offsets = [0] * len(answer.choices)
        while not answer.done:
            out = []
            for event in await inbox.take():
                text, entries = answer.add(event)
                i = event.index
                if text or entries:
                    out.append(_sse(p.chunk(req, rid, name, i, text=text, logprobs=entries, text_offset=offsets[i])))
                    offsets[i] += len(text)
                if event.finish_reason in ("error", "cancelled"):  # the whole answer ends here, as an error
                    yield "".join(out) + _sse(self._cut_error(event.finish_reason).body())
                    return
                if event.finish_reason is not None:
                    out.append(_sse(p.chunk(req, rid, name, i, text="" if req.kind != "chat" else None,
                                            finish=event.finish_reason)))
            if out:
                yield "".join(out)
        if req.include_usage:
            yield _sse(p.usage_chunk(req, rid, name, n_prompt_tokens, answer.completion_tokens))
        yield "data: [DONE]\n\n"

    async def drain(self, grace_s: float, forced: Callable[[], bool]) -> None:
        """Shutdown: refuse new requests, let open ones finish for grace_s seconds, then cancel the rest
        (they end with a 'shutting down' error) and wait briefly for their handlers to see it."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self._open and loop.time() < deadline and not forced():
            await asyncio.sleep(0.05)
        if self._open and self.backend.scheduler is not None:
            for ticket in list(self._open):
                self.backend.scheduler.cancel(ticket)
            deadline = loop.time() + 2.0
            while self._open and loop.time() < deadline and not forced():
                await asyncio.sleep(0.05)

    def _check_model(self, name: str | None) -> None:
        if name is not None and name != self.config.model_name and name not in self.config.accepted_names:
            raise p.ApiError(404, f"The model `{name}` does not exist or you do not have access to it. This server "
                                  f"serves `{self.config.model_name}` (GET /v1/models).",
                             param="model", code="model_not_found")

    def _sequences(self, engine, req: p.GenerationRequest):
        """The scheduler's requests for `req` (n per prompt, prompt-major) and the prompts' token count."""
        from rast_gguf.errors import ChatTemplateError, SamplingParamsError
        from rast_gguf.scheduler import SeqRequest
        from rast_gguf.sampling import SamplingParams

        if req.alpha is not None and not engine.pairs:
            raise p.bad_request("'alpha' needs a small pair, and this server runs the large model alone "
                                "(start rast serve with --base and --tuned).", "alpha")
        if req.kind == "chat":
            param = "messages"
            try:
                prompts = [self._chat_tokens(engine, req.messages)]
            except ChatTemplateError as e:
                raise p.bad_request(str(e), "messages") from None
        else:
            param = "prompt"
            prompts = [engine.tokenize(x) if isinstance(x, str) else self._token_ids(engine, x) for x in req.prompts]
        seqs = []
        for tokens in prompts:
            if not tokens:
                raise p.bad_request("The prompt is empty after tokenization.", param)
            if len(tokens) >= engine.n_ctx:
                raise p.bad_request(f"This model's maximum context length is {engine.n_ctx} tokens per sequence "
                                    f"(rast serve -c), but the prompt has {len(tokens)} tokens. Shorten it, or start "
                                    f"the server with a larger -c.", param, "context_length_exceeded")
            room = engine.n_ctx - len(tokens)
            max_tokens = room if req.max_tokens is None else min(req.max_tokens, room)
            for j in range(req.n):
                seed = req.seed if req.seed == p.SEED_RANDOM else (req.seed + j) % p.SEED_RANDOM
                try:
                    sampling = SamplingParams(temp=req.temp, top_k=req.top_k, top_p=req.top_p, min_p=req.min_p,
                                              seed=seed, order=self.config.order)
                except SamplingParamsError as e:
                    raise p.bad_request(str(e)) from None
                seqs.append(SeqRequest(prompt=tuple(tokens), sampling=sampling, max_tokens=max_tokens,
                                       stop=req.stop, alpha=req.alpha, n_logprobs=req.n_logprobs,
                                       ignore_eos=req.ignore_eos))
        return seqs, sum(len(t) for t in prompts)

    def _chat_tokens(self, engine, messages: list[dict]) -> list[int]:
        from rast_gguf.chat_template import chat_template, check_messages, render_messages

        if self._raw_chat is None:
            self._raw_chat = chat_template(engine) is None
        if self._raw_chat:  # no template (base models): the conversation as plain text, as `rast chat --raw`
            text = "".join(m["content"] if m["role"] == "assistant" else m["content"] + "\n"
                           for m in check_messages(messages))
            return engine.tokenize(text)
        return engine.tokenize(render_messages(engine, messages), add_special=False)

    @staticmethod
    def _token_ids(engine, ids: list[int]) -> list[int]:
        bad = next((t for t in ids if not 0 <= t < engine.n_vocab), None)
        if bad is not None:
            raise p.bad_request(f"Invalid 'prompt': token id {bad} is outside the vocabulary [0, {engine.n_vocab}).",
                                "prompt")
        return ids


async def _on_disconnect(receive, callback: Callable[[], None]) -> None:
    """Call `callback` when the client disconnects (the request body has been read already)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            callback()
            return


async def _json_body(request: Request):
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise p.ApiError(400, f"We could not parse the JSON body of your request ({e}). Send a JSON object with "
                              "Content-Type: application/json.", code="invalid_json") from None


def _error_json(status: int, message: str, type: str, code) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": None, "code": code}},
                        status_code=status)


async def _api_error(request: Request, exc: p.ApiError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    message = {404: f"Unknown path {request.url.path}; the endpoints are /v1/chat/completions, /v1/completions, "
                    "/v1/models, /health and /metrics.",
               405: f"{request.method} is not allowed on {request.url.path}."}.get(exc.status_code, str(exc.detail))
    return _error_json(exc.status_code, message, "invalid_request_error", None)


async def _server_error(request: Request, exc: Exception) -> Response:
    return _error_json(500, f"internal error: {type(exc).__name__}: {exc}", "server_error", None)


class ApiKeyMiddleware:
    """401 for a missing or wrong key on every path but the public ones (when a key is set)."""

    def __init__(self, app, api_key: str | None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.api_key or scope["path"] in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-api-key", "")
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        if hmac.compare_digest(given.encode(), self.api_key.encode()):
            return await self.app(scope, receive, send)
        response = JSONResponse({"error": {"message": "Invalid API key: send it as 'Authorization: Bearer KEY' "
                                                      "(the key given to rast serve --api-key).",
                                           "type": "invalid_request_error", "param": None,
                                           "code": "invalid_api_key"}}, status_code=401)
        await response(scope, receive, send)
