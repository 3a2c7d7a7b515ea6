"""Converted checkpoints run in llama.cpp give the logits of an independent numpy forward pass.

The reference (tests/hf_fixtures.py) computes Hugging Face's math on the checkpoint's own
(unpermuted) weights in float64, so a wrong tensor name, a missing or wrong q/k permutation, a
wrong RoPE base/scaling, head count or bias shows up as O(1) errors. llama.cpp runs with an f32
KV cache so the only differences left are the output type's rounding (measured bounds below).
Errors are reported relative to the spread (std) of the reference logits of each prompt.
"""

import llama_cpp

import numpy as np
import pytest

from hf_fixtures import Case, cached_checkpoint, reference_logits
from rast_convert import convert_hf_to_gguf

GGML_TYPE_F32 = 0
LLAMA3_SCALING = (("rope_type", "llama3"), ("factor", 8.0), ("low_freq_factor", 1.0), ("high_freq_factor", 4.0),
                  ("original_max_position_embeddings", 64))
CASES = {
    "llama-untied-f32": Case(arch="llama", dtype="f32"),
    "llama-tied-bf16-sharded-rope-llama3": Case(arch="llama", tied=True, dtype="bf16", shards=3,
                                                rope_scaling=LLAMA3_SCALING, seed=1),
    "qwen2-bias-f16-padded-vocab": Case(arch="qwen2", dtype="f16", n_pad=24, rope_theta=1e6, seed=2),
    "qwen2-tied-bf16": Case(arch="qwen2", dtype="bf16", tied=True, seed=4),
    "mistral-sentencepiece": Case(arch="mistral", tokenizer="spm", n_vocab_train=1000, seed=3),
}
PROMPTS = [
    "The lighthouse keeper woke before dawn, as he had every morning for thirty-one years.",
    "def fibonacci(n):\n    a, b = 0, 1\n    return [a for _ in range(n)]  # 日本語 🚀",
    "Numbers 3 33 333 and 2024-01-15; I've been told he's there.",
]
# max |llama.cpp - reference| / std(reference), measured over the cases and prompts above:
# f32 <= 2e-6 (float32 arithmetic only), f16 <= 3.6e-3 and bf16 <= 3.0e-2 (weights, and in the
# matmuls the activations, rounded to 11 resp. 8 significant bits), q8_0 <= 0.16 (8-bit weight
# blocks and 8-bit activations). RMS errors: f16 <= 6.6e-4, bf16 <= 5.2e-3, q8_0 <= 2.7e-2.
# Bounds leave 2-4x headroom; any layout error is O(1).
MAX_REL_ERROR = {"f32": 1e-4, "f16": 1.5e-2, "bf16": 6e-2, "q8_0": 0.35}
RMS_REL_ERROR = {"f32": 1e-5, "f16": 2e-3, "bf16": 1e-2, "q8_0": 0.06}


def llama_logits(model_path, text):
    llm = llama_cpp.Llama(str(model_path), n_ctx=128, logits_all=True, verbose=False, n_threads=2,
                          type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    try:
        tokens = llm.tokenize(text.encode(), add_bos=False, special=False)
        llm.eval(tokens)
        return tokens, np.array(llm.scores[:len(tokens)], dtype=np.float64)
    finally:
        llm.close()


def relative_errors(ckpt, model_path):
    worst_max, worst_rms = 0.0, 0.0
    for text in PROMPTS:
        tokens, got = llama_logits(model_path, text)
        want = reference_logits(ckpt, tokens)
        assert got.shape == want.shape == (len(tokens), ckpt.n_vocab)
        scale = want.std()
        worst_max = max(worst_max, float(np.abs(got - want).max() / scale))
        worst_rms = max(worst_rms, float(np.sqrt(np.mean((got - want) ** 2)) / scale))
    return worst_max, worst_rms


@pytest.mark.parametrize("out_type", ["f32", "f16", "bf16", "q8_0"])
@pytest.mark.parametrize("case_name", list(CASES))
def test_logits_match_reference(case_name, out_type, tmp_path_factory, tmp_path):
    ckpt = cached_checkpoint(CASES[case_name], tmp_path_factory)
    out = convert_hf_to_gguf(ckpt.path, tmp_path / "model.gguf", out_type=out_type, progress=False)
    worst_max, worst_rms = relative_errors(ckpt, out)
    print(f"{case_name} {out_type}: max |err|/std {worst_max:.2e}, rms err/std {worst_rms:.2e}")
    assert worst_max <= MAX_REL_ERROR[out_type], f"max relative logit error {worst_max:.3g}"
    assert worst_rms <= RMS_REL_ERROR[out_type], f"rms relative logit error {worst_rms:.3g}"


def test_rope_scaling_is_applied(tmp_path_factory, tmp_path):
    """The llama3 case only passes with rope_freqs: without scaling the reference differs a lot."""
    ckpt = cached_checkpoint(CASES["llama-tied-bf16-sharded-rope-llama3"], tmp_path_factory)
    out = convert_hf_to_gguf(ckpt.path, tmp_path / "model.gguf", out_type="f32", progress=False)
    unscaled = type(ckpt)(ckpt.path, ckpt.case, {**ckpt.config, "rope_scaling": None}, ckpt.weights, ckpt.n_tokens)
    tokens, got = llama_logits(out, PROMPTS[0])
    want_unscaled = reference_logits(unscaled, tokens)
    assert np.abs(got - want_unscaled).max() / want_unscaled.std() > 1e-2
