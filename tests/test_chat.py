"""ChatSession: chat templates, prefix reuse between turns, caches that stay right after /reset and
interrupted answers, save/load, a full context; and the per-step delta stats against the oracle."""

import llama_cpp  # noqa: F401

import io
import json

import numpy as np
import pytest

from oracle import AloneModel, log_softmax, unused_ids
from rast_gguf import DeltaPair, RastEngine, SamplingParams
from rast_gguf.chat import ChatSession
from rast_gguf.chat_template import prompt_tokens, render_messages
from rast_gguf.delta_view import RESET, STYLES, colorize, delta_class, legend, use_color
from rast_gguf.errors import ChatFileError, ChatTemplateError, ContextFullError
from rast_gguf.generate import DeltaStats, stream_generate
from rast_gguf.handles import Model
from rast_gguf.synth import write_synthetic_gguf

from conftest import tiny_shape

GREEDY = SamplingParams(temp=0)


def engine_for(t, n_ctx=512, alpha=1.0, flash_attn="auto"):
    return RastEngine(t.large, [DeltaPair(str(t.tuned), str(t.base), alpha)], n_ctx=n_ctx, n_threads=2,
                      flash_attn=flash_attn)


def special_text(engine, tokens):
    m = engine.model_large
    return b"".join(m.token_bytes(t, special=True) for t in tokens).decode("utf-8", errors="replace")


# --- templates ------------------------------------------------------------------------------------

def test_render_chatml_from_gguf_metadata(triple):
    model = Model(triple.large, vocab_only=True)
    try:
        text = render_messages(model, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
        assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                        "<|im_start|>assistant\n")
        no_prompt = render_messages(model, [{"role": "user", "content": "Hi"}], add_generation_prompt=False)
        assert no_prompt == "<|im_start|>user\nHi<|im_end|>\n"
        with pytest.raises(ChatTemplateError, match="message 0 must be"):
            render_messages(model, [{"role": "user"}])
    finally:
        model.close()


def test_template_gets_bos_and_eos_text_and_missing_template_says_raw(tmp_path):
    shape = tiny_shape("llama", 32, 1, 300, 0)
    template = "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}"
    path = write_synthetic_gguf(tmp_path / "t.gguf", shape, chat_template=template)
    bare = write_synthetic_gguf(tmp_path / "bare.gguf", shape, chat_template=None)
    model, bare_model = Model(path, vocab_only=True), Model(bare, vocab_only=True)
    try:
        bos = model.token_text(llama_cpp.llama_vocab_bos(model.vocab))
        eos = model.token_text(llama_cpp.llama_vocab_eos(model.vocab))
        assert render_messages(model, [{"role": "user", "content": "x"}]) == f"{bos}[user] x{eos}"
        assert model.add_bos  # llama: the tokenizer would add a BOS, the template already has one
        tokens = prompt_tokens(model, [{"role": "user", "content": "x"}])
        bos_id = llama_cpp.llama_vocab_bos(model.vocab)
        assert tokens[0] == bos_id and tokens.count(bos_id) == 1
        with pytest.raises(ChatTemplateError, match="no chat template.*--raw"):
            render_messages(bare_model, [{"role": "user", "content": "x"}])
    finally:
        model.close()
        bare_model.close()


# --- prefix reuse and cache correctness ------------------------------------------------------------

def test_second_turn_decodes_only_the_new_tokens(triple):
    with engine_for(triple) as engine:
        session = ChatSession(engine, system="Be brief.", sampling=GREEDY, max_tokens=12)
        session.ask("Hello there")
        after_first = list(session.tokens)
        assert engine.n_past == len(after_first) > session.last.prompt_tokens

        decoded_before = engine.n_decoded
        stream = session.stream_turn("And what is 2 + 2?")
        next(stream)
        decoded_prompt = engine.n_decoded - decoded_before
        n_prompt = session.last.prompt_tokens
        for _ in stream:
            pass
        prompt_tokens = session.tokens[:n_prompt]
        # nothing already cached was decoded again, and the caches hold the rendered conversation
        assert prompt_tokens[:len(after_first)] == after_first
        assert decoded_prompt == session.last.prompt_decoded == n_prompt - len(after_first)
        assert special_text(engine, prompt_tokens) == render_messages(engine, session.messages[:-1])
        new_text = "<|im_end|>\n<|im_start|>user\nAnd what is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
        assert decoded_prompt == len(engine.tokenize(new_text, add_special=False))
        assert decoded_prompt < n_prompt // 2


