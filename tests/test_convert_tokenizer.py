"""The converted vocabulary: llama.cpp tokenizes like the checkpoint's tokenizer, and the GGUF
tokenizer metadata (token types, padding tokens, special ids, flags, chat template) is right."""

import llama_cpp

import gguf
import numpy as np
import pytest

from hf_fixtures import CHAT_TEMPLATE_LLAMA, CHAT_TEMPLATE_QWEN, USER_DEFINED_TOKEN, Case, cached_checkpoint
from rast_convert import convert_hf_to_gguf

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, inner   runs   and trailing   ",
    "line one\nline two\n\n\nline five\r\nwindows\r\n",
    "\n \n\n \t\t \t\n  \n   mixed whitespace  \t",
    "日本語のテキストと中文文本测试，한국어 문장。",
    "emoji 🚀🦙😀 ✅ 👍🏽 😶\u200d🌫️ family 👨\u200d👩\u200d👧",
    "digits 1234567890 3.14159 2024-01-15 1,000,000 0x1F 007",
    "def f(x):\n    return x ** 2  # square\n\tif x: pass\n}{[]()<>",
    "I've been told he's there, THEY'RE sure we'D know. 'tis",
    "Straße naïve café Ελληνικά русский язык",
    "-----======= '''''' ``````` \"\"\"\" ...... !!!!!! ??????",
    f"a {USER_DEFINED_TOKEN} b{USER_DEFINED_TOKEN}c",
    "",
]
TOKENIZER_CASES = {
    "llama-bpe": Case(arch="llama", tokenizer="llama-bpe", seed=10),
    "qwen2": Case(arch="qwen2", tokenizer="qwen2", n_pad=24, seed=11),
    "gpt-2": Case(arch="llama", tokenizer="gpt-2", seed=12),
    "smollm": Case(arch="llama", tokenizer="smollm", seed=13),
    "spm": Case(arch="mistral", tokenizer="spm", n_vocab_train=1000, n_pad=5, seed=14),
}
_CONVERTED = {}


def converted(name, tmp_path_factory):
    if name not in _CONVERTED:
        ckpt = cached_checkpoint(TOKENIZER_CASES[name], tmp_path_factory)
        out = convert_hf_to_gguf(ckpt.path, tmp_path_factory.mktemp("tok") / f"{name}.gguf", progress=False)
        _CONVERTED[name] = (ckpt, out)
    return _CONVERTED[name]


def reference_encoder(ckpt):
    if ckpt.case.tokenizer_kind == "spm":
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_file=str(ckpt.path / "tokenizer.model"))
        return lambda text, add_special: ([1] if add_special else []) + processor.encode(text)
    tokenizer = ckpt.hf_tokenizer()
    return lambda text, add_special: tokenizer.encode(text, add_special_tokens=add_special).ids


@pytest.mark.parametrize("name", list(TOKENIZER_CASES))
def test_tokenization_matches_reference(name, tmp_path_factory):
    ckpt, out = converted(name, tmp_path_factory)
    encode = reference_encoder(ckpt)
    llm = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    try:
        mismatches = [(text, llm.tokenize(text.encode(), add_bos=False, special=False), encode(text, False))
                      for text in TEXTS]
        mismatches = [m for m in mismatches if m[1] != m[2]]
        assert not mismatches, f"{len(mismatches)} texts differ, first: {mismatches[0]}"
        if name in ("llama-bpe", "spm"):  # their tokenizers add BOS, and so must llama.cpp
            assert llm.tokenize(b"Hello world", add_bos=True) == encode("Hello world", True)
    finally:
        llm.close()


@pytest.mark.parametrize("name, text", [("qwen2", "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"),
                                        ("llama-bpe", "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>")])
def test_special_tokens_parse_like_reference(name, text, tmp_path_factory):
    ckpt, out = converted(name, tmp_path_factory)
    llm = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    try:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == reference_encoder(ckpt)(text, False)
    finally:
        llm.close()


def field_value(reader, key):
    field = reader.fields[key]
    return field.contents()


def test_bpe_metadata(tmp_path_factory):
    ckpt, out = converted("qwen2", tmp_path_factory)
    reader = gguf.GGUFReader(str(out))
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    types = np.array(field_value(reader, "tokenizer.ggml.token_type"))
    assert field_value(reader, "tokenizer.ggml.model") == "gpt2"
    assert field_value(reader, "tokenizer.ggml.pre") == "qwen2"
    assert len(tokens) == len(types) == ckpt.n_vocab == ckpt.n_tokens + 24
    vocab = ckpt.hf_tokenizer().get_vocab(with_added_tokens=True)
    assert all(tokens[token_id] == text for text, token_id in vocab.items())
    pads = range(ckpt.n_tokens, ckpt.n_vocab)
    assert [tokens[i] for i in pads] == [f"[PAD{i}]" for i in pads]
    assert set(types[list(pads)]) == {gguf.TokenType.UNUSED}
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert types[vocab[special]] == gguf.TokenType.CONTROL
    assert types[vocab[USER_DEFINED_TOKEN]] == gguf.TokenType.USER_DEFINED
    assert set(types[:ckpt.n_tokens - 4]) == {gguf.TokenType.NORMAL}
    assert field_value(reader, "tokenizer.ggml.eos_token_id") == vocab["<|im_end|>"]
    assert field_value(reader, "tokenizer.ggml.bos_token_id") == vocab["<|endoftext|>"]  # from config.json
    assert field_value(reader, "tokenizer.ggml.padding_token_id") == vocab["<|endoftext|>"]
    assert field_value(reader, "tokenizer.ggml.add_bos_token") is False
    assert field_value(reader, "tokenizer.chat_template") == CHAT_TEMPLATE_QWEN
    assert len(field_value(reader, "tokenizer.ggml.merges")) > 0
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert list(embd.shape) == [ckpt.config["hidden_size"], ckpt.n_vocab]


def test_sentencepiece_metadata(tmp_path_factory):
    ckpt, out = converted("spm", tmp_path_factory)
    reader = gguf.GGUFReader(str(out))
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    types = field_value(reader, "tokenizer.ggml.token_type")
    assert field_value(reader, "tokenizer.ggml.model") == "llama"
    assert len(tokens) == len(field_value(reader, "tokenizer.ggml.scores")) == ckpt.n_vocab
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert types[:3] == [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    assert types[3] == gguf.TokenType.BYTE and tokens[3] == "<0x00>"
    assert tokens[-5:] == [f"[PAD{i}]" for i in range(ckpt.n_vocab - 5, ckpt.n_vocab)]
    assert field_value(reader, "tokenizer.ggml.bos_token_id") == 1
    assert field_value(reader, "tokenizer.ggml.eos_token_id") == 2
    assert field_value(reader, "tokenizer.ggml.add_bos_token") is True
    assert field_value(reader, "tokenizer.chat_template") == CHAT_TEMPLATE_LLAMA


def test_eos_falls_back_to_generation_config(tmp_path_factory, tmp_path):
    import json
    import shutil

    ckpt = cached_checkpoint(TOKENIZER_CASES["llama-bpe"], tmp_path_factory)
    model = shutil.copytree(ckpt.path, tmp_path / "model")
    for name, key in (("tokenizer_config.json", "eos_token"), ("config.json", "eos_token_id")):
        data = json.loads((model / name).read_text())
        del data[key]
        (model / name).write_text(json.dumps(data))
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 8]}))
    out = convert_hf_to_gguf(model, tmp_path / "m.gguf", progress=False)
    assert field_value(gguf.GGUFReader(str(out)), "tokenizer.ggml.eos_token_id") == 7
