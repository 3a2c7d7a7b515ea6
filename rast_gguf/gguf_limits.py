"""Refuse GGUF metadata that makes llama.cpp abort or crash instead of failing cleanly.

llama.cpp rejects most bad metadata with an error (a wrong value type, a tensor whose shape does
not fit the hyperparameters), but some values reach a GGML_ASSERT (the process aborts) or throw
through a C function (std::terminate): tensor data not 32-byte aligned in the file, a layer or expert count over its compiled-in maximum, experts
used without experts, per-layer head counts on an architecture whose graph reads one value for all
layers, a negative or NaN norm epsilon, an unknown rope scaling type, a head size that does not divide the embedding or does not match the rope size, duplicate
token texts, a SentencePiece vocabulary without its <0xXX> byte tokens (tokenizing then throws
std::out_of_range), a BOS/EOS the tokenizer must add but the vocabulary lacks. The rules mirror
llama.cpp 0.3.36's loader (src/llama-model.cpp load_hparams, src/llama-vocab.cpp load/tokenize,
src/llama-hparams.h); `check_llama_limits(info, file, shown)` runs them on a file that already
passed gguf_file's structural checks and raises GGUFFileError with one line naming the key, the
value and the limit. Long arrays that gguf_file kept as ArrayInfo (the vocabulary, per-layer values
of deep models) are read here from the open file through a read-only mmap, once per check.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import BinaryIO, NoReturn

from rast_gguf.errors import GGUFFileError

__all__ = ["LLAMA_MAX_EXPERTS", "LLAMA_MAX_LAYERS", "TENSOR_ALIGNMENT", "check_llama_limits"]

LLAMA_MAX_LAYERS = 512    # llama-hparams.h
LLAMA_MAX_EXPERTS = 1024  # llama-hparams.h
TENSOR_ALIGNMENT = 32     # ggml-impl.h
_UINT32_MAX = 2**32 - 1
_FIX = "the file's metadata is corrupt or was edited by hand: re-download or re-convert it"

# Architectures whose graph reads per-layer head / feed-forward counts (src/models/*.cpp calls
# n_head(il), n_head_kv(il) or n_ff(il)); every other graph uses layer 0's value for all layers.
_PER_LAYER_ARCHS = frozenset(
    "bailingmoe3 deci dots3note gemma4-assistant gemma4 glm5-next granitehybrid granite_swa graniteswitch granite "
    "hunyuan-moe jamba kimi-k3 kimi-linear laguna lfm2 lfm2moe mimo2 nemotron_h_moe nemotron_h openelm plamo2 "
    "plamo3 qwen3next rwkv6 spark2-5 step35".split())
# Architectures whose graph asserts n_embd_head_k == n_embd_head_v == n_rot (GGML_ASSERT).
_ROT_IS_HEAD_ARCHS = frozenset(
    "apertus arcee arctic baichuan chameleon codeshell cogvlm cohere2moe dbrx deci deepseek dots1 dream ernie4_5 "
    "ernie4_5-moe exaone exaone4 exaone-moe falcon granite granite_swa graniteswitch grok grovemoe hunyuan-moe "
    "hunyuan_vl hy_v3 internlm2 jais2 llada llada-moe llama llama4 maincoder mellum minimax-01 minimax-m2 mistral3 "
    "nemotron olmo olmo2 olmoe orion paddleocr pangu-embedded plamo pockettts qwen2 qwen2moe qwen2vl qwen3 qwen3moe "
    "qwen3vl qwen3vlmoe rnd1 seed_oss smallthinker smollm3 starcoder2 talkie xverse".split())
_ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")  # llama-model.cpp LLAMA_ROPE_SCALING_TYPES
_PER_LAYER_KEYS = ("feed_forward_length", "attention.head_count", "attention.head_count_kv", "expert_used_count")

# tokenizer.ggml.model -> (llama.cpp vocab type, default BOS, EOS, SEP ids; None = no token)
_VOCAB_DEFAULTS = {
    "llama": ("spm", 1, 2, None), "bert": ("wpm", 101, None, 102), "gpt2": ("bpe", 11, 11, None),
    "hybriddna": ("bpe", 11, 11, None), "whitespace": ("bpe", 11, 11, None), "t5": ("ugm", None, 1, None),
    "rwkv": ("rwkv", None, None, None), "plamo2": ("plamo2", 1, 2, None), "gemma4": ("bpe", None, None, None),
    "test": ("test", None, None, None),
}
_TOKEN_TYPE_BYTE = 6
_BYTE_TOKEN_TYPES = ("spm", "ugm", "plamo2")  # tokenizers that fall back to <0xXX> tokens for unknown bytes

# GGUF value types
_STRING, _ARRAY = 8, 9
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_INT_ARRAY_CODES = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 7: "b", 10: "Q", 11: "q"}


def check_llama_limits(info, file: BinaryIO, shown: str) -> None:
    """Raise GGUFFileError if llama.cpp would crash on `info` (a parsed GGUFInfo of `file`)."""
    identity = _identity(file)
    if identity is not None and identity in _passed:
        return
    meta = info.metadata
    # the vocabulary is always read raw: gguf_file keeps short string arrays with bad UTF-8 replaced
    wanted = [key for key, value in meta.items()
              if (_is_long_array(value) or key == "tokenizer.ggml.tokens") and _needs_values(info, key)]
    long_arrays = _read_arrays(file, wanted) if wanted else {}

    def value(key: str):
        return long_arrays.get(key, meta.get(key))

    _Checker(info, value, shown).run()
    if identity is not None:
        _passed.add(identity)


# Files that passed, by (device, inode, size, mtime): a run reads each model's header several times.
_passed: set[tuple] = set()


def _identity(file: BinaryIO) -> tuple | None:
    try:
        st = os.fstat(file.fileno())
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _is_long_array(value) -> bool:
    return type(value).__name__ == "ArrayInfo"


def _needs_values(info, key: str) -> bool:
    if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
        return True
    arch = info.architecture
    return bool(arch) and key in {f"{arch}.{suffix}" for suffix in _PER_LAYER_KEYS}


class _Checker:
    def __init__(self, info, value, shown: str):
        self._info = info
        self._value = value
        self._shown = shown
        self._arch = info.architecture

    def _fail(self, problem: str, advice: str = _FIX) -> NoReturn:
        raise GGUFFileError(f"{self._shown}: {problem}; {advice}")

    def run(self) -> None:
        self._check_tensor_offsets()
        if isinstance(self._arch, str) and self._arch:
            self._check_hparams()
        self._check_vocab()

    def _check_tensor_offsets(self) -> None:
        # llama.cpp maps the file and hands ggml buffers that start at tensor data; ggml asserts that
        # such a pointer is TENSOR_ALIGNMENT-aligned (a general.alignment below 32 can break that)
        for tensor in self._info.tensors:
            if tensor.offset % TENSOR_ALIGNMENT:
                self._fail(f"the data of tensor {tensor.name!r} starts at byte {tensor.offset}, not a multiple of "
                           f"{TENSOR_ALIGNMENT} (general.alignment is {self._info.alignment}), which llama.cpp needs "
                           "to map it")

    # --- hyperparameters (read by llama.cpp on a full load only)

    def _key(self, suffix: str) -> str:
        return f"{self._arch}.{suffix}"

    def _uint(self, suffix: str, low: int = 0, high: int = _UINT32_MAX, what: str = "") -> int | None:
        """The scalar at arch.suffix (None when absent), refused outside [low, high]."""
        key = self._key(suffix)
        value = self._value(key)
        if value is None:
            return None
        if isinstance(value, (list, tuple)) or _is_long_array(value):
            self._fail(f"{key} is an array, but llama.cpp reads one value")
        self._check_int(key, value, low, high, what)
        return value

    def _check_int(self, key: str, value, low: int, high: int, what: str = "") -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            self._fail(f"{key} is {value!r}, not an integer")
        if not low <= value <= high:
            limit = f"at most {high}" if value > high else f"at least {low}"
            self._fail(f"{key} is {value}, but llama.cpp allows {limit}{what}")

    def _per_layer(self, suffix: str, n_layer: int, low: int, high: int, what: str = "",
                   uniform: bool = True) -> list[int] | None:
        """arch.suffix as one value per layer (a scalar repeated), or None when absent."""
        key = self._key(suffix)
        value = self._value(key)
        if value is None:
            return None
        if not isinstance(value, (list, tuple)):
            self._check_int(key, value, low, high, what)
            return [value] * n_layer
        if len(value) != n_layer:
            self._fail(f"{key} has {len(value)} per-layer values, but block_count is {n_layer}")
        for layer, item in enumerate(value):
            if isinstance(item, int) and not isinstance(item, bool) and item < 0:
                item &= _UINT32_MAX  # llama.cpp reads int32 arrays as uint32
            self._check_int(f"{key}[{layer}]", item, low, high, what)
        if uniform and self._arch not in _PER_LAYER_ARCHS and len(set(value)) > 1:
            self._fail(f"{key} varies by layer ({_short(value)}), but llama.cpp's {self._arch} graph uses one "
                       "value for all layers")
        return list(value)

    def _check_hparams(self) -> None:
        self._check_floats_and_names()
        n_layer = self._uint("block_count", 1, LLAMA_MAX_LAYERS)
        if n_layer is None:
            return  # llama.cpp refuses a full load without it ("key not found")
        self._uint("nextn_predict_layers", 0, n_layer, " (block_count)")
        n_expert = self._uint("expert_count", 0, LLAMA_MAX_EXPERTS) or 0
        # a graph that reads one value uses layer 0's: harmless, so per-layer values may differ
        used = self._per_layer("expert_used_count", n_layer, 0, n_expert, " (expert_count)", uniform=False) or [0]
        key_used = self._key("expert_used_count")
        if n_expert > 0 and max(used) == 0:
            self._fail(f"{key_used} is 0 but expert_count is {n_expert}; a mixture of experts must use at least one")
        n_groups = self._uint("expert_group_count") or 0
        if n_expert > 0:
            if n_groups >= n_expert:
                self._fail(f"{self._key('expert_group_count')} is {n_groups}, but llama.cpp allows fewer than "
                           f"expert_count ({n_expert})")
            if n_groups > 1:
                if n_expert % n_groups:
                    self._fail(f"{self._key('expert_group_count')} is {n_groups}, which does not divide "
                               f"expert_count ({n_expert})")
                self._uint("expert_group_used_count", 1, n_groups - 1, " (expert_group_count - 1)")
                if self._value(self._key("expert_group_used_count")) is None:
                    self._fail(f"{self._key('expert_group_used_count')} is missing but expert_group_count is {n_groups}")
        elif n_groups:
            self._fail(f"{self._key('expert_group_count')} is {n_groups} but the model has no experts")

        self._per_layer("feed_forward_length", n_layer, 0, _UINT32_MAX)
        heads = self._per_layer("attention.head_count", n_layer, 0, _UINT32_MAX)
        heads_kv = self._per_layer("attention.head_count_kv", n_layer, 0, _UINT32_MAX) or heads
        if heads is None:
            return
        self._check_head_size(heads[0])
        for layer, (n_head, n_head_kv) in enumerate(zip(heads, heads_kv)):
            if n_head_kv and n_head % n_head_kv:
                self._fail(f"layer {layer} has {n_head} attention heads and {n_head_kv} KV heads "
                           f"({self._key('attention.head_count_kv')}); the heads must be a multiple of the KV heads")

    def _check_floats_and_names(self) -> None:
        # ggml's norm kernels assert eps >= 0 (NaN fails it too)
        for key, value in self._info.metadata.items():
            if key.startswith(f"{self._arch}.") and key.endswith(("epsilon", "_eps")) and isinstance(value, float):
                if not value >= 0.0:
                    self._fail(f"{key} is {value}, but ggml's normalization needs an epsilon >= 0")
        # load_hparams asserts that the rope scaling type is one llama.cpp knows
        key = self._key("rope.scaling.type")
        scaling = self._value(key)
        if isinstance(scaling, str) and scaling not in _ROPE_SCALING_TYPES:
            self._fail(f"{key} is {scaling!r}, but llama.cpp knows only {', '.join(_ROPE_SCALING_TYPES)}")

    def _check_head_size(self, n_head: int) -> None:
        if n_head == 0:
            return  # llama.cpp treats the model as attention-free
        n_embd = self._uint("embedding_length")
        head_k = self._uint("attention.key_length")
        head_v = self._uint("attention.value_length")
        if head_k is None:
            if n_embd is None:
                return  # llama.cpp refuses a full load without it
            if n_embd % n_head:
                self._fail(f"{self._key('embedding_length')} is {n_embd}, not a multiple of "
                           f"{self._key('attention.head_count')} ({n_head})")
            head_k = n_embd // n_head
        if head_v is None:
            head_v = n_embd // n_head if n_embd is not None else head_k
        n_rot = self._uint("rope.dimension_count", 0, head_k, f" (the head size, {head_k})")
        if n_rot is not None and n_rot % 2:
            self._fail(f"{self._key('rope.dimension_count')} is {n_rot}, but rope needs an even number of dimensions")
        if self._arch in _ROT_IS_HEAD_ARCHS:
            if head_v != head_k:
                self._fail(f"the key head size ({head_k}) and value head size ({head_v}) differ, but llama.cpp's "
                           f"{self._arch} graph needs them equal")
            if n_rot is not None and n_rot != head_k:
                self._fail(f"{self._key('rope.dimension_count')} is {n_rot}, but llama.cpp's {self._arch} graph needs "
                           f"the head size ({head_k})")

    # --- vocabulary (read on every load, vocab-only included)

    def _check_vocab(self) -> None:
        model = self._value("tokenizer.ggml.model")
        if model in ("none", "no_vocab"):
            self._fail(f"tokenizer.ggml.model is {model!r}: the file has no tokenizer, and llama.cpp aborts when "
                       "asked to tokenize text with it", "use a GGUF of the model that includes its tokenizer")
        tokens = self._value("tokenizer.ggml.tokens")
        if not isinstance(model, str) or not isinstance(tokens, (list, tuple)) or model not in _VOCAB_DEFAULTS:
            return  # llama.cpp refuses these itself (missing or unknown tokenizer)
        if not all(type(t) is bytes for t in tokens):
            return  # not an array of strings (read raw as bytes): refused by llama.cpp ("invalid gguf type")
        texts = tokens
        distinct = set(texts)
        if len(distinct) != len(texts) or b"" in distinct:
            self._check_unique(texts)  # the slow path only when there may be a duplicate
        vocab_type, bos, eos, sep = _VOCAB_DEFAULTS[model]
        if vocab_type in _BYTE_TOKEN_TYPES:
            self._check_byte_tokens(model, vocab_type, distinct)
        types = self._value("tokenizer.ggml.token_type")
        if vocab_type == "wpm" and isinstance(types, (list, tuple)) and _TOKEN_TYPE_BYTE in types[:len(texts)]:
            token_id = list(types).index(_TOKEN_TYPE_BYTE)
            self._fail(f"tokenizer.ggml.model is 'bert' (WordPiece) but token {token_id} has type BYTE "
                       "(tokenizer.ggml.token_type), which llama.cpp aborts on for this tokenizer")
        n_tokens = len(texts)
        for name, default, add_key, add_default in (
                ("BOS", bos, "tokenizer.ggml.add_bos_token", vocab_type in ("spm", "wpm")),
                ("EOS", eos, "tokenizer.ggml.add_eos_token", vocab_type == "ugm"),
                ("SEP", sep, "tokenizer.ggml.add_sep_token", vocab_type == "wpm")):
            add = self._value(add_key)
            if name == "BOS" and model == "gemma4":
                add = True  # llama.cpp forces add_bos for Gemma 4's tokenizer
            if add is False or (add is None and not add_default):
                continue
            id_key = f"tokenizer.ggml.{name.lower()}_token_id"
            token_id = _effective_special_id(self._value(id_key), default, n_tokens)
            if token_id is None:
                self._fail(f"{add_key} is {'true' if add else 'on by default'} but the vocabulary of {n_tokens} tokens "
                           f"has no {name} token ({id_key} is {self._value(id_key)!r}); llama.cpp would abort when "
                           "tokenizing")

    def _check_unique(self, texts: list[bytes]) -> None:
        seen: dict[bytes, int] = {}
        for token_id, text in enumerate(texts):
            text = text or f"[EMPTY_{token_id}]".encode()  # llama.cpp's name for an empty token
            first = seen.setdefault(text, token_id)
            if first != token_id:
                self._fail(f"tokenizer.ggml.tokens holds {_short_text(text)} twice (ids {first} and {token_id}); "
                           "llama.cpp aborts on duplicate tokens")

    def _check_byte_tokens(self, model: str, vocab_type: str, texts: set[bytes]) -> None:
        for byte in range(256):
            if f"<0x{byte:02X}>".encode() in texts:
                continue
            if vocab_type != "plamo2" and bytes([byte]) in texts:
                continue  # llama.cpp falls back to the raw byte as a token
            self._fail(f"tokenizer.ggml.model is {model!r} (SentencePiece-style byte fallback) but the vocabulary "
                       f"lacks the byte token <0x{byte:02X}>; tokenizing text with that byte would crash llama.cpp")


def _effective_special_id(value, default: int | None, n_tokens: int) -> int | None:
    """llama.cpp's choice: the file's id when inside the vocabulary, else the default if inside it."""
    if default is not None and default >= n_tokens:
        default = None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n_tokens:
        return value
    return default


def _short(values) -> str:
    text = ", ".join(map(str, values[:8]))
    return text + (", ..." if len(values) > 8 else "")


def _short_text(text: bytes) -> str:
    shown = text.decode("utf-8", "backslashreplace")
    return repr(shown if len(shown) <= 40 else shown[:40] + "...")


# ----------------------------------------------------------------------------- long arrays


def _read_arrays(file: BinaryIO, keys: list[str]) -> dict[str, list]:
    """The full values of the metadata arrays `keys` (strings as bytes), from a file whose
    structure gguf_file already checked."""
    wanted = set(keys)
    found: dict[str, list] = {}
    with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        _, _, n_kv = struct.unpack_from("<IQQ", data, 4)
        pos = 24
        for _ in range(n_kv):
            (key_len,) = struct.unpack_from("<Q", data, pos)
            key = bytes(data[pos + 8:pos + 8 + key_len]).decode("utf-8", "replace")
            pos += 8 + key_len
            (value_type,) = struct.unpack_from("<I", data, pos)
            pos += 4
            if value_type != _ARRAY:
                pos = _skip_value(data, pos, value_type)
                continue
            elem_type, length = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if key in wanted:
                found[key], pos = _read_elements(data, pos, elem_type, length)
                if len(found) == len(wanted):
                    break
            else:
                pos = _skip_elements(data, pos, elem_type, length)
    return found


def _skip_value(data, pos: int, value_type: int) -> int:
    if value_type == _STRING:
        (length,) = struct.unpack_from("<Q", data, pos)
        return pos + 8 + length
    return pos + _SCALAR_SIZES[value_type]


def _skip_elements(data, pos: int, elem_type: int, length: int) -> int:
    if elem_type != _STRING:
        return pos + length * _SCALAR_SIZES[elem_type]
    unpack = struct.Struct("<Q").unpack_from
    for _ in range(length):
        pos += 8 + unpack(data, pos)[0]
    return pos


def _read_elements(data, pos: int, elem_type: int, length: int) -> tuple[list, int]:
    if elem_type == _STRING:
        unpack = struct.Struct("<Q").unpack_from
        values = []
        append = values.append
        for _ in range(length):
            start = pos + 8
            pos = start + unpack(data, pos)[0]
            append(data[start:pos])
        return values, pos
    code = _INT_ARRAY_CODES.get(elem_type, {6: "f", 12: "d"}.get(elem_type))
    size = _SCALAR_SIZES[elem_type]
    values = list(struct.unpack_from(f"<{length}{code}", data, pos))
    return values, pos + length * size
