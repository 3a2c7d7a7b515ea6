"""Check that a file is a readable GGUF before llama.cpp sees it, and read its metadata cheaply.

`read_gguf_info(path)` parses the header, every metadata key-value pair and every tensor
description of a little-endian GGUF v2/v3 file with a streaming reader: the file is never loaded
and long arrays (a 152k-token vocabulary, its merges) are skipped, not decoded, so a 20 GB model
takes a fraction of a second. It checks everything that would make llama.cpp fail or crash: the
magic, the version, counts the file cannot hold, every string and array length, nested arrays,
unknown value and ggml types, tensor shapes against block sizes, the alignment, tensor data packed
in order at aligned offsets, and every tensor's data ending inside the file. For a split model
("-00001-of-00003.gguf") only the given shard and its own tensors are checked. Any problem raises
`GGUFFileError` with one line that names the file, says what is wrong and what to do; otherwise a
frozen `GGUFInfo` comes back (metadata, tensors, and the few derived values rast-gguf reads).
Callers that need a file's header several times pass the GGUFInfo on (RastEngine parses each
model once per start) rather than reading again.
"""

from __future__ import annotations

import os
import stat
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, Union

import gguf

from rast_gguf.errors import GGUFFileError
from rast_gguf.gguf_limits import check_llama_limits

__all__ = ["ArrayInfo", "GGUFInfo", "TensorInfo", "read_gguf_info"]

PathLike = Union[str, "os.PathLike[str]"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_KEPT_ARRAY_LENGTH = 64       # longer metadata arrays are kept as ArrayInfo(elem_type, length)
MAX_DIMS = 4                     # GGML_MAX_DIMS
MAX_TENSOR_NAME_BYTES = 63       # GGML_MAX_NAME is 64 including the terminating NUL
# No real key or string value comes near these; a longer one is a corrupt length field, and
# refusing it keeps a flipped bit from making us read gigabytes into memory.
MAX_KEY_BYTES = 64 << 10
MAX_STRING_VALUE_BYTES = 64 << 20

_HEADER = struct.Struct("<4sIQQ")  # magic, version, n_tensors, n_kv
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_INT64_MAX = (1 << 63) - 1
_CHUNK_BYTES = 1 << 20
_MIN_KV_BYTES = 8 + 4 + 1                # empty key, value type, a one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8   # empty name, n_dims = 0, ggml type, offset

_REDO = "re-download or re-convert it"
_CORRUPT = f"the file is corrupt: {_REDO}"

# GGUF value types (gguf.GGUFValueType): struct codes of the fixed-size ones.
_STRING, _ARRAY, _BOOL = 8, 9, 7
_SCALAR_CODES = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "b", 10: "Q", 11: "q", 12: "d"}
_SCALAR_STRUCTS = {code: struct.Struct("<" + fmt) for code, fmt in _SCALAR_CODES.items()}
_VALUE_TYPE_NAMES = {value_type.value: value_type.name.lower() for value_type in gguf.GGUFValueType}
_UINT32 = 4
_UINT32_KEYS = ("general.alignment", "general.file_type")  # llama.cpp reads these with a type assert

# ggml type code -> (name, elements per block, bytes per block)
_GGML_TYPES = {int(t): (gguf.GGMLQuantizationType(t).name, block, size)
               for t, (block, size) in gguf.GGML_QUANT_SIZES.items()}

@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array too long to keep: its element type ("string", "int32", ...) and length."""

    elem_type: str
    length: int

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the file. `shape` is in numpy order (outermost first): token_embd.weight is
    (n_vocab, n_embd); `ne` is ggml's order. `offset` is the absolute byte offset of its data."""

    name: str
    shape: tuple[int, ...]
    type_name: str
    n_bytes: int
    offset: int

    @property
    def n_elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


MetadataValue = Union[int, float, bool, str, list, ArrayInfo]