def fresh_answer(t, prompt_tokens, max_tokens):
    """Greedy answer and delta stats of a new engine fed the whole prompt at once."""
    with engine_for(t) as engine:
        out = list(stream_generate(engine, prompt_tokens, max_tokens=max_tokens, sampling=GREEDY, track_delta=True))
    return [r.token for r in out], np.array([[r.delta.logp_large, r.delta.logp_rast] for r in out])


def turn_with_stats(session, text):
    out = list(session.stream_turn(text))
    prompt = session.tokens[:session.last.prompt_tokens]
    return prompt, [r.token for r in out], np.array([[r.delta.logp_large, r.delta.logp_rast] for r in out])


def assert_like_fresh(t, prompt, tokens, stats):
    fresh_tokens, fresh_stats = fresh_answer(t, prompt, len(tokens))
    assert tokens == fresh_tokens[:len(tokens)]
    # The session decoded the same tokens in other batches (turn by turn, token by token); on these
    # models that alone moves logits by up to ~0.006 and log-probs by ~0.01. A cache off by one
    # token moves them by O(1).
    np.testing.assert_allclose(stats, fresh_stats[:len(tokens)], atol=0.05)
    shifted_tokens, shifted = fresh_answer(t, prompt[:-1], len(tokens))
    assert shifted_tokens[:len(tokens)] != tokens or np.abs(shifted[:len(tokens)] - stats).max() > 0.05


def test_after_interrupted_answer_and_reset_next_answer_equals_a_fresh_engine(triple):
    with engine_for(triple) as engine:
        session = ChatSession(engine, sampling=GREEDY, max_tokens=10, track_delta=True)
        session.ask("Hello there")
        stream = session.stream_turn("Tell me a long story")
        for _ in range(4):
            next(stream)
        stream.close()  # what Ctrl-C does
        assert session.messages[-1]["role"] == "assistant" and session.messages[-1]["content"]
        assert engine.n_past == len(session.tokens)
        assert_like_fresh(triple, *turn_with_stats(session, "Go on"))

        session.reset()
        assert engine.n_past == 0 and session.messages == []
        prompt, tokens, stats = turn_with_stats(session, "Hello there")
        assert session.last.prompt_decoded == len(prompt)
        assert_like_fresh(triple, prompt, tokens, stats)


def test_interrupt_between_contexts_leaves_caches_in_step(triple):
    """A Ctrl-C that lands after one context decoded a token but before the others did."""
    with engine_for(triple) as engine:
        session = ChatSession(engine, sampling=GREEDY, max_tokens=10, track_delta=True)
        session.ask("Hello there")
        ctx = engine.contexts[1]
        real_decode, calls = ctx.decode, []

        def decode_then_interrupt(batch):
            real_decode(batch)
            calls.append(1)
            if len(calls) == 4:  # the prompt, then the 3rd answer token
                raise KeyboardInterrupt

        ctx.decode = decode_then_interrupt
        n_prompt = None
        with pytest.raises(KeyboardInterrupt):
            for _ in session.stream_turn("Tell me a long story"):
                n_prompt = session.last.prompt_tokens
        del ctx.decode
        # the half-fed 3rd token was dropped from every context, then fed again to all of them
        assert engine.n_past == len(session.tokens) == n_prompt + 3 and len(calls) == 5
        assert_like_fresh(triple, *turn_with_stats(session, "Go on"))


# --- save / load, full context -----------------------------------------------------------------------

def test_save_load_roundtrip_and_bad_files(triple, tmp_path):
    with engine_for(triple) as engine:
        session = ChatSession(engine, system="Be brief.", sampling=GREEDY, max_tokens=8)
        session.ask("Hello there")
        session.set_alpha(0.25)
        session.set_temp(0.5)
        path = session.save(tmp_path / "chat.json")
        saved = json.loads(path.read_text())
        assert saved["alpha"] == [0.25] and saved["temp"] == 0.5 and saved["messages"] == session.messages

        messages = session.messages
        session.set_alpha(1.0)
        session.set_temp(0)
        session.reset()
        session.load(path)
        assert session.messages == messages and engine.pairs[0].alpha == 0.25 and session.sampling.temp == 0.5
        text = render_messages(engine, messages, add_generation_prompt=False)
        assert special_text(engine, session.tokens) == text and engine.n_past == len(session.tokens)

        (tmp_path / "bad.json").write_text("{not json")
        with pytest.raises(ChatFileError, match="not a saved chat"):
            session.load(tmp_path / "bad.json")
        (tmp_path / "other.json").write_text(json.dumps({"messages": []}))
        with pytest.raises(ChatFileError, match="not a saved chat"):
            session.load(tmp_path / "other.json")
        with pytest.raises(ChatFileError, match="cannot read"):
            session.load(tmp_path / "missing.json")
        assert session.messages == messages  # a failed load changes nothing


