"""Every user error raises ConversionError with a one-line message before anything is written; rast_gguf's
wrapper turns it into ConvertError (a RastError, printed as one line by the CLI)."""

import llama_cpp  # noqa: F401

import json
import shutil
import struct

import numpy as np
import pytest

from hf_fixtures import Case, cached_checkpoint, write_safetensors
from rast_convert import ConversionError, convert_hf_to_gguf
from rast_gguf.checkpoints import convert_checkpoint
from rast_gguf.errors import ConvertError, RastError

BASE = Case(arch="llama", dtype="f32", shards=2, seed=30)


@pytest.fixture
def model(tmp_path_factory, tmp_path):
    """A private copy of a valid sharded checkpoint, to break."""
    return shutil.copytree(cached_checkpoint(BASE, tmp_path_factory).path, tmp_path / "model")


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    for key, value in changes.items():
        if value is None:
            del data[key]
    path.write_text(json.dumps(data))


def shard_of(model, tensor_name):
    weight_map = json.loads((model / "model.safetensors.index.json").read_text())["weight_map"]
    return model / weight_map[tensor_name]


def rewrite_shard(path, change):
    """Rewrite a (test-written, f32) shard after `change(tensors)` edits its dict of arrays."""
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8:8 + header_len])
    data = path.read_bytes()[8 + header_len:]
    tensors = {name: np.frombuffer(data[info["data_offsets"][0]:info["data_offsets"][1]], dtype=np.float32)
               .reshape(info["shape"]) for name, info in header.items() if name != "__metadata__"}
    change(tensors)
    write_safetensors(path, tensors, "f32")


def break_missing_tensor(model):
    name = "model.layers.1.mlp.up_proj.weight"
    rewrite_shard(shard_of(model, name), lambda t: t.pop(name))
    index = json.loads((model / "model.safetensors.index.json").read_text())
    del index["weight_map"][name]
    (model / "model.safetensors.index.json").write_text(json.dumps(index))


def break_wrong_shape(model):
    name = "model.layers.0.self_attn.k_proj.weight"
    rewrite_shard(shard_of(model, name), lambda t: t.update({name: t[name][:-2]}))


def break_truncated_shard(model):
    path = shard_of(model, "model.embed_tokens.weight")
    path.write_bytes(path.read_bytes()[:-100])


def break_garbage_header(model):
    path = shard_of(model, "model.embed_tokens.weight")
    data = bytearray(path.read_bytes())
    data[8:20] = b"not json at!"
    path.write_bytes(bytes(data))


def break_index_names_missing_shard(model):
    shard_of(model, "model.norm.weight").unlink()


def break_int_dtype(model):
    name = "model.norm.weight"
    path = shard_of(model, name)
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + header_len])
    header[name]["dtype"] = "I32"
    new_header = json.dumps(header).encode()
    new_header += b" " * (-len(new_header) % 8)
    path.write_bytes(struct.pack("<Q", len(new_header)) + new_header + raw[8 + header_len:])


def break_tokenizer_too_big(model):
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    tokenizer["added_tokens"].append({"id": 606, "content": "<|extra|>", "single_word": False, "lstrip": False,
                                      "rstrip": False, "normalized": False, "special": True})
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))


def break_pre_tokenizer(model):
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\w+|\s+|[^\w\s]+"
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))


def break_tokenizer_model_type(model):
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    tokenizer["model"]["type"] = "Unigram"
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))


def break_unexpected_tensor(model):
    rewrite_shard(shard_of(model, "model.norm.weight"),
                  lambda t: t.update({"vision_tower.patch_embed.weight": np.zeros((4, 4), np.float32)}))


