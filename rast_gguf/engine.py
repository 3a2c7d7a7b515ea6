"""The RAST engine: one large model and any number of (alpha, tuned, base) small pairs, in
llama.cpp contexts kept in step over the same tokens.

The engine knows models, contexts and positions; it does not know prompts, text or stop rules
(that is rast_gguf.generate). `feed(tokens)` appends tokens to every context (batched, logits for
the last one only); `sampler(params)` builds the C++ chain whose first link adds the pairs' delta
to the large model's logits for that last position. With overlap=True one feed decodes all
contexts at once: the large one on the caller's thread, each small one on a C++ worker thread
(`_ext.ParallelDecoder`). Off by default: on CUDA llama_decode only queues work, so the plain loop
already overlaps the CPU side, and the threads measured no faster (timings in BENCHMARKS.md). With
draft=... (rast_gguf.speculative.DraftParams or 'tuned' / 'ngram' / a GGUF path) generation
speculates; a separate drafter model gets its own context, fed, rewound and reset with the others. All
files are validated (each header parsed once) and all vocabularies checked before any context is
created; close() closes the sampler chains the engine made, then frees everything in reverse order.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence

from rast_gguf import _ext, memory
from rast_gguf import rpc as rpc_backend
from rast_gguf.errors import ClosedError, PromptTooLongError, UsageError
from rast_gguf.gguf_file import GGUFInfo
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
    """A large model and its delta pairs in llama.cpp contexts, kept at the same positions.

    Use it as a context manager (or call close()). After close() every method raises ClosedError.

    Attributes: `pairs` (the DeltaPairs, alphas as set now), `n_ctx` (context size per sequence, in
    tokens), `n_batch` (most tokens one llama_decode takes), `n_past` (tokens fed so far in sequence 0),
    `n_shared` (token ids every model scores: the delta covers ids < n_shared), `n_seq_max`,
    `flash_attn`, `model_large` and `ctx_large` (the large model's Model and Context),
    `pair_contexts` (one (tuned, base) Context tuple per pair).
    """

    def __init__(self, large: str | os.PathLike, pairs: Sequence[DeltaPair] = (), *, n_ctx: int = 4096,
                 n_batch: int = 512, n_threads: int | None = None, n_gpu_layers: int = 0,
                 flash_attn: str = "auto", n_seq_max: int = 1, overlap: bool = False, draft=None,
                 rpc: Sequence[str] = (), rpc_small: Sequence[str] = (), tensor_split: Sequence[float] | None = None):
        """Validate, check and load the models, then create one context per model.

        Args:
            large: path of the large base model's GGUF file (the first part of a split model).
            pairs: the (tuned, base, alpha, n_gpu_layers) terms of the delta; none runs the large model alone.
            n_ctx: context size of each sequence, in tokens (every context holds n_ctx * n_seq_max).
            n_batch: most tokens per llama_decode call while reading a prompt (at least n_seq_max).
            n_threads: CPU threads per model; None uses every core.
            n_gpu_layers: layers of the large model on the GPU (-1: all; each pair sets its own).
            flash_attn: "on", "off" or "auto" (llama.cpp decides per device); greedy outputs can differ
                between on and off.
            n_seq_max: sequences decoded together (rast_gguf.batch); 1 for plain generation.
            overlap: decode the small models on C++ worker threads while the large one decodes.
            draft: speculative decoding (rast_gguf.speculative): None (off), "tuned" (the first pair's
                tuned model drafts), "ngram" (prompt lookup), a drafter GGUF path, "auto" ("tuned" where
                the tuned model runs on a local GPU, else None: `resolve_auto`), or a DraftParams.
            rpc: HOST:PORT of llama.cpp RPC servers whose devices take the large model's offloaded
                layers with the local GPUs (split by `tensor_split`, else by free memory, as llama.cpp);
                see rast_gguf.rpc.
            rpc_small: the same for the small models and a drafter file (local by default).
            tensor_split: each offload device's share of the large model's layers (llama.cpp's -ts),
                RPC servers' devices first, then local GPUs.

        Raises:
            GGUFFileError: a file is missing, not GGUF, truncated or corrupt.
            VocabMismatchError: the models do not share a vocabulary.
            OutOfMemoryError: the models would not fit in the GPU's free memory (estimated first).
            ModelLoadError: llama.cpp refused a model or a context.
            UsageError: an invalid flash_attn, n_seq_max or tensor_split.
            RpcError: an RPC server cannot be reached or speaks another protocol version.
        """
        from rast_gguf.speculative import as_draft_params, resolve_auto

        self._models: list[Model] = []
        self._rpc_guard: rpc_backend.Guard | None = None
        self._decoder: _ext.ParallelDecoder | None = None
        self._contexts: list[Context] = []
        self._batch: Batch | None = None
        self._samplers: weakref.WeakSet[_ext.SamplerChain] = weakref.WeakSet()  # closed before the contexts
        self._closed = False
        self._infos: dict[str, GGUFInfo] = {}
        self.pairs = list(pairs)
        self.draft = as_draft_params(draft)  # None: no speculation
        self.ctx_draft: Context | None = None
        self._draft_rule = None  # speculative.DraftLength: its costs timed on first use, then kept with its estimates
        if self.draft and self.draft.kind == "tuned" and not self.pairs:
            raise UsageError("--draft tuned drafts with the small tuned model, but no pair is loaded; "
                             "give --base/--tuned, or use --draft ngram or --draft PATH")
        draft_ngl = self.pairs[0].n_gpu_layers if self.pairs else n_gpu_layers
        self.draft = resolve_auto(self.draft, n_pairs=len(self.pairs), drafter_n_gpu_layers=draft_ngl,
                                  small_remote=bool(rpc_small), n_seq_max=n_seq_max)
        draft_file = self.draft.source if self.draft and self.draft.kind == "model" else None
        self.draft_n_gpu_layers = draft_ngl  # the drafter's: the tuned model's or a separate drafter's
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
            draft_models = [self._load(draft_file, draft_ngl, vocab_only=True)] if draft_file else []
            self.n_shared = check_vocabularies(self.model_large, [m for pm in pair_models for m in pm] + draft_models)
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
            ngl_small = lambda ngl: ngl if local_gpu or self.remote_small else 0  # noqa: E731
            memory.check_fits([(self._infos[str(large)], ngl_large)]
                              + [(self._infos[str(path)], ngl_small(p.n_gpu_layers)) for p in self.pairs
                                 for path in (p.tuned, p.base)]
                              + ([(self._infos[str(draft_file)], ngl_small(draft_ngl))] if draft_file else []),
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
            if draft_file:
                self.ctx_draft = self._context(self._load(draft_file, draft_ngl, devices=devices_small), n_ctx,
                                               n_batch, n_threads)
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
        # each file's header is parsed once per start: the vocab-only load, the memory estimate and the
        # full load share it; `placement`: Model's devices / tensor_split
        model = Model(path, n_gpu_layers=n_gpu_layers, vocab_only=vocab_only, info=self._infos.get(str(path)),
                      **placement)
        self._infos[str(path)] = model.info
        self._models.append(model)
        return model

    def _context(self, model: Model, n_ctx: int, n_batch: int, n_threads: int | None) -> Context:
        ctx = Context(model, n_ctx=n_ctx * self.n_seq_max, n_batch=n_batch, n_threads=n_threads,
                      n_seq_max=self.n_seq_max, flash_attn=self.flash_attn)
        self._contexts.append(ctx)
        return ctx

    @property
    def contexts(self) -> list[Context]:
        """Every context, the large model's first, then each pair's tuned and base."""
        return self._contexts

    @property
    def n_vocab(self) -> int:
        """Tokens in the large model's vocabulary (may exceed n_shared: padding rows)."""
        return self.model_large.n_vocab

    def tokenize(self, text: str, *, add_special: bool | None = None) -> list[int]:
        """Token ids of `text` in the large model's tokenizer (shared by all); add_special=None adds BOS if
        the model asks for it. Special tokens written in the text (`<|im_start|>`) are parsed."""
        self._check_open()
        return self.model_large.tokenize(text, add_special=add_special)

    def reset(self) -> None:
        """Forget every token in every context (n_past becomes 0)."""
        self._check_open()
        for ctx in self._contexts:
            ctx.clear()
        self.n_past = 0

    def rewind(self, n_past: int) -> None:
        """Forget everything after the first n_past tokens, in every context."""
        self._check_open()
        for ctx in self._contexts:
            ctx.remove_from(n_past)
        self.n_past = n_past

    def feed(self, tokens: Sequence[int]) -> None:
        """Decode tokens at the next positions (n_past, n_past + 1, ...) of sequence 0 in every context, in
        chunks of n_batch, with logits for the last one; n_past grows by len(tokens).

        Raises PromptTooLongError when they do not fit in n_ctx (before decoding anything), DecodeError when
        llama_decode fails."""
        self._check_open()
        n = len(tokens)
        if self.n_past + n > self.n_ctx:
            raise PromptTooLongError(
                f"{self.n_past + n} tokens do not fit in the context of {self.n_ctx}; "
                "use a larger -c/--ctx-size or a shorter prompt")
        for start in range(0, n, self.n_batch):
            self._batch.set_tokens(tokens[start:start + self.n_batch], self.n_past + start, logits_last=True)
            self._decode_batch()
        self.n_past += n
        self.n_decoded += n

    def decode_entries(self, tokens: Sequence[int], positions: Sequence[int], seq_ids: Sequence[int],
                       logits: Sequence[bool]) -> None:
        """One llama_decode of entries from several sequences (at most n_batch) in every context;
        the logits of entry i (one with logits=True) are then `sampler.sample(i)`'s, in every context."""
        self._check_open()
        self._batch.set_entries(tokens, positions, seq_ids, logits)
        self._decode_batch()

    @property
    def overlap(self) -> bool:
        """Whether the contexts decode concurrently (the large one on the caller's thread)."""
        return self._decoder is not None

    def _decode_batch(self) -> None:
        if self._decoder is None:
            batch = self._batch
            for ctx in self._contexts:
                ctx.decode(batch)
            return
        for ctx, rc in zip(self._contexts, self._decoder.decode_all(self._batch.address)):
            ctx.check_decode(rc)

    def sampler(self, params: SamplingParams) -> _ext.SamplerChain:
        """A new C++ sampler chain: the delta of every pair (alphas as they are now), then `params`' samplers.

        `chain.sample(i)` returns the token drawn from output row i of the last decode (-1: the last row).
        The engine closes its chains in close(); close one earlier when done with it (stream_generate
        does). A chain used after close raises ClosedError."""
        self._check_open()
        pairs = [(p.alpha, tuned.address, base.address) for p, (tuned, base) in zip(self.pairs, self.pair_contexts)]
        chain = _ext.SamplerChain(self.ctx_large.address, pairs, self.n_shared, params.temp, params.top_k,
                                  params.top_p, params.min_p, params.resolved_seed, params.order)
        self._samplers.add(chain)
        return chain

    def set_alpha(self, alpha: float, pair_index: int | None = None) -> None:
        """Change alpha for samplers made from now on (all pairs when pair_index is None); SamplingParamsError
        for a value that is not a finite number."""
        alpha = check_alpha(alpha)
        indices = range(len(self.pairs)) if pair_index is None else [pair_index]
        for i in indices:
            p = self.pairs[i]
            self.pairs[i] = DeltaPair(p.tuned, p.base, alpha, p.n_gpu_layers)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the engine is closed; create a new RastEngine")

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the sampler chains this engine made, then free the batch, the contexts and the models.
        Safe to call twice."""
        self._closed = True
        for chain in list(self._samplers):  # they point at the contexts freed below
            chain.close()
        self._samplers.clear()
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
