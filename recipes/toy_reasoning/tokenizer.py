"""The triple's tokenizer: byte-level BPE whose only merges spell the task's style words.

Every byte is a token (so each digit is one token, which arithmetic wants), and the words
`Answer`, `Steps`, `Check` (with and without a leading space) are single tokens, so a solution's
style is one choice at its first token. GPT-2's pre-tokenizer, which our converter maps to
llama.cpp's `gpt-2`; `<|endoftext|>` ends every solution. Built from code, never trained, so the
same tokenizer comes out on every machine.
"""

from __future__ import annotations

import json
from pathlib import Path

EOS = "<|endoftext|>"
WORDS = ("Answer", "Steps", "Check", "\u0120Answer", "\u0120Steps", "\u0120Check")


def _byte_alphabet() -> list[str]:
    """GPT-2's bytes_to_unicode, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def build_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(_byte_alphabet())}
    merges = []
    for word in WORDS:
        prefix = word[0]
        for ch in word[1:]:
            merged = prefix + ch
            if merged not in vocab:
                merges.append((prefix, ch))
                vocab[merged] = len(vocab)
            prefix = merged
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(EOS, special=True, normalized=False)])
    return tokenizer


def save_tokenizer(tokenizer, directory: Path) -> dict[str, int]:
    """tokenizer.json + tokenizer_config.json; returns the special ids for config.json."""
    tokenizer.save(str(directory / "tokenizer.json"))
    eos = tokenizer.token_to_id(EOS)
    config = {"bos_token": EOS, "eos_token": EOS, "add_bos_token": False, "add_eos_token": False,
              "model_max_length": 256}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return {"bos_token_id": eos, "eos_token_id": eos}