@dataclass(frozen=True)
class GGUFInfo:
    """What a valid GGUF file holds, minus the tensor data. Metadata arrays longer than 64
    elements are ArrayInfo; for a split shard, `tensors` and `n_params` cover this shard only."""

    path: Path
    file_size: int
    version: int
    n_tensors: int
    metadata: dict[str, MetadataValue]
    tensors: tuple[TensorInfo, ...]
    alignment: int
    data_offset: int

    def tensor(self, name: str) -> TensorInfo | None:
        return next((t for t in self.tensors if t.name == name), None)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def file_type(self) -> str:
        """The file type as gguf-py names llama.cpp's ftypes ("Q4_K_M", "Q8_0", "F16", "F32", ...), or, when
        general.file_type is absent or unknown, the most common type of its matrices ("Q8_0?")."""
        code = self.metadata.get("general.file_type")
        try:
            return gguf.LlamaFileType(code).name.replace("MOSTLY_", "").replace("ALL_", "")
        except ValueError:
            matrices = Counter(t.type_name for t in self.tensors if len(t.shape) >= 2)
            return (matrices.most_common(1)[0][0] if matrices else "F32") + "?"

    @property
    def n_vocab(self) -> int | None:
        """Number of tokens in tokenizer.ggml.tokens (may differ from n_embd_rows)."""
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        return len(tokens) if isinstance(tokens, (list, ArrayInfo)) else None

    @property
    def tokenizer_model(self) -> str | None:
        return self.metadata.get("tokenizer.ggml.model")

    @property
    def tokenizer_pre(self) -> str | None:
        return self.metadata.get("tokenizer.ggml.pre")

    @property
    def has_chat_template(self) -> bool:
        template = self.metadata.get("tokenizer.chat_template")
        return isinstance(template, str) and bool(template)

def read_gguf_info(path: PathLike) -> GGUFInfo:
    """Validate the GGUF file at `path` and return its metadata; raise GGUFFileError otherwise."""
    shown = _shown_path(path)
    with _open_regular_file(path, shown) as file:
        file_size = os.fstat(file.fileno()).st_size
        if file_size == 0:
            raise GGUFFileError(f"{shown}: file is empty (0 bytes); {_REDO}")
        try:
            info = _Parser(file, file_size, shown).parse(Path(os.fsdecode(path)))
            check_llama_limits(info, file, shown)  # values llama.cpp would crash on (rast_gguf/gguf_limits.py)
            return info
        except OSError as e:
            raise GGUFFileError(f"{shown}: cannot read the file ({e.strerror or e}); "
                                "check the disk or copy the file again") from None


# ----------------------------------------------------------------------------- opening


def _shown_path(path: PathLike) -> str:
    text = os.fsdecode(path)
    return text if text.isprintable() else repr(text)


def _open_regular_file(path: PathLike, shown: str) -> BinaryIO:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        what = "is a broken symbolic link" if os.path.islink(path) else "no such file"
        raise GGUFFileError(f"{shown}: {what}; check the path") from None
    except NotADirectoryError:
        raise GGUFFileError(f"{shown}: no such file (a parent of it is a file, not a folder); "
                            "check the path") from None
    except PermissionError:
        raise GGUFFileError(f"{shown}: permission denied while looking up the file; "
                            "check the permissions of its folders") from None
    except (OSError, ValueError) as e:
        raise GGUFFileError(f"{shown}: cannot access the file ({getattr(e, 'strerror', None) or e}); "
                            "check the path") from None
    if stat.S_ISDIR(mode):
        raise GGUFFileError(f"{shown}: is a directory, not a GGUF file (nor a Hugging Face checkpoint: no "
                            "config.json with *.safetensors); pass the path of a .gguf file")
    if not stat.S_ISREG(mode):
        raise GGUFFileError(f"{shown}: is not a regular file (a device, pipe or socket); "
                            "pass the path of a .gguf file")
    try:
        return open(path, "rb")
    except PermissionError:
        raise GGUFFileError(f"{shown}: permission denied; make the file readable "
                            "(chmod a+r) or run as a user who may read it") from None
    except OSError as e:
        raise GGUFFileError(f"{shown}: cannot open the file ({e.strerror or e}); check the path") from None


# ----------------------------------------------------------------------------- reading


class _ReadPastEnd(Exception):
    """Reading `n_bytes` at `offset` would run past the end of the file."""

    def __init__(self, offset: int, n_bytes: int):
        super().__init__(offset, n_bytes)
        self.offset, self.n_bytes = offset, n_bytes


