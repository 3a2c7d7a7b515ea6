"""Chat and chat templates under bad input: a failed /load changes nothing, /save is atomic, bad
bytes on stdin, templates that do not compile, are not UTF-8 or never end: one line, the session
(or the batch) goes on."""

import llama_cpp  # noqa: F401

import json
import os
import subprocess
import sys

import pytest

from conftest import tiny_shape
from rast_gguf import DeltaPair, RastEngine, SamplingParams
from rast_gguf import chat_template as chat_template_module
from rast_gguf.chat import ChatSession
from rast_gguf.errors import ChatFileError, ChatTemplateError, ContextFullError
from rast_gguf.synth import write_synthetic_gguf

GREEDY = SamplingParams(temp=0)


def engine_for(t, n_ctx=512):
    return RastEngine(t.large, [DeltaPair(str(t.tuned), str(t.base), 1.0)], n_ctx=n_ctx, n_threads=2)


def state(session):
    return (list(session.messages), list(session.tokens), session.engine.n_past, session.system,
            session.sampling, [p.alpha for p in session.engine.pairs])


def test_a_load_that_does_not_fit_changes_nothing(triple, tmp_path):
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"format": "rast-chat/1", "raw": False, "system": "Other.", "alpha": [2.0],
                               "temp": 0.9, "messages": [{"role": "system", "content": "Other."},
                                                         {"role": "user", "content": "word " * 400}]}))
    with engine_for(triple, n_ctx=256) as engine, engine_for(triple, n_ctx=256) as fresh_engine:
        session = ChatSession(engine, system="Be brief.", sampling=GREEDY, max_tokens=8)
        session.ask("Hello there")
        before = state(session)
        with pytest.raises(ContextFullError):
            session.load(big)
        assert state(session) == before
        # the caches still hold the conversation: the next answer is the one a never-failed session gives
        reference = ChatSession(fresh_engine, system="Be brief.", sampling=GREEDY, max_tokens=8)
        reference.ask("Hello there")
        assert session.ask("And then?") == reference.ask("And then?")


