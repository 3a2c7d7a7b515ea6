"""The reference every `rast bench` ratio is taken against: the plainest llama.cpp loop over the
same GGUF files, written with llama-cpp-python's low-level calls only (nothing of rast_gguf).

`plain_loop(paths, ...)` loads each file, makes one context per model (B sequences, one KV stream
each, as the engine does), decodes B prompts, then `n_gen` steps of ONE llama_decode per context
holding the next token of each of the B sequences; each row is sampled by its own
llama_sampler_init_greedy on the first model's logits (llama_sampler_sample). With more than one
file (the RAST triple) the other contexts decode the same batch and their logits rows are fetched
(llama_get_logits_ith, which waits for their work) but not combined: the cost floor of three
models in step, with no delta arithmetic. Returns prompt and generation tokens/s (generation: the
B * (n_gen - 1) tokens after the first, over their wall time). `on_step`, if given, is called after each
generation step (benchmarks/bench_overhead.py times the steps with it).
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Sequence

import llama_cpp as L


def plain_loop(paths: Sequence[str | os.PathLike], prompts: Sequence[Sequence[int]], n_gen: int, *,
               n_ctx: int, n_batch: int, n_gpu_layers: int, n_threads: int | None, flash_attn: int = -1,
               n_repeat: int = 1, devices_large: Sequence[int] | None = None, on_step=None) -> dict:
    n_seq = len(prompts)
    models, contexts = [], []
    batch = None
    samplers = []
    try:
        for i, path in enumerate(paths):
            mparams = L.llama_model_default_params()
            mparams.n_gpu_layers = n_gpu_layers
            if i == 0 and devices_large:  # ggml_backend_dev_t list, NULL-terminated; llama.cpp copies it
                device_array = (ctypes.c_void_p * (len(devices_large) + 1))(*devices_large, None)
                mparams.devices = ctypes.addressof(device_array)
            model = L.llama_model_load_from_file(str(path).encode(), mparams)
            if not model:
                raise RuntimeError(f"llama.cpp could not load {path}")
            models.append(model)
            cparams = L.llama_context_default_params()
            cparams.n_ctx = n_ctx * n_seq
            cparams.n_batch = max(n_batch, n_seq)
            cparams.n_ubatch = min(cparams.n_batch, cparams.n_ubatch)
            cparams.n_seq_max = n_seq
            cparams.kv_unified = False
            cparams.flash_attn_type = flash_attn
            cparams.n_threads = cparams.n_threads_batch = n_threads or os.cpu_count() or 1
            cparams.no_perf = True
            ctx = L.llama_init_from_model(model, cparams)
            if not ctx:
                raise RuntimeError(f"llama.cpp could not make a context for {path}")
            contexts.append(ctx)
        capacity = max(n_batch, n_seq)
        batch = L.llama_batch_init(capacity, 0, 1)
        samplers = [L.llama_sampler_init_greedy() for _ in range(n_seq)]

        def decode(entries):  # (token, pos, seq, logits)
            batch.n_tokens = len(entries)
            for i, (token, pos, seq, logits) in enumerate(entries):
                batch.token[i] = token
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = logits
            for ctx in contexts:
                if L.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed in the plain loop")

        best_pp, best_tg = 0.0, 0.0
        for _ in range(n_repeat):
            for ctx in contexts:
                L.llama_memory_clear(L.llama_get_memory(ctx), True)
            t0 = time.perf_counter()
            entries = [(t, pos, seq, pos == len(p) - 1) for seq, p in enumerate(prompts) for pos, t in enumerate(p)]
            tokens = {}
            for start in range(0, len(entries), capacity):
                chunk = entries[start:start + capacity]
                decode(chunk)
                rows = {seq: i for i, (_, _, seq, logits) in enumerate(chunk) if logits}
                for i in rows.values():
                    for ctx in contexts[1:]:
                        L.llama_get_logits_ith(ctx, i)
                tokens.update({seq: L.llama_sampler_sample(samplers[seq], contexts[0], i) for seq, i in rows.items()})
            t1 = time.perf_counter()
            pos = [len(p) for p in prompts]
            for _ in range(n_gen - 1):
                decode([(tokens[seq], pos[seq], seq, True) for seq in range(n_seq)])
                for ctx in contexts[1:]:
                    for seq in range(n_seq):
                        L.llama_get_logits_ith(ctx, seq)
                tokens = {seq: L.llama_sampler_sample(samplers[seq], contexts[0], seq) for seq in range(n_seq)}
                pos = [p + 1 for p in pos]
                if on_step is not None:
                    on_step()
            t2 = time.perf_counter()
            best_pp = max(best_pp, sum(len(p) for p in prompts) / (t1 - t0))
            best_tg = max(best_tg, n_seq * (n_gen - 1) / (t2 - t1))
        return {"pp_tps": round(best_pp, 1), "tg_tps": round(best_tg, 1)}
    finally:
        for s in samplers:
            L.llama_sampler_free(s)
        if batch is not None:
            L.llama_batch_free(batch)
        for ctx in reversed(contexts):
            L.llama_free(ctx)
        for model in reversed(models):
            L.llama_model_free(model)