class _Cursor:
    """Little-endian reads through a private 1 MiB window of the file, never past `file_size`."""

    def __init__(self, file: BinaryIO, file_size: int):
        self._file = file
        self.file_size = file_size
        self._window = b""
        self._window_start = 0
        self._pos = 0  # position inside the window; may point past it after a skip

    @property
    def offset(self) -> int:
        return self._window_start + self._pos

    def remaining(self) -> int:
        return self.file_size - self.offset

    def unpack(self, layout: struct.Struct) -> tuple:
        self._need(layout.size)
        values = layout.unpack_from(self._window, self._pos)
        self._pos += layout.size
        return values

    def read_bytes(self, n_bytes: int) -> bytes:
        self._need(n_bytes)
        data = self._window[self._pos:self._pos + n_bytes]
        self._pos += n_bytes
        return data

    def check_fits(self, n_bytes: int) -> None:
        if n_bytes > self.remaining():
            raise _ReadPastEnd(self.offset, n_bytes)

    def seek(self, offset: int) -> None:
        if offset >= self._window_start:
            self._pos = offset - self._window_start
        else:
            self._window, self._window_start, self._pos = b"", offset, 0

    def skip(self, n_bytes: int) -> None:
        self.check_fits(n_bytes)
        self._pos += n_bytes

    def skip_strings(self, count: int) -> None:
        """Skip `count` GGUF strings: the hot loop over a vocabulary and its merges."""
        unpack_length = _U64.unpack_from
        for _ in range(count):
            if self._pos + 8 > len(self._window):
                self._need(8)
            (length,) = unpack_length(self._window, self._pos)
            self._pos += 8
            if length > self.file_size - self._window_start - self._pos:
                raise _ReadPastEnd(self.offset, length)
            self._pos += length

    def _need(self, n_bytes: int) -> None:
        if self._pos + n_bytes <= len(self._window):
            return
        offset = self.offset
        self.check_fits(n_bytes)
        self._file.seek(offset)
        window = self._file.read(max(n_bytes, _CHUNK_BYTES))
        if len(window) < n_bytes:  # the file shrank while we read it
            raise _ReadPastEnd(offset, n_bytes)
        self._window, self._window_start, self._pos = window, offset, 0


@dataclass
class _RawTensor:
    name: str
    ne: tuple[int, ...]
    type_name: str
    n_bytes: int
    data_offset: int  # relative to the start of the data section


