"""The GPU probes' setup (gpu_overlap_probe.py, gpu_timeline.py): three llama.cpp contexts (large,
tuned, base) with every layer on the GPU, the same random prompt already decoded in each.
`step(which, token, pos)` queues one token in the chosen contexts, then waits for all of them, and
returns how long the queuing took; `rewind()` goes back to just after the prompt. close() frees
everything in reverse order."""

import time

from rast_gguf.handles import Batch, Context, Model


class ProbeTriple:
    def __init__(self, paths: list[str], *, n_past: int, n_ctx: int):
        self.models = [Model(p, n_gpu_layers=-1) for p in paths]
        self.contexts = [Context(m, n_ctx=n_ctx, n_batch=512, n_threads=4, n_seq_max=1, flash_attn="auto")
                         for m in self.models]
        n_vocab = min(m.n_vocab for m in self.models)
        self.prompt = [10 + (i * 7919) % (n_vocab // 2) for i in range(n_past)]
        self.n_past = n_past
        self.batch = Batch(512)
        self.batch.set_tokens(self.prompt, 0)
        for ctx in self.contexts:
            ctx.decode(self.batch)
            ctx.synchronize()

    def rewind(self) -> None:
        for ctx in self.contexts:
            ctx.remove_from(self.n_past)

    def step(self, which: list[int], token: int, pos: int) -> float:
        """Milliseconds spent queuing the decodes (the wait for the GPU follows, inside this call)."""
        self.batch.set_tokens([token], pos)
        t0 = time.perf_counter()
        for k in which:
            self.contexts[k].decode(self.batch)
        queued_ms = (time.perf_counter() - t0) * 1e3
        for k in which:
            self.contexts[k].synchronize()
        return queued_ms

    def close(self) -> None:
        self.batch.close()
        for ctx in reversed(self.contexts):
            ctx.close()
        for model in reversed(self.models):
            model.close()
