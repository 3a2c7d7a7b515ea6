"""Tests of rast_gguf.gguf_file: valid files written with gguf.GGUFWriter read back exactly, and
every kind of damage (truncation, foreign formats, bad versions, corrupt lengths, types, shapes
and offsets, random byte flips) raises a one-line GGUFFileError naming the file, never anything
else and never a hang; a file is parsed once per version (one engine start parses each model once)."""

from __future__ import annotations

import os
import random
import stat
import struct
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from rast_gguf.errors import GGUFFileError
from collections import Counter

from rast_gguf import gguf_file
from rast_gguf.gguf_file import ArrayInfo, GGUFInfo, read_gguf_info

Q8_0 = gguf.GGMLQuantizationType.Q8_0
F32 = gguf.GGMLQuantizationType.F32
N_TOKENS = 100
N_EMBD = 64
N_EMBD_ROWS = 104  # padded embedding rows, deliberately != N_TOKENS


# ----------------------------------------------------------------------------- building files


def tensors_to_write() -> dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType]]:
    rng = np.random.default_rng(0)
    up = rng.standard_normal((32, N_EMBD), dtype=np.float32)
    return {
        "token_embd.weight": (rng.standard_normal((N_EMBD_ROWS, N_EMBD), dtype=np.float32), F32),
        "blk.0.ffn_up.weight": (gguf.quants.quantize(up, Q8_0), Q8_0),
        "blk.0.ffn_down.weight": (gguf.quants.quantize(up.T.copy(), Q8_0), Q8_0),
        "output_norm.weight": (np.ones(N_EMBD, dtype=np.float32), F32),
    }


