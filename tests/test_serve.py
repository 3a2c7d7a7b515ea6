"""`rast serve`: the real server started as a subprocess (`rast serve --port 0`) on the tiny
synthetic triple, spoken to with the official `openai` client and with raw HTTP. Answers are
compared with the library (`generate` on a RastEngine, the scheduler itself) and with `rast
generate`; timeouts are only liveness bounds."""

import rast_gguf  # noqa: F401  (libstdc++ before libllama)

import json
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from rast_gguf import DeltaPair, RastEngine, SamplingParams
from rast_gguf.chat_template import prompt_tokens
from rast_gguf.generate import generate

RAST = str(Path(sys.executable).parent / "rast")
API_KEY = "sk-test-1234"
ALIAS = "tiny-rast"
N_CTX = 256
N_SLOTS = 4
LIVENESS_S = 180


class ServerProcess:
    """`rast serve ARGS --port 0` in a subprocess; `url` once its startup line is printed."""

    def __init__(self, args, env=None):
        self.proc = subprocess.Popen([RAST, "serve", "--port", "0", *map(str, args)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.stdout: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()
        self.startup_line = self._wait_startup()
        self.url = self.startup_line.split("listening on ")[1].split(" ")[0]

    @staticmethod
    def _pump(stream, put):
        for line in stream:
            put(line)

    def _wait_startup(self) -> str:
        deadline = time.monotonic() + LIVENESS_S
        while time.monotonic() < deadline:
            try:
                line = self.stdout.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if "listening on http://" in line:
                return line.strip()
        self.proc.kill()
        raise AssertionError(f"rast serve did not start: rc={self.proc.poll()} stderr={''.join(self.stderr)}")

    def stop(self, sig=signal.SIGTERM, timeout=LIVENESS_S) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"rast serve did not exit within {timeout} s of {sig!r}")


def http(url, path, body=None, *, raw: bytes | None = None, key: str | None = API_KEY, method=None,
         headers=None):
    """(status, headers, decoded JSON or text) of one request."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url + path, data=data, method=method or ("POST" if data is not None else "GET"))
    req.add_header("Content-Type", "application/json")
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=LIVENESS_S) as r:
            status, hdrs, text = r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        status, hdrs, text = e.code, e.headers, e.read().decode()
    try:
        return status, hdrs, json.loads(text)
    except ValueError:
        return status, hdrs, text


def triple_args(t):
    return ["-m", t.large, "--base", t.base, "--tuned", t.tuned]


@pytest.fixture(scope="module")
def server(triple):
    srv = ServerProcess([*triple_args(triple), "-np", N_SLOTS, "-c", N_CTX, "--alias", ALIAS, "--api-key", API_KEY])
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=LIVENESS_S)


@pytest.fixture(scope="module")
def engine(triple):
    """The library's engine with the server's shape (slots and context), for reference answers."""
    with RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base), 1.0)], n_ctx=N_CTX,
                    n_seq_max=N_SLOTS) as e:
        yield e


def library_text(engine, prompt, *, alpha=1.0, **kwargs):
    engine.set_alpha(alpha)
    try:
        return generate(engine, prompt, **kwargs)
    finally:
        engine.set_alpha(1.0)


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+3?"}]


# ---- the happy paths, through the openai client --------------------------------------------------

def test_startup_line_health_and_models(server):
    assert server.startup_line.startswith("rast serve: listening on http://127.0.0.1:")
    assert f"'{ALIAS}'" in server.startup_line and f"{N_SLOTS} slots x {N_CTX} tokens" in server.startup_line
    status, _, body = http(server.url, "/health", key=None)
    assert (status, body) == (200, {"status": "ok"})
    status, _, body = http(server.url, "/v1/models", key=None)
    assert status == 200 and [m["id"] for m in body["data"]] == [ALIAS]
    assert body["data"][0]["meta"]["n_ctx"] == N_CTX and body["data"][0]["meta"]["n_slots"] == N_SLOTS


def test_chat_answer_is_the_library_answer_on_the_templated_prompt(client, engine):
    answer = client.chat.completions.create(model=ALIAS, messages=MESSAGES, max_tokens=16, temperature=0)
    tokens = prompt_tokens(engine, MESSAGES)
    ref = library_text(engine, tokens, max_tokens=16, sampling=SamplingParams(temp=0))
    assert answer.object == "chat.completion" and answer.model == ALIAS and answer.id.startswith("chatcmpl-")
    [choice] = answer.choices
    assert choice.message.role == "assistant" and choice.message.content == ref.text
    assert choice.finish_reason == ("length" if ref.finish_reason == "length" else "stop")
    assert answer.usage.prompt_tokens == len(tokens)
    assert answer.usage.completion_tokens == ref.generation_tokens
    assert answer.usage.total_tokens == len(tokens) + ref.generation_tokens


def test_streaming_chunks_spell_the_same_answer_and_end_with_usage(client):
    kwargs = dict(model=ALIAS, messages=MESSAGES, max_tokens=20, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    *body, last = chunks
    assert last.choices == [] and last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in body)
    assert body[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in body)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in body if c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]


def test_n_choices_are_the_library_answers_with_consecutive_seeds(client, engine):
    prompt = "Once upon a time"
    answer = client.completions.create(model=ALIAS, prompt=prompt, n=3, max_tokens=12, temperature=1.0, seed=5,
                                       extra_body={"top_k": 0, "min_p": 0.0})
    assert [c.index for c in answer.choices] == [0, 1, 2]
    texts = [c.text for c in answer.choices]
    refs = [library_text(engine, prompt, max_tokens=12, sampling=SamplingParams(temp=1.0, top_k=0, min_p=0.0,
                                                                                seed=5 + j)) for j in range(3)]
    assert texts == [r.text for r in refs]
    assert len(set(texts)) > 1  # different seeds, different samples
    assert answer.usage.completion_tokens == sum(r.generation_tokens for r in refs)
    assert answer.usage.prompt_tokens == refs[0].prompt_tokens  # counted once for the n choices


def test_streamed_completion_choices_are_told_apart_by_index(client):
    kwargs = dict(model=ALIAS, prompt="Hello there", n=2, max_tokens=8, temperature=1.0, seed=9)
    whole = client.completions.create(**kwargs)
    texts, finishes = ["", ""], {}
    for chunk in client.completions.create(**kwargs, stream=True):
        assert chunk.object == "text_completion"
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == [c.text for c in whole.choices]
    assert finishes == {c.index: c.finish_reason for c in whole.choices}


def test_per_request_alpha_changes_the_answer_as_the_library_and_rast_generate(client, engine, triple):
    prompt = "The answer is"
    texts = {}
    for alpha in (0.0, 3.0):
        answer = client.completions.create(model=ALIAS, prompt=prompt, max_tokens=16, temperature=0.7, seed=11,
                                           extra_body={"alpha": alpha})
        texts[alpha] = answer.choices[0].text
        ref = library_text(engine, prompt, alpha=alpha, max_tokens=16, sampling=SamplingParams(temp=0.7, seed=11))
        assert texts[alpha] == ref.text
    assert texts[0.0] != texts[3.0]
    cli = subprocess.run([RAST, "generate", *map(str, triple_args(triple)), "--alpha", "3", "-c", str(N_CTX),
                          "-p", prompt, "-n", "16", "--temp", "0.7", "--seed", "11"],
                         capture_output=True, text=True, timeout=LIVENESS_S)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout == texts[3.0] + "\n"


def test_chat_logprobs_are_the_schedulers_and_consistent(client, engine):
    from rast_gguf.scheduler import Scheduler, SeqRequest

    answer = client.chat.completions.create(model=ALIAS, messages=MESSAGES, max_tokens=10, temperature=0.9,
                                            seed=3, logprobs=True, top_logprobs=3, top_p=1.0,
                                            extra_body={"ignore_eos": True, "top_k": 0, "min_p": 0.0})
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens == 10
    text = b"".join(bytes(e.bytes) for e in content).decode("utf-8", errors="replace")
    assert text == answer.choices[0].message.content
    for e in content:
        assert e.logprob <= 0 and math.isfinite(e.logprob)
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert sum(math.exp(t) for t in tops) <= 1 + 1e-9
        if e.logprob >= tops[-1]:  # the chosen token is among the 3 most likely: it is listed, same value
            assert (e.token, e.logprob) in [(t.token, t.logprob) for t in e.top_logprobs]
        assert bytes(e.bytes).decode("utf-8", errors="replace") == e.token

    # the same request run by the scheduler in this process: same tokens, same numbers
    events = []
    sched = Scheduler(engine)
    sched.submit([SeqRequest(tuple(prompt_tokens(engine, MESSAGES)), SamplingParams(temp=0.9, top_k=0, top_p=1.0, min_p=0.0, seed=3), 10,
                             n_logprobs=3, ignore_eos=True)], events.append)
    sched.run_until_idle()
    assert [e.logprob for e in content] == pytest.approx([ev.logprob for ev in events], abs=1e-12)
    assert [t.logprob for e in content for t in e.top_logprobs] == \
        pytest.approx([lp for ev in events for _, lp in ev.top_logprobs], abs=1e-12)
    piece = engine.model_large.token_bytes
    assert [bytes(e.bytes) for e in content] == [piece(ev.token) for ev in events]
    assert [bytes(t.bytes) for e in content for t in e.top_logprobs] == \
        [piece(t) for ev in events for t, _ in ev.top_logprobs]


def test_greedy_logprobs_list_the_chosen_token_first_and_completion_format(client):
    answer = client.completions.create(model=ALIAS, prompt="Hello", max_tokens=8, temperature=0, logprobs=2,
                                       extra_body={"ignore_eos": True})
    lp = answer.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 8
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(8)]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0
        best = max(top, key=top.get)
        assert best == token and top[best] == logprob


# ---- refusals, through raw HTTP -------------------------------------------------------------------

def _error(status, body, expected_status, param=None, code=None):
    assert status == expected_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param
    if code is not None:
        assert body["error"]["code"] == code


CHAT = "/v1/chat/completions"
OK_CHAT = {"model": ALIAS, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize("body, param, code", [
    ({"model": ALIAS}, "messages", "missing_required_parameter"),
    ({**OK_CHAT, "messages": "hi"}, "messages", "invalid_type"),
    ({**OK_CHAT, "messages": []}, "messages", "empty_array"),
    ({**OK_CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "invalid_value"),
    ({**OK_CHAT, "messages": [{"role": "user", "content": 5}]}, "messages[0].content", "invalid_type"),
    ({**OK_CHAT, "temperature": "hot"}, "temperature", "invalid_type"),
    ({**OK_CHAT, "temperature": -1}, "temperature", "decimal_below_min_value"),
    ({**OK_CHAT, "top_p": 1.5}, "top_p", "decimal_above_max_value"),
    ({**OK_CHAT, "max_tokens": 0}, "max_tokens", "integer_below_min_value"),
    ({**OK_CHAT, "max_tokens": "many"}, "max_tokens", "invalid_type"),
    ({**OK_CHAT, "n": 0}, "n", "integer_below_min_value"),
    ({**OK_CHAT, "stream": "yes"}, "stream", "invalid_type"),
    ({**OK_CHAT, "stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
    ({**OK_CHAT, "top_logprobs": 2}, "top_logprobs", "invalid_value"),
    ({**OK_CHAT, "stop": 7}, "stop", "invalid_type"),
    ({**OK_CHAT, "seed": 2 ** 40}, "seed", "invalid_value"),
    ({**OK_CHAT, "alpha": "big"}, "alpha", "invalid_type"),
    ({**OK_CHAT, "messages": [{"role": "user", "content": "x " * 400}]}, "messages", "context_length_exceeded"),
])
def test_bad_chat_requests_get_400_naming_the_field(server, body, param, code):
    _error(*http(server.url, CHAT, body)[::2], 400, param, code)


@pytest.mark.parametrize("body, param", [
    ({"model": ALIAS}, "prompt"),
    ({"prompt": {"text": "x"}}, "prompt"),
    ({"prompt": [1, 2, 10 ** 6]}, "prompt"),
    ({"prompt": "x", "logprobs": 99}, "logprobs"),
])
def test_bad_completion_requests_get_400(server, body, param):
    _error(*http(server.url, "/v1/completions", body)[::2], 400, param)


def test_malformed_json_and_non_object_bodies_get_400(server):
    _error(*http(server.url, CHAT, raw=b'{"messages": [')[::2], 400, code="invalid_json")
    _error(*http(server.url, CHAT, raw=b"\xff\xfe")[::2], 400, code="invalid_json")
    _error(*http(server.url, CHAT, [1, 2])[::2], 400)


def test_unknown_model_is_404_and_known_names_and_unknown_fields_are_accepted(server, triple):
    status, _, body = http(server.url, CHAT, {**OK_CHAT, "model": "gpt-4o"})
    _error(status, body, 404, "model", "model_not_found")
    assert ALIAS in body["error"]["message"]
    for name in (ALIAS, triple.large.name, None):
        status, _, body = http(server.url, CHAT, {**OK_CHAT, "model": name, "frequency_penalty": 0.5,
                                                  "user": "someone", "tools_are_not_here": [1]})
        assert status == 200 and body["choices"][0]["message"]["role"] == "assistant", body


def test_huge_max_tokens_is_clamped_to_the_context(server):
    status, _, body = http(server.url, "/v1/completions", {"prompt": "Hi", "max_tokens": 10 ** 12,
                                                           "temperature": 0, "ignore_eos": True})
    assert status == 200, body
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["total_tokens"] == N_CTX


def test_api_key(server):
    _error(*http(server.url, CHAT, OK_CHAT, key=None)[::2], 401, code="invalid_api_key")
    _error(*http(server.url, CHAT, OK_CHAT, key="sk-wrong")[::2], 401, code="invalid_api_key")
    _error(*http(server.url, "/metrics", key="sk-wrong")[::2], 401, code="invalid_api_key")
    assert http(server.url, CHAT, OK_CHAT, key=None, headers={"X-Api-Key": API_KEY})[0] == 200
    assert http(server.url, "/health", key="sk-wrong")[0] == 200  # public, as in llama-server
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0).chat.completions.create(
            model=ALIAS, messages=OK_CHAT["messages"])


def test_unknown_path_is_a_json_404(server):
    status, _, body = http(server.url, "/v1/embeddings", {"input": "x"})
    assert status == 404 and "/v1/chat/completions" in body["error"]["message"]


def test_metrics_count_requests_tokens_and_slots(server, client):
    client.completions.create(model=ALIAS, prompt="Count me", max_tokens=5, temperature=0,
                              extra_body={"ignore_eos": True})
    http(server.url, CHAT, {"model": ALIAS})  # a 400
    status, headers, text = http(server.url, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert values["rast_slots_total"] == N_SLOTS and values["rast_up{model=\"%s\"}" % ALIAS] == 1
    assert values["rast_tokens_generated_total"] >= 5
    assert values['rast_requests_total{endpoint="completions",status="200"}'] >= 1
    assert values['rast_requests_total{endpoint="chat",status="400"}'] >= 1
    assert 0 <= values["rast_changed_token_rate"] <= 1 and values["rast_changed_tokens_total"] >= 0
    assert values["rast_prompt_tokens_decoded_total"] <= values["rast_prompt_tokens_total"]


# ---- queue, disconnects, signals: a server of one slot ----------------------------------------------

def _open_stream(url, body):
    req = urllib.request.Request(url + CHAT, data=json.dumps({**body, "stream": True}).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    return urllib.request.urlopen(req, timeout=LIVENESS_S)


def _first_content(response) -> str:
    for raw in response:
        line = raw.decode().strip()
        if line.startswith("data: {"):
            delta = json.loads(line[6:])["choices"][0]["delta"]
            if delta.get("content"):
                return delta["content"]
    raise AssertionError("the stream ended without content")


def _metric(url, name) -> float:
    text = http(url, "/metrics", key=None)[2]
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def _wait_until(condition, what):
    deadline = time.monotonic() + LIVENESS_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_full_queue_503_disconnect_frees_the_slot_and_sigterm_exits_0(triple):
    srv = ServerProcess([*triple_args(triple), "-np", 1, "--max-queue", 1, "-c", 16384])
    try:
        # long answers (ignore_eos, the whole context): they only end when cancelled
        long = {"messages": [{"role": "user", "content": "go"}], "ignore_eos": True, "temperature": 0}
        first = _open_stream(srv.url, long)
        assert _first_content(first)  # it holds the only slot
        second = _open_stream(srv.url, long)
        _wait_until(lambda: _metric(srv.url, "rast_queue_length") == 1, "the second request to wait")
        status, headers, body = http(srv.url, CHAT, long, key=None)
        assert status == 503 and headers["Retry-After"] == "1" and body["error"]["code"] == "queue_full"
        assert _metric(srv.url, "rast_requests_rejected_total") == 1

        first.close()  # the client goes away: its slot goes to the waiting request
        assert _first_content(second)
        _wait_until(lambda: _metric(srv.url, "rast_requests_cancelled_total") == 1, "the cancellation to count")
        assert _metric(srv.url, "rast_queue_length") == 0

        # SIGTERM with a request in flight: it is cut within the grace period and the server exits 0
        assert srv.stop(signal.SIGTERM) == 0
        rest = second.read().decode()
        assert '"code": "shutting_down"' in rest and "[DONE]" not in rest  # cut, and said so
        assert "rast serve: stopped" in "".join(srv.stderr)
        assert "Traceback" not in "".join(srv.stderr)
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()


def test_sigint_when_idle_exits_0(triple):
    srv = ServerProcess(triple_args(triple))
    assert http(srv.url, "/health")[0] == 200
    assert srv.stop(signal.SIGINT) == 0


# ---- startup: loading state, errors -----------------------------------------------------------------

def test_health_is_503_while_loading_then_200(triple):
    """In-process: the backend's loader waits until the test lets it build the engine."""
    import uvicorn

    from rast_gguf.serve.app import RastServer, ServeConfig
    from rast_gguf.serve.backend import Backend
    from rast_gguf.serve.server import bind, url_of

    release = threading.Event()

    def load():
        release.wait(LIVENESS_S)
        return RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base), 1.0)], n_ctx=64)

    backend = Backend(load)
    sock = bind("127.0.0.1", 0)
    url = url_of(sock)
    server = uvicorn.Server(uvicorn.Config(RastServer(backend, ServeConfig("m")).app, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    backend.start()
    thread.start()
    try:
        _wait_until(lambda: server.started, "uvicorn to start")
        status, _, body = http(url, "/health")
        assert status == 503 and body["error"]["message"] == "Loading model"
        status, headers, body = http(url, CHAT, OK_CHAT | {"model": "m"})
        assert status == 503 and headers["Retry-After"] == "1"
        release.set()
        _wait_until(lambda: backend.ready, "the models to load")
        status, _, body = http(url, "/health")
        assert (status, body) == (200, {"status": "ok"})
        status, _, body = http(url, CHAT, OK_CHAT | {"model": "m"})
        assert status == 200 and body["usage"]["completion_tokens"] >= 1
    finally:
        release.set()
        server.should_exit = True
        thread.join(LIVENESS_S)
        backend.stop()
        sock.close()


def test_startup_errors_are_one_line(triple, tmp_path):
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"nope")
    run = subprocess.run([RAST, "serve", "-m", bad, "--base", triple.base, "--tuned", triple.tuned, "--port", "0"],
                         capture_output=True, text=True, timeout=LIVENESS_S)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: ") and "not-a-model.gguf" in run.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        run = subprocess.run([RAST, "serve", *triple_args(triple), "--port", str(port)],
                             capture_output=True, text=True, timeout=LIVENESS_S)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(f"error: cannot listen on 127.0.0.1:{port}")
