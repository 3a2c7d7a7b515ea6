"""`rast chat`: an interactive, streaming, multi-turn chat over a ChatSession.

Line editing and history come from readline (history in the rast cache directory). Ctrl-C stops
the current answer and keeps the session (at the prompt it just starts a new line); Ctrl-D leaves.
Lines starting with "/" are commands (see HELP). Errors inside the chat print one line and the chat
goes on.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional, TextIO

import typer

from rast_gguf.cli import options as o
from rast_gguf.cli.engine_setup import from_flags

PROMPT = ">>> "
HELP = """commands:
  /alpha X     set alpha of every pair (from the next answer on)
  /temp X      set the temperature (0: greedy)
  /reset       forget the conversation (the system prompt stays)
  /save FILE   save the messages and settings as JSON
  /load FILE   load a saved chat and decode it
  /stats       speed of the last turn and how full the context is
  /help        this list
Ctrl-C stops an answer (what was said stays); Ctrl-D leaves."""


def chat_command(
    large: o.Large = None, base: o.Base = None, tuned: o.Tuned = None, alpha: o.Alpha = None,
    system: Annotated[Optional[str], typer.Option("--system", help="System prompt.", show_default=False)] = None,
    raw: Annotated[bool, typer.Option("--raw", help="No chat template: the conversation is plain text (base models).")] = False,
    show_delta: Annotated[bool, typer.Option("--show-delta", help="Colour tokens by how much the small pair moved them.")] = False,
    ignore_eos: o.IgnoreEos = False,
    n_predict: o.NPredict = 512, ctx_size: o.CtxSize = 4096, batch_size: o.BatchSize = 512,
    n_gpu_layers: o.NGpuLayers = 0, n_gpu_layers_small: o.NGpuLayersSmall = None, threads: o.Threads = None,
    rpc: o.Rpc = None, rpc_small: o.RpcSmall = None, tensor_split: o.TensorSplit = None,
    flash_attn: o.FlashAttn = o.FLASH_ATTN, temp: o.Temp = o.TEMP, top_k: o.TopK = o.TOP_K, top_p: o.TopP = o.TOP_P,
    min_p: o.MinP = o.MIN_P, seed: o.Seed = o.SEED, sampler_order: o.SamplerOrder = o.ORDER,
    convert_type: o.ConvertType = o.CONVERT_TYPE, verbose: o.Verbose = False, overlap: o.Overlap = False,
    draft: o.Draft = o.DRAFT, draft_max: o.DraftMax = 8, draft_min: o.DraftMin = 0, draft_p_min: o.DraftPMin = 0.0,
):
    """Chat with RAST: streaming, multi-turn, with the large model's chat template.

    Example: rast chat -m Qwen2.5-7B-Instruct-Q4_K_M.gguf --base Qwen2.5-1.5B-Q8_0.gguf
    --tuned Qwen2.5-1.5B-SimpleRL-Zoo-Q8_0.gguf --alpha 0.5 --system "Think step by step." --show-delta
    """
    from rast_gguf.chat import ChatSession

    setup = from_flags(locals())
    if large is None and not base and not tuned and not raw:
        raw = True  # the built-in toy models are base models without a chat template
        print("the built-in toy models have no chat template: chatting in --raw mode", file=sys.stderr)
    with setup.engine() as engine:
        session = ChatSession(engine, system=system, raw=raw, sampling=setup.sampling, max_tokens=n_predict,
                              ignore_eos=ignore_eos, track_delta=show_delta)
        alphas = ", ".join(f"{p.alpha:g}" for p in engine.pairs) or "none"
        print(f"rast chat: {Path(setup.large).name} + {len(engine.pairs)} pair(s), alpha {alphas}, "
              f"context {engine.n_ctx}. /help lists commands; Ctrl-C stops an answer, Ctrl-D leaves.")
        run_chat(session, show_delta=show_delta)


def _setup_history() -> Path | None:
    try:
        import readline
    except ImportError:
        return None
    from rast_gguf.defaults import cache_dir

    path = cache_dir() / "chat_history"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            readline.read_history_file(path)
    except OSError:
        return None
    readline.set_history_length(1000)
    return path


def _save_history(path: Path | None) -> None:
    if path is not None:
        import readline

        try:
            readline.write_history_file(path)
        except OSError:
            pass


def run_chat(session, *, show_delta: bool = False, out: TextIO = sys.stdout) -> None:
    from rast_gguf.delta_view import legend, use_color

    color = use_color(out)
    if show_delta:
        print(legend(color), file=out)
        if not color:
            print("(no colours: not a terminal, or NO_COLOR is set; /stats counts the changed tokens)", file=out)
    history = _setup_history() if sys.stdin.isatty() else None
    try:
        while True:
            try:
                line = input(PROMPT)
            except KeyboardInterrupt:
                print(file=out)
                continue
            except EOFError:
                print(file=out)
                return
            except UnicodeDecodeError as e:
                print(f"error: the line is not UTF-8 text ({e.reason}); type it again", file=out)
                continue
            if not line.strip():
                continue
            try:
                line.encode("utf-8")
            except UnicodeEncodeError as e:  # undecodable bytes, kept by the surrogateescape reader
                bad = e.object[e.start:e.end].encode("utf-8", "surrogateescape")
                print(f"error: the line is not UTF-8 text (bytes {bad.hex(' ')}); type it again", file=out)
                continue
            try:
                if line.startswith("/"):
                    run_command(session, line, out)
                else:
                    answer(session, line, color=color and show_delta, out=out)
            except KeyboardInterrupt:
                print("\n[interrupted]", file=out)
            except Exception as e:
                from rast_gguf.errors import RastError

                if not isinstance(e, RastError):
                    raise
                print(f"error: {e}", file=out)
    finally:
        _save_history(history)


def answer(session, line: str, *, color: bool, out: TextIO) -> None:
    from rast_gguf.delta_view import colorize

    n_messages = len(session.messages)
    stream = session.stream_turn(line)
    try:
        for response in stream:
            out.write(colorize(response.text, response.delta, color))
            out.flush()
    except KeyboardInterrupt:
        stream.close()  # the partial answer joins the history and the caches are settled
        if len(session.messages) > n_messages:
            print("\n[interrupted: the answer so far stays in the conversation]", file=out)
        else:
            print("\n[interrupted while reading the prompt: this message was dropped]", file=out)
        return
    print(file=out)
    if session.last.finish_reason == "context":
        print(f"[context full: {session.n_past}/{session.n_ctx} tokens; type /reset to start over]", file=out)
    elif session.last.finish_reason == "length":
        print(f"[stopped at the limit of {session.max_tokens} tokens (-n)]", file=out)


def run_command(session, line: str, out: TextIO) -> None:
    from rast_gguf.errors import UsageError

    name, _, arg = line.strip().partition(" ")
    arg = arg.strip()

    def number() -> float:
        try:
            return float(arg)
        except ValueError:
            raise UsageError(f"{name} needs a number, got {arg!r}") from None

    if name == "/help":
        print(HELP, file=out)
    elif name == "/alpha":
        session.set_alpha(number())
        print(f"alpha = {session.engine.pairs[0].alpha:g} (all pairs)", file=out)
    elif name == "/temp":
        session.set_temp(number())
        print(f"temp = {session.sampling.temp:g}", file=out)
    elif name == "/reset":
        session.reset()
        print("conversation reset", file=out)
    elif name in ("/save", "/load"):
        if not arg:
            raise UsageError(f"{name} needs a file name")
        if name == "/save":
            print(f"saved {len(session.messages)} messages to {session.save(arg)}", file=out)
        else:
            session.load(arg)
            print(f"loaded {len(session.messages)} messages from {arg} ({session.n_past} tokens)", file=out)
    elif name == "/stats":
        print(format_stats(session), file=out)
    else:
        raise UsageError(f"unknown command {name}; /help lists the commands")


def format_stats(session) -> str:
    last = session.last
    line = (f"context: {session.n_past}/{session.n_ctx} tokens | last turn: prompt {last.prompt_tokens} tokens, "
            f"{last.prompt_decoded} decoded ({last.prompt_tps:.1f} tokens/s); generated {last.generation_tokens} "
            f"tokens ({last.generation_tps:.1f} tokens/s)")
    if session.track_delta:
        line += f"; {last.changed_tokens} changed by the delta"
    if last.speculative is not None:
        line += f"; {last.speculative.line()}"
    return line
