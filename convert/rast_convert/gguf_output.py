"""Writing the GGUF file: tensor types, streamed tensor data, and nothing but whole files.

`tensor_types(sources, out_type)` chooses each tensor's GGML type the way llama.cpp's converter
does: 1-D tensors (norms, biases, rope_freqs) stay F32, matrices take the asked type (F32, F16,
BF16 or Q8_0; a matrix whose rows are not a multiple of Q8_0's 32-value block falls back to F16).
`write_gguf(path, arch_name, add_metadata, typed_sources, progress)` writes header, metadata and
tensor infos first, then each tensor's data in chunks of rows read from the memory-mapped
checkpoint, converted (bf16/f16/f32 -> f32 -> output type, q/k rows reordered) and written at
once, so peak memory is a few chunks, not a tensor and never the model. Same-type data (f16 -> f16,
bf16 -> bf16, f32 -> f32) is copied bit-exactly. The file is written to a hidden `.part` file
(rast_convert.partial_files) next to `path` and renamed over `path` only when complete; on any error
it is removed.
The output is deterministic: same inputs, same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import gguf
import numpy as np

from rast_convert.architectures import SourceTensor
from rast_convert.progress import progress_bar
from rast_convert.partial_files import partial_path

Q = gguf.GGMLQuantizationType
# --outtype name -> (general.file_type, GGML type of the matrices)
DIRECT_TYPES = {
    "f32": (gguf.LlamaFileType.ALL_F32, Q.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, Q.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, Q.BF16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, Q.Q8_0),
}
CHUNK_ELEMENTS = 4 * 1024 * 1024  # values converted at a time (16 MiB as float32)
_SAME_BITS = {(Q.F32, "F32"), (Q.F16, "F16"), (Q.BF16, "BF16")}


def tensor_types(sources: list[SourceTensor], out_type: str) -> list[tuple[SourceTensor, Q]]:
    matrix_type = DIRECT_TYPES[out_type][1]
    typed = []
    for source in sources:
        qtype = matrix_type if source.is_matrix else Q.F32
        block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
        if source.shape[-1] % block_size:
            qtype = Q.F16
        typed.append((source, qtype))
    return typed


def data_nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block_size * type_size


def _encode(values: np.ndarray, qtype: Q) -> np.ndarray:
    if qtype == Q.F32:
        return values.astype(np.float32, copy=False)
    if qtype == Q.F16:
        return values.astype(np.float16)
    return gguf.quants.quantize(values, qtype)  # BF16 (round to nearest even) and Q8_0, as ggml does


def encoded_chunks(source: SourceTensor, qtype: Q) -> Iterator[np.ndarray]:
    """The tensor's data in `qtype`, a chunk of whole rows at a time."""
    if source.values is not None:
        yield _encode(source.values, qtype)
        return
    stored = source.stored
    rows_per_chunk = max(1, CHUNK_ELEMENTS // max(stored.row_size, 1))
    for start in range(0, stored.n_rows, rows_per_chunk):
        stop = min(start + rows_per_chunk, stored.n_rows)
        if (qtype, stored.dtype) in _SAME_BITS:
            yield stored.raw_rows(start, stop, source.row_order)
        else:
            yield _encode(stored.rows(start, stop, source.row_order), qtype)


class StreamedTensor:
    """Stands in for an ndarray in `GGUFWriter.write_tensor_data`, which only uses `nbytes` and
    `tofile`: the data is produced chunk by chunk while it is written."""

    def __init__(self, source: SourceTensor, qtype: Q, on_written: Callable[[int], None]):
        self.source, self.qtype, self.on_written = source, qtype, on_written
        self.nbytes = data_nbytes(source.shape, qtype)

    def tofile(self, fout) -> None:
        written = 0
        for chunk in encoded_chunks(self.source, self.qtype):
            data = np.ascontiguousarray(chunk).data.cast("B")
            fout.write(data)
            written += len(data)
            self.on_written(len(data))
        if written != self.nbytes:  # a bug, not a user error
            raise AssertionError(f"{self.source.gguf_name}: wrote {written} bytes, expected {self.nbytes}")


def write_gguf(path: Path, arch_name: str, add_metadata: Callable[[gguf.GGUFWriter], None],
               typed_sources: list[tuple[SourceTensor, Q]], progress: bool = True) -> Path:
    part = partial_path(path)
    total = sum(data_nbytes(source.shape, qtype) for source, qtype in typed_sources)
    bar = writer = None
    try:
        writer = gguf.GGUFWriter(part, arch_name)
        add_metadata(writer)
        for source, qtype in typed_sources:
            writer.add_tensor_info(source.gguf_name, source.shape, np.dtype(np.float32),
                                   data_nbytes(source.shape, qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        bar = progress_bar(total, f"writing {path.name}", progress)
        for source, qtype in typed_sources:
            writer.write_tensor_data(StreamedTensor(source, qtype, bar.update),
                                     tensor_endianess=gguf.GGUFEndian.LITTLE)
        writer.close()
        os.replace(part, path)
    except BaseException:
        if writer is not None:
            writer.close()
        part.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return path
