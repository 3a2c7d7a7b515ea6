"""Chat messages to prompt text with the large model's own chat template.

`render_messages(model, messages)` reads `tokenizer.chat_template` from the GGUF and renders it the
way llama-cpp-python does (its `Jinja2ChatFormatter`: sandboxed Jinja2, trim_blocks/lstrip_blocks,
`bos_token`/`eos_token` as the vocabulary's text for those ids). The result already holds every
special token the template wants, so it is tokenized with `add_special=False` (and special tokens
parsed), as llama-cpp-python does. A model without a template, a template that is not UTF-8, does
not compile, fails or runs longer than RENDER_SECONDS raises ChatTemplateError; raw prompts (no
template) are the caller's business.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

from rast_gguf._llama import C
from rast_gguf.errors import ChatTemplateError

ROLES = ("system", "user", "assistant", "tool")
RENDER_SECONDS = 5.0  # a template that renders longer is stopped


def chat_template(model) -> str | None:
    """The model's default chat template (GGUF `tokenizer.chat_template`), or None."""
    model = getattr(model, "model_large", model)
    raw = C.llama_model_chat_template(model.handle, None)
    if not raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ChatTemplateError(f"the chat template of {model.path.name} is not UTF-8 text (byte {e.start}); "
                                "fix tokenizer.chat_template in the GGUF, or use --raw") from None


def check_messages(messages: Sequence[Mapping]) -> list[dict]:
    """Messages as plain {"role", "content"} dicts; ChatTemplateError says which one is malformed."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ChatTemplateError("messages must be a list of {\"role\": ..., \"content\": ...} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ChatTemplateError(f"message {i} must be an object with a role ({', '.join(ROLES)}) and a string "
                                    f"content, got {m!r:.80}")
        try:
            m["content"].encode("utf-8")
        except UnicodeEncodeError:
            raise ChatTemplateError(f"message {i} holds a lone UTF-16 surrogate, which is not text") from None
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _special_text(model, token: int) -> str:
    return model.token_text(token) if token >= 0 else ""


def render_messages(model, messages: Sequence[Mapping], add_generation_prompt: bool = True) -> str:
    """Prompt text for messages, by the template of `model` (a Model, or an engine: its large model)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    model = getattr(model, "model_large", model)
    template = chat_template(model)
    if template is None:
        raise ChatTemplateError(f"{model.path.name} has no chat template (tokenizer.chat_template); "
                                "use --raw to chat without one")
    try:
        formatter = Jinja2ChatFormatter(template=template,
                                        eos_token=_special_text(model, C.llama_vocab_eos(model.vocab)),
                                        bos_token=_special_text(model, C.llama_vocab_bos(model.vocab)),
                                        add_generation_prompt=add_generation_prompt)
        checked = check_messages(messages)
        with _time_limit(RENDER_SECONDS):
            prompt = formatter(messages=checked).prompt
    except ChatTemplateError:
        raise
    except Exception as e:  # jinja2 errors (syntax too), the template's own raise_exception, our time limit
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ChatTemplateError(f"the chat template of {model.path.name} failed to render: {first_line}; "
                                "check the messages, or use --raw") from e
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise ChatTemplateError(f"the chat template of {model.path.name} made text that is not UTF-8 "
                                "(a lone surrogate); check the messages, or use --raw") from None
    return prompt


class _RenderTimeout(Exception):
    pass


@contextmanager
def _time_limit(seconds: float):
    """Stop a template that runs for ever (jinja2's sandbox bounds range() but not nested loops):
    a trace function, active only in the template's own compiled code (co_filename "<template>"),
    checks the clock every 1000 lines and raises into the template."""
    deadline = time.monotonic() + seconds
    count = 0

    def local(frame, event, arg):
        nonlocal count
        count += 1
        if count % 1000 == 0 and time.monotonic() > deadline:
            raise _RenderTimeout(f"it ran for more than {seconds:g} s (a template that loops for ever?)")
        return local

    def global_trace(frame, event, arg):
        return local if frame.f_code.co_filename == "<template>" else None

    previous = sys.gettrace()
    sys.settrace(global_trace)
    try:
        yield
    finally:
        sys.settrace(previous)


def prompt_tokens(model, messages: Sequence[Mapping], add_generation_prompt: bool = True) -> list[int]:
    """The rendered messages as token ids: special tokens parsed, no BOS added (the template has it)."""
    model = getattr(model, "model_large", model)
    return model.tokenize(render_messages(model, messages, add_generation_prompt), add_special=False)
