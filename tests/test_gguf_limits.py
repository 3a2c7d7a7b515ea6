"""Metadata that would crash llama.cpp is refused up front (rast_gguf/gguf_limits.py), with one line
naming the key, the value and the limit; and the crash each rule guards against is real: the same
file loaded by plain llama-cpp-python in a child process dies by a signal."""

import rast_gguf  # noqa: F401

import subprocess
import sys
import textwrap

import pytest

from rast_gguf.errors import GGUFFileError
from rast_gguf.gguf_edit import T_ARRAY, T_BOOL, T_FLOAT32, T_INT32, T_STRING, T_UINT32, Array, GGUFImage
from rast_gguf.gguf_file import read_gguf_info
from rast_gguf.synth import SHAPES, write_synthetic_gguf


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    return {name: write_synthetic_gguf(root / f"{name}.gguf", SHAPES[name], ftype="f32", seed=3)
            for name in ("tiny-qwen2", "tiny-llama-spm", "tiny-llama-moe", "tiny-qwen2-per-layer")}


def edited(seeds, tmp_path, name, edit):
    image = GGUFImage.parse(seeds[name].read_bytes())
    edit(image)
    path = tmp_path / f"edited-{name}.gguf"
    path.write_bytes(image.serialize())
    return path


def refusal(path) -> str:
    with pytest.raises(GGUFFileError) as err:
        read_gguf_info(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


def dies_in_llama_cpp(path, tokenize: bool = False) -> int:
    """Load `path` with llama-cpp-python alone (no rast-gguf checks) in a child; its return code."""
    code = textwrap.dedent(f"""
        import ctypes, llama_cpp
        from llama_cpp import llama_cpp as C
        C.llama_log_set(C.llama_log_callback(lambda *a: None), ctypes.c_void_p(0))
        C.llama_backend_init()
        model = C.llama_model_load_from_file({str(path)!r}.encode(), C.llama_model_default_params())
        assert model, "llama.cpp refused the file cleanly"
        if {tokenize}:
            vocab = C.llama_model_get_vocab(model)
            text = "a \\u00e9 \\u4e2d \\U0001F600".encode()
            buf = (C.llama_token * 64)()
            C.llama_tokenize(vocab, text, len(text), buf, 64, True, True)
        else:
            params = C.llama_context_default_params()
            params.n_ctx = 64
            ctx = C.llama_init_from_model(model, params)
            batch = C.llama_batch_get_one((C.llama_token * 2)(1, 2), 2)
            C.llama_decode(ctx, batch)
        print("survived")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"GGML_NO_BACKTRACE": "1", "PATH": "/usr/bin:/bin"})
    return proc.returncode


def set_uint(key, value):
    return lambda image: image.set(key, T_UINT32, value)


CASES = [
    # (seed, edit, words of the message, does plain llama.cpp crash on it: "load" / "tokenize" / None)
    ("tiny-qwen2", set_uint("qwen2.block_count", 100000), ["qwen2.block_count is 100000", "at most 512"], "load"),
    ("tiny-qwen2", set_uint("qwen2.block_count", 0), ["qwen2.block_count is 0", "at least 1"], "load"),
    ("tiny-qwen2", set_uint("qwen2.expert_count", 100000), ["qwen2.expert_count is 100000", "at most 1024"], "load"),
    ("tiny-qwen2", set_uint("qwen2.expert_used_count", 4), ["qwen2.expert_used_count is 4", "at most 0"], "load"),
    ("tiny-llama-moe", set_uint("llama.expert_used_count", 5), ["llama.expert_used_count is 5", "at most 4"], "load"),
    ("tiny-llama-moe", set_uint("llama.expert_used_count", 0), ["expert_used_count is 0", "expert_count is 4"],
     "load"),
    ("tiny-qwen2-per-layer", lambda im: im.set("qwen2.attention.head_count", T_ARRAY, Array(T_INT32, [4, 8])),
     ["qwen2.attention.head_count varies by layer (4, 8)", "one value for all layers"], None),
    ("tiny-qwen2-per-layer", lambda im: im.set("qwen2.attention.head_count_kv", T_ARRAY, Array(T_INT32, [2, 2, 2])),
     ["qwen2.attention.head_count_kv has 3 per-layer values", "block_count is 2"], None),
    ("tiny-qwen2", set_uint("qwen2.attention.head_count", 3),
     ["qwen2.embedding_length is 64", "multiple of qwen2.attention.head_count (3)"], "load"),
    ("tiny-qwen2", set_uint("qwen2.attention.head_count_kv", 3), ["4 attention heads and 3 KV heads"], None),
    ("tiny-qwen2", set_uint("qwen2.rope.dimension_count", 8),
     ["qwen2.rope.dimension_count is 8", "needs the head size (16)"], "load"),
    ("tiny-qwen2", set_uint("qwen2.rope.dimension_count", 100000), ["is 100000", "at most 16 (the head size"], "load"),
    ("tiny-qwen2", set_uint("general.alignment", 8), ["not a multiple of 32", "general.alignment is 8"], "load"),
    ("tiny-qwen2", lambda im: im.set("qwen2.attention.layer_norm_rms_epsilon", T_FLOAT32, float("nan")),
     ["qwen2.attention.layer_norm_rms_epsilon is nan", "epsilon >= 0"], "load"),
    ("tiny-qwen2", lambda im: im.set("qwen2.rope.scaling.type", T_STRING, b"bogus"),
     ["qwen2.rope.scaling.type is 'bogus'", "none, linear, yarn, longrope"], "load"),
    ("tiny-llama-spm", lambda im: im.set("tokenizer.ggml.model", T_STRING, b"bert"),
     ["'bert' (WordPiece) but token 3 has type BYTE"], "load"),
    ("tiny-llama-spm", lambda im: im.get("tokenizer.ggml.tokens").value.items.__setitem__(3 + 0xE4, b"<gone>"),
     ["'llama'", "lacks the byte token <0xE4>"], "tokenize"),
    ("tiny-qwen2", lambda im: im.get("tokenizer.ggml.tokens").value.items.__setitem__(
        500, im.get("tokenizer.ggml.tokens").value.items[400]), ["twice (ids 400 and 500)"], "load"),
]


@pytest.mark.parametrize("seed,edit,words,crash", CASES, ids=[" ".join(c[2])[:40] for c in CASES])
def test_crashing_metadata_is_refused_with_key_value_and_limit(seeds, tmp_path, seed, edit, words, crash):
    path = edited(seeds, tmp_path, seed, edit)
    message = refusal(path)
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("index", [0, 2, 3, 11, 12, 13, 14, 15, 16, 17])
def test_the_refused_files_really_crash_plain_llama_cpp(seeds, tmp_path, index):
    seed, edit, _, crash = CASES[index]
    path = edited(seeds, tmp_path, seed, edit)
    assert dies_in_llama_cpp(path, tokenize=crash == "tokenize") < 0  # killed by a signal (SIGABRT)


def test_a_bos_the_tokenizer_must_add_but_lacks_is_refused(seeds, tmp_path):
    def edit(image):
        image.set("tokenizer.ggml.model", 8, b"gemma4")  # llama.cpp always adds BOS for this tokenizer
        image.delete("tokenizer.ggml.bos_token_id")
    message = refusal(edited(seeds, tmp_path, "tiny-qwen2", edit))
    assert "no BOS token" in message and "tokenizer.ggml.add_bos_token" in message


def test_valid_variants_pass(seeds, tmp_path):
    for path in seeds.values():
        read_gguf_info(path)
    # a uniform per-layer array, experts within bounds, add_bos off without a BOS: all fine
    path = edited(seeds, tmp_path, "tiny-llama-moe", lambda im: (
        im.set("llama.expert_used_count", T_ARRAY, Array(T_INT32, [1, 4])), im.set("tokenizer.ggml.add_bos_token",
                                                                                    T_BOOL, False)))
    assert read_gguf_info(path).metadata["llama.expert_used_count"] == [1, 4]