def write_gguf(path: Path, file_type: int | None = 7, tokens: list[str] | None = None, **writer_args) -> Path:
    writer = gguf.GGUFWriter(path, "llama", **writer_args)
    writer.add_name("tiny test model")
    writer.add_context_length(4096)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(1)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-6)
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens if tokens is not None else [f"tok{i}" for i in range(N_TOKENS)])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    writer.add_array("test.small_array", [3, 1, 4, 1, 5])
    for name, (data, ggml_type) in tensors_to_write().items():
        writer.add_tensor(name, data, raw_dtype=ggml_type if ggml_type != F32 else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def model_bytes(model_path) -> bytes:
    return model_path.read_bytes()


def gguf_string(text: str) -> bytes:
    encoded = text.encode()
    return struct.pack("<Q", len(encoded)) + encoded


def raw_kv(key: str, value_type: int, payload: bytes) -> bytes:
    return gguf_string(key) + struct.pack("<I", value_type) + payload


def raw_tensor_info(name: str, ne: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    return (gguf_string(name) + struct.pack(f"<I{len(ne)}Q", len(ne), *ne)
            + struct.pack("<IQ", ggml_type, offset))


def write_raw_gguf(path: Path, kvs=(), tensor_infos=(), data_bytes: int = 0, version: int = 3,
                   alignment: int = 32) -> Path:
    """A GGUF assembled byte by byte, for damage GGUFWriter refuses to produce."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensor_infos), len(kvs)) + b"".join(kvs) + b"".join(tensor_infos)
    padding = b"\0" * (-len(head) % alignment)
    path.write_bytes(head + padding + b"\0" * data_bytes)
    return path


def arch_kv() -> bytes:
    return raw_kv("general.architecture", 8, gguf_string("llama"))


def assert_gguf_error(path: Path, *fragments: str) -> str:
    with pytest.raises(GGUFFileError) as caught:
        read_gguf_info(path)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message, message
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ----------------------------------------------------------------------------- valid files


def test_reads_back_what_was_written(model_path):
    info = read_gguf_info(model_path)
    written = tensors_to_write()

    assert isinstance(info, GGUFInfo)
    assert info.path == model_path
    assert info.file_size == model_path.stat().st_size
    assert info.version == 3
    assert info.n_tensors == len(written)
    assert info.architecture == "llama"
    meta = info.metadata
    assert meta["general.name"] == "tiny test model"
    assert (meta["llama.context_length"], meta["llama.embedding_length"], meta["llama.block_count"]) == (4096, N_EMBD, 1)
    assert (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]) == (4, 2)
    assert info.metadata["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert info.metadata["test.small_array"] == [3, 1, 4, 1, 5]
    assert info.metadata["tokenizer.ggml.tokens"] == ArrayInfo("string", N_TOKENS)
    assert (info.tokenizer_model, info.tokenizer_pre) == ("gpt2", "qwen2")
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert info.has_chat_template
    assert info.n_vocab == N_TOKENS and info.tensor("token_embd.weight").shape[0] == N_EMBD_ROWS
    assert info.file_type == "Q8_0"
    assert "split.count" not in meta


def test_tensors_match_what_was_written(model_path):
    info = read_gguf_info(model_path)
    written = tensors_to_write()
    n_params = 0
    for tensor, (name, (data, ggml_type)) in zip(info.tensors, written.items()):
        block_elems, block_bytes = gguf.GGML_QUANT_SIZES[ggml_type]
        shape = tuple(gguf.quant_shape_from_byte_shape(data.shape, ggml_type)) if ggml_type != F32 else data.shape
        assert (tensor.name, tensor.shape, tensor.type_name) == (name, shape, ggml_type.name)
        assert tensor.n_bytes == data.nbytes == int(np.prod(shape)) // block_elems * block_bytes
        n_params += int(np.prod(shape))
    assert info.n_params == n_params
    assert Counter(t.type_name for t in info.tensors) == {"F32": 2, "Q8_0": 2}


def test_offsets_agree_with_gguf_reader(model_path):
    info = read_gguf_info(model_path)
    reader = gguf.GGUFReader(model_path)
    assert [(t.name, t.offset, t.n_bytes) for t in info.tensors] == [
        (t.name, int(t.data_offset), int(t.n_bytes)) for t in reader.tensors]


def test_short_token_array_is_kept(tmp_path):
    info = read_gguf_info(write_gguf(tmp_path / "few.gguf", tokens=["a", "b", "c"]))
    assert info.metadata["tokenizer.ggml.tokens"] == ["a", "b", "c"]
    assert info.n_vocab == 3


@pytest.mark.parametrize(("file_type", "name"), [
    (None, "Q8_0?"), (0, "F32"), (1, "F16"), (15, "Q4_K_M"), (12, "Q3_K_M"), (7, "Q8_0"), (999, "Q8_0?")])
def test_file_type_names(tmp_path, file_type, name):
    # the matrices are Q8_0: without a known general.file_type, their most common type, marked as a guess
    assert read_gguf_info(write_gguf(tmp_path / "m.gguf", file_type=file_type)).file_type == name


def test_version_2_without_tensors(tmp_path):
    info = read_gguf_info(write_raw_gguf(tmp_path / "v2.gguf", [arch_kv()], version=2))
    assert (info.version, info.n_tensors, info.architecture, info.n_params) == (2, 0, "llama", 0)
    assert info.n_vocab is None and info.tensor("token_embd.weight") is None


def test_split_shards_validate_their_own_tensors(tmp_path):
    writer_path = tmp_path / "split.gguf"
    write_gguf(writer_path, split_max_tensors=2)
    shards = sorted(tmp_path.glob("split-0000*-of-00002.gguf"))
    assert len(shards) == 2
    infos = [read_gguf_info(shard) for shard in shards]
    assert [(info.metadata["split.count"], info.metadata["split.no"]) for info in infos] == [(2, 0), (2, 1)]
    assert sum(info.n_params for info in infos) == read_gguf_info(write_gguf(tmp_path / "whole.gguf")).n_params


def test_engine_start_parses_each_file_once(triple, monkeypatch):
    from rast_gguf import DeltaPair, RastEngine

    parsed = []
    real_parse = gguf_file._Parser.parse
    monkeypatch.setattr(gguf_file._Parser, "parse", lambda self, path: parsed.append(path) or real_parse(self, path))
    # vocab-only loads, the memory estimate and the full loads all need each file's header
    with RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base))], n_ctx=64, n_threads=1):
        pass
    assert sorted(map(str, parsed)) == sorted(map(str, (triple.large, triple.tuned, triple.base)))


def test_large_vocabulary_is_skipped_not_decoded(tmp_path):
    """A Qwen-sized header (152k tokens and merges, 300 tensors) on a sparse 20 GB file."""
    n_tokens, n_tensors = 152_064, 300
    tokens = b"".join(gguf_string(f"token{i}") for i in range(n_tokens))
    kvs = [arch_kv(),
           raw_kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, n_tokens) + tokens),
           raw_kv("tokenizer.ggml.merges", 9, struct.pack("<IQ", 8, n_tokens) + tokens),
           raw_kv("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, n_tokens) + b"\1\0\0\0" * n_tokens)]
    ne, n_bytes = (4096, 4096), 4096 * 4096 // 32 * 34  # Q8_0
    infos = [raw_tensor_info(f"blk.{i}.weight", ne, int(Q8_0), i * n_bytes) for i in range(n_tensors)]
    path = write_raw_gguf(tmp_path / "big.gguf", kvs, infos)
    os.truncate(path, path.stat().st_size + n_tensors * n_bytes)  # sparse: no disk used

    info = read_gguf_info(path)
    assert info.n_vocab == n_tokens and len(info.tensors) == n_tensors
    assert info.metadata["tokenizer.ggml.tokens"] == ArrayInfo("string", n_tokens)  # skipped, not kept
    assert info.file_size > 5 * 10**9


# ----------------------------------------------------------------------------- unusable paths


def test_missing_file(tmp_path):
    assert_gguf_error(tmp_path / "nope.gguf", "no such file")


def test_directory(tmp_path):
    assert_gguf_error(tmp_path, "is a directory")


def test_empty_file(tmp_path):
    (tmp_path / "empty.gguf").write_bytes(b"")
    assert_gguf_error(tmp_path / "empty.gguf", "empty")


def test_permission_denied(tmp_path, model_bytes, monkeypatch):
    path = tmp_path / "locked.gguf"
    path.write_bytes(model_bytes)
    path.chmod(0)
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root reads anything: make open() refuse instead
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr("rast_gguf.gguf_file.open", refuse, raising=False)
    try:
        assert_gguf_error(path, "permission denied")
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_broken_symlink_and_file_as_folder(tmp_path, model_path):
    (tmp_path / "link.gguf").symlink_to(tmp_path / "gone.gguf")
    assert_gguf_error(tmp_path / "link.gguf", "broken symbolic link")
    assert_gguf_error(model_path / "inside.gguf", "no such file")


# ----------------------------------------------------------------------------- damaged files


def tensor_data_end(model_path) -> int:
    info = read_gguf_info(model_path)
    return max(t.offset + t.n_bytes for t in info.tensors)


def test_truncation_anywhere_is_reported(tmp_path, model_path, model_bytes):
    data_end = tensor_data_end(model_path)
    header_end = read_gguf_info(model_path).data_offset
    cuts = sorted({*range(1, data_end, max(1, data_end // 50)), 3, 4, 7, 8, 23, 24, 25,
                   header_end - 1, header_end, header_end + 1, data_end - 1})
    path = tmp_path / "cut.gguf"
    for cut in cuts:
        path.write_bytes(model_bytes[:cut])
        message = assert_gguf_error(path, "truncated")
        if cut >= header_end:
            assert "tensor '" in message and "ends at byte" in message, message


def test_truncation_messages_name_the_tensor(tmp_path, model_path, model_bytes):
    last = read_gguf_info(model_path).tensors[-1]
    path = tmp_path / "cut.gguf"
    path.write_bytes(model_bytes[:last.offset + 1])
    assert_gguf_error(path, f"tensor '{last.name}' ends at byte {last.offset + last.n_bytes}",
                      f"the file has {last.offset + 1} bytes", "re-download or re-convert it")


@pytest.mark.parametrize(("content", "kind"), [
    (b"hello, this is a README\n", "not a GGUF file (bad magic"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not a GGUF file (bad magic"),
    (b"PK\x03\x04" + b"\0" * 40, "not a GGUF file (bad magic"),
    (b"tjgg\x03\0\0\0" + b"\0" * 40, "not a GGUF file (bad magic"),
    (b"GG", "truncated"),
])
def test_foreign_files_are_refused(tmp_path, content, kind):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    assert_gguf_error(path, kind)


def test_safetensors_file_is_refused(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": np.zeros((2, 2), dtype=np.float32)}, str(path))
    assert_gguf_error(path, "not a GGUF file (bad magic", "checkpoint folder")


@pytest.mark.parametrize(("version", "fragment"), [
    (1, "version 1 is no longer supported"), (99, "unsupported GGUF version 99"),
    (0, "unsupported GGUF version 0"), (0x03000000, "big-endian")])
def test_bad_versions(tmp_path, model_bytes, version, fragment):
    path = tmp_path / "v.gguf"
    path.write_bytes(model_bytes[:4] + struct.pack("<I", version) + model_bytes[8:])
    assert_gguf_error(path, fragment)


def test_real_big_endian_file(tmp_path):
    path = write_gguf(tmp_path / "be.gguf", endianess=gguf.GGUFEndian.BIG)
    assert_gguf_error(path, "big-endian")


def test_absurd_counts(tmp_path, model_bytes):
    path = tmp_path / "counts.gguf"
    path.write_bytes(model_bytes[:8] + struct.pack("<QQ", 1 << 40, 5) + model_bytes[24:])
    assert_gguf_error(path, "claims 1099511627776 tensors")


def test_huge_string_length(tmp_path, model_bytes):
    path = tmp_path / "len.gguf"  # the length of the first key's name, right after the header
    path.write_bytes(model_bytes[:24] + struct.pack("<Q", 1 << 62) + model_bytes[32:])
    assert_gguf_error(path, "truncated or corrupt", "metadata key 0", f"needs {1 << 62} bytes")


def test_huge_array_length(tmp_path, model_bytes):
    key = gguf_string("tokenizer.ggml.tokens")
    count_at = model_bytes.index(key) + len(key) + 4 + 4  # value type, element type
    path = tmp_path / "arr.gguf"
    path.write_bytes(model_bytes[:count_at] + struct.pack("<Q", 1 << 60) + model_bytes[count_at + 8:])
    assert_gguf_error(path, "truncated or corrupt", "'tokenizer.ggml.tokens'")


def patch_tensor_type(model_bytes: bytes, name: str, n_dims: int, ggml_type: int) -> bytes:
    type_at = model_bytes.index(gguf_string(name)) + len(gguf_string(name)) + 4 + 8 * n_dims
    return model_bytes[:type_at] + struct.pack("<I", ggml_type) + model_bytes[type_at + 4:]


def test_unknown_ggml_type(tmp_path, model_bytes):
    path = tmp_path / "type.gguf"
    path.write_bytes(patch_tensor_type(model_bytes, "output_norm.weight", 1, 77))
    assert_gguf_error(path, "'output_norm.weight' has unknown ggml type 77")


def test_removed_ggml_type(tmp_path, model_bytes):
    path = tmp_path / "type.gguf"  # 4 was Q4_2, removed from ggml long ago
    path.write_bytes(patch_tensor_type(model_bytes, "output_norm.weight", 1, 4))
    assert_gguf_error(path, "unknown ggml type 4")


def test_unknown_value_type(tmp_path, model_bytes):
    key = gguf_string("general.name")
    type_at = model_bytes.index(key) + len(key)
    path = tmp_path / "vtype.gguf"
    path.write_bytes(model_bytes[:type_at] + struct.pack("<I", 13) + model_bytes[type_at + 4:])
    assert_gguf_error(path, "'general.name' has unknown value type 13")


@pytest.mark.parametrize(("kvs", "infos", "data_bytes", "fragment"), [
    ([raw_kv("x", 9, struct.pack("<IQ", 9, 1))], [], 0, "array of arrays"),
    ([raw_kv("x", 9, struct.pack("<IQ", 42, 1))], [], 0, "array of unknown value type 42"),
    ([arch_kv(), arch_kv()], [], 0, "'general.architecture' appears twice"),
    ([raw_kv("general.alignment", 4, struct.pack("<I", 48))], [], 0, "not a power of 2"),
    ([raw_kv("general.alignment", 10, struct.pack("<Q", 64))], [], 0, "requires uint32"),
    ([raw_kv("general.file_type", 5, struct.pack("<i", 7))], [], 0, "requires uint32"),
    ([], [raw_tensor_info("a", (32,), 0, 0), raw_tensor_info("a", (32,), 0, 128)], 256, "'a' appears twice"),
    ([], [raw_tensor_info("x" * 64, (32,), 0, 0)], 128, "name of 64 bytes"),
    ([], [raw_tensor_info("a", (1, 1, 1, 1, 1), 0, 0)], 32, "5 dimensions"),
    ([], [raw_tensor_info("a", (32, 0), 0, 0)], 32, "invalid shape [32, 0]"),
    ([], [raw_tensor_info("a", (1 << 63, 1), 0, 0)], 32, "invalid shape"),
    ([], [raw_tensor_info("a", (1 << 32, 1 << 32), 0, 0)], 32, "too many elements"),
    ([], [raw_tensor_info("a", (33, 2), int(Q8_0), 0)], 128, "not a multiple of the type's block size 32"),
    ([], [raw_tensor_info("a", (8,), 0, 16)], 64, "not a multiple of the alignment 32"),
    ([], [raw_tensor_info("a", (8,), 0, 0), raw_tensor_info("b", (8,), 0, 64)], 128, "tensors before it end at 32"),
    ([], [raw_tensor_info("a", (8,), 0, 32), raw_tensor_info("b", (8,), 0, 0)], 128, "tensors before it end at 0"),
])
def test_corrupt_structure(tmp_path, kvs, infos, data_bytes, fragment):
    assert_gguf_error(write_raw_gguf(tmp_path / "bad.gguf", kvs, infos, data_bytes), fragment)


def test_random_byte_flips_give_info_or_gguf_error(tmp_path, model_path, model_bytes):
    header_end = read_gguf_info(model_path).data_offset
    rng = random.Random(1234)
    path = tmp_path / "fuzz.gguf"
    outcomes = {"valid": 0, "error": 0}
    start = time.perf_counter()
    for _ in range(200):
        damaged = bytearray(model_bytes)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(header_end)
            damaged[at] = rng.choice([damaged[at] ^ (1 << rng.randrange(8)), 0x00, 0xFF, rng.randrange(256)])
        path.write_bytes(bytes(damaged))
        try:
            read_gguf_info(path)
            outcomes["valid"] += 1
        except GGUFFileError as e:
            assert "\n" not in str(e) and str(path) in str(e)
            outcomes["error"] += 1
    assert outcomes["error"] > 50 and outcomes["valid"] > 0, outcomes
    assert time.perf_counter() - start < 20
