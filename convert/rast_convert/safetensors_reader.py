"""Memory-mapped reading of a Hugging Face checkpoint's `*.safetensors` files.

`open_checkpoint(hf_dir)` finds the shards (the files named by `model.safetensors.index.json`,
else `model.safetensors`, else every `*.safetensors` but Mistral's `consolidated*` ones), parses
and checks every header up front (JSON, dtypes, shapes against byte ranges, ranges inside the
file, no duplicate names, the index naming tensors that exist) and returns a `Checkpoint` mapping
tensor names to `StoredTensor`s. Nothing is read until asked: `StoredTensor.rows(start, stop)`
returns rows of the tensor (first axis) as float32, converted from F32/F16/BF16 on the fly from an
`np.memmap` of the shard, so memory stays at the size of the rows asked for. numpy has no
bfloat16, which is why this reads the format itself instead of going through
`safetensors.safe_open`. Any problem raises ConversionError naming the file.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rast_convert.errors import ConversionError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# dtype name in the header -> (numpy dtype of the stored bits, bytes per element)
STORED_DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2)}
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit


@dataclass(frozen=True)
class StoredTensor:
    name: str
    dtype: str              # "F32", "F16" or "BF16"
    shape: tuple[int, ...]
    path: Path
    offset: int             # absolute byte offset of the data in `path`

    @property
    def n_rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_size(self) -> int:
        return math.prod(self.shape[1:])

    def stored(self) -> np.ndarray:
        """The raw stored values (uint16 bits for BF16), memory-mapped, shaped (n_rows, row_size)."""
        np_dtype, _ = STORED_DTYPES[self.dtype]
        return np.memmap(self.path, dtype=np_dtype, mode="r", offset=self.offset,
                         shape=(self.n_rows, self.row_size))

    def rows(self, start: int = 0, stop: int | None = None, order: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) as a float32 array (n, row_size); with `order`, rows order[start:stop]."""
        stop = self.n_rows if stop is None else stop
        stored = self.stored()
        chunk = stored[order[start:stop]] if order is not None else stored[start:stop]
        return to_float32(chunk, self.dtype)

    def raw_rows(self, start: int, stop: int, order: np.ndarray | None = None) -> np.ndarray:
        """Rows as stored (no conversion): for copying F16/BF16 data bit-exactly."""
        stored = self.stored()
        return np.ascontiguousarray(stored[order[start:stop]] if order is not None else stored[start:stop])


def to_float32(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        # bfloat16 is the upper half of a float32
        return (np.asarray(values, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(values).astype(np.float32)


@dataclass
class Checkpoint:
    tensors: dict[str, StoredTensor] = field(default_factory=dict)
    shard_paths: list[Path] = field(default_factory=list)

    @property
    def dtypes(self) -> set[str]:
        return {t.dtype for t in self.tensors.values()}

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.shard_paths)


def shard_paths(hf_dir: Path) -> list[Path]:
    index_path = hf_dir / INDEX_FILE
    if index_path.is_file():
        weight_map = _read_index(index_path)
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (hf_dir / n).is_file()]
        if missing:
            raise ConversionError(f"shard {hf_dir / missing[0]} named in {INDEX_FILE} is missing; "
                                  "download the complete checkpoint")
        return [hf_dir / n for n in names]
    if (hf_dir / SINGLE_FILE).is_file():
        return [hf_dir / SINGLE_FILE]
    # Mistral repos also ship their native-format weights as consolidated*.safetensors: not HF names
    found = sorted(p for p in hf_dir.glob("*.safetensors") if not p.name.startswith("consolidated"))
    if not found:
        raise ConversionError(f"no *.safetensors files in {hf_dir}; only safetensors checkpoints are supported "
                              "(convert .bin/.pt weights to safetensors first)")
    return found


def _read_index(index_path: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        raise ConversionError(f"{index_path} is not a valid safetensors index ({type(err).__name__}); "
                              "download it again") from None
    return weight_map


def read_header(path: Path) -> list[StoredTensor]:
    """Parse and check one shard's header; raise ConversionError if the file is unreadable or corrupt."""
    def corrupt(why: str) -> ConversionError:
        return ConversionError(f"{path} is not a valid safetensors file ({why}); download it again")

    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise corrupt("shorter than a header")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(_MAX_HEADER_BYTES, file_size - 8):
                raise corrupt("header length out of range")
            header = json.loads(f.read(header_len).decode("utf-8"))
    except OSError as err:
        raise ConversionError(f"cannot read {path}: {err.strerror or err}; check the file and its permissions") from None
    except (ValueError, RecursionError):  # bad UTF-8, bad JSON, >4300-digit ints
        raise corrupt("header is not JSON") from None
    if not isinstance(header, dict):
        raise corrupt("header is not a JSON object")

    data_start = 8 + header_len
    tensors = []
    for name, info in sorted(header.items()):
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise corrupt(f"bad entry for tensor {name}") from None
        if not isinstance(dtype, str):
            raise corrupt(f"bad dtype for tensor {name}")
        if dtype not in STORED_DTYPES:
            raise ConversionError(f"tensor {name} in {path} has dtype {dtype}; only F32, F16 and BF16 checkpoints "
                                  "are supported (dequantize the checkpoint first)")
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise corrupt(f"bad shape for tensor {name}")
        n_bytes = math.prod(shape) * STORED_DTYPES[dtype][1]
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin and end - begin == n_bytes):
            raise corrupt(f"tensor {name}: byte range does not match shape {list(shape)} {dtype}")
        if data_start + end > file_size:
            raise corrupt(f"truncated: tensor {name} ends past the end of the file")
        tensors.append(StoredTensor(name=name, dtype=dtype, shape=shape, path=path, offset=data_start + begin))
    return tensors


def open_checkpoint(hf_dir: Path) -> Checkpoint:
    checkpoint = Checkpoint(shard_paths=shard_paths(hf_dir))
    for path in checkpoint.shard_paths:
        for tensor in read_header(path):
            if tensor.name in checkpoint.tensors:
                other = checkpoint.tensors[tensor.name].path.name
                raise ConversionError(f"tensor {tensor.name} is stored twice ({other} and {path.name}); "
                                      "remove the stray shard from the directory")
            checkpoint.tensors[tensor.name] = tensor
    index_path = hf_dir / INDEX_FILE
    if index_path.is_file():
        for name, shard in sorted(_read_index(index_path).items()):
            stored = checkpoint.tensors.get(name)
            if stored is None or stored.path.name != shard:
                raise ConversionError(f"{INDEX_FILE} puts tensor {name} in {shard} but it is not there; "
                                      "the checkpoint is incomplete or mixed, download it again")
    return checkpoint
