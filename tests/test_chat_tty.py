"""`rast chat` driven in a pseudo-terminal, as a user types: two turns, /alpha, Ctrl-C during an
answer, /reset, Ctrl-D; the second turn must decode only the new tokens. And the context-full path
with piped input."""

import llama_cpp  # noqa: F401

import json
import os
import re
import subprocess
import sys

import pexpect

PROMPT = ">>> "
STATS = re.compile(r"context: (\d+)/(\d+) tokens \| last turn: prompt (\d+) tokens, (\d+) decoded .*?"
                   r"generated (\d+) tokens")


def spawn_chat(triple, tmp_path, *args, color=False):
    env = dict(os.environ, RAST_CACHE=str(tmp_path / "cache"), INPUTRC="/dev/null", TERM="xterm")
    env.pop("NO_COLOR", None)
    if not color:
        env["NO_COLOR"] = "1"
    argv = ["-m", "rast_gguf.cli.app", "chat", "-m", str(triple.large), "--base", str(triple.base),
            "--tuned", str(triple.tuned), "-t", "1", "--temp", "0", *args]
    # generous timeout: on a loaded 2-core machine a turn can take many times its idle duration
    child = pexpect.spawn(sys.executable, argv, env=env, encoding="utf-8", timeout=600, dimensions=(40, 400))
    child.expect_exact(PROMPT)
    return child


def stats(child):
    child.sendline("/stats")
    child.expect(STATS)
    values = [int(v) for v in child.match.groups()]
    child.expect_exact(PROMPT)
    return dict(zip(["n_past", "n_ctx", "prompt", "decoded", "generated"], values))


def say(child, text):
    child.sendline(text)
    child.expect_exact(PROMPT)


def test_chat_two_turns_alpha_ctrl_c_reset(triple, tmp_path):
    # with --ignore-eos every answer has n_predict tokens: enough to be interrupted after its first
    # character (even the tiny models need tens of ms for them), few enough for a loaded machine
    n_predict = 400
    child = spawn_chat(triple, tmp_path, "-n", str(n_predict), "--ignore-eos", "-c", "4096")
    try:
        say(child, "Hello there")
        first = stats(child)
        assert first["decoded"] == first["prompt"] and first["generated"] == n_predict
        assert first["n_past"] == first["prompt"] + n_predict

        child.sendline("/alpha 0.5")
        child.expect_exact("alpha = 0.5 (all pairs)")
        child.expect_exact(PROMPT)

        say(child, "And what is 2 + 2?")
        second = stats(child)
        # only the new tokens were decoded: the cached conversation (hundreds of tokens) was reused
        assert second["decoded"] == second["prompt"] - first["n_past"]
        assert 0 < second["decoded"] < 40 < first["n_past"]

        child.sendintr()  # Ctrl-C at the prompt: a new prompt, nothing lost
        child.expect_exact(PROMPT)

        child.sendline("Tell me a long story")
        child.expect_exact("Tell me a long story")
        child.expect(r"\S")  # the answer has started
        child.sendintr()
        child.expect_exact("[interrupted: the answer so far stays in the conversation]")
        child.expect_exact(PROMPT)
        third = stats(child)
        assert 0 < third["generated"] < n_predict
        assert third["n_past"] == third["prompt"] + third["generated"]

        save = tmp_path / "chat.json"
        say(child, f"/save {save}")
        saved = json.loads(save.read_text())
        assert [m["role"] for m in saved["messages"]] == ["user", "assistant"] * 3
        assert saved["messages"][-1]["content"] and saved["alpha"] == [0.5]

        say(child, "Go on")  # the session survived the interruption
        fourth = stats(child)
        assert fourth["decoded"] < 40 and fourth["generated"] == n_predict

        child.sendline("/reset")
        child.expect_exact("conversation reset")
        child.expect_exact(PROMPT)
        assert stats(child)["n_past"] == 0
        say(child, "Hello again")
        fifth = stats(child)
        assert fifth["decoded"] == fifth["prompt"] < 40

        child.sendeof()  # Ctrl-D leaves
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert (tmp_path / "cache" / "chat_history").read_text().count("Hello") >= 2


def test_show_delta_colours_tokens_on_a_terminal(triple, tmp_path):
    child = spawn_chat(triple, tmp_path, "-n", "40", "--ignore-eos", "--show-delta", "--alpha", "1.0", color=True)
    try:
        assert "changed" in child.before and "\x1b[1;35m" in child.before  # the legend, coloured
        child.sendline("Hello there")
        child.expect_exact("Hello there")
        child.expect_exact(PROMPT)
        assert "\x1b[" in child.before  # some answer tokens carry a colour
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()


def test_full_context_offers_reset_and_keeps_going(triple, tmp_path):
    lines = "Hello there\nmore please\n/reset\nHi\n/stats\n"
    proc = subprocess.run([sys.executable, "-m", "rast_gguf.cli.app", "chat", "-m", triple.large, "--base",
                           triple.base, "--tuned", triple.tuned, "-t", "2", "--temp", "0", "-c", "64",
                           "-n", "100000", "--ignore-eos"],
                          input=lines, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, RAST_CACHE=str(tmp_path / "cache"), NO_COLOR="1"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "[context full:" in out and "type /reset" in out
    assert "error: the conversation needs" in out and "/reset" in out
    assert "conversation reset" in out and "Traceback" not in out + proc.stderr
    assert STATS.search(out.split("conversation reset")[-1])


def test_model_without_template_asks_for_raw(tmp_path):
    from conftest import tiny_shape
    from rast_gguf.synth import write_synthetic_gguf

    bare = write_synthetic_gguf(tmp_path / "bare.gguf", tiny_shape("qwen2", 64, 1, 640, 8), chat_template=None)
    run = lambda *extra: subprocess.run([sys.executable, "-m", "rast_gguf.cli.app", "chat", "-m", bare, "-n", "4",
                                         "-t", "2", "--temp", "0", *extra], input="Once upon a time\n/stats\n",
                                        capture_output=True, text=True, timeout=120,
                                        env=dict(os.environ, RAST_CACHE=str(tmp_path / "cache")))
    proc = run()
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "error: bare.gguf has no chat template (tokenizer.chat_template); use --raw to chat without one"]
    proc = run("--raw")
    assert proc.returncode == 0, proc.stderr
    assert STATS.search(proc.stdout)
