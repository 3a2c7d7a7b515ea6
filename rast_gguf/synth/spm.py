"""A SentencePiece-style (llama.cpp "llama" tokenizer) vocabulary of any size for synthetic models.

`build_spm_vocab(n_vocab, n_pad)` lays out a vocabulary the way Llama-2/Mistral GGUF files do:
<unk>, <s>, </s>, the 256 byte-fallback tokens <0x00>..<0xFF> (type BYTE), then pieces cut from
the shipped corpus ("▁word" for a word after a space, the single characters, then the most
frequent words' prefixes), scored by frequency so that llama.cpp's SPM tokenizer merges them, and
`n_pad` padding tokens `[PAD{id}]` of type UNUSED. It has the same fields as BPEVocab where the
writer needs them (tokens, token_types, bos/eos/eot/pad ids) plus `scores` and `unk_id`.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass

from rast_gguf.synth.tokenizer import TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNUSED, read_corpus

TOKEN_TYPE_UNKNOWN = 2
TOKEN_TYPE_BYTE = 6
SPACE = "\u2581"  # SentencePiece's visible space
_SPECIAL = ("<unk>", "<s>", "</s>")
MIN_N_VOCAB = len(_SPECIAL) + 256 + 1


@dataclass(frozen=True)
class SPMVocab:
    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    scores: tuple[float, ...]
    n_pad: int
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    @property
    def eot_id(self) -> int:
        return self.eos_id

    @property
    def pad_id(self) -> int:
        return self.unk_id


def _pieces(n_pieces: int) -> list[str]:
    """Corpus pieces by frequency: single characters first (so every word can be spelled), then
    whole words and their prefixes, all with a leading SPACE where they follow a space."""
    words = re.findall(r" ?[^\s]+", read_corpus())
    counts: Counter[str] = Counter()
    for word in words:
        piece = word.replace(" ", SPACE)
        for end in range(2, len(piece) + 1):
            counts[piece[:end]] += 1
    chars = sorted({c for word in words for c in word.replace(" ", SPACE)})
    pieces = [SPACE] + [c for c in chars if c != SPACE]
    seen = set(pieces)
    for piece, _ in counts.most_common():
        if len(pieces) >= n_pieces:
            break
        if piece not in seen:
            seen.add(piece)
            pieces.append(piece)
    return pieces[:n_pieces]


@functools.lru_cache(maxsize=8)
def build_spm_vocab(n_vocab: int, n_pad: int = 0) -> SPMVocab:
    """An SPM vocabulary of exactly `n_vocab` tokens, the last `n_pad` of which are padding."""
    n_real = n_vocab - n_pad
    if n_pad < 0 or n_real < MIN_N_VOCAB:
        raise ValueError(f"n_vocab={n_vocab} with n_pad={n_pad} leaves fewer than {MIN_N_VOCAB} real tokens "
                         "(<unk>, <s>, </s>, 256 byte tokens and one piece)")
    byte_tokens = tuple(f"<0x{b:02X}>" for b in range(256))
    pieces = _pieces(n_real - len(_SPECIAL) - 256)
    while len(pieces) < n_real - len(_SPECIAL) - 256:  # a corpus too small for the size asked: filler pieces
        pieces.append(f"{SPACE}piece{len(pieces)}")
    pad = tuple(f"[PAD{token_id}]" for token_id in range(n_real, n_vocab))
    tokens = _SPECIAL + byte_tokens + tuple(pieces) + pad
    token_types = ((TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_CONTROL) + (TOKEN_TYPE_BYTE,) * 256
                   + (TOKEN_TYPE_NORMAL,) * len(pieces) + (TOKEN_TYPE_UNUSED,) * n_pad)
    scores = (0.0,) * (len(_SPECIAL) + 256) + tuple(-float(i) for i in range(len(pieces))) + (0.0,) * n_pad
    return SPMVocab(tokens=tokens, token_types=token_types, scores=scores, n_pad=n_pad)