def test_full_context_is_an_error_the_session_survives(triple):
    with engine_for(triple, n_ctx=64) as engine:
        session = ChatSession(engine, sampling=GREEDY, max_tokens=4 * engine.n_ctx, ignore_eos=True)
        finish = None
        for response in session.stream_turn("Hello there"):
            finish = response.finish_reason
        assert finish == "context" and engine.n_past == len(session.tokens)
        with pytest.raises(ContextFullError, match="/reset"):
            session.ask("more")
        session.reset()
        assert session.ask("Hi") is not None and engine.n_past == len(session.tokens) > 0


def test_raw_mode_is_plain_text(triple):
    with engine_for(triple) as engine:
        session = ChatSession(engine, raw=True, sampling=GREEDY, max_tokens=6)
        session.ask("Question: 1 + 1 =")
        prompt = session.tokens[:session.last.prompt_tokens]
        assert special_text(engine, prompt) == "Question: 1 + 1 =\n"


# --- per-step delta stats against the numpy oracle ------------------------------------------------------

@pytest.mark.parametrize("which", ["triple", "padded_triple"])
def test_delta_stats_against_oracle(which, request):
    t = request.getfixturevalue(which)
    alpha, prompt = 0.8, "The answer is"
    with engine_for(t, n_ctx=128, alpha=alpha, flash_attn="off") as engine:  # as the oracle
        prompt_tokens = engine.tokenize(prompt)
        responses = list(stream_generate(engine, prompt, max_tokens=6, track_delta=True,
                                         sampling=SamplingParams(temp=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=3)))
        n_shared = engine.n_shared
    models = [AloneModel(p, n_ctx=128) for p in (t.large, t.tuned, t.base)]
    try:
        z = [m.start(prompt_tokens) for m in models]
        allowed = np.zeros(len(z[0]), dtype=bool)
        allowed[:n_shared] = True
        allowed[unused_ids(t.large)] = False
        allowed[unused_ids(t.tuned)[unused_ids(t.tuned) < n_shared]] = False
        n_changed = 0
        for r in responses:
            z_large = np.where(allowed, z[0], -np.inf)
            z_rast = z_large.copy()
            z_rast[:n_shared] += alpha * (z[1][:n_shared] - z[2][:n_shared])
            d = r.delta
            assert d.token == r.token and d.large_top == int(np.argmax(z_large))
            np.testing.assert_allclose(d.logp_large, log_softmax(z_large)[r.token], atol=1e-3)
            np.testing.assert_allclose(d.logp_rast, log_softmax(z_rast)[r.token], atol=1e-3)
            n_changed += d.changed
            z = [m.step(r.token) for m in models]
        assert n_changed > 0  # at temp 1.5 some picks differ from the large model's top
    finally:
        for m in models:
            m.close()


# --- colouring -------------------------------------------------------------------------------------------

def test_delta_colours_and_legend(monkeypatch):
    changed = DeltaStats(token=5, large_top=7, logp_large=-3.0, logp_rast=-0.1)
    boosted = DeltaStats(5, 5, -2.0, -0.5)
    raised = DeltaStats(5, 5, -1.0, -0.6)
    lowered = DeltaStats(5, 5, -0.2, -1.0)
    same = DeltaStats(5, 5, -0.5, -0.45)
    assert [delta_class(s) for s in (changed, boosted, raised, lowered, same)] == [
        "changed", "boosted", "raised", "lowered", ""]
    assert colorize(" wait", changed, True) == f"{STYLES['changed']} wait{RESET}"
    assert colorize(" wait", same, True) == " wait"
    assert colorize(" wait", changed, False) == " wait"
    assert all(STYLES[k] in legend(True) for k in STYLES) and "\x1b" not in legend(False)

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(Tty()) and not use_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(Tty())
