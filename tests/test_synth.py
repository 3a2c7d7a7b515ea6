"""The synthetic model writer: tiny models load and run in llama.cpp, llama.cpp tokenizes exactly like
the `tokenizers` library, vocabularies are deterministic, derived models are close perturbations."""

import llama_cpp  # noqa: F401  (keep libllama first in every test process)

import ctypes
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from llama_cpp import llama_cpp as C

import rast_gguf.synth.writer as synth_writer
from rast_gguf.errors import QuantizeError, VocabMismatchError
from rast_gguf.synth import (CHATML, SHAPES, SPECIAL_TOKENS, TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL,
                             TOKEN_TYPE_UNUSED, ModelShape, build_bpe_vocab, hf_tokenizer, write_synthetic_gguf,
                             write_synthetic_triple)
from rast_gguf.synth.tokenizer import _pre_tokenizer, read_corpus

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It's 12345 o'clock, isn't it? They'll see; we've won.",
    "def f(x):\n    return x * 2\n\n\n\tif (a != b) { return -1; }  // done\n",
    "   leading and trailing   \n\n  ",
    "café naïve Straße Ελληνικά Привет 你好，世界 こんにちは 안녕하세요 😀👍🏽 🇫🇷 👩‍💻",
    "x = [1, 2, 3]; y = 3.14159e-10; z=0xDEADBEEF; 2024-01-15T18:45:00Z $1,250.00",
    "\r\n\r\nWindows\r\nline endings\t\ttabs",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa zzzzzzzzzzzzzzzzzz ...!!!???",
    "Problem: 24 * 7 = 168. Solution: 2^10 = 1024, 100 * 101 / 2 = 5050.",
]
PRE = {"qwen2": "qwen2", "llama": "llama-bpe"}


def open_llama(path):
    return llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=2, logits_all=True, verbose=False)


def tokenize(llm, text, special=False):
    return llm.tokenize(text.encode(), add_bos=False, special=special)


def detokenize(llm, ids) -> str:
    # Llama.detokenize drops pieces longer than its 32-byte buffer; ask for each piece with a large one.
    vocab = C.llama_model_get_vocab(llm.model)
    buf = ctypes.create_string_buffer(1024)
    pieces = []
    for token in ids:
        n = C.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
        assert n >= 0
        pieces.append(buf.raw[:n])
    return b"".join(pieces).decode()


def last_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)


def gguf_field(reader, key):
    field = reader.fields[key]
    return [field.contents(i) for i in range(len(field.data))] if len(field.data) > 1 else field.contents()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    paths = {}
    for name in ("tiny-qwen2", "tiny-llama"):
        for ftype in ("f32", "f16", "q8_0"):
            paths[name, ftype] = write_synthetic_gguf(root / f"{name}-{ftype}.gguf", SHAPES[name], seed=1, ftype=ftype)
    return paths


def test_shape_parameter_counts_match_the_real_models():
    expected = {
        "qwen2.5-0.5b": 494_032_768, "qwen2.5-1.5b": 1_543_714_304, "qwen2.5-7b": 7_615_616_512,
        "qwen2.5-14b": 14_770_033_664, "qwen2.5-32b": 32_763_876_352,
        "llama-3.2-1b": 1_235_814_400, "llama-3.2-3b": 3_212_749_824, "llama-3.1-8b": 8_030_261_248,
    }
    for name, n_params in expected.items():
        assert SHAPES[name].n_params == n_params, name
    assert SHAPES["qwen2.5-0.5b"].n_real_vocab == SHAPES["qwen2.5-7b"].n_real_vocab == 151665
    assert SHAPES["llama-3.1-8b"].n_real_vocab == 128000
    assert SHAPES["qwen2.5-7b"].rope_theta == 1e6 and SHAPES["llama-3.2-1b"].rope_theta == 500000.0
    with pytest.raises(ValueError):
        ModelShape("gpt2", 512, 64, 2, 4, 2, 128)


