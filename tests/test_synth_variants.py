"""The synthetic variants that exercise other llama.cpp paths load and run: a SentencePiece
vocabulary (with byte fallback), a mixture of experts, per-layer head counts."""

import rast_gguf  # noqa: F401

import numpy as np
import pytest

from rast_gguf.gguf_file import read_gguf_info
from rast_gguf.handles import Batch, Context, Model
from rast_gguf.synth import SHAPES, write_synthetic_gguf

TEXT = "Hello world, caf\u00e9 \u4e2d\u6587 \U0001F600 12345"


@pytest.mark.parametrize("name", ["tiny-llama-spm", "tiny-llama-moe", "tiny-qwen2-per-layer"])
def test_variant_loads_tokenizes_and_decodes(tmp_path, name):
    path = write_synthetic_gguf(tmp_path / f"{name}.gguf", SHAPES[name], ftype="f32", seed=5)
    info = read_gguf_info(path)
    shape = SHAPES[name]
    arch = info.architecture
    assert info.tokenizer_model == ("llama" if shape.vocab == "spm" else "gpt2")
    if shape.n_expert:
        assert (info.metadata[f"{arch}.expert_count"], info.metadata[f"{arch}.expert_used_count"]) == (4, 2)
        assert info.tensor("blk.0.ffn_up_exps.weight").shape == (4, shape.n_ff, shape.n_embd)
    if shape.per_layer:
        assert info.metadata[f"{arch}.attention.head_count"] == [shape.n_head] * shape.n_layer
    model = Model(path)
    context = Context(model, n_ctx=128, n_batch=128, n_threads=2)
    batch = Batch(128)
    try:
        tokens = model.tokenize(TEXT, add_special=False)
        text = b"".join(model.token_bytes(t) for t in tokens).decode("utf-8")
        assert text.lstrip(" ") == TEXT  # SentencePiece may add a leading space
        if shape.vocab == "spm":  # characters outside the pieces go through the <0xXX> byte tokens (ids 3..258)
            rare = model.tokenize("\u2603", add_special=False)  # a snowman: not in the corpus
            assert [model.token_text(t) for t in rare if 3 <= t < 259] == ["<0xE2>", "<0x98>", "<0x83>"]
        batch.set_tokens(tokens, 0)
        context.decode(batch)
        logits = context.logits()
        assert logits.shape == (model.n_vocab,) and np.isfinite(logits).all() and logits.std() > 0
    finally:
        batch.close()
        context.close()
        model.close()
