"""Which checkpoint tensors a Llama/Qwen2 model has, their shapes, and their GGUF names.

`plan_tensors(spec, checkpoint)` checks the checkpoint against the tensors the architecture needs
(every one present, with the shape config.json implies, nothing unexpected) and returns the
tensors to write, in a fixed order, as `SourceTensor`s: the GGUF name (from gguf-py's own name
map, `gguf.get_tensor_name_map`), the GGUF shape, and where the values come from: a checkpoint
tensor, optionally with its rows reordered, or values computed here (Llama 3's `rope_freqs`).

Llama's q/k projections are stored by Hugging Face for rotate-half RoPE; llama.cpp's llama graph
rotates adjacent pairs, so their rows are reordered head by head exactly as llama.cpp's
`LlamaModel.permute` does. Qwen2 uses the NEOX (rotate-half) layout in llama.cpp: no reordering.
With `tie_word_embeddings` no `output.weight` is written (llama.cpp then reuses token_embd) and a
stored `lm_head.weight` is ignored, as Hugging Face does.
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf
import numpy as np

from rast_convert.errors import ConversionError
from rast_convert.hf_config import ModelSpec, llama3_rope_factors
from rast_convert.safetensors_reader import Checkpoint, StoredTensor

# Stored by some checkpoints but recomputed by every runtime.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


@dataclass(frozen=True)
class SourceTensor:
    gguf_name: str
    shape: tuple[int, ...]                # numpy order, as in the checkpoint
    stored: StoredTensor | None = None    # values from the checkpoint ...
    row_order: np.ndarray | None = None   # ... rows taken in this order (q/k permutation)
    values: np.ndarray | None = None      # ... or computed here

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) == 2


def qk_row_order(n_rows: int, n_head: int) -> np.ndarray:
    """Row i of the permuted q/k weight is row order[i] of the Hugging Face one (LlamaModel.permute)."""
    return (np.arange(n_rows).reshape(n_head, 2, n_rows // n_head // 2)
            .swapaxes(1, 2).reshape(n_rows))


def expected_tensors(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Hugging Face tensor name -> shape, in the order they are written."""
    q_rows, kv_rows = spec.n_head * spec.head_dim, spec.n_head_kv * spec.head_dim
    expected = {"model.embed_tokens.weight": (spec.n_vocab, spec.n_embd)}
    for i in range(spec.n_layer):
        p = f"model.layers.{i}."
        expected[p + "input_layernorm.weight"] = (spec.n_embd,)
        expected[p + "self_attn.q_proj.weight"] = (q_rows, spec.n_embd)
        expected[p + "self_attn.k_proj.weight"] = (kv_rows, spec.n_embd)
        expected[p + "self_attn.v_proj.weight"] = (kv_rows, spec.n_embd)
        if spec.qkv_bias:
            expected[p + "self_attn.q_proj.bias"] = (q_rows,)
            expected[p + "self_attn.k_proj.bias"] = (kv_rows,)
            expected[p + "self_attn.v_proj.bias"] = (kv_rows,)
        expected[p + "self_attn.o_proj.weight"] = (spec.n_embd, q_rows)
        if spec.o_bias:
            expected[p + "self_attn.o_proj.bias"] = (spec.n_embd,)
        expected[p + "post_attention_layernorm.weight"] = (spec.n_embd,)
        expected[p + "mlp.gate_proj.weight"] = (spec.n_ff, spec.n_embd)
        expected[p + "mlp.up_proj.weight"] = (spec.n_ff, spec.n_embd)
        expected[p + "mlp.down_proj.weight"] = (spec.n_embd, spec.n_ff)
        if spec.mlp_bias:
            expected[p + "mlp.gate_proj.bias"] = (spec.n_ff,)
            expected[p + "mlp.up_proj.bias"] = (spec.n_ff,)
            expected[p + "mlp.down_proj.bias"] = (spec.n_embd,)
    expected["model.norm.weight"] = (spec.n_embd,)
    if not spec.tied_embeddings:
        expected["lm_head.weight"] = (spec.n_vocab, spec.n_embd)
    return expected


def _row_order(spec: ModelSpec, hf_name: str, n_rows: int) -> np.ndarray | None:
    if not spec.permute_qk:
        return None
    if hf_name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
        return qk_row_order(n_rows, spec.n_head)
    if hf_name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
        return qk_row_order(n_rows, spec.n_head_kv)
    return None


def plan_tensors(spec: ModelSpec, checkpoint: Checkpoint) -> list[SourceTensor]:
    expected = expected_tensors(spec)
    for name, shape in expected.items():
        stored = checkpoint.tensors.get(name)
        if stored is None:
            hint = ("config.json says tie_word_embeddings=false; set it to true if the output layer is tied"
                    if name == "lm_head.weight" else "the checkpoint is incomplete or not a plain " + spec.hf_arch)
            raise ConversionError(f"tensor {name} is missing; {hint}")
        if stored.shape != shape:
            raise ConversionError(f"tensor {name} has shape {list(stored.shape)} but config.json implies "
                                  f"{list(shape)}; the checkpoint does not match its config.json")
    for name in sorted(checkpoint.tensors):
        if name in expected or name.endswith(_IGNORED_SUFFIXES):
            continue
        if name == "lm_head.weight" and spec.tied_embeddings:
            continue
        raise ConversionError(f"unexpected tensor {name} in the checkpoint; it is not a plain {spec.hf_arch} "
                              "(use llama.cpp's convert_hf_to_gguf.py for this model)")

    name_map = gguf.get_tensor_name_map(spec.arch, spec.n_layer)
    planned = []
    if spec.rope_scaling.get("rope_type") == "llama3":
        factors = llama3_rope_factors(spec)
        planned.append(SourceTensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                                    factors.shape, values=factors))
    for name, shape in expected.items():
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:  # cannot happen for the names above unless gguf-py changes its map
            raise ConversionError(f"gguf-py has no GGUF name for {name}; install gguf==0.19.0")
        planned.append(SourceTensor(gguf_name, shape, stored=checkpoint.tensors[name],
                                    row_order=_row_order(spec, name, shape[0])))
    return planned
