"""Owners of llama.cpp's C handles: one small class per handle, freed by close().

`Model` owns a llama_model (loaded after the file passed `read_gguf_info`), `Context` a
llama_context, `Batch` a llama_batch. `Handle` is their shared part: the handle, its address for
the C++ extension, close() freeing it exactly once (or garbage collection), and `_live()`, which
every method calls before touching llama.cpp, so a closed object raises ClosedError instead of
passing a freed pointer on. llama.cpp's return codes become `rast_gguf.errors` exceptions right here
at the boundary. Tokenization and detokenization live on `Model` because they only need its vocab.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path

from rast_gguf._llama import C, addr, take_last_problem
from rast_gguf import _ext  # noqa: E402  (after libllama, which rast_gguf._llama loads)
from rast_gguf.errors import ClosedError, DecodeError, ModelLoadError, PromptTooLongError
from rast_gguf.gguf_file import GGUFInfo, read_gguf_info

DECODE_NO_KV_SLOT = 1
FLASH_ATTN_TYPES = {"auto": -1, "off": 0, "on": 1}  # enum llama_flash_attn_type


class Handle:
    """One C handle and its release: subclasses set `_handle` and implement `_free(handle)`."""

    _handle = None
    _what = "handle"

    def _live(self):
        """The handle; ClosedError once close() has run."""
        if self._handle is None:
            raise ClosedError(f"{self._what} is closed; it cannot be used after close() (or after its engine "
                              "was closed)")
        return self._handle

    @property
    def handle(self):
        return self._live()

    @property
    def address(self) -> int:
        """The handle's address, for the C++ extension."""
        return addr(self._live())

    @property
    def closed(self) -> bool:
        return self._handle is None

    def _free(self, handle) -> None:
        raise NotImplementedError

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            self._free(handle)

    def __del__(self) -> None:
        self.close()