def test_vocab_layout():
    vocab = build_bpe_vocab(1024, 24)
    n_normal = 1024 - 24 - len(SPECIAL_TOKENS)
    assert vocab.n_vocab == 1024 and vocab.n_real == 1000
    assert vocab.token_types == (TOKEN_TYPE_NORMAL,) * n_normal + (TOKEN_TYPE_CONTROL,) * 3 + (TOKEN_TYPE_UNUSED,) * 24
    assert vocab.tokens[n_normal:n_normal + 3] == SPECIAL_TOKENS
    assert vocab.tokens[1000:] == tuple(f"[PAD{i}]" for i in range(1000, 1024))
    assert (vocab.bos_id, vocab.eos_id, vocab.pad_id) == (n_normal, n_normal + 2, n_normal)
    assert len(set(vocab.tokens)) == vocab.n_vocab
    assert len(vocab.merges) == n_normal - 256
    # The real tokens depend only on n_vocab - n_pad; a smaller vocabulary is a prefix of a larger one.
    assert build_bpe_vocab(1040, 40).tokens[:1000] == vocab.tokens[:1000]
    assert build_bpe_vocab(2000).tokens[:n_normal] == vocab.tokens[:n_normal]
    with pytest.raises(ValueError):
        build_bpe_vocab(200)


