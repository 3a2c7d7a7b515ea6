"""Edit the metadata of a small GGUF file in memory: for fuzzing and for tests of bad files.

`GGUFImage.parse(data)` splits a GGUF file into its header, every metadata key-value pair (fully
decoded: arrays as lists, strings as bytes), the raw tensor descriptions and the raw tensor data;
`serialize()` writes it back byte-identical when nothing changed, and otherwise lays the tensor
data out again at the (possibly edited) alignment, so that an edited value does not also corrupt
the structure. Values are `KV(key, value_type, value)`; arrays are `Array(elem_type, items)`. Meant
for test-sized files (the whole file is held in memory); it trusts its input, so parse only files
this project wrote or that gguf_file accepted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = ["Array", "GGUFImage", "KV", "T_ARRAY", "T_BOOL", "T_FLOAT32", "T_INT32", "T_INT64", "T_STRING",
           "T_UINT32", "T_UINT64", "pack_value"]

T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY = range(10)
T_UINT64, T_INT64, T_FLOAT64 = 10, 11, 12
_CODES = {T_UINT8: "B", T_INT8: "b", T_UINT16: "H", T_INT16: "h", T_UINT32: "I", T_INT32: "i", T_FLOAT32: "f",
          T_BOOL: "?", T_UINT64: "Q", T_INT64: "q", T_FLOAT64: "d"}
_SIZES = {code: struct.calcsize("<" + fmt) for code, fmt in _CODES.items()}
INT_TYPES = (T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_UINT64, T_INT64)
_BITS = {T_UINT8: 8, T_INT8: 8, T_UINT16: 16, T_INT16: 16, T_UINT32: 32, T_INT32: 32, T_UINT64: 64, T_INT64: 64}
_SIGNED = (T_INT8, T_INT16, T_INT32, T_INT64)


@dataclass
class Array:
    elem_type: int
    items: list


@dataclass
class KV:
    key: str
    value_type: int
    value: object  # int/float/bool, bytes for a string, Array for an array


def wrap_int(value: int, value_type: int) -> int:
    """`value` reduced to what a field of `value_type` stores (two's complement for signed types)."""
    bits = _BITS[value_type]
    value &= (1 << bits) - 1
    if value_type in _SIGNED and value >= 1 << (bits - 1):
        value -= 1 << bits
    return value


def _pack_scalar(value_type: int, value) -> bytes:
    if value_type == T_STRING:
        data = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
        return struct.pack("<Q", len(data)) + data
    if value_type in INT_TYPES:
        value = wrap_int(int(value), value_type)
    return struct.pack("<" + _CODES[value_type], value)


def pack_value(value_type: int, value) -> bytes:
    if value_type != T_ARRAY:
        return _pack_scalar(value_type, value)
    head = struct.pack("<IQ", value.elem_type, len(value.items))
    if value.elem_type == T_STRING:
        return head + b"".join(_pack_scalar(T_STRING, item) for item in value.items)
    if value.elem_type in INT_TYPES:
        items = [wrap_int(int(item), value.elem_type) for item in value.items]
    else:
        items = value.items
    return head + struct.pack(f"<{len(items)}{_CODES[value.elem_type]}", *items)


class _Reader:
    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def unpack(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def string(self) -> bytes:
        (length,) = self.unpack("Q")
        text = self.data[self.pos:self.pos + length]
        self.pos += length
        return text

    def value(self, value_type: int):
        if value_type == T_STRING:
            return self.string()
        if value_type == T_ARRAY:
            elem_type, length = self.unpack("IQ")
            if elem_type == T_STRING:
                return Array(elem_type, [self.string() for _ in range(length)])
            return Array(elem_type, list(self.unpack(f"{length}{_CODES[elem_type]}")))
        (value,) = self.unpack(_CODES[value_type])
        return value


@dataclass
class GGUFImage:
    version: int
    n_tensors: int
    kvs: list[KV]
    tensor_infos: bytes   # the raw tensor descriptions (name, dims, type, offset) of all tensors
    data: bytes           # the tensor data section, from its aligned start
    extra: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes) -> "GGUFImage":
        reader = _Reader(data)
        _, version, n_tensors, n_kv = reader.unpack("4sIQQ")
        kvs = []
        for _ in range(n_kv):
            key = reader.string().decode("utf-8", "surrogateescape")
            (value_type,) = reader.unpack("I")
            kvs.append(KV(key, value_type, reader.value(value_type)))
        start = reader.pos
        for _ in range(n_tensors):
            reader.string()
            (n_dims,) = reader.unpack("I")
            reader.unpack(f"{n_dims}QIQ")
        image = cls(version, n_tensors, kvs, data[start:reader.pos], b"")
        alignment = image.alignment
        data_start = -(-reader.pos // alignment) * alignment
        image.data = data[data_start:]
        return image

    @property
    def alignment(self) -> int:
        kv = self.get("general.alignment")
        value = kv.value if kv is not None and isinstance(kv.value, int) else 32
        return value if value > 0 and value & (value - 1) == 0 else 32

    def get(self, key: str) -> KV | None:
        return next((kv for kv in self.kvs if kv.key == key), None)

    def set(self, key: str, value_type: int, value) -> None:
        kv = self.get(key)
        if kv is None:
            self.kvs.append(KV(key, value_type, value))
        else:
            kv.value_type, kv.value = value_type, value

    def delete(self, key: str) -> None:
        self.kvs = [kv for kv in self.kvs if kv.key != key]

    def serialize(self) -> bytes:
        parts = [struct.pack("<4sIQQ", b"GGUF", self.version, self.n_tensors, len(self.kvs))]
        for kv in self.kvs:
            parts.append(_pack_scalar(T_STRING, kv.key.encode("utf-8", "surrogateescape")))
            parts.append(struct.pack("<I", kv.value_type))
            parts.append(pack_value(kv.value_type, kv.value))
        parts.append(self.tensor_infos)
        head = b"".join(parts)
        padding = -len(head) % self.alignment
        return head + b"\0" * padding + self.data