class Model(Handle):
    def __init__(self, path: str | os.PathLike, *, n_gpu_layers: int = 0, vocab_only: bool = False,
                 use_mmap: bool = True, info: GGUFInfo | None = None, devices: Sequence[int] | None = None,
                 tensor_split: Sequence[float] | None = None):
        """Validate the file (or take `info`, its GGUFInfo parsed already) and load it; ModelLoadError if
        llama.cpp refuses. `vocab_only` loads the tokenizer without weights. `devices`: ggml_backend_dev_t
        handles to offload to, in llama.cpp's order (None: every local GPU); `tensor_split`: each device's
        share of the offloaded layers, as llama.cpp's -ts."""
        self.path = Path(path)
        self._what = f"model {self.path}"
        self.info: GGUFInfo = info or read_gguf_info(self.path)
        params = C.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.vocab_only = vocab_only
        if devices is not None:  # the arrays only need to live through the load; llama.cpp copies them
            device_array = (ctypes.c_void_p * (len(devices) + 1))(*devices, None)
            params.devices = ctypes.addressof(device_array)
        if tensor_split:
            split_array = (ctypes.c_float * C.llama_max_devices())(*tensor_split)
            params.tensor_split = split_array
        if hasattr(params, "use_mmap"):
            params.use_mmap = use_mmap
        take_last_problem()
        handle = C.llama_model_load_from_file(str(self.path).encode(), params)
        if not handle:
            why = take_last_problem() or "llama.cpp gave no reason"
            raise ModelLoadError(f"{self.path}: llama.cpp could not load the model ({why}); "
                                 "check that this llama.cpp build supports its architecture and type")
        self._handle = handle
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._vocab_handle = C.llama_model_get_vocab(handle)
        self.n_vocab: int = C.llama_vocab_n_tokens(self._vocab_handle)
        self.n_ctx_train: int = C.llama_model_n_ctx_train(handle)
        self.add_bos: bool = bool(C.llama_vocab_get_add_bos(self._vocab_handle))

    def _free(self, handle) -> None:
        C.llama_model_free(handle)

    @property
    def vocab(self):
        """The llama_vocab handle (it belongs to the model: freed with it)."""
        self._live()
        return self._vocab_handle

    def tokenize(self, text: str, *, add_special: bool | None = None, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        add_special = self.add_bos if add_special is None else add_special
        n_max = len(data) + 8
        buf = (C.llama_token * n_max)()
        n = C.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:
            buf = (C.llama_token * -n)()
            n = C.llama_tokenize(self.vocab, data, len(data), buf, -n, add_special, parse_special)
        return list(buf[:n])

    def token_bytes(self, token: int, *, special: bool = False) -> bytes:
        """The token's text as bytes (special tokens rendered only with special=True); looked up in
        llama.cpp once per id, then cached (every generated token asks)."""
        piece = None if special or self._handle is None else self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
            piece = buf.raw[:n]
            if not special:
                self._pieces[token] = piece
        return piece

    def token_text(self, token: int) -> str:
        return C.llama_vocab_get_text(self.vocab, token).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        """Whether the token ends generation (cached per id, as token_bytes)."""
        eog = None if self._handle is None else self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(C.llama_vocab_is_eog(self.vocab, token))
        return eog


class Context(Handle):
    _what = "context"

    def __init__(self, model: Model, *, n_ctx: int, n_batch: int = 512, n_threads: int | None = None,
                 n_seq_max: int = 1, flash_attn: str = "auto"):
        params = C.llama_context_default_params()
        params.flash_attn_type = FLASH_ATTN_TYPES[flash_attn]
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = min(n_batch, params.n_ubatch) if params.n_ubatch else n_batch
        params.n_seq_max = n_seq_max
        params.kv_unified = False  # each sequence gets its own n_ctx / n_seq_max cells
        n_threads = n_threads or max(1, (os.cpu_count() or 2))
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.no_perf = True
        take_last_problem()
        handle = C.llama_init_from_model(model.handle, params)
        if not handle:
            why = take_last_problem() or "llama.cpp gave no reason"
            raise ModelLoadError(f"{model.path}: could not create a context of {n_ctx} tokens ({why}); "
                                 "try a smaller -c or fewer GPU layers")
        self._handle = handle
        self.model = model
        self.n_ctx: int = C.llama_n_ctx(handle)
        self.n_ctx_seq: int = C.llama_n_ctx_seq(handle)
        self.n_batch: int = C.llama_n_batch(handle)  # llama.cpp caps it at n_ctx
        self._memory_handle = C.llama_get_memory(handle)

    def _free(self, handle) -> None:
        C.llama_free(handle)

    @property
    def _memory(self):
        self._live()  # the memory (KV cache) belongs to the context: freed with it
        return self._memory_handle

    def decode(self, batch: "Batch") -> None:
        rc = C.llama_decode(self._live(), batch.struct)
        if rc:
            self.check_decode(rc)

    def check_decode(self, rc: int) -> None:
        """Turn llama_decode's return code for this context into an exception (0: nothing)."""
        if rc == DECODE_NO_KV_SLOT:
            raise PromptTooLongError(f"the context of {self.n_ctx} tokens is full; start again with a larger -c "
                                     "or a shorter prompt")
        if rc != 0:
            why = take_last_problem() or f"code {rc}"
            raise DecodeError(f"llama_decode failed for {self.model.path.name}: {why}")

    def clear(self) -> None:
        C.llama_memory_clear(self._memory, True)

    def synchronize(self) -> None:
        """Wait until this context's queued work (on a GPU: its stream) has finished."""
        C.llama_synchronize(self._live())

    def remove_from(self, pos: int, seq_id: int = 0) -> None:
        """Forget positions >= pos of one sequence (so a conversation can be rewound)."""
        C.llama_memory_seq_rm(self._memory, seq_id, pos, -1)

    def copy_sequence(self, src: int, dst: int) -> None:
        """Make sequence dst a copy of sequence src (all positions; dst's old cells are dropped). With one
        KV stream per sequence llama.cpp copies the whole stream, at the start of the next decode."""
        C.llama_memory_seq_rm(self._memory, dst, -1, -1)
        C.llama_memory_seq_cp(self._memory, src, dst, -1, -1)

    def logits(self, idx: int = -1):
        """A numpy copy of one output row of logits (for tests and analysis, not the hot path)."""
        import numpy as np

        ptr = C.llama_get_logits_ith(self._live(), idx)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,)).copy()


class Batch(Handle):
    """A llama_batch (a struct by value, owning its arrays); `struct` is it, `address` its address."""

    _what = "batch"

    def __init__(self, n_tokens_max: int):
        self.n_tokens_max = n_tokens_max
        self._handle = b = C.llama_batch_init(n_tokens_max, 0, 1)
        # the arrays' pointers, read once (each ctypes field read makes a new pointer object)
        self._arrays = (b.token, b.pos, b.n_seq_id, b.seq_id, b.logits)

    def _free(self, handle) -> None:
        C.llama_batch_free(handle)

    @property
    def struct(self):
        return self._live()

    @property
    def address(self) -> int:
        return ctypes.addressof(self._live())

    def set_tokens(self, tokens: list[int], pos0: int, *, logits_last: bool = True, seq_id: int = 0) -> None:
        n = len(tokens)
        if n > self.n_tokens_max:
            raise ValueError(f"batch holds {self.n_tokens_max} tokens, got {n}")
        self._live().n_tokens = n
        token_a, pos_a, n_seq_id_a, seq_id_a, logits_a = self._arrays
        for i, token in enumerate(tokens):
            token_a[i] = token
            pos_a[i] = pos0 + i
            n_seq_id_a[i] = 1
            seq_id_a[i][0] = seq_id
            logits_a[i] = False
        if n and logits_last:
            logits_a[n - 1] = True

    def set_entries(self, tokens: Sequence[int], positions: Sequence[int], seq_ids: Sequence[int],
                    logits: Sequence[bool]) -> None:
        """Tokens of several sequences in one batch; entry i is (tokens[i], positions[i], seq_ids[i])."""
        _ext.fill_batch(ctypes.addressof(self._live()), self.n_tokens_max, tokens, positions, seq_ids, logits)
