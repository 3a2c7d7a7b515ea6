"""Write synthetic GGUF models (random weights, real tokenizer) that llama.cpp loads and runs.

`write_synthetic_gguf(path, shape, ...)` writes a llama- or qwen2-architecture model of `shape`
(`SHAPES` holds real Qwen2.5/Llama-3 shapes and tiny test shapes) with the BPE vocabulary of
`build_bpe_vocab(shape.n_vocab, shape.n_pad_tokens)`. Weights are drawn per tensor from a stream
keyed by (seed, tensor name), so files of one shape and seed hold the same weights whatever their
type. Scales make the logits over the vocabulary spread with a standard deviation of about
`logit_scale` (peaky distributions: the top-2 gap is typically 1-1.5) while padding rows get logits
near zero (never the argmax). `derive_from=S` writes weights(S) + noise(seed), the noise sized so
that the logits move by about `derive_scale` times their spread (rms): a "tuned" model close to
the seed-S "base" (0.1 keeps the greedy token about 80% of the time). Tensors are generated and
written a chunk at a time, so memory stays small for any shape; `fast_random` tiles one random
block per tensor, rotated so that rows stay distinct, to write large files at disk speed.
f32/f16/q8_0 are written directly; any other llama.cpp type goes through
`rast_gguf.quantize.quantize_gguf` from a temporary F16 file. Files appear atomically (written to
`path + ".part"`, then renamed). `write_synthetic_triple` writes a large base, a small base and a
small tuned model sharing one vocabulary. Bad shapes raise ValueError, unknown types
QuantizeError, a triple whose shapes cannot share a vocabulary VocabMismatchError.
"""

from __future__ import annotations

import itertools
import math
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from rast_gguf.errors import VocabMismatchError
from rast_gguf.synth.spm import build_spm_vocab
from rast_gguf.synth.tokenizer import build_bpe_vocab

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
          "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")

ARCHS = ("llama", "qwen2")
VOCABS = ("bpe", "spm")
_GGUF_ARCH = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}
_TOKENIZER_PRE = {"llama": "llama-bpe", "qwen2": "qwen2"}
_ADD_BOS = {"llama": True, "qwen2": False}
_DEFAULT_ROPE_THETA = {"llama": 10000.0, "qwen2": 1000000.0}
_DEFAULT_RMS_EPS = {"llama": 1e-5, "qwen2": 1e-6}
DIRECT_FTYPES = ("f32", "f16", "q8_0")

_CHUNK_ELEMENTS = 1 << 22  # elements generated (and written) at a time
_FAST_BLOCK_ELEMENTS = 1 << 18  # elements of the block fast_random tiles a tensor with
_NORM_JITTER = 0.05        # relative spread of RMSNorm weights around their mean
_QK_GAIN = 1.5             # attention scores ~ N(0, gain^4): attention neither uniform nor one-hot
# Token embeddings are short next to what the layers add to the residual stream, so that with tied
# embeddings the input token's own row barely leaks into its logit (else greedy text repeats a token).
_EMBD_GAIN = 0.25
_RESIDUAL_GAIN = 2.0       # scale of attn_output / ffn_down
_BIAS_STD = 0.1
_PAD_ROW_SCALE = 0.01      # padding rows of token_embd/output: logits near 0, far below the top
_FAST_ROLL_STEP = 7919     # prime: the per-chunk rotation (in units) of a tiled block in fast_random mode
# Measured: relative noise e on every weight moves the logits by about 4 * sqrt(n_layer) * e of their std
# (1-16 layers), so derive_scale is divided by that to mean "relative change of the logits".
_DERIVE_SENSITIVITY = 4.0


