"""A real byte-level BPE vocabulary of any size, built deterministically for synthetic models.

`build_bpe_vocab(n_vocab, n_pad, seed)` trains a byte-level BPE with the `tokenizers` library on
the corpus shipped next to this module (pre-tokenized with the Llama-3 regex, like Qwen2/Llama-3
tokenizer.json files), keeps its first merges, and when more tokens are asked for than training
yields, appends composed tokens `a + b` of two trained tokens with the merge "a b" (seeded), so the
result stays a valid BPE vocabulary. Layout, as in Qwen's GGUF files: normal tokens (the 256 byte
symbols first), then the control tokens SPECIAL_TOKENS, then `n_pad` padding tokens `[PAD{id}]` of
type UNUSED. For a given `n_vocab - n_pad` and seed the tokens are identical whatever `n_pad`, and
a smaller vocabulary is a prefix of a larger one up to the control tokens. `hf_tokenizer(vocab,
pre)` rebuilds the same tokenizer in the `tokenizers` library with the pre-tokenizer llama.cpp
uses for `pre` ("qwen2" or "llama-bpe"), the reference that llama.cpp's tokenization must equal.
Results are cached per process; the returned objects are immutable.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

import numpy as np

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_UNUSED = 5
N_BYTE_SYMBOLS = 256
MIN_N_VOCAB = N_BYTE_SYMBOLS + len(SPECIAL_TOKENS)

# Original (tokenizer.json) pre-tokenizer regexes of the llama.cpp pre types we write; llama.cpp
# hand-adapts the case-insensitive group but splits the same way.
PRETOKENIZER_REGEX = {
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
# llama.cpp's llama-bpe type looks a whole pre-token up in the vocabulary before merging.
IGNORE_MERGES = {"llama-bpe": True, "qwen2": False}
_TRAINING_PRE = "llama-bpe"
_MAX_COMPOSE_TRIES_PER_TOKEN = 50


@dataclass(frozen=True)
class BPEVocab:
    tokens: tuple[str, ...]       # byte-level (GPT-2 alphabet) token text, index = token id
    token_types: tuple[int, ...]  # TOKEN_TYPE_* per token
    merges: tuple[str, ...]       # "left right", in rank order
    n_trained: int                # normal tokens that came from training (the rest are composed)
    n_pad: int
    endoftext_id: int
    im_start_id: int
    im_end_id: int

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    @property
    def n_real(self) -> int:
        """Tokens that are not padding: normal plus control."""
        return len(self.tokens) - self.n_pad

    @property
    def bos_id(self) -> int:
        return self.endoftext_id

    @property
    def eos_id(self) -> int:
        return self.im_end_id

    @property
    def eot_id(self) -> int:
        return self.im_end_id

    @property
    def pad_id(self) -> int:
        return self.endoftext_id

    @property
    def eog_ids(self) -> tuple[int, ...]:
        return (self.endoftext_id, self.im_end_id)

    @property
    def vocab_dict(self) -> dict[str, int]:
        return {text: token_id for token_id, text in enumerate(self.tokens)}


def read_corpus() -> str:
    return resources.files(__package__).joinpath("corpus.txt").read_text(encoding="utf-8")


def _pre_tokenizer(pre: str):
    from tokenizers import Regex, pre_tokenizers

    if pre not in PRETOKENIZER_REGEX:
        raise ValueError(f"unknown pre-tokenizer '{pre}'; choose one of: {', '.join(PRETOKENIZER_REGEX)}")
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZER_REGEX[pre]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])


@functools.lru_cache(maxsize=1)
def _trained_tokens_and_merges() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Every token training on the corpus can produce, by id, and its merges (merge k makes token 256 + k)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = _pre_tokenizer(_TRAINING_PRE)
    trainer = trainers.BpeTrainer(vocab_size=1_000_000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator([read_corpus()], trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    by_id = sorted(model["vocab"].items(), key=lambda item: item[1])
    tokens = tuple(text for text, _ in by_id)
    # tokenizers < 0.20 serialises merges as "a b", later versions as ["a", "b"].
    merges = tuple(tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"])
    assert [token_id for _, token_id in by_id] == list(range(len(tokens)))
    assert all(tokens[N_BYTE_SYMBOLS + k] == a + b for k, (a, b) in enumerate(merges))
    return tokens, merges


@functools.lru_cache(maxsize=8)
def _normal_tokens_and_merges(n_normal: int, seed: int) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    trained_tokens, trained_merges = _trained_tokens_and_merges()
    n_trained = min(n_normal, len(trained_tokens))
    tokens = list(trained_tokens[:n_trained])
    merges = [f"{a} {b}" for a, b in trained_merges[:n_trained - N_BYTE_SYMBOLS]]
    n_composed = n_normal - n_trained
    if n_composed:
        # Parts are drawn from the trained tokens only, so composed tokens stay short (<= 2 trained tokens).
        seen = set(tokens)
        rng = np.random.default_rng(seed)
        max_draws = n_composed * _MAX_COMPOSE_TRIES_PER_TOKEN
        draws = 0
        while len(tokens) < n_normal:
            left_ids, right_ids = rng.integers(0, n_trained, size=(2, 4096)).tolist()
            for left_id, right_id in zip(left_ids, right_ids):
                left, right = trained_tokens[left_id], trained_tokens[right_id]
                text = left + right
                if text not in seen:
                    seen.add(text)
                    tokens.append(text)
                    merges.append(f"{left} {right}")
                    if len(tokens) == n_normal:
                        break
            draws += len(left_ids)
            if draws > max_draws:
                raise ValueError(f"cannot compose {n_composed} distinct tokens from {n_trained} trained ones")
    return tuple(tokens), tuple(merges), n_trained


@functools.lru_cache(maxsize=16)
def build_bpe_vocab(n_vocab: int, n_pad: int = 0, seed: int = 0) -> BPEVocab:
    """A BPE vocabulary of exactly `n_vocab` tokens, the last `n_pad` of which are padding."""
    if n_pad < 0 or n_vocab - n_pad < MIN_N_VOCAB:
        raise ValueError(f"n_vocab={n_vocab} with n_pad={n_pad} leaves fewer than {MIN_N_VOCAB} real tokens "
                         "(256 byte symbols and the control tokens)")
    n_real = n_vocab - n_pad
    n_normal = n_real - len(SPECIAL_TOKENS)
    normal_tokens, merges, n_trained = _normal_tokens_and_merges(n_normal, seed)
    pad_tokens = tuple(f"[PAD{token_id}]" for token_id in range(n_real, n_vocab))
    tokens = normal_tokens + SPECIAL_TOKENS + pad_tokens
    token_types = ((TOKEN_TYPE_NORMAL,) * n_normal + (TOKEN_TYPE_CONTROL,) * len(SPECIAL_TOKENS)
                   + (TOKEN_TYPE_UNUSED,) * n_pad)
    return BPEVocab(tokens=tokens, token_types=token_types, merges=merges, n_trained=n_trained, n_pad=n_pad,
                    endoftext_id=n_normal, im_start_id=n_normal + 1, im_end_id=n_normal + 2)


def hf_tokenizer(vocab: BPEVocab, pre: str = "qwen2"):
    """The same tokenizer as a `tokenizers.Tokenizer`, splitting text the way llama.cpp's `pre` type does."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    pre_tokenizer = _pre_tokenizer(pre)
    merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
    tokenizer = Tokenizer(models.BPE(vocab=vocab.vocab_dict, merges=merges, ignore_merges=IGNORE_MERGES[pre]))
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(text, special=True, normalized=False) for text in SPECIAL_TOKENS])
    return tokenizer