def test_a_load_interrupted_mid_decode_puts_the_conversation_back(triple, tmp_path, monkeypatch):
    with engine_for(triple) as engine, engine_for(triple) as fresh_engine:
        session = ChatSession(engine, sampling=GREEDY, max_tokens=8)
        session.ask("Hello there")
        other = ChatSession(fresh_engine, sampling=GREEDY, max_tokens=8)
        other.ask("Something else entirely, longer than the first")
        path = other.save(tmp_path / "other.json")
        before = state(session)

        real_feed, calls = engine.feed, []

        def feed_then_interrupt(tokens):
            calls.append(len(tokens))
            if len(calls) == 1:
                real_feed(tokens[: len(tokens) // 2])
                raise KeyboardInterrupt
            real_feed(tokens)

        monkeypatch.setattr(engine, "feed", feed_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            session.load(path)
        assert len(calls) == 2  # the interrupted load, then the old conversation decoded back
        assert state(session) == before
        monkeypatch.undo()
        reference = ChatSession(fresh_engine, sampling=GREEDY, max_tokens=8)
        reference.ask("Hello there")
        assert session.ask("Go on") == reference.ask("Go on")


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_save_is_atomic(triple, tmp_path, monkeypatch, failure):
    with engine_for(triple) as engine:
        session = ChatSession(engine, sampling=GREEDY, max_tokens=4)
        session.ask("Hello")
        path = session.save(tmp_path / "chat.json")
        saved = path.read_bytes()
        session.ask("More")

        def crash(fd):
            raise failure

        monkeypatch.setattr(os, "fsync", crash)  # the new text is written, not yet renamed
        with pytest.raises(ChatFileError if isinstance(failure, OSError) else KeyboardInterrupt):
            session.save(path)
        monkeypatch.undo()
        assert path.read_bytes() == saved and sorted(p.name for p in tmp_path.iterdir()) == ["chat.json"]
        session.save(path)
        assert len(json.loads(path.read_text())["messages"]) == 4


def model_with_template(root, template, name="custom.gguf"):
    return write_synthetic_gguf(root / name, tiny_shape("qwen2", 64, 1, 640, 8), ftype="f32", seed=3,
                                chat_template=template)


@pytest.fixture(scope="module")
def bad_templates(tmp_path_factory):
    root = tmp_path_factory.mktemp("templates")
    latin1 = model_with_template(root, "{{ 'caf\u00e9' }}{% for m in messages %}{{ m.content }}{% endfor %}",
                                 "latin1.gguf")
    data = latin1.read_bytes()
    assert data.count("caf\u00e9".encode()) == 1
    latin1.write_bytes(data.replace("caf\u00e9".encode(), b"caf\xe9\xe9"))  # same length, not UTF-8
    return {
        "syntax": model_with_template(root, "{% if %}{{ messages }}", "syntax.gguf"),
        "latin1": latin1,
        "forever": model_with_template(root, "{% for a in range(100000) %}{% for b in range(100000) %}"
                                             "{% endfor %}{% endfor %}", "forever.gguf"),
    }


@pytest.mark.parametrize("kind, message", [("syntax", "failed to render"), ("latin1", "is not UTF-8 text"),
                                           ("forever", "ran for more than 0.5 s")])
def test_bad_templates_raise_one_typed_error(bad_templates, kind, message, monkeypatch):
    monkeypatch.setattr(chat_template_module, "RENDER_SECONDS", 0.5)
    with RastEngine(bad_templates[kind], n_ctx=64, n_threads=1) as engine:
        with pytest.raises(ChatTemplateError, match=message):
            ChatSession(engine, sampling=GREEDY)


def run_cli(*args, stdin=b"", timeout=180):
    return subprocess.run([sys.executable, "-m", "rast_gguf.cli.app", *map(str, args)], input=stdin,
                          capture_output=True, timeout=timeout,
                          env=dict(os.environ, NO_COLOR="1", RAST_CACHE=os.devnull + ".rast-cache-unused"))


@pytest.mark.parametrize("kind", ["syntax", "latin1"])
def test_rast_chat_and_batch_with_a_broken_template_say_one_line(bad_templates, kind, tmp_path):
    proc = run_cli("chat", "-m", bad_templates[kind], "-n", "4", "-t", "1", stdin=b"Hello\n")
    err = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1 and err[0].startswith("error: the chat template of")
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "chat", "messages": [{"role": "user", "content": "Hi"}]}) + "\n"
                   + json.dumps({"id": "raw", "prompt": "Once upon a time"}) + "\n")
    proc = run_cli("batch", src, "-o", tmp_path / "out.jsonl", "-m", bad_templates[kind], "-n", "4", "-c", "64",
                   "-t", "1", "--no-progress")
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "Traceback" not in err
    assert "line 1: the chat template of" in err and "1 bad lines skipped" in err
    assert [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == ["raw"]


def test_chat_survives_bad_bytes_and_bad_commands_on_stdin(triple, tmp_path):
    lines = [b"Hello", b"caf\xe9 au lait", b"/alpha x", b"/temp", b"/load", b"/load " + bytes(tmp_path / "nope.json"),
             b"/save " + bytes(tmp_path / "no-such-dir" / "c.json"), b"/bogus", b"\xff\xfe", b"/stats"]
    proc = run_cli("chat", "-m", triple.large, "--base", triple.base, "--tuned", triple.tuned, "-n", "4", "-t", "1",
                   "--temp", "0", stdin=b"\n".join(lines) + b"\n")
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, err
    assert "Traceback" not in out + err
    errors = [line.split(">>> ")[-1] for line in out.splitlines() if "error: " in line]
    assert len(errors) == 8, errors
    assert sum("not UTF-8 text" in e for e in errors) == 2
    assert "context: " in out  # /stats, the last command, still ran
