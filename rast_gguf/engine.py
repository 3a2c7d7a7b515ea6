"""The RAST engine: one large model and any number of (alpha, tuned, base) small pairs, in
llama.cpp contexts kept in step over the same tokens.

The engine knows models, contexts and positions; it does not know prompts, text or stop rules
(that is rast_gguf.generate). `feed(tokens)` appends tokens to every context (batched, logits for
the last one only); `sampler(params)` builds the C++ chain whose first link adds the pairs' delta
to the large model's logits for that last position. With overlap=True one feed decodes all
contexts at once: the large one on the caller's thread, each small one on a C++ worker thread
(`_ext.ParallelDecoder`). Off by default: on CUDA llama_decode only queues work (0.2-0.5 ms of a
5-6 ms token on an H100), so the plain loop already overlaps the CPU side, and the threads measured
no faster (BENCHMARKS.md). All files are validated and all
vocabularies checked before any context is created; close() frees everything in reverse order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from rast_gguf import _ext, memory
from rast_gguf import rpc as rpc_backend
from rast_gguf.errors import PromptTooLongError, UsageError
from rast_gguf.handles import FLASH_ATTN_TYPES, Batch, Context, Model
from rast_gguf.sampling import DeltaPair, SamplingParams, check_alpha
from rast_gguf.vocab import check_vocabularies


def check_tensor_split(tensor_split: Sequence[float] | None, devices: Sequence[int] | None) -> list[float] | None:
    """llama.cpp's -ts: one non-negative share per offload device, not all zero."""
    if not tensor_split:
        return None
    split = [float(x) for x in tensor_split]
    if any(not x >= 0 or x == float("inf") for x in split) or not any(split):
        raise UsageError(f"--tensor-split takes non-negative shares, not all 0, got {','.join(map(str, tensor_split))}")
    n_devices = len(devices) if devices is not None else len(rpc_backend.local_gpu_devices())
    if len(split) > max(n_devices, 1):
        raise UsageError(f"--tensor-split gives {len(split)} shares but the large model has {n_devices} devices to "
                         "offload to (RPC servers' devices first, then local GPUs)")
    return split


