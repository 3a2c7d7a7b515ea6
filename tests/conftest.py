"""Shared fixtures: tiny synthetic GGUF triples written once per test session with the project's
own writer (random weights, a real byte-level BPE tokenizer)."""

import rast_gguf  # noqa: F401  (one libstdc++ first, then libllama: see rast_gguf/_preload.py)

import dataclasses
from pathlib import Path

import pytest

from rast_gguf.synth import SHAPES, write_synthetic_gguf


def tiny_shape(arch: str, n_embd: int, n_layer: int, n_vocab: int, n_pad: int):
    base = SHAPES["tiny-qwen2" if arch == "qwen2" else "tiny-llama"]
    return dataclasses.replace(base, n_embd=n_embd, n_layer=n_layer, n_vocab=n_vocab, n_pad_tokens=n_pad,
                               n_head=4, n_head_kv=2, n_ff=2 * n_embd)


@dataclasses.dataclass
class Triple:
    large: Path
    base: Path
    tuned: Path


def make_triple(root: Path, arch: str = "qwen2", *, n_vocab_small: int = 640, n_vocab_large: int = 640,
                n_pad_small: int = 8, ftype: str = "f32", seed: int = 1) -> Triple:
    large_shape = tiny_shape(arch, 128, 3, n_vocab_large, n_pad_small + n_vocab_large - n_vocab_small)
    small_shape = tiny_shape(arch, 64, 2, n_vocab_small, n_pad_small)
    large = write_synthetic_gguf(root / "large.gguf", large_shape, seed=seed, ftype=ftype)
    base = write_synthetic_gguf(root / "base.gguf", small_shape, seed=seed + 1, ftype=ftype)
    tuned = write_synthetic_gguf(root / "tuned.gguf", small_shape, seed=seed + 2, ftype=ftype,
                                 derive_from=seed + 1, derive_scale=0.5)
    return Triple(large, base, tuned)


@pytest.fixture(scope="session")
def triple(tmp_path_factory) -> Triple:
    """Same vocabulary size everywhere (8 padding tokens at the end)."""
    return make_triple(tmp_path_factory.mktemp("triple"))


@pytest.fixture(scope="session")
def padded_triple(tmp_path_factory) -> Triple:
    """The large model has 32 more (padding) rows than the small pair, as Qwen2.5 7B vs 1.5B."""
    return make_triple(tmp_path_factory.mktemp("padded"), n_vocab_small=608, n_vocab_large=640, seed=11)


@pytest.fixture(scope="session")
def llama_triple(tmp_path_factory) -> Triple:
    return make_triple(tmp_path_factory.mktemp("llama"), arch="llama", seed=21)
