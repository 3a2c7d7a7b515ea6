"""Synthetic GGUF models for tests and benchmarks: a real byte-level BPE tokenizer and random weights.

`write_synthetic_gguf(path, SHAPES["tiny-qwen2"])` writes a small model llama.cpp loads;
`write_synthetic_triple` writes a large/base/tuned set sharing one vocabulary; `build_bpe_vocab`
and `hf_tokenizer` expose the tokenizer (the latter as a `tokenizers.Tokenizer`, the reference for
llama.cpp's tokenization). Shapes of real models (`SHAPES["qwen2.5-7b"]`, ...) write files of the
real size; use `fast_random=True` for those when only speed matters.
"""

from rast_gguf.synth.tokenizer import (SPECIAL_TOKENS, TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNUSED,
                                       BPEVocab, build_bpe_vocab, hf_tokenizer)
from rast_gguf.synth.writer import CHATML, SHAPES, ModelShape, write_synthetic_gguf, write_synthetic_triple

__all__ = ["SPECIAL_TOKENS", "TOKEN_TYPE_CONTROL", "TOKEN_TYPE_NORMAL", "TOKEN_TYPE_UNUSED", "BPEVocab",
           "build_bpe_vocab", "hf_tokenizer", "CHATML", "SHAPES", "ModelShape", "write_synthetic_gguf",
           "write_synthetic_triple"]
