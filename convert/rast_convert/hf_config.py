"""The model's hyperparameters: `config.json` read, checked and written as GGUF metadata.

`read_model_spec(hf_dir)` returns a `ModelSpec` for the supported architectures
(`LlamaForCausalLM`, `MistralForCausalLM` -> GGUF "llama"; `Qwen2ForCausalLM` -> "qwen2") or raises
ConversionError for anything else, for hyperparameters that do not fit together, and for features
llama.cpp's llama/qwen2 graphs do not implement (a non-SiLU activation, RoPE scaling other than
linear, yarn and llama3). `ModelSpec.write_hparams(writer)` adds the `{arch}.*` keys
the way llama.cpp's convert_hf_to_gguf.py does; `llama3_rope_factors(spec)` computes the
`rope_freqs` tensor that llama.cpp applies for Llama 3.1+ "llama3" RoPE scaling.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from rast_convert.errors import ConversionError

# HF architecture -> (GGUF architecture, whether q/k rows are permuted for llama.cpp's RoPE layout)
ARCHITECTURES = {
    "LlamaForCausalLM": (gguf.MODEL_ARCH.LLAMA, True),
    "MistralForCausalLM": (gguf.MODEL_ARCH.LLAMA, True),
    "Qwen2ForCausalLM": (gguf.MODEL_ARCH.QWEN2, False),
}
# HF class defaults for keys a config.json may leave out
_DEFAULT_CONTEXT = {gguf.MODEL_ARCH.LLAMA: 2048, gguf.MODEL_ARCH.QWEN2: 32768}
_DEFAULT_RMS_EPS = 1e-6
_DEFAULT_ROPE_THETA = 10000.0


@dataclass(frozen=True)
class ModelSpec:
    hf_arch: str
    arch: gguf.MODEL_ARCH
    permute_qk: bool
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    head_dim_explicit: bool   # config.json names head_dim (written as key/value length)
    n_vocab: int
    n_ctx: int
    rope_theta: float
    rms_eps: float
    tied_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    rope_scaling: dict[str, Any]  # empty, or the config's rope scaling with "rope_type" set

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]

    def write_hparams(self, writer: gguf.GGUFWriter) -> None:
        writer.add_vocab_size(self.n_vocab)
        writer.add_context_length(self.n_ctx)
        writer.add_embedding_length(self.n_embd)
        writer.add_feed_forward_length(self.n_ff)
        writer.add_block_count(self.n_layer)
        writer.add_head_count(self.n_head)
        writer.add_head_count_kv(self.n_head_kv)
        writer.add_rope_freq_base(self.rope_theta)
        writer.add_layer_norm_rms_eps(self.rms_eps)
        writer.add_rope_dimension_count(self.head_dim)
        if self.head_dim_explicit:
            writer.add_key_length(self.head_dim)
            writer.add_value_length(self.head_dim)
        rope_type = self.rope_scaling.get("rope_type")
        if rope_type == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(self.rope_scaling["factor"]))
        elif rope_type == "yarn":
            writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            writer.add_rope_scaling_factor(float(self.rope_scaling["factor"]))
            writer.add_rope_scaling_orig_ctx_len(int(self.rope_scaling["original_max_position_embeddings"]))
        # "llama3" scaling is carried by the rope_freqs tensor, not by keys


def _load_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path} is missing; {what}") from None
    except (OSError, ValueError, RecursionError) as err:  # bad UTF-8, bad JSON, >4300-digit ints
        raise ConversionError(f"cannot read {path} ({type(err).__name__}); download it again") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path} is not a JSON object; download it again")
    return data


def read_json_if_present(path: Path) -> dict[str, Any]:
    return _load_json(path, "") if path.is_file() else {}


_MAX_INT = 2**31 - 1  # GGUF stores these as uint32 and llama.cpp reads them into int32/uint32
_MAX_FLOAT32 = float(np.finfo(np.float32).max)  # and these as float32


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _positive_int(config: dict[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= _MAX_INT:
        raise ConversionError(f"config.json: '{key}' must be an integer in [1, {_MAX_INT}], got {_show(value)}; "
                              "fix config.json")
    return value


def _positive_number(mapping: dict[str, Any], key: str, default: float, where: str = "") -> float:
    value = mapping.get(key, default)
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not (math.isfinite(value) and 0 < value <= _MAX_FLOAT32)):
        raise ConversionError(f"config.json: {where}'{key}' must be a positive float32 number, got {_show(value)}; "
                              "fix config.json")
    return float(value)


def _rope_scaling(config: dict[str, Any], arch: gguf.MODEL_ARCH) -> dict[str, Any]:
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise ConversionError(f"config.json: 'rope_scaling' must be an object, got {_show(rope)}; fix config.json")
    rope_type = rope.get("rope_type", rope.get("type"))
    if rope_type in (None, "default"):
        return {}
    rope = {**rope, "rope_type": rope_type}
    if not isinstance(rope_type, str):
        raise ConversionError(f"config.json: rope_scaling 'rope_type' must be a string, got {_show(rope_type)}; "
                              "fix config.json")
    where = f"{rope_type} rope_scaling "
    if rope_type in ("linear", "yarn", "llama3"):
        _positive_number(rope, "factor", None if rope_type != "llama3" else 8.0, where)
    if rope_type == "yarn" and "original_max_position_embeddings" not in rope:
        raise ConversionError("config.json: yarn rope_scaling needs 'original_max_position_embeddings'; "
                              "fix config.json")
    if rope_type in ("yarn", "llama3"):
        _positive_int(rope, "original_max_position_embeddings", 8192)
    if rope_type == "llama3" and arch == gguf.MODEL_ARCH.LLAMA:
        low = _positive_number(rope, "low_freq_factor", 1.0, where)
        high = _positive_number(rope, "high_freq_factor", 4.0, where)
        if high <= low:
            raise ConversionError(f"config.json: {where}needs high_freq_factor ({high:g}) > low_freq_factor "
                                  f"({low:g}); fix config.json")
        return rope
    if rope_type in ("linear", "yarn"):
        return rope
    raise ConversionError(f"RoPE scaling type '{rope_type}' is not supported for {gguf.MODEL_ARCH_NAMES[arch]} "
                          "(supported: linear, yarn, llama3 for Llama); remove rope_scaling or use llama.cpp's "
                          "convert_hf_to_gguf.py")


def read_model_spec(hf_dir: Path) -> ModelSpec:
    config = _load_json(hf_dir / "config.json", "a Hugging Face model directory must contain config.json")
    archs = config.get("architectures") or []
    hf_arch = archs[0] if isinstance(archs, list) and archs else None
    if not isinstance(hf_arch, str) or hf_arch not in ARCHITECTURES:
        supported = ", ".join(ARCHITECTURES)
        raise ConversionError(f"architecture {_show(hf_arch)} is not supported (supported: {supported}); "
                              "use llama.cpp's convert_hf_to_gguf.py for other models")
    arch, permute_qk = ARCHITECTURES[hf_arch]

    hidden_act = config.get("hidden_act", "silu")
    if not isinstance(hidden_act, str) or hidden_act not in ("silu", "swish"):
        raise ConversionError(f"config.json: hidden_act {_show(hidden_act)} is not supported (llama.cpp's "
                              f"{gguf.MODEL_ARCH_NAMES[arch]} graph uses SiLU)")

    n_embd = _positive_int(config, "hidden_size")
    n_head = _positive_int(config, "num_attention_heads")
    n_head_kv = _positive_int(config, "num_key_value_heads", n_head)
    if n_head % n_head_kv:
        raise ConversionError(f"config.json: num_attention_heads ({n_head}) is not a multiple of "
                              f"num_key_value_heads ({n_head_kv}); fix config.json")
    head_dim_explicit = config.get("head_dim") is not None
    if head_dim_explicit:
        head_dim = _positive_int(config, "head_dim")
    elif n_embd % n_head:
        raise ConversionError(f"config.json: hidden_size ({n_embd}) is not divisible by num_attention_heads "
                              f"({n_head}) and head_dim is not given; fix config.json")
    else:
        head_dim = n_embd // n_head
    if head_dim % 2:
        raise ConversionError(f"head dimension {head_dim} is odd; RoPE needs an even head dimension")
    is_qwen2 = arch == gguf.MODEL_ARCH.QWEN2
    if is_qwen2 and head_dim * n_head != n_embd:
        raise ConversionError(f"config.json: head_dim {head_dim} x {n_head} heads != hidden_size {n_embd}, which "
                              "llama.cpp's qwen2 graph requires; fix config.json")
    attention_bias = bool(config.get("attention_bias", False))
    rope_parameters = config.get("rope_parameters") or {}
    if not isinstance(rope_parameters, dict):
        raise ConversionError(f"config.json: 'rope_parameters' must be an object, got {_show(rope_parameters)}; "
                              "fix config.json")
    rope_theta = _positive_number(config, "rope_theta", rope_parameters.get("rope_theta", _DEFAULT_ROPE_THETA))
    rms_eps = _positive_number(config, "rms_norm_eps", _DEFAULT_RMS_EPS)
    return ModelSpec(
        hf_arch=hf_arch, arch=arch, permute_qk=permute_qk,
        n_layer=_positive_int(config, "num_hidden_layers"),
        n_embd=n_embd,
        n_ff=_positive_int(config, "intermediate_size"),
        n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim, head_dim_explicit=head_dim_explicit,
        n_vocab=_positive_int(config, "vocab_size"),
        n_ctx=_positive_int(config, "max_position_embeddings", _DEFAULT_CONTEXT[arch]),
        rope_theta=float(rope_theta), rms_eps=float(rms_eps),
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=is_qwen2 or attention_bias,
        o_bias=attention_bias and not is_qwen2,
        mlp_bias=bool(config.get("mlp_bias", False)) and not is_qwen2,
        rope_scaling=_rope_scaling(config, arch),
    )


def llama3_rope_factors(spec: ModelSpec) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1's RoPE scaling (llama.cpp's `rope_freqs` tensor)."""
    rope = spec.rope_scaling
    factor = float(rope.get("factor", 8.0))
    low_freq_factor = float(rope.get("low_freq_factor", 1.0))
    high_freq_factor = float(rope.get("high_freq_factor", 4.0))
    old_context_len = float(rope.get("original_max_position_embeddings", 8192))
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    dim = spec.head_dim
    freqs = 1.0 / (spec.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            factors.append(1.0)
        elif wavelen > low_freq_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)
