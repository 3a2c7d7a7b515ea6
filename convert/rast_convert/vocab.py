"""The checkpoint's tokenizer as GGUF `tokenizer.ggml.*` metadata.

`read_vocabulary(hf_dir, n_vocab)` returns a `Vocabulary`: a byte-level BPE ("gpt2" model, with
merges and a pre-tokenizer type) when tokenizer.json holds one, otherwise a SentencePiece
("llama" model, with scores) from tokenizer.model; the token list always has exactly `n_vocab`
entries, config.json's `vocab_size`, which is the embedding's row count. Special token ids,
add_bos/add_eos flags and the chat template come from gguf-py's `SpecialVocab` (tokenizer.json,
tokenizer_config.json, config.json, the same sources and precedence as llama.cpp's converter);
only when none of those names an EOS token is generation_config.json's `eos_token_id` used (the
first one if it is a list). `Vocabulary.write(writer)` adds it all to a GGUFWriter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf

from rast_convert.errors import ConversionError
from rast_convert.hf_config import read_json_if_present
from rast_convert.vocab_bpe import identify_pre_tokenizer, is_byte_level_bpe, read_bpe_tokens
from rast_convert.vocab_spm import read_spm_tokens


@dataclass
class Vocabulary:
    model: str                 # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str                   # tokenizer.ggml.pre
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None
    special: gguf.SpecialVocab
    add_space_prefix: bool | None = None

    def write(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.token_types)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        self.special.add_to_gguf(writer, quiet=True)


def _special_vocab(hf_dir: Path, n_vocab: int, load_merges: bool) -> gguf.SpecialVocab:
    try:
        special = gguf.SpecialVocab(hf_dir, load_merges=load_merges, n_vocab=n_vocab)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConversionError(f"cannot read the special tokens of {hf_dir} ({type(err).__name__}: {err}); "
                              "check tokenizer_config.json") from None
    if "eos" not in special.special_token_ids:
        eos = read_json_if_present(hf_dir / "generation_config.json").get("eos_token_id")
        special._set_special_token("eos", eos[0] if isinstance(eos, list) and eos else eos)
    return special


def _add_prefix_space(hf_dir: Path) -> bool | None:
    value = read_json_if_present(hf_dir / "tokenizer_config.json").get("add_prefix_space")
    return value if isinstance(value, bool) else None


def read_vocabulary(hf_dir: Path, n_vocab: int) -> Vocabulary:
    tokenizer_path = hf_dir / "tokenizer.json"
    tokenizer_json = {}
    if tokenizer_path.is_file():
        try:
            tokenizer_json = json.loads(tokenizer_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as err:
            raise ConversionError(f"cannot read {tokenizer_path} ({type(err).__name__}); download it again") from None
        if not isinstance(tokenizer_json, dict) or not isinstance(tokenizer_json.get("model"), dict):
            raise ConversionError(f"{tokenizer_path} has no tokenizer model; download it again")

    if tokenizer_json and is_byte_level_bpe(tokenizer_json):
        try:
            tokens, types = read_bpe_tokens(tokenizer_json, n_vocab)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ConversionError(f"{tokenizer_path} has a malformed vocabulary ({type(err).__name__}: {err}); "
                                  "download it again") from None
        pre = identify_pre_tokenizer(tokenizer_path, tokenizer_json)
        special = _special_vocab(hf_dir, n_vocab, load_merges=True)
        if not special.merges:
            raise ConversionError(f"{tokenizer_path} has no BPE merges; download it again")
        return Vocabulary("gpt2", pre, tokens, [int(t) for t in types], None, special, _add_prefix_space(hf_dir))
    if (hf_dir / "tokenizer.model").is_file():
        tokens, scores, types = read_spm_tokens(hf_dir, n_vocab)
        special = _special_vocab(hf_dir, n_vocab, load_merges=False)
        return Vocabulary("llama", "default", tokens, types, scores, special, _add_prefix_space(hf_dir))
    if tokenizer_json:
        raise ConversionError(f"{tokenizer_path} is not a byte-level BPE tokenizer and there is no tokenizer.model; "
                              "only byte-level BPE (tokenizer.json) and SentencePiece (tokenizer.model) are supported")
    raise ConversionError(f"no tokenizer in {hf_dir} (neither tokenizer.json nor tokenizer.model); "
                          "download the tokenizer files with the weights")