class _Parser:
    """One pass over the header, metadata and tensor infos of one file."""

    def __init__(self, file: BinaryIO, file_size: int, shown: str):
        self._cursor = _Cursor(file, file_size)
        self._file_size = file_size
        self._shown = shown
        self._reading = "the header"  # what the next read is part of, for error messages
        self._metadata: dict[str, MetadataValue] = {}
        self._value_types: dict[str, int] = {}

    def parse(self, path: Path) -> GGUFInfo:
        try:
            version, n_tensors, n_kv = self._read_header()
            self._read_metadata(n_kv)
            self._check_key_types()
            alignment = self._alignment()
            raw_tensors = self._read_tensor_infos(n_tensors)
        except _ReadPastEnd as e:
            self._fail(f"file is truncated or corrupt: reading {self._reading} at byte {e.offset} needs "
                       f"{e.n_bytes} bytes but the file has {self._file_size} bytes", _REDO)
        data_offset = _align(self._cursor.offset, alignment)
        tensors = self._place_tensor_data(raw_tensors, data_offset, alignment)
        return GGUFInfo(path=path, file_size=self._file_size, version=version, n_tensors=n_tensors,
                        metadata=self._metadata, tensors=tensors, alignment=alignment,
                        data_offset=data_offset)

    def _fail(self, problem: str, advice: str = _CORRUPT) -> NoReturn:
        raise GGUFFileError(f"{self._shown}: {problem}; {advice}")

    # --- header

    def _read_header(self) -> tuple[int, int, int]:
        head = self._cursor.read_bytes(min(self._file_size, _HEADER.size))
        self._check_magic(head)
        if len(head) >= 8:
            self._check_version(head)
        if len(head) < _HEADER.size:
            self._fail_short_header()
        _, version, n_tensors, n_kv = _HEADER.unpack_from(head)
        self._check_counts(n_tensors, n_kv)
        self._cursor.seek(_HEADER.size)
        return version, n_tensors, n_kv

    def _fail_short_header(self) -> NoReturn:
        self._fail(f"file is truncated: it has {self._file_size} bytes, less than the "
                   f"{_HEADER.size}-byte GGUF header", _REDO)

    def _check_magic(self, head: bytes) -> None:
        if head[:4] == GGUF_MAGIC:
            return
        if len(head) < 4 and GGUF_MAGIC.startswith(head):
            self._fail_short_header()
        self._fail("not a GGUF file (bad magic: GGUF files start with the bytes 'GGUF')",
                   "pass a .gguf model, or a Hugging Face checkpoint folder to convert")

    def _check_version(self, head: bytes) -> None:
        (version,) = _U32.unpack_from(head, 4)
        if version in SUPPORTED_VERSIONS:
            return
        if version == 1:
            self._fail("GGUF version 1 is no longer supported by llama.cpp",
                       "download a newer GGUF of the model or convert it again with a current llama.cpp")
        byte_swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if byte_swapped in SUPPORTED_VERSIONS:
            self._fail("this is a big-endian GGUF file, and llama.cpp here reads little-endian ones only",
                       "convert it with gguf-py's gguf_convert_endian.py or download the little-endian release")
        self._fail(f"unsupported GGUF version {version} (llama.cpp reads versions 2 and 3)",
                   f"the file is corrupt or from a newer format: {_REDO}, or update rast-gguf")

    def _check_counts(self, n_tensors: int, n_kv: int) -> None:
        smallest_size = _HEADER.size + n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES
        if smallest_size > self._file_size:
            self._fail(f"file is truncated or corrupt: the header claims {n_tensors} tensors and {n_kv} "
                       f"metadata keys, more than a {self._file_size}-byte file can hold", _REDO)

    # --- metadata

    def _read_metadata(self, n_kv: int) -> None:
        for index in range(n_kv):
            self._reading = f"the name of metadata key {index}"
            key = self._read_text(MAX_KEY_BYTES)
            if key in self._metadata:
                self._fail(f"metadata key {_quote(key)} appears twice")
            self._reading = f"the value of metadata key {_quote(key)}"
            (value_type,) = self._cursor.unpack(_U32)
            self._metadata[key] = self._read_value(key, value_type)
            self._value_types[key] = value_type

    def _read_text(self, max_bytes: int) -> str:
        (length,) = self._cursor.unpack(_U64)
        self._cursor.check_fits(length)
        if length > max_bytes:
            self._fail(f"{self._reading} is a string of {length} bytes, far more than any valid file has")
        return self._cursor.read_bytes(length).decode("utf-8", errors="replace")

    def _read_value(self, key: str, value_type: int) -> MetadataValue:
        if value_type == _STRING:
            return self._read_text(MAX_STRING_VALUE_BYTES)
        if value_type == _ARRAY:
            return self._read_array(key)
        layout = _SCALAR_STRUCTS.get(value_type)
        if layout is None:
            self._fail(f"metadata key {_quote(key)} has unknown value type {value_type}")
        (value,) = self._cursor.unpack(layout)
        return value != 0 if value_type == _BOOL else value

    def _read_array(self, key: str) -> list | ArrayInfo:
        (elem_type,) = self._cursor.unpack(_U32)
        (length,) = self._cursor.unpack(_U64)
        if elem_type == _ARRAY:
            self._fail(f"metadata key {_quote(key)} is an array of arrays, which llama.cpp cannot read")
        if elem_type != _STRING and elem_type not in _SCALAR_STRUCTS:
            self._fail(f"metadata key {_quote(key)} is an array of unknown value type {elem_type}")
        smallest_elem_bytes = 8 if elem_type == _STRING else _SCALAR_STRUCTS[elem_type].size
        self._cursor.check_fits(length * smallest_elem_bytes)
        if length <= MAX_KEPT_ARRAY_LENGTH:
            return self._read_array_elements(elem_type, length)
        if elem_type == _STRING:
            self._cursor.skip_strings(length)
        else:
            self._cursor.skip(length * smallest_elem_bytes)
        return ArrayInfo(_VALUE_TYPE_NAMES[elem_type], length)

    def _read_array_elements(self, elem_type: int, length: int) -> list:
        if elem_type == _STRING:
            return [self._read_text(MAX_STRING_VALUE_BYTES) for _ in range(length)]
        values = self._cursor.unpack(struct.Struct(f"<{length}{_SCALAR_CODES[elem_type]}"))
        return [value != 0 for value in values] if elem_type == _BOOL else list(values)

    def _check_key_types(self) -> None:
        for key in _UINT32_KEYS:
            value_type = self._value_types.get(key, _UINT32)
            if value_type != _UINT32:
                self._fail(f"metadata key {key!r} is of type {_VALUE_TYPE_NAMES.get(value_type, value_type)}, "
                           "but llama.cpp requires uint32 (and can abort on anything else)")

    def _alignment(self) -> int:
        alignment = self._metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if alignment <= 0 or alignment & (alignment - 1):
            self._fail(f"general.alignment is {alignment}, not a power of 2")
        return alignment

    # --- tensors

    def _read_tensor_infos(self, n_tensors: int) -> list[_RawTensor]:
        tensors: list[_RawTensor] = []
        seen_names: set[str] = set()
        for index in range(n_tensors):
            self._reading = f"the name of tensor {index}"
            name = self._read_tensor_name(index)
            if name in seen_names:
                self._fail(f"tensor {_quote(name)} appears twice")
            seen_names.add(name)
            self._reading = f"the description of tensor {_quote(name)}"
            tensors.append(self._read_tensor_description(name))
        return tensors

    def _read_tensor_name(self, index: int) -> str:
        (length,) = self._cursor.unpack(_U64)
        self._cursor.check_fits(length)
        if length > MAX_TENSOR_NAME_BYTES:
            self._fail(f"tensor {index} has a name of {length} bytes, but llama.cpp allows at most "
                       f"{MAX_TENSOR_NAME_BYTES}")
        return self._cursor.read_bytes(length).decode("utf-8", errors="replace")

    def _read_tensor_description(self, name: str) -> _RawTensor:
        (n_dims,) = self._cursor.unpack(_U32)
        if n_dims > MAX_DIMS:
            self._fail(f"tensor {_quote(name)} has {n_dims} dimensions, but llama.cpp allows at most {MAX_DIMS}")
        ne = self._cursor.unpack(struct.Struct(f"<{n_dims}Q"))
        (type_code,) = self._cursor.unpack(_U32)
        (data_offset,) = self._cursor.unpack(_U64)
        n_bytes, type_name = self._tensor_n_bytes(name, ne, type_code)
        return _RawTensor(name, ne, type_name, n_bytes, data_offset)

    def _tensor_n_bytes(self, name: str, ne: tuple[int, ...], type_code: int) -> tuple[int, str]:
        shape_text = f"[{', '.join(map(str, ne))}]"
        # a zero dimension makes llama.cpp divide by zero when it checks the element count
        if any(dim == 0 or dim > _INT64_MAX for dim in ne):
            self._fail(f"tensor {_quote(name)} has an invalid shape {shape_text}")
        n_elements = 1
        for dim in ne:
            n_elements *= dim
        if n_elements > _INT64_MAX:
            self._fail(f"tensor {_quote(name)} has shape {shape_text}, too many elements")
        if type_code not in _GGML_TYPES:
            self._fail(f"tensor {_quote(name)} has unknown ggml type {type_code}",
                       f"the file is corrupt or needs a newer llama.cpp: {_REDO}, or update rast-gguf")
        type_name, block_elems, block_bytes = _GGML_TYPES[type_code]
        row_elems = ne[0] if ne else 1
        if row_elems % block_elems:
            self._fail(f"tensor {_quote(name)} of type {type_name} has rows of {row_elems} elements, "
                       f"not a multiple of the type's block size {block_elems}")
        return n_elements // block_elems * block_bytes, type_name

    def _place_tensor_data(self, raw_tensors: list[_RawTensor], data_offset: int,
                           alignment: int) -> tuple[TensorInfo, ...]:
        tensors = []
        expected_offset = 0  # llama.cpp requires the data packed in order, each padded to the alignment
        for raw in raw_tensors:
            if raw.data_offset % alignment:
                self._fail(f"tensor {_quote(raw.name)} has data offset {raw.data_offset}, "
                           f"not a multiple of the alignment {alignment}")
            if raw.data_offset != expected_offset:
                self._fail(f"tensor {_quote(raw.name)} has data offset {raw.data_offset} but the tensors "
                           f"before it end at {expected_offset}")
            start = data_offset + raw.data_offset
            end = start + raw.n_bytes
            if end > self._file_size:
                self._fail(f"file is truncated: tensor {_quote(raw.name)} ends at byte {end} but the file "
                           f"has {self._file_size} bytes", _REDO)
            tensors.append(TensorInfo(raw.name, tuple(reversed(raw.ne)), raw.type_name, raw.n_bytes, start))
            expected_offset = _align(raw.data_offset + raw.n_bytes, alignment)
        return tuple(tensors)


# ----------------------------------------------------------------------------- helpers


def _align(offset: int, alignment: int) -> int:
    return (offset + alignment - 1) // alignment * alignment


def _quote(text: str, max_chars: int = 80) -> str:
    """A name from the file, safe for a one-line message (control characters escaped)."""
    return repr(text if len(text) <= max_chars else text[:max_chars] + "...")