class RastEngine:
    def __init__(self, large: str | os.PathLike, pairs: Sequence[DeltaPair] = (), *, n_ctx: int = 4096,
                 n_batch: int = 512, n_threads: int | None = None, n_gpu_layers: int = 0,
                 flash_attn: str = "auto", n_seq_max: int = 1, overlap: bool = False,
                 rpc: Sequence[str] = (), rpc_small: Sequence[str] = (), tensor_split: Sequence[float] | None = None):
        """`rpc`: HOST:PORT of llama.cpp RPC servers whose devices take the large model's offloaded
        layers with the local GPUs (split by `tensor_split`, else by free memory, as llama.cpp);
        `rpc_small`: the same for the small models (local by default). See rast_gguf.rpc."""
        self._models: list[Model] = []
        self._rpc_guard: rpc_backend.Guard | None = None
        self._decoder: _ext.ParallelDecoder | None = None
        self._contexts: list[Context] = []
        self._batch: Batch | None = None
        self.pairs = list(pairs)
        if flash_attn not in FLASH_ATTN_TYPES:
            raise UsageError(f"--flash-attn must be one of {', '.join(FLASH_ATTN_TYPES)}, got {flash_attn!r}")
        self.flash_attn = flash_attn
        if n_seq_max < 1:
            raise UsageError(f"the number of parallel sequences (-np) must be >= 1, got {n_seq_max}")
        self.n_seq_max = n_seq_max
        n_batch = max(n_batch, n_seq_max)
        try:
            self.model_large = self._load(large, n_gpu_layers, vocab_only=True)
            pair_models = [(self._load(p.tuned, p.n_gpu_layers, vocab_only=True),
                            self._load(p.base, p.n_gpu_layers, vocab_only=True)) for p in self.pairs]
            self.n_shared = check_vocabularies(self.model_large, [m for pm in pair_models for m in pm])
            for model in self._models:
                model.close()
            self._models.clear()

            self.remote = rpc_backend.connect(rpc) if rpc else []
            self.remote_small = rpc_backend.connect(rpc_small) if rpc_small else []
            if rpc or rpc_small:  # timeouts on llama.cpp's connections, one line if a server is lost
                self._rpc_guard = rpc_backend.Guard(list(dict.fromkeys([*rpc, *rpc_small])))
            devices_large = rpc_backend.model_devices(self.remote)
            devices_small = rpc_backend.model_devices(self.remote_small)
            tensor_split = check_tensor_split(tensor_split, devices_large)

            # refuse up front, with the estimate, rather than fail inside llama.cpp's allocator
            local_gpu = not (rpc or rpc_small) or memory.gpu_offload_supported()
            ngl_large = n_gpu_layers if local_gpu or self.remote else 0  # where -ngl can put layers at all
            memory.check_fits([(large, ngl_large)] + [(path, p.n_gpu_layers if local_gpu or self.remote_small else 0)
                                                       for p in self.pairs for path in (p.tuned, p.base)],
                              n_ctx=n_ctx * n_seq_max, n_batch=n_batch,
                              remote_free_bytes=sum(d.free_bytes for d in self.remote) if self.remote else None)
            self.model_large = self._load(large, n_gpu_layers, devices=devices_large, tensor_split=tensor_split)
            self.ctx_large = self._context(self.model_large, n_ctx, n_batch, n_threads)
            self.pair_contexts: list[tuple[Context, Context]] = []
            for pair in self.pairs:
                tuned = self._context(self._load(pair.tuned, pair.n_gpu_layers, devices=devices_small), n_ctx,
                                      n_batch, n_threads)
                base = self._context(self._load(pair.base, pair.n_gpu_layers, devices=devices_small), n_ctx,
                                     n_batch, n_threads)
                self.pair_contexts.append((tuned, base))
            if self._rpc_guard is not None:  # now, before any decode waits on a server
                self._rpc_guard.apply()
            self.n_ctx = self.ctx_large.n_ctx_seq  # per sequence
            n_batch = min(ctx.n_batch for ctx in self._contexts)
            self._batch = Batch(n_batch)
            self.n_batch = n_batch
            if overlap and len(self._contexts) > 1:
                self._decoder = _ext.ParallelDecoder([ctx.address for ctx in self._contexts])
        except BaseException:
            self.close()
            raise
        self.n_past = 0
        self.n_decoded = 0  # tokens decoded by feed() over the engine's life (each in every context)

    def _load(self, path, n_gpu_layers: int, vocab_only: bool = False, **placement) -> Model:
        model = Model(path, n_gpu_layers=n_gpu_layers, vocab_only=vocab_only, **placement)
        self._models.append(model)
        return model

    def _context(self, model: Model, n_ctx: int, n_batch: int, n_threads: int | None) -> Context:
        ctx = Context(model, n_ctx=n_ctx * self.n_seq_max, n_batch=n_batch, n_threads=n_threads,
                      n_seq_max=self.n_seq_max, flash_attn=self.flash_attn)
        self._contexts.append(ctx)
        return ctx

    @property
    def contexts(self) -> list[Context]:
        return self._contexts

    @property
    def n_vocab(self) -> int:
        return self.model_large.n_vocab

    def tokenize(self, text: str, *, add_special: bool | None = None) -> list[int]:
        return self.model_large.tokenize(text, add_special=add_special)

    def reset(self) -> None:
        for ctx in self._contexts:
            ctx.clear()
        self.n_past = 0

    def rewind(self, n_past: int) -> None:
        """Forget everything after the first n_past tokens, in every context."""
        for ctx in self._contexts:
            ctx.remove_from(n_past)
        self.n_past = n_past

    def feed(self, tokens: Sequence[int]) -> None:
        """Decode tokens at the next positions of every context; logits for the last one."""
        if self.n_past + len(tokens) > self.n_ctx:
            raise PromptTooLongError(
                f"{self.n_past + len(tokens)} tokens do not fit in the context of {self.n_ctx}; "
                "use a larger -c/--ctx-size or a shorter prompt")
        for start in range(0, len(tokens), self.n_batch):
            chunk = list(tokens[start:start + self.n_batch])
            self._batch.set_tokens(chunk, self.n_past + start, logits_last=True)
            self._decode_batch()
        self.n_past += len(tokens)
        self.n_decoded += len(tokens)

    def decode_entries(self, tokens: Sequence[int], positions: Sequence[int], seq_ids: Sequence[int],
                       logits: Sequence[bool]) -> None:
        """One llama_decode of entries from several sequences (at most n_batch) in every context;
        the logits of entry i (one with logits=True) are then `sampler.sample(i)`'s, in every context."""
        self._batch.set_entries(tokens, positions, seq_ids, logits)
        self._decode_batch()

    @property
    def overlap(self) -> bool:
        """Whether the contexts decode concurrently (the large one on the caller's thread)."""
        return self._decoder is not None

    def _decode_batch(self) -> None:
        if self._decoder is None:
            for ctx in self._contexts:
                ctx.decode(self._batch)
            return
        for ctx, rc in zip(self._contexts, self._decoder.decode_all(self._batch.address)):
            ctx.check_decode(rc)

    def sampler(self, params: SamplingParams) -> _ext.SamplerChain:
        pairs = [(p.alpha, tuned.address, base.address) for p, (tuned, base) in zip(self.pairs, self.pair_contexts)]
        return _ext.SamplerChain(self.ctx_large.address, pairs, self.n_shared, params.temp, params.top_k,
                                 params.top_p, params.min_p, params.resolved_seed, params.order)

    def set_alpha(self, alpha: float, pair_index: int | None = None) -> None:
        """Change alpha for later samplers (all pairs when pair_index is None)."""
        alpha = check_alpha(alpha)
        indices = range(len(self.pairs)) if pair_index is None else [pair_index]
        for i in indices:
            p = self.pairs[i]
            self.pairs[i] = DeltaPair(p.tuned, p.base, alpha, p.n_gpu_layers)

    def close(self) -> None:
        if getattr(self, "_decoder", None) is not None:  # its threads use the contexts: stop it first
            self._decoder.close()
            self._decoder = None
        if self._batch is not None:
            self._batch.close()
            self._batch = None
        for ctx in reversed(self._contexts):
            ctx.close()
        self._contexts.clear()
        for model in reversed(self._models):
            model.close()
        self._models.clear()
        if getattr(self, "_rpc_guard", None) is not None:
            self._rpc_guard.close()
            self._rpc_guard = None

    def __enter__(self) -> "RastEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