@dataclass(frozen=True)
class ModelShape:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    tie_embeddings: bool = False
    n_pad_tokens: int = 0
    n_ctx_train: int = 4096
    rope_theta: float | None = None  # None: the architecture's usual value (llama 1e4, qwen2 1e6)
    rms_eps: float | None = None     # None: llama 1e-5, qwen2 1e-6
    vocab: str = "bpe"               # "bpe" (byte-level BPE, tokenizer "gpt2") or "spm" (SentencePiece, "llama")
    n_expert: int = 0                # > 0: a mixture of experts (llama only) using n_expert_used per token
    n_expert_used: int = 0
    per_layer: bool = False          # write head counts and feed-forward sizes as per-layer arrays

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown architecture '{self.arch}'; choose one of: {', '.join(ARCHS)}")
        if self.n_embd % self.n_head or self.n_head % self.n_head_kv:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head}) and n_head "
                             f"of n_head_kv ({self.n_head_kv})")
        if self.vocab not in VOCABS:
            raise ValueError(f"unknown vocabulary '{self.vocab}'; choose one of: {', '.join(VOCABS)}")
        if self.n_expert and (self.arch != "llama" or not 0 < self.n_expert_used <= self.n_expert):
            raise ValueError(f"a mixture of experts needs arch 'llama' and 0 < n_expert_used ({self.n_expert_used}) "
                             f"<= n_expert ({self.n_expert})")
        if self.rope_theta is None:
            object.__setattr__(self, "rope_theta", _DEFAULT_ROPE_THETA[self.arch])
        if self.rms_eps is None:
            object.__setattr__(self, "rms_eps", _DEFAULT_RMS_EPS[self.arch])

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_embd_kv(self) -> int:
        return self.head_dim * self.n_head_kv

    @property
    def n_real_vocab(self) -> int:
        """Tokens that are not padding rows."""
        return self.n_vocab - self.n_pad_tokens

    @property
    def n_params(self) -> int:
        return sum(math.prod(spec.shape) for spec in _tensor_specs(self, logit_scale=1.0))


SHAPES: dict[str, ModelShape] = {
    "qwen2.5-0.5b": ModelShape("qwen2", 151936, 896, 24, 14, 2, 4864, tie_embeddings=True, n_pad_tokens=271),
    "qwen2.5-1.5b": ModelShape("qwen2", 151936, 1536, 28, 12, 2, 8960, tie_embeddings=True, n_pad_tokens=271),
    "qwen2.5-7b": ModelShape("qwen2", 152064, 3584, 28, 28, 4, 18944, n_pad_tokens=399),
    "qwen2.5-14b": ModelShape("qwen2", 152064, 5120, 48, 40, 8, 13824, n_pad_tokens=399),
    "qwen2.5-32b": ModelShape("qwen2", 152064, 5120, 64, 40, 8, 27648, n_pad_tokens=399),
    "llama-3.2-1b": ModelShape("llama", 128256, 2048, 16, 32, 8, 8192, tie_embeddings=True, n_pad_tokens=256,
                               rope_theta=500000.0),
    "llama-3.2-3b": ModelShape("llama", 128256, 3072, 28, 24, 8, 8192, tie_embeddings=True, n_pad_tokens=256,
                               rope_theta=500000.0),
    "llama-3.1-8b": ModelShape("llama", 128256, 4096, 32, 32, 8, 14336, n_pad_tokens=256, rope_theta=500000.0),
    # Tiny shapes for tests; tiny-qwen2-large pairs with tiny-qwen2 like Qwen2.5-7B with 0.5B (more pad rows).
    "tiny-qwen2": ModelShape("qwen2", 1024, 64, 2, 4, 2, 128, tie_embeddings=True, n_pad_tokens=24),
    "tiny-qwen2-large": ModelShape("qwen2", 1040, 128, 2, 4, 2, 256, n_pad_tokens=40),
    "tiny-llama": ModelShape("llama", 768, 64, 2, 4, 2, 128, n_pad_tokens=8),
    # Tiny variants that exercise other loader paths: a SentencePiece vocabulary, experts, per-layer arrays.
    "tiny-llama-spm": ModelShape("llama", 768, 64, 2, 4, 2, 128, n_pad_tokens=8, vocab="spm"),
    "tiny-llama-moe": ModelShape("llama", 768, 64, 2, 4, 2, 64, n_pad_tokens=8, n_expert=4, n_expert_used=2),
    "tiny-qwen2-per-layer": ModelShape("qwen2", 1024, 64, 2, 4, 2, 128, tie_embeddings=True, n_pad_tokens=24,
                                       per_layer=True),
}