def test_large_vocab_is_valid_bpe_and_deterministic_across_processes():
    vocab = build_bpe_vocab(151936, 271)
    assert vocab.n_real == 151665 and vocab.n_trained < vocab.n_real
    assert len(set(vocab.tokens)) == vocab.n_vocab
    known = set(vocab.tokens[:256])
    for merge, token in zip(vocab.merges, vocab.tokens[256:vocab.n_real - 3]):
        left, right = merge.split(" ")
        assert left in known and right in known and left + right == token
        known.add(token)
    digest = hashlib.sha256("\n".join(vocab.tokens + vocab.merges).encode()).hexdigest()
    code = ("import hashlib; from rast_gguf.synth import build_bpe_vocab; v = build_bpe_vocab(151936, 271); "
            "print(hashlib.sha256('\\n'.join(v.tokens + v.merges).encode()).hexdigest())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "123"})
    assert other.stdout.strip() == digest


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama"])
@pytest.mark.parametrize("ftype", ["f32", "f16", "q8_0"])
def test_tiny_models_load_and_are_peaky(models, name, ftype):
    shape = SHAPES[name]
    llm = open_llama(models[name, ftype])
    try:
        assert llm.n_vocab() == shape.n_vocab
        logits = last_logits(llm, tokenize(llm, "The lighthouse keeper woke before dawn"))
        assert np.isfinite(logits).all()
        assert 3.0 < logits[:shape.n_real_vocab].std() < 9.0
        top2 = np.sort(logits)[-2:]
        assert top2[1] > logits[shape.n_real_vocab:].max() + 5.0  # padding rows never win
    finally:
        llm.close()


def test_weights_do_not_depend_on_type(models):
    llms = [open_llama(models["tiny-qwen2", ftype]) for ftype in ("f32", "f16", "q8_0")]
    try:
        ids = tokenize(llms[0], "Weights are keyed by seed and tensor name.")
        z32, z16, z8 = (last_logits(llm, ids) for llm in llms)
        assert np.abs(z16 - z32).max() < 0.1
        assert np.abs(z8 - z32).max() < 1.0
        assert z8.argmax() == z32.argmax()
    finally:
        for llm in llms:
            llm.close()


@pytest.mark.parametrize("arch,name", [("qwen2", "tiny-qwen2"), ("llama", "tiny-llama")])
def test_llama_cpp_tokenizes_like_the_tokenizers_library(models, arch, name):
    shape = SHAPES[name]
    reference = hf_tokenizer(build_bpe_vocab(shape.n_vocab, shape.n_pad_tokens), PRE[arch])
    texts = TEXTS + read_corpus().split("\n\n")[::3]
    llm = open_llama(models[name, "f16"])
    try:
        for text in texts:
            ids = tokenize(llm, text)
            assert ids == reference.encode(text, add_special_tokens=False).ids, text
            assert detokenize(llm, ids) == text
        chat = "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        ids = tokenize(llm, chat, special=True)
        assert ids == reference.encode(chat, add_special_tokens=False).ids
        assert ids.count(llm.token_eos()) == 1 and llm.token_eos() == shape.n_real_vocab - 1
    finally:
        llm.close()


def test_llama_cpp_tokenizes_like_the_trained_tokenizer(models):
    """The vocabulary is the one BpeTrainer learns; the llama shape's pre-tokenizer is the training one."""
    from tokenizers import Tokenizer, models as tk_models, pre_tokenizers, trainers

    shape = SHAPES["tiny-llama"]
    trained = Tokenizer(tk_models.BPE())
    trained.pre_tokenizer = _pre_tokenizer("llama-bpe")
    trained.train_from_iterator([read_corpus()], trainer=trainers.BpeTrainer(
        vocab_size=shape.n_real_vocab - len(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    llm = open_llama(models["tiny-llama", "f16"])
    try:
        for text in TEXTS:
            assert tokenize(llm, text) == trained.encode(text).ids, text
    finally:
        llm.close()


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_full_size_vocab_tokenizes_like_the_tokenizers_library(tmp_path, arch):
    n_vocab, n_pad = (151936, 271) if arch == "qwen2" else (128256, 256)
    shape = ModelShape(arch, n_vocab, 32, 1, 2, 1, 64, tie_embeddings=True, n_pad_tokens=n_pad)
    path = write_synthetic_gguf(tmp_path / "big-vocab.gguf", shape)
    reference = hf_tokenizer(build_bpe_vocab(n_vocab, n_pad), PRE[arch])
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=2, verbose=False, vocab_only=True)
    try:
        assert llm.n_vocab() == n_vocab
        for text in TEXTS + read_corpus().split("\n\n")[::4]:
            ids = tokenize(llm, text)
            assert ids == reference.encode(text, add_special_tokens=False).ids, text
            assert detokenize(llm, ids) == text
    finally:
        llm.close()


def test_metadata_and_padding_tokens(models):
    shape = SHAPES["tiny-qwen2"]
    reader = GGUFReader(models["tiny-qwen2", "f16"])
    assert gguf_field(reader, "general.architecture") == "qwen2"
    assert gguf_field(reader, "tokenizer.ggml.model") == "gpt2"
    assert gguf_field(reader, "tokenizer.ggml.pre") == "qwen2"
    assert gguf_field(reader, "tokenizer.ggml.add_bos_token") is False
    assert gguf_field(reader, "tokenizer.chat_template") == CHATML
    assert gguf_field(reader, "qwen2.embedding_length") == shape.n_embd
    assert gguf_field(reader, "qwen2.attention.head_count_kv") == shape.n_head_kv
    tokens = gguf_field(reader, "tokenizer.ggml.tokens")
    types = gguf_field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == shape.n_vocab
    assert types[shape.n_real_vocab:] == [TOKEN_TYPE_UNUSED] * shape.n_pad_tokens
    assert tokens[shape.n_real_vocab:] == [f"[PAD{i}]" for i in range(shape.n_real_vocab, shape.n_vocab)]
    names = {tensor.name for tensor in reader.tensors}
    assert "output.weight" not in names and "blk.1.attn_q.bias" in names  # tied; qwen2 biases
    assert {tensor.tensor_type.name for tensor in reader.tensors} == {"F16", "F32"}
    llama_reader = GGUFReader(models["tiny-llama", "q8_0"])
    assert gguf_field(llama_reader, "tokenizer.ggml.pre") == "llama-bpe"
    assert gguf_field(llama_reader, "tokenizer.ggml.add_bos_token") is True
    assert "output.weight" in {tensor.name for tensor in llama_reader.tensors}


def test_derived_model_is_a_small_perturbation(tmp_path):
    shape = SHAPES["tiny-qwen2"]
    base = write_synthetic_gguf(tmp_path / "base.gguf", shape, seed=5)
    tuned = write_synthetic_gguf(tmp_path / "tuned.gguf", shape, seed=6, derive_from=5, derive_scale=0.1)
    other = write_synthetic_gguf(tmp_path / "other.gguf", shape, seed=6)
    ids = list(range(10, 60))
    logits = {}
    for label, path in (("base", base), ("tuned", tuned), ("other", other)):
        llm = open_llama(path)
        llm.eval(ids)
        logits[label] = np.array(llm.scores[:len(ids)], dtype=np.float64)[:, :shape.n_real_vocab]
        llm.close()
    spread = logits["base"].std()
    change = np.sqrt(np.mean((logits["tuned"] - logits["base"]) ** 2)) / spread
    assert 0.03 < change < 0.25
    assert np.mean(logits["tuned"].argmax(1) == logits["base"].argmax(1)) > 0.5
    assert np.corrcoef(logits["other"].ravel(), logits["base"].ravel())[0, 1] < 0.3


def test_k_quant_goes_through_llama_cpp(tmp_path):
    path = write_synthetic_gguf(tmp_path / "q4km.gguf", SHAPES["tiny-llama"], ftype="q4_k_m")
    assert gguf_field(GGUFReader(path), "general.file_type") == 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q4km.gguf"]
    llm = open_llama(path)
    try:
        assert np.isfinite(last_logits(llm, tokenize(llm, "Hello world"))).all()
    finally:
        llm.close()
    with pytest.raises(QuantizeError):
        write_synthetic_gguf(tmp_path / "bad.gguf", SHAPES["tiny-llama"], ftype="q3_xyz")
    assert not (tmp_path / "bad.gguf").exists()


@pytest.mark.parametrize("ftype", ["f16", "q8_0"])
def test_fast_random_tiles_distinct_rows(tmp_path, monkeypatch, ftype):
    monkeypatch.setattr(synth_writer, "_FAST_BLOCK_ELEMENTS", 2048)  # force tiling on a tiny model
    shape = SHAPES["tiny-llama"]
    path = write_synthetic_gguf(tmp_path / "fast.gguf", shape, ftype=ftype, fast_random=True)
    reader = GGUFReader(path)
    embd = next(tensor for tensor in reader.tensors if tensor.name == "token_embd.weight")
    rows = np.asarray(embd.data).view(np.uint8).reshape(shape.n_vocab, -1)
    assert len(np.unique(rows, axis=0)) == shape.n_vocab
    llm = open_llama(path)
    try:
        logits = last_logits(llm, tokenize(llm, "fast random"))
        assert np.isfinite(logits).all() and logits.std() > 3.0
    finally:
        llm.close()


def test_files_are_reproducible_and_fast_packing_matches_gguf(tmp_path):
    import gguf

    first = write_synthetic_gguf(tmp_path / "a.gguf", SHAPES["tiny-qwen2"], seed=9)
    second = write_synthetic_gguf(tmp_path / "b.gguf", SHAPES["tiny-qwen2"], seed=9)
    assert first.read_bytes() == second.read_bytes()
    vocab = build_bpe_vocab(1024, 24)
    writer = synth_writer._GGUFWriter(None, "qwen2")
    for values in (list(vocab.tokens), list(vocab.merges), list(vocab.token_types)):
        assert writer._pack_val(values, gguf.GGUFValueType.ARRAY, True) == \
            gguf.GGUFWriter._pack_val(writer, values, gguf.GGUFValueType.ARRAY, True)


def test_triple_shares_one_vocabulary(tmp_path):
    large, base, tuned = write_synthetic_triple(tmp_path, SHAPES["tiny-qwen2-large"], SHAPES["tiny-qwen2"],
                                                ftype_large="f16", ftype_small="q8_0")
    tokens = [gguf_field(GGUFReader(path), "tokenizer.ggml.tokens") for path in (large, base, tuned)]
    n_shared = SHAPES["tiny-qwen2"].n_vocab
    assert tokens[0][:n_shared] == tokens[1] == tokens[2]
    assert len(tokens[0]) == SHAPES["tiny-qwen2-large"].n_vocab
    assert not list(Path(tmp_path).glob("*.part"))
    with pytest.raises(VocabMismatchError):
        write_synthetic_triple(tmp_path / "bad", SHAPES["tiny-llama"], SHAPES["tiny-qwen2"])


def test_corpus_is_varied():
    corpus = read_corpus()
    assert 20_000 < len(corpus.encode()) < 40_000
    for sample in ("def ", "#include", "Problem:", "café", "Ελληνικά", "你好", "😀", "\t", "        "):
        assert sample in corpus
