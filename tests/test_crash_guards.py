"""Misuse and failures that used to kill the process now raise: sampling without logits (in the
large or in a small context), exceptions inside the parallel decoder's threads; a failed load says
llama.cpp's own reason; the memory estimate reads per-layer head counts."""

import rast_gguf  # noqa: F401

import dataclasses
import subprocess
import sys
import textwrap

import pytest

from rast_gguf import DeltaPair, RastEngine, SamplingParams, _ext, memory
from rast_gguf.errors import DecodeError, ModelLoadError
from rast_gguf.gguf_edit import GGUFImage
from rast_gguf.handles import Model
from rast_gguf.synth import SHAPES, write_synthetic_gguf


def test_sampling_before_any_feed_raises(triple):
    with RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base))], n_ctx=64, n_threads=2) as engine:
        for temp in (0.0, 0.8):
            sampler = engine.sampler(SamplingParams(temp=temp, seed=1))
            with pytest.raises(DecodeError, match="no logits at output row -1 of the large model's context"):
                sampler.sample(-1)
            sampler.close()
        engine.feed(engine.tokenize("Hello"))
        sampler = engine.sampler(SamplingParams(temp=0.0))
        assert 0 <= sampler.sample(-1) < engine.n_vocab  # after a feed the same call works
        with pytest.raises(DecodeError, match="no logits at output row 5"):
            sampler.sample(5)  # a row that did not ask for logits
        sampler.close()


def test_a_small_context_without_the_row_raises_instead_of_reading_null(triple):
    with RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base))], n_ctx=64, n_threads=2) as engine:
        tokens = engine.tokenize("Hello world")
        engine._batch.set_tokens(tokens, 0)
        engine.ctx_large.decode(engine._batch)  # only the large context decoded: the pair has no logits
        sampler = engine.sampler(SamplingParams(temp=0.0))
        with pytest.raises(DecodeError, match=r"tuned model's \(pair 1\) context"):
            sampler.sample(-1)
        with pytest.raises(DecodeError, match="no logits"):
            sampler.time_delta_apply(-1, 1)
        sampler.close()


@pytest.mark.parametrize("throwing", [0, 1, 3])
def test_parallel_decoder_rethrows_after_every_thread_finished(throwing):
    # context `throwing` raises in every odd round: the round's exception reaches the caller (0 is the
    # caller's own thread, others are workers), and the decoder keeps working for the next rounds
    errors, codes = _ext._parallel_decoder_selftest(4, throwing, 200)
    assert errors == [f"decode failed in fake context {throwing + 1}"] * 100
    assert codes == [1, 2, 3, 4] * 100
    errors, codes = _ext._parallel_decoder_selftest(4, -1, 10)
    assert errors == [] and codes == [1, 2, 3, 4] * 10


def test_failed_load_carries_llama_cpps_reason(triple, tmp_path):
    image = GGUFImage.parse(triple.base.read_bytes())
    image.delete("qwen2.attention.layer_norm_rms_epsilon")  # passes our checks; llama.cpp needs it
    path = tmp_path / "no-eps.gguf"
    path.write_bytes(image.serialize())
    Model(path, vocab_only=True).close()  # the vocabulary alone loads
    with pytest.raises(ModelLoadError) as err:
        Model(path)
    message = str(err.value)
    assert "\n" not in message
    assert "key not found in model: qwen2.attention.layer_norm_rms_epsilon" in message  # llama.cpp's own words


def test_memory_estimate_reads_per_layer_head_counts(tmp_path):
    per_layer = write_synthetic_gguf(tmp_path / "per-layer.gguf", SHAPES["tiny-qwen2-per-layer"], ftype="f32")
    scalar = write_synthetic_gguf(tmp_path / "scalar.gguf",
                                  dataclasses.replace(SHAPES["tiny-qwen2-per-layer"], per_layer=False), ftype="f32")
    shape = SHAPES["tiny-qwen2-per-layer"]
    estimate = memory.estimate(per_layer, -1, n_ctx=300, n_batch=64)
    assert estimate == dataclasses.replace(memory.estimate(scalar, -1, n_ctx=300, n_batch=64), name=per_layer.name)
    # K and V, f16, 512 cells (300 rounded up to 256s), every layer's KV heads x head size
    assert estimate.kv == 2 * 2 * 512 * shape.n_layer * shape.n_head_kv * shape.head_dim
    assert memory.estimate(per_layer, 1, n_ctx=300).kv == estimate.kv // shape.n_layer


def test_parallel_decoder_that_cannot_start_its_threads_raises():
    # in a child whose address space leaves room for a few thread stacks only: std::thread throws
    # after some workers started; they must be joined (a joinable std::thread would terminate)
    code = textwrap.dedent("""
        import resource
        import rast_gguf
        from rast_gguf import _ext
        size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + 64 * 2**20, resource.RLIM_INFINITY))
        try:
            _ext._parallel_decoder_selftest(200, -1, 1)
            print("started all")
        except RuntimeError as e:
            print("raised:", e)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("raised:"), proc.stdout