@dataclass(frozen=True)
class _TensorSpec:
    name: str
    shape: tuple[int, ...]  # numpy order: (rows, cols) = (out features, in features); 1-D for norms/biases
    mean: float
    std: float
    n_live_rows: int | None = None  # rows from here on are padding rows, drawn with std * _PAD_ROW_SCALE


def _tensor_name(tensor: gguf.MODEL_TENSOR, bid: int | None = None, suffix: str = "weight") -> str:
    return gguf.TENSOR_NAMES[tensor].format(bid=bid) + "." + suffix


def _tensor_specs(shape: ModelShape, logit_scale: float) -> list[_TensorSpec]:
    T = gguf.MODEL_TENSOR
    n_embd, n_ff = shape.n_embd, shape.n_ff
    # logits = output_norm * (output row . normalized hidden): a row of norm r gives logits of std r * output_norm.
    embd_std = _EMBD_GAIN * n_embd ** -0.5
    output_std = n_embd ** -0.5
    output_norm = logit_scale / (_EMBD_GAIN if shape.tie_embeddings else 1.0)
    specs = [_TensorSpec(_tensor_name(T.TOKEN_EMBD), (shape.n_vocab, n_embd), 0.0, embd_std, shape.n_real_vocab)]
    for bid in range(shape.n_layer):
        specs += [
            _TensorSpec(_tensor_name(T.ATTN_NORM, bid), (n_embd,), 1.0, _NORM_JITTER),
            _TensorSpec(_tensor_name(T.ATTN_Q, bid), (n_embd, n_embd), 0.0, _QK_GAIN * n_embd ** -0.5),
            _TensorSpec(_tensor_name(T.ATTN_K, bid), (shape.n_embd_kv, n_embd), 0.0, _QK_GAIN * n_embd ** -0.5),
            _TensorSpec(_tensor_name(T.ATTN_V, bid), (shape.n_embd_kv, n_embd), 0.0, n_embd ** -0.5),
        ]
        if shape.arch == "qwen2":
            specs += [
                _TensorSpec(_tensor_name(T.ATTN_Q, bid, "bias"), (n_embd,), 0.0, _BIAS_STD),
                _TensorSpec(_tensor_name(T.ATTN_K, bid, "bias"), (shape.n_embd_kv,), 0.0, _BIAS_STD),
                _TensorSpec(_tensor_name(T.ATTN_V, bid, "bias"), (shape.n_embd_kv,), 0.0, _BIAS_STD),
            ]
        specs += [
            _TensorSpec(_tensor_name(T.ATTN_OUT, bid), (n_embd, n_embd), 0.0, _RESIDUAL_GAIN * n_embd ** -0.5),
            _TensorSpec(_tensor_name(T.FFN_NORM, bid), (n_embd,), 1.0, _NORM_JITTER),
        ]
        if shape.n_expert:
            n_expert = shape.n_expert
            specs += [
                _TensorSpec(_tensor_name(T.FFN_GATE_INP, bid), (n_expert, n_embd), 0.0, n_embd ** -0.5),
                _TensorSpec(_tensor_name(T.FFN_GATE_EXP, bid), (n_expert, n_ff, n_embd), 0.0, n_embd ** -0.5),
                _TensorSpec(_tensor_name(T.FFN_UP_EXP, bid), (n_expert, n_ff, n_embd), 0.0, n_embd ** -0.5),
                _TensorSpec(_tensor_name(T.FFN_DOWN_EXP, bid), (n_expert, n_embd, n_ff), 0.0,
                            _RESIDUAL_GAIN * n_ff ** -0.5),
            ]
            continue
        specs += [
            _TensorSpec(_tensor_name(T.FFN_GATE, bid), (n_ff, n_embd), 0.0, n_embd ** -0.5),
            _TensorSpec(_tensor_name(T.FFN_UP, bid), (n_ff, n_embd), 0.0, n_embd ** -0.5),
            _TensorSpec(_tensor_name(T.FFN_DOWN, bid), (n_embd, n_ff), 0.0, _RESIDUAL_GAIN * n_ff ** -0.5),
        ]
    specs.append(_TensorSpec(_tensor_name(T.OUTPUT_NORM), (n_embd,), output_norm, output_norm * _NORM_JITTER))
    if not shape.tie_embeddings:
        specs.append(_TensorSpec(_tensor_name(T.OUTPUT), (shape.n_vocab, n_embd), 0.0, output_std, shape.n_real_vocab))
    return specs


