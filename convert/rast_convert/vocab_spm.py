"""SentencePiece vocabularies (Llama 2, TinyLlama, Mistral 7B) from `tokenizer.model`.

`read_spm_tokens(hf_dir, n_vocab)` returns token texts, scores and llama.cpp token types in id
order, following llama.cpp's `_create_vocab_sentencepiece`: pieces with their scores and their
SentencePiece kind (NORMAL, UNKNOWN, CONTROL, UNUSED, BYTE), then tokens from `added_tokens.json`
and tokenizer_config.json's `added_tokens_decoder` (CONTROL when special, else USER_DEFINED),
and `[PAD{id}]` tokens of type UNUSED for ids up to config.json's `vocab_size`. Needs the
`sentencepiece` package; without it, or for an unreadable model file, raises ConversionError.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf

from rast_convert.errors import ConversionError
from rast_convert.hf_config import read_json_if_present
from rast_convert.vocab_bpe import looks_special

_PAD_SCORE = -1000.0
_ADDED_SCORE = -1000.0


def _load_processor(model_path: Path):
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:
        raise ConversionError(f"{model_path.parent.name} uses a SentencePiece tokenizer (tokenizer.model); "
                              "install it with: pip install sentencepiece") from None
    processor = SentencePieceProcessor()
    try:
        processor.LoadFromFile(str(model_path))
    except (OSError, RuntimeError) as err:
        raise ConversionError(f"{model_path} is not a readable SentencePiece model ({err}); "
                              "download it again") from None
    return processor


def _piece_type(processor, token_id: int) -> int:
    if processor.IsUnknown(token_id):
        return gguf.TokenType.UNKNOWN
    if processor.IsControl(token_id):
        return gguf.TokenType.CONTROL
    if processor.IsUnused(token_id):
        return gguf.TokenType.UNUSED
    if processor.IsByte(token_id):
        return gguf.TokenType.BYTE
    return gguf.TokenType.NORMAL


def read_spm_tokens(hf_dir: Path, n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    processor = _load_processor(hf_dir / "tokenizer.model")
    if processor.vocab_size() > n_vocab:
        raise ConversionError(f"tokenizer.model has {processor.vocab_size()} pieces but config.json's vocab_size "
                              f"is {n_vocab}; the tokenizer does not belong to this checkpoint")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [_PAD_SCORE] * n_vocab
    types = [int(gguf.TokenType.UNUSED)] * n_vocab
    for token_id in range(processor.vocab_size()):
        tokens[token_id] = processor.IdToPiece(token_id)
        scores[token_id] = processor.GetScore(token_id)
        types[token_id] = int(_piece_type(processor, token_id))

    added: dict[int, tuple[str, bool]] = {}  # id -> (text, is CONTROL)
    added_tokens_file = hf_dir / "added_tokens.json"
    if added_tokens_file.is_file():
        try:
            added_json = json.loads(added_tokens_file.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            raise ConversionError(f"cannot read {added_tokens_file}; download it again") from None
        for text, token_id in added_json.items():
            added[int(token_id)] = (text, False)  # llama.cpp makes these USER_DEFINED whatever they look like
    tokenizer_config = read_json_if_present(hf_dir / "tokenizer_config.json")
    try:
        for token_id, entry in (tokenizer_config.get("added_tokens_decoder") or {}).items():
            added[int(token_id)] = (entry["content"], bool(entry.get("special")) or looks_special(entry["content"]))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ConversionError(f"{hf_dir / 'tokenizer_config.json'}: malformed added_tokens_decoder; "
                              "download it again") from None
    for token_id, (text, is_control) in sorted(added.items()):
        if token_id >= n_vocab:
            raise ConversionError(f"added token {text!r} has id {token_id} but config.json's vocab_size is "
                                  f"{n_vocab}; the tokenizer does not belong to this checkpoint")
        if is_control:
            types[token_id] = int(gguf.TokenType.CONTROL)
        else:
            text = text.replace("\u2581", " ")  # llama.cpp matches user-defined tokens pre-normalized
            types[token_id] = int(gguf.TokenType.USER_DEFINED)
        tokens[token_id] = text
        scores[token_id] = _ADDED_SCORE
    return tokens, scores, types