CASES = {
    "unsupported architecture": (lambda m: edit_json(m / "config.json", architectures=["GPT2LMHeadModel"]),
                                 "not supported"),
    "missing config": (lambda m: (m / "config.json").unlink(), "config.json is missing"),
    "bad head counts": (lambda m: edit_json(m / "config.json", num_key_value_heads=3), "not a multiple"),
    "unsupported activation": (lambda m: edit_json(m / "config.json", hidden_act="gelu"), "hidden_act"),
    "unsupported rope scaling": (lambda m: edit_json(m / "config.json", rope_scaling={"type": "dynamic",
                                                                                     "factor": 2.0}),
                                 "RoPE scaling type 'dynamic'"),
    "missing tensor": (break_missing_tensor, "model.layers.1.mlp.up_proj.weight is missing"),
    "missing lm_head": (lambda m: _drop_lm_head(m), "set it to true if the output layer is tied"),
    "wrong shape": (break_wrong_shape, "has shape"),
    "config does not match weights": (lambda m: edit_json(m / "config.json", intermediate_size=96), "has shape"),
    "truncated shard": (break_truncated_shard, "truncated"),
    "garbage header": (break_garbage_header, "not a valid safetensors file"),
    "index names a missing shard": (break_index_names_missing_shard, "is missing"),
    "integer dtype": (break_int_dtype, "dtype I32"),
    "unexpected tensor": (break_unexpected_tensor, "unexpected tensor vision_tower"),
    "no tokenizer": (lambda m: (m / "tokenizer.json").unlink(), "no tokenizer"),
    "tokenizer bigger than vocab": (break_tokenizer_too_big, "vocab_size is 606"),
    "unknown pre-tokenizer": (break_pre_tokenizer, "cannot tell which llama.cpp pre-tokenizer"),
    "not a byte-level BPE": (break_tokenizer_model_type, "not a byte-level BPE tokenizer"),
    "no weights": (lambda m: [p.unlink() for p in m.glob("*.safetensors*")], "no *.safetensors"),
}


def _drop_lm_head(model):
    rewrite_shard(shard_of(model, "lm_head.weight"), lambda t: t.pop("lm_head.weight"))
    index = json.loads((model / "model.safetensors.index.json").read_text())
    del index["weight_map"]["lm_head.weight"]
    (model / "model.safetensors.index.json").write_text(json.dumps(index))


def assert_clean_error(excinfo, fragment):
    message = str(excinfo.value)
    print(message)
    assert type(excinfo.value) is ConversionError
    assert "\n" not in message and message, message
    assert fragment in message, message


@pytest.mark.parametrize("what", list(CASES))
def test_broken_checkpoint_raises_before_writing(what, model, tmp_path):
    break_it, fragment = CASES[what]
    break_it(model)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ConversionError) as excinfo:
        convert_hf_to_gguf(model, out_dir / "m.gguf", out_type="q4_k_m", progress=False)
    assert_clean_error(excinfo, fragment)
    assert list(out_dir.iterdir()) == []


def test_output_exists(model, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(ConversionError) as excinfo:
        convert_hf_to_gguf(model, out, progress=False)
    assert_clean_error(excinfo, "already exists")
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "model"]


@pytest.mark.parametrize("args, fragment", [
    ({"out_type": "q3_xyz"}, "unknown output type"),
    ({"hf_dir": "does-not-exist"}, "is not a directory"),
    ({"out_path": "no/such/dir/m.gguf"}, "does not exist"),
])
def test_bad_arguments(args, fragment, model, tmp_path):
    call = {"hf_dir": model, "out_path": tmp_path / "m.gguf", "progress": False} | args
    hf_dir, out_path = call.pop("hf_dir"), call.pop("out_path")
    with pytest.raises(ConversionError) as excinfo:
        convert_hf_to_gguf(hf_dir, out_path, **call)
    assert_clean_error(excinfo, fragment)
    assert not (tmp_path / "m.gguf").exists()


def test_rast_gguf_maps_conversion_errors(model, tmp_path):
    (model / "config.json").unlink()
    with pytest.raises(ConvertError) as excinfo:
        convert_checkpoint(model, tmp_path / "m.gguf", "q8_0", progress=False)
    assert isinstance(excinfo.value, RastError)
    assert "config.json" in str(excinfo.value) and "\n" not in str(excinfo.value)
    assert not (tmp_path / "m.gguf").exists()
