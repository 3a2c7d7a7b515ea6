"""Vocabulary compatibility of the models of a triple.

At least as strict as llama.cpp's speculative-decoding check (same tokenizer type, same BOS/EOS
handling, identical token text) and stricter in one way: text is compared from id 0 over the
whole shared range. Sizes may differ by padding rows (Qwen2.5 0.5B/1.5B have 151936 rows, 7B+
152064): the delta covers ids below `n_shared`, the smallest vocabulary, and the large model's ids
above it may only be padding (or at most 128 extra tokens, llama.cpp's own tolerance). A mismatch
raises VocabMismatchError naming the first differing id and its text in both files.
"""

from __future__ import annotations

from rast_gguf import _ext
from rast_gguf._llama import C
from rast_gguf.errors import VocabMismatchError
from rast_gguf.handles import Model

MAX_EXTRA_TOKENS = 128  # llama.cpp's SPEC_VOCAB_MAX_SIZE_DIFFERENCE
_VOCAB_TYPES = {0: "none", 1: "SentencePiece", 2: "BPE", 3: "WordPiece", 4: "Unigram", 5: "RWKV", 6: "PLaMo2"}
_ATTR_UNUSED = 1 << 1


def _name(model: Model) -> str:
    return model.path.name


def _check_pair(ref: Model, other: Model) -> None:
    ref_type, other_type = C.llama_vocab_type(ref.vocab), C.llama_vocab_type(other.vocab)
    if ref_type != other_type:
        raise VocabMismatchError(
            f"tokenizers differ: {_name(ref)} uses {_VOCAB_TYPES.get(ref_type, ref_type)}, {_name(other)} uses "
            f"{_VOCAB_TYPES.get(other_type, other_type)}; all models must share one tokenizer (same model family)")
    for what, add_fn, id_fn in (("BOS", C.llama_vocab_get_add_bos, C.llama_vocab_bos),
                                ("EOS", C.llama_vocab_get_add_eos, C.llama_vocab_eos)):
        add_ref, add_other = bool(add_fn(ref.vocab)), bool(add_fn(other.vocab))
        if add_ref != add_other or (add_ref and id_fn(ref.vocab) != id_fn(other.vocab)):
            raise VocabMismatchError(
                f"{what} handling differs: {_name(ref)} adds {what}={add_ref} (id {id_fn(ref.vocab)}), "
                f"{_name(other)} adds {what}={add_other} (id {id_fn(other.vocab)}); all models must share one tokenizer")
    n_common = min(ref.n_vocab, other.n_vocab)
    first = _ext.vocab_first_mismatch(ref.address, other.address, n_common)
    if first >= 0:
        raise VocabMismatchError(
            f"vocabularies differ at token {first}: {ref.token_text(first)!r} in {_name(ref)} but "
            f"{other.token_text(first)!r} in {_name(other)}; all models must share one tokenizer (same model family)")


def _extra_real_tokens(model: Model, n_shared: int) -> int:
    return sum(1 for token in range(n_shared, model.n_vocab)
               if not C.llama_vocab_get_attr(model.vocab, token) & _ATTR_UNUSED)


def check_vocabularies(large: Model, small: list[Model]) -> int:
    """Raise VocabMismatchError unless all models share a vocabulary; return n_shared."""
    for other in small:
        _check_pair(large, other)
    n_shared = min(m.n_vocab for m in [large, *small])
    n_extra = _extra_real_tokens(large, n_shared)
    if n_extra > MAX_EXTRA_TOKENS:
        smallest = min(small, key=lambda m: m.n_vocab)
        raise VocabMismatchError(
            f"{_name(large)} has {n_extra} real tokens beyond the {n_shared} that {_name(smallest)} knows "
            f"(at most {MAX_EXTRA_TOKENS} allowed); all models must share one tokenizer")
    return n_shared
