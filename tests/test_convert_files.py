"""Output files: byte-identical across runs, complete or absent, and quantized types through llama.cpp."""

import llama_cpp

import gguf
import numpy as np
import pytest

from hf_fixtures import Case, cached_checkpoint, reference_logits
from rast_convert import ConversionError, convert_hf_to_gguf, quantize
from rast_convert import gguf_output

SHARDED_BF16 = Case(arch="llama", tied=True, dtype="bf16", shards=2, seed=20)
QWEN2_F16 = Case(arch="qwen2", dtype="f16", n_pad=8, seed=21)


@pytest.mark.parametrize("case", [SHARDED_BF16, QWEN2_F16], ids=["llama-bf16-sharded", "qwen2-f16"])
@pytest.mark.parametrize("out_type", ["f16", "q8_0", "bf16"])
def test_conversion_is_deterministic(case, out_type, tmp_path_factory, tmp_path):
    ckpt = cached_checkpoint(case, tmp_path_factory)
    first = convert_hf_to_gguf(ckpt.path, tmp_path / "a.gguf", out_type=out_type, progress=False)
    second = convert_hf_to_gguf(ckpt.path, tmp_path / "b.gguf", out_type=out_type, progress=True)
    assert first.read_bytes() == second.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "b.gguf"]


def test_overwrite_replaces_the_file(tmp_path_factory, tmp_path):
    ckpt = cached_checkpoint(QWEN2_F16, tmp_path_factory)
    out = tmp_path / "m.gguf"
    out.write_bytes(b"old")
    with pytest.raises(ConversionError, match="already exists"):
        convert_hf_to_gguf(ckpt.path, out, progress=False)
    assert out.read_bytes() == b"old"
    convert_hf_to_gguf(ckpt.path, out, overwrite=True, progress=False)
    assert out.read_bytes()[:4] == b"GGUF"


def test_interrupted_write_leaves_nothing(tmp_path_factory, tmp_path, monkeypatch):
    ckpt = cached_checkpoint(QWEN2_F16, tmp_path_factory)
    real_chunks = gguf_output.encoded_chunks
    calls = []

    def failing_chunks(source, qtype):
        calls.append(source.gguf_name)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_chunks(source, qtype)

    monkeypatch.setattr(gguf_output, "encoded_chunks", failing_chunks)
    with pytest.raises(KeyboardInterrupt):
        convert_hf_to_gguf(ckpt.path, tmp_path / "m.gguf", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_small_chunks_give_the_same_file(tmp_path_factory, tmp_path, monkeypatch):
    """Row chunking (and the q/k row reordering inside chunks) does not change the output."""
    ckpt = cached_checkpoint(SHARDED_BF16, tmp_path_factory)
    whole = convert_hf_to_gguf(ckpt.path, tmp_path / "whole.gguf", out_type="q8_0", progress=False)
    monkeypatch.setattr(gguf_output, "CHUNK_ELEMENTS", 100)
    chunked = convert_hf_to_gguf(ckpt.path, tmp_path / "chunked.gguf", out_type="q8_0", progress=False)
    assert whole.read_bytes() == chunked.read_bytes()


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_q4_k_m_loads_and_runs(arch, tmp_path_factory, tmp_path):
    ckpt = cached_checkpoint(Case(arch=arch, n_embd=256, n_ff=512, dtype="bf16", seed=22), tmp_path_factory)
    out = convert_hf_to_gguf(ckpt.path, tmp_path / "m.gguf", out_type="q4_k_m", progress=False, n_threads=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]  # the intermediate file is gone
    reader = gguf.GGUFReader(str(out))
    assert reader.fields["general.file_type"].contents() == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert gguf.GGMLQuantizationType.Q4_K in {t.tensor_type for t in reader.tensors}
    llm = llama_cpp.Llama(str(out), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    try:
        tokens = llm.tokenize(b"The lighthouse keeper woke before dawn.", add_bos=False)
        llm.eval(tokens)
        got = np.array(llm.scores[:len(tokens)], dtype=np.float64)
    finally:
        llm.close()
    assert np.isfinite(got).all()
    # 4-bit weights move logits by a fair fraction of their spread, but they stay the same function
    assert np.corrcoef(got.ravel(), reference_logits(ckpt, tokens).ravel())[0, 1] > 0.9


def test_quantize_is_llama_cpp_quantizer(tmp_path_factory, tmp_path):
    ckpt = cached_checkpoint(Case(arch="qwen2", n_embd=256, n_ff=512, seed=23), tmp_path_factory)
    f16 = convert_hf_to_gguf(ckpt.path, tmp_path / "m.f16.gguf", progress=False)
    q6 = quantize(f16, tmp_path / "m.q6_k.gguf", "q6_k")
    assert gguf.GGUFReader(str(q6)).fields["general.file_type"].contents() == 18
