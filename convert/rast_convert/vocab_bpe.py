"""Byte-level BPE vocabularies (GPT-2 style, as Llama 3, Qwen2 and SmolLM use) from tokenizer.json.

`read_bpe_tokens(tokenizer_json, n_vocab)` lists the tokens in id order with llama.cpp's token
types: the model's vocabulary is NORMAL, added tokens are CONTROL when special (or when they look
special, `<|...|>`, as llama.cpp decides) and USER_DEFINED otherwise, and ids the tokenizer does
not use up to config.json's `vocab_size` become `[PAD{id}]` tokens of type UNUSED (embedding rows
padded for alignment), exactly as llama.cpp's convert_hf_to_gguf.py lays them out.

`identify_pre_tokenizer(path, tokenizer_json)` picks the `tokenizer.ggml.pre` value that makes
llama.cpp split text like the checkpoint's pre-tokenizer. First as llama.cpp does: the sha256 of
the tokenization of a fixed text, looked up in the hashes llama.cpp's converter lists for the
families this converter supports. Tokenizers not in that list (retrained or customised ones) are
identified by the pre-tokenizer in tokenizer.json itself: the Qwen2 regex -> "qwen2", the Llama 3
regex -> "llama-bpe" (or "smaug-bpe" when the BPE model does not set `ignore_merges`, which
llama.cpp's "llama-bpe" assumes), GPT-2's ByteLevel regex -> "gpt-2", and digits split singly
before it -> "smollm". Anything else raises ConversionError, since a wrong guess would silently mis-tokenize.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import gguf

from rast_convert.errors import ConversionError

# llama.cpp's convert_hf_to_gguf.py `get_vocab_base_pre` test text (must stay byte-identical).
CHKTXT = (
    '\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, \'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL'
)
# sha256(str(token ids of CHKTXT)) -> tokenizer.ggml.pre, from llama.cpp's get_vocab_base_pre, for
# Llama/Mistral/Qwen2-architecture families.
KNOWN_PRE_HASHES = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3-8B
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",  # Smaug-Llama-3-70B
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",    # Falcon3-7B-Base
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",      # Qwen1.5 / Qwen2.5
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",      # Qwen3-Embedding
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",     # SmolLM / SmolLM2
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",      # GPT-2
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",     # Mistral-Nemo
}
# Pre-tokenizer regexes as tokenizer.json files spell them.
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_PRE_BY_SPLIT_REGEX = {LLAMA3_REGEX: "llama-bpe", QWEN2_REGEX: "qwen2", GPT2_REGEX: "gpt-2"}


def is_byte_level_bpe(tokenizer_json: dict[str, Any]) -> bool:
    model = tokenizer_json.get("model") or {}
    parts = _pre_tokenizer_parts(tokenizer_json)
    decoder = tokenizer_json.get("decoder") or {}
    byte_level = any(p.get("type") == "ByteLevel" for p in parts) or decoder.get("type") == "ByteLevel"
    return model.get("type") == "BPE" and byte_level and not model.get("byte_fallback", False)


def _pre_tokenizer_parts(tokenizer_json: dict[str, Any]) -> list[dict[str, Any]]:
    pre = tokenizer_json.get("pre_tokenizer") or {}
    return list(pre.get("pretokenizers") or []) if pre.get("type") == "Sequence" else [pre]


def looks_special(token: str) -> bool:
    """llama.cpp's `does_token_look_special`: added tokens some models forget to mark special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def read_bpe_tokens(tokenizer_json: dict[str, Any], n_vocab: int) -> tuple[list[str], list[int]]:
    vocab = tokenizer_json["model"].get("vocab") or {}
    text_by_id: dict[int, str] = {token_id: text for text, token_id in vocab.items()}
    type_by_id: dict[int, int] = dict.fromkeys(text_by_id, gguf.TokenType.NORMAL)
    for added in tokenizer_json.get("added_tokens") or []:
        token_id, text = added["id"], added["content"]
        text_by_id[token_id] = text
        if added.get("special") or looks_special(text):
            type_by_id[token_id] = gguf.TokenType.CONTROL
        else:
            # llama.cpp matches user-defined tokens pre-normalized: a "▁" stands for a space
            text_by_id[token_id] = text.replace("\u2581", " ")
            type_by_id[token_id] = gguf.TokenType.USER_DEFINED
    if text_by_id and max(text_by_id) >= n_vocab:
        raise ConversionError(f"tokenizer.json has token id {max(text_by_id)} but config.json's vocab_size is "
                              f"{n_vocab}; the tokenizer does not belong to this checkpoint")
    tokens = [text_by_id.get(i, f"[PAD{i}]") for i in range(n_vocab)]
    types = [type_by_id.get(i, gguf.TokenType.UNUSED) for i in range(n_vocab)]
    return tokens, types


def _pre_from_tokenizer_json(tokenizer_json: dict[str, Any]) -> str | None:
    parts = _pre_tokenizer_parts(tokenizer_json)
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        pattern = parts[0].get("pattern") or {}
        if parts[0].get("behavior") == "Isolated" and not parts[0].get("invert", False):
            pre = _PRE_BY_SPLIT_REGEX.get(pattern.get("Regex"))
            if pre == "llama-bpe" and not tokenizer_json["model"].get("ignore_merges", False):
                return "smaug-bpe"  # llama.cpp's name for the Llama 3 regex with merges always applied
            return pre
    return None


def identify_pre_tokenizer(tokenizer_path: Path, tokenizer_json: dict[str, Any]) -> str:
    from tokenizers import Tokenizer

    try:
        ids = Tokenizer.from_file(str(tokenizer_path)).encode(CHKTXT).ids
    except Exception as err:  # noqa: BLE001 (the tokenizers library raises plain Exceptions)
        raise ConversionError(f"the tokenizers library cannot load {tokenizer_path} ({err}); "
                              "download it again or upgrade tokenizers") from None
    known = KNOWN_PRE_HASHES.get(hashlib.sha256(str(ids).encode()).hexdigest())
    if known is not None:
        return known
    from_json = _pre_from_tokenizer_json(tokenizer_json)
    if from_json is not None:
        return from_json
    raise ConversionError(f"cannot tell which llama.cpp pre-tokenizer matches {tokenizer_path} (not a known "
                          "Llama 3 / Qwen2 / SmolLM / GPT-2 tokenizer); use llama.cpp's convert_hf_to_gguf.py")