def _ggml_type(spec: _TensorSpec, ftype: str) -> GGMLQuantizationType:
    if len(spec.shape) == 1 or ftype == "f32":
        return GGMLQuantizationType.F32
    if ftype == "q8_0" and spec.shape[-1] % GGML_QUANT_SIZES[GGMLQuantizationType.Q8_0][0] == 0:
        return GGMLQuantizationType.Q8_0
    return GGMLQuantizationType.F16


def _row_nbytes(n_cols: int, qtype: GGMLQuantizationType) -> int:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    return n_cols // block_size * type_size


def _encode(values: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    if qtype == GGMLQuantizationType.F32:
        return values.astype(np.float32, copy=False)
    if qtype == GGMLQuantizationType.F16:
        return values.astype(np.float16)
    return gguf.quants.quantize(values, qtype)


def _segment_chunks(spec: _TensorSpec, segment: int, n_rows: int, std: float, qtype: GGMLQuantizationType, *,
                    seed: int, derive_from: int | None, noise_scale: float,
                    fast_random: bool) -> Iterator[np.ndarray]:
    """The encoded bytes of one segment (live or padding rows) of a tensor, in order, in whole-row arrays
    (or, with fast_random, byte slices that add up to whole rows)."""
    n_cols = spec.shape[-1]
    key = zlib.crc32(spec.name.encode())
    base_seed = seed if derive_from is None else derive_from
    base_rng = np.random.default_rng([base_seed, key, segment, 0])
    noise_rng = None if derive_from is None else np.random.default_rng([seed, key, segment, 1])

    def draw(n: int) -> np.ndarray:
        z = base_rng.standard_normal((n, n_cols), dtype=np.float32)
        if noise_rng is not None:
            z += np.float32(noise_scale) * noise_rng.standard_normal((n, n_cols), dtype=np.float32)
        z *= np.float32(std)
        z += np.float32(spec.mean)
        return _encode(z, qtype)

    if not fast_random:
        rows_per_chunk = max(1, _CHUNK_ELEMENTS // n_cols)
        for row in range(0, n_rows, rows_per_chunk):
            yield draw(min(rows_per_chunk, n_rows - row))
        return
    # Row r of the chunk rotated by s units starts at unit s + r * units_per_row of the block, so the chunks
    # give distinct rows (no tied logits) as long as n_block_rows * units_per_row >= n_rows.
    block_size, unit = GGML_QUANT_SIZES[qtype]  # unit: bytes of one element (float types) or one quant block
    units_per_row = n_cols // block_size
    n_block_rows = min(n_rows, max(_FAST_BLOCK_ELEMENTS // n_cols, -(-n_rows // units_per_row), 1))
    block = draw(n_block_rows).view(np.uint8).reshape(-1)
    n_units = block.size // unit
    remaining = n_rows * (block.size // n_block_rows)
    for index in itertools.count():
        shift = index * _FAST_ROLL_STEP % n_units * unit
        for part in (block[shift:], block[:shift]):  # the block rotated by `shift` bytes
            part = part[:remaining]
            if part.size:
                yield part
                remaining -= part.size
        if not remaining:
            return


def _tensor_chunks(spec: _TensorSpec, qtype: GGMLQuantizationType, **kwargs) -> Iterator[np.ndarray]:
    n_rows = math.prod(spec.shape[:-1])  # 1 for a vector; experts x rows for a 3-D expert tensor
    n_live = n_rows if spec.n_live_rows is None else spec.n_live_rows
    yield from _segment_chunks(spec, 0, n_live, spec.std, qtype, **kwargs)
    if n_live < n_rows:
        yield from _segment_chunks(spec, 1, n_rows - n_live, spec.std * _PAD_ROW_SCALE, qtype,
                                   **{**kwargs, "fast_random": False})


class _GGUFWriter(gguf.GGUFWriter):
    """gguf's writer, packing the 150k-entry token/merge/type arrays in one go (byte-identical output)."""

    def _pack_val(self, val, vtype, add_vtype, sub_type=None) -> bytes:
        if (vtype == gguf.GGUFValueType.ARRAY and sub_type is None and self.endianess == gguf.GGUFEndian.LITTLE
                and isinstance(val, (list, tuple)) and len(val) > 1):
            if all(type(item) is str for item in val):
                encoded = [item.encode("utf-8") for item in val]
                body = b"".join(struct.pack("<Q", len(item)) + item for item in encoded)
                return self._array_header(add_vtype, gguf.GGUFValueType.STRING, len(val)) + body
            if all(type(item) is int for item in val) and -2**31 <= min(val) and max(val) < 2**31:
                body = np.asarray(val, dtype="<i4").tobytes()
                return self._array_header(add_vtype, gguf.GGUFValueType.INT32, len(val)) + body
        return super()._pack_val(val, vtype, add_vtype, sub_type)

    @staticmethod
    def _array_header(add_vtype: bool, item_type: gguf.GGUFValueType, n_items: int) -> bytes:
        prefix = struct.pack("<I", gguf.GGUFValueType.ARRAY) if add_vtype else b""
        return prefix + struct.pack("<IQ", item_type, n_items)


def _add_metadata(writer: gguf.GGUFWriter, shape: ModelShape, vocab, ftype: str, name: str,
                  chat_template: str | None) -> None:
    writer.add_name(name)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[ftype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(shape.n_vocab)
    writer.add_context_length(shape.n_ctx_train)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    per_layer = (lambda value: [value] * shape.n_layer) if shape.per_layer else (lambda value: value)
    writer.add_feed_forward_length(per_layer(shape.n_ff))
    writer.add_head_count(per_layer(shape.n_head))
    writer.add_head_count_kv(per_layer(shape.n_head_kv))
    if shape.n_expert:
        writer.add_expert_count(shape.n_expert)
        writer.add_expert_used_count(shape.n_expert_used)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_rope_dimension_count(shape.head_dim)

    if shape.vocab == "spm":
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(vocab.tokens)
        writer.add_token_scores(vocab.scores)
        writer.add_token_types(vocab.token_types)
        writer.add_unk_token_id(vocab.unk_id)
    else:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_TOKENIZER_PRE[shape.arch])
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.token_types)
        writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_eot_token_id(vocab.eot_id)
    writer.add_pad_token_id(vocab.pad_id)
    writer.add_add_bos_token(_ADD_BOS[shape.arch])
    writer.add_add_eos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)


def _write_direct(path: Path, shape: ModelShape, *, seed: int, ftype: str, derive_from: int | None,
                  derive_scale: float, logit_scale: float, chat_template: str | None, name: str,
                  fast_random: bool) -> None:
    vocab = (build_spm_vocab(shape.n_vocab, shape.n_pad_tokens) if shape.vocab == "spm"
             else build_bpe_vocab(shape.n_vocab, shape.n_pad_tokens))
    specs = _tensor_specs(shape, logit_scale)
    noise_scale = derive_scale / (_DERIVE_SENSITIVITY * math.sqrt(shape.n_layer))
    qtypes = [_ggml_type(spec, ftype) for spec in specs]
    writer = _GGUFWriter(path, gguf.MODEL_ARCH_NAMES[_GGUF_ARCH[shape.arch]])
    try:
        _add_metadata(writer, shape, vocab, ftype, name, chat_template)
        nbytes = []
        for spec, qtype in zip(specs, qtypes):
            n_rows = math.prod(spec.shape[:-1])
            nbytes.append(n_rows * _row_nbytes(spec.shape[-1], qtype))
            writer.add_tensor_info(spec.name, spec.shape, np.dtype(np.float32), nbytes[-1], raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        # Stream the data section ourselves (GGUFWriter.write_tensor_data needs whole tensors): the same
        # layout as gguf 0.19's write_tensors_to_file, each tensor aligned to writer.data_alignment.
        fout = writer.fout[0]
        writer.write_padding(fout, fout.tell())
        for spec, qtype, expected in zip(specs, qtypes, nbytes):
            written = 0
            for chunk in _tensor_chunks(spec, qtype, seed=seed, derive_from=derive_from, noise_scale=noise_scale,
                                        fast_random=fast_random):
                fout.write(np.ascontiguousarray(chunk).data.cast("B"))
                written += chunk.nbytes
            assert written == expected, (spec.name, written, expected)
            writer.write_padding(fout, written)
        fout.flush()
    finally:
        writer.close()


def write_synthetic_gguf(path: str | os.PathLike, shape: ModelShape, *, seed: int = 0, ftype: str = "f16",
                         derive_from: int | None = None, derive_scale: float = 0.1, logit_scale: float = 6.0,
                         chat_template: str | None = CHATML, name: str | None = None, fast_random: bool = False,
                         n_threads: int = 0) -> Path:
    """Write a random-weight model of `shape` to `path` (any llama.cpp type name as `ftype`); returns the path."""
    from rast_gguf.quantize import ftype_from_name

    path = Path(path)
    ftype = ftype.lower()
    ftype_from_name(ftype)  # QuantizeError for an unknown type name, before any work
    name = name or f"rast-synthetic-{shape.arch}-{shape.n_params / 1e9:.2f}B"
    options = dict(seed=seed, derive_from=derive_from, derive_scale=derive_scale, logit_scale=logit_scale,
                   chat_template=chat_template, name=name, fast_random=fast_random)
    tmp = path.with_name(path.name + ".part")
    try:
        if ftype in DIRECT_FTYPES:
            _write_direct(tmp, shape, ftype=ftype, **options)
            os.replace(tmp, path)
        else:
            from rast_gguf.quantize import quantize_gguf

            # Benchmark models (fast_random) go through Q8_0, half the bytes of F16: a 32B model's
            # intermediate then fits beside its Q4_K_M on a 64 GiB disk, and is written twice as fast.
            intermediate = "q8_0" if fast_random else "f16"
            _write_direct(tmp, shape, ftype=intermediate, **options)
            # quantize_gguf itself writes through `path + ".part"`, so the source is moved aside first.
            source = path.with_name(f"{path.name}.{intermediate}.part")
            os.replace(tmp, source)
            try:
                quantize_gguf(source, path, ftype, n_threads=n_threads, overwrite=True)
            finally:
                source.unlink(missing_ok=True)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_synthetic_triple(dirpath: str | os.PathLike, large_shape: ModelShape, small_shape: ModelShape, *,
                           seed: int = 0, ftype_large: str = "f16", ftype_small: str = "f16",
                           tuned_scale: float = 0.1, fast_random: bool = False,
                           n_threads: int = 0) -> tuple[Path, Path, Path]:
    """Write (large base, small base, small tuned) into `dirpath`; the tuned model perturbs the small base."""
    if large_shape.arch != small_shape.arch or large_shape.n_real_vocab != small_shape.n_real_vocab:
        raise VocabMismatchError(
            f"the large ({large_shape.arch}, {large_shape.n_real_vocab} real tokens) and small "
            f"({small_shape.arch}, {small_shape.n_real_vocab} real tokens) shapes cannot share a vocabulary; "
            "use one architecture and the same n_vocab - n_pad_tokens")
    dirpath = Path(dirpath)
    dirpath.mkdir(parents=True, exist_ok=True)
    common = dict(fast_random=fast_random, n_threads=n_threads)
    large = write_synthetic_gguf(dirpath / f"large-{ftype_large}.gguf", large_shape, seed=seed, ftype=ftype_large,
                                 name="rast-synthetic-large", **common)
    base = write_synthetic_gguf(dirpath / f"base-{ftype_small}.gguf", small_shape, seed=seed + 1, ftype=ftype_small,
                                name="rast-synthetic-base", **common)
    tuned = write_synthetic_gguf(dirpath / f"tuned-{ftype_small}.gguf", small_shape, seed=seed + 2,
                                 derive_from=seed + 1, derive_scale=tuned_scale, ftype=ftype_small,
                                 name="rast-synthetic-tuned", **common)
    return large, base, tuned

