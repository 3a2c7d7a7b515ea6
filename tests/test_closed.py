"""Use after close() raises ClosedError (a RastError) and never touches freed memory: every method of
Model, Context and Batch, the engine, and a SamplerChain kept past its engine's close(). Each scenario runs
in a fresh interpreter, so a regression that dereferences a freed pointer fails its test (a non-zero exit)
instead of killing pytest."""

import subprocess
import sys
import textwrap

PRELUDE = """
import rast_gguf
from rast_gguf import DeltaPair, RastEngine, SamplingParams
from rast_gguf.errors import ClosedError, RastError
from rast_gguf.handles import Batch, Context, Model

def refused(call, what):
    try:
        call()
    except ClosedError as e:
        assert isinstance(e, RastError) and "closed" in str(e) and "\\n" not in str(e), e
        print("refused", what)
    else:
        raise AssertionError(f"{what} did not raise ClosedError")
"""


def run(body: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout.splitlines()


def test_every_handle_method_refuses_after_close(triple):
    lines = run(f"""
        model = Model({str(triple.large)!r})
        ctx = Context(model, n_ctx=64, n_threads=1)
        batch = Batch(8)
        batch.set_tokens(model.tokenize("hello"), 0)
        ctx.decode(batch)
        assert ctx.logits().shape == (model.n_vocab,)
        ctx.close(); ctx.close()  # twice is fine
        for name, call in [("clear", ctx.clear), ("remove_from", lambda: ctx.remove_from(0)),
                           ("decode", lambda: ctx.decode(batch)), ("logits", ctx.logits),
                           ("synchronize", ctx.synchronize), ("address", lambda: ctx.address),
                           ("handle", lambda: ctx.handle)]:
            refused(call, "context." + name)
        batch.close()
        for name, call in [("set_tokens", lambda: batch.set_tokens([1], 0)),
                           ("set_entries", lambda: batch.set_entries([1], [0], [0], [True])),
                           ("struct", lambda: batch.struct), ("address", lambda: batch.address)]:
            refused(call, "batch." + name)
        model.close()
        for name, call in [("tokenize", lambda: model.tokenize("x")), ("token_bytes", lambda: model.token_bytes(1)),
                           ("token_text", lambda: model.token_text(1)), ("is_eog", lambda: model.is_eog(1)),
                           ("vocab", lambda: model.vocab), ("address", lambda: model.address),
                           ("context", lambda: Context(model, n_ctx=64))]:
            refused(call, "model." + name)
        print("done")
    """)
    assert lines[-1] == "done" and len([x for x in lines if x.startswith("refused")]) == 18


def test_engine_and_kept_sampler_chain_refuse_after_close(triple):
    lines = run(f"""
        engine = RastEngine({str(triple.large)!r}, [DeltaPair({str(triple.tuned)!r}, {str(triple.base)!r})],
                            n_ctx=64, n_threads=1)
        chain = engine.sampler(SamplingParams(temp=0))
        engine.feed(engine.tokenize("hello"))
        first = chain.sample(-1)
        kept_unused = engine.sampler(SamplingParams(temp=0.8, seed=1))
        engine.close()
        engine.close()  # twice is fine
        for name, call in [("sample", lambda: chain.sample(-1)), ("reset", chain.reset),
                           ("set_alpha", lambda: chain.set_alpha(0, 2.0)), ("names", chain.names),
                           ("unused chain", lambda: kept_unused.sample(-1)),
                           ("feed", lambda: engine.feed([first])), ("reset engine", engine.reset),
                           ("rewind", lambda: engine.rewind(0)), ("tokenize", lambda: engine.tokenize("x")),
                           ("sampler", lambda: engine.sampler(SamplingParams()))]:
            refused(call, name)
        print("done")
    """)
    assert lines[-1] == "done" and len([x for x in lines if x.startswith("refused")]) == 10


def test_chains_that_were_dropped_do_not_keep_the_engine_busy(triple):
    lines = run(f"""
        import gc
        with RastEngine({str(triple.large)!r}, [DeltaPair({str(triple.tuned)!r}, {str(triple.base)!r})],
                        n_ctx=64, n_threads=1) as engine:
            for _ in range(50):
                engine.sampler(SamplingParams(temp=0)).close()
            gc.collect()
            print("tracked", len(engine._samplers))
    """)
    assert lines == ["tracked 0"]
