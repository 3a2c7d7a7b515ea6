"""Hugging Face checkpoint directory -> GGUF file, the whole conversion in one call.

`convert_hf_to_gguf(hf_dir, out_path, out_type=...)` validates everything it can before writing
anything large: the output path, the output type, config.json, every safetensors header and
tensor shape, the tokenizer, and the free disk space. Then it writes f32/f16/bf16/q8_0 directly,
and every other llama.cpp type (q4_k_m, q5_k_m, q6_k, q4_0, ...) by writing a temporary
f16 GGUF (bf16 when the checkpoint is bf16, which f16 cannot always hold) and quantizing it
with llama.cpp's own quantizer (`rast_convert.quantize`). The output appears only
complete (partial files of a killed run are removed by the next one); failures raise
ConversionError.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import gguf

from rast_convert.architectures import SourceTensor, plan_tensors
from rast_convert.errors import ConversionError
from rast_convert.gguf_output import DIRECT_TYPES, data_nbytes, tensor_types, write_gguf
from rast_convert.hf_config import ModelSpec, read_model_spec
from rast_convert.partial_files import clean_leftovers, temp_dir_prefix
from rast_convert.quantize import FTYPES, quantize
from rast_convert.safetensors_reader import open_checkpoint
from rast_convert.vocab import Vocabulary, read_vocabulary

logger = logging.getLogger("rast_convert")


def output_type_names() -> list[str]:
    return sorted(set(DIRECT_TYPES) | set(FTYPES))


def _check_paths(hf_dir: Path, out_path: Path, out_type: str, overwrite: bool) -> None:
    if out_type not in output_type_names():
        raise ConversionError(f"unknown output type '{out_type}'; choose one of: {', '.join(output_type_names())}")
    if not hf_dir.is_dir():
        raise ConversionError(f"{hf_dir} is not a directory; pass the directory of a Hugging Face checkpoint")
    if out_path.exists() and not overwrite:
        raise ConversionError(f"cannot write {out_path}: it already exists; delete it, choose another path "
                              "or allow overwriting it")
    if out_path.is_dir():
        raise ConversionError(f"cannot write {out_path}: it is a directory; give a file name ending in .gguf")
    if not out_path.parent.is_dir():
        raise ConversionError(f"cannot write {out_path}: directory {out_path.parent} does not exist; create it first")


def _check_free_space(out_path: Path, needed: int) -> None:
    free = shutil.disk_usage(out_path.parent).free
    if free < needed:
        raise ConversionError(f"not enough disk space in {out_path.parent}: about {needed / 1e9:.1f} GB needed, "
                              f"{free / 1e9:.1f} GB free; free some space or write elsewhere")


def _metadata_writer(hf_dir: Path, spec: ModelSpec, vocab: Vocabulary, out_type: str):
    def add_metadata(writer: gguf.GGUFWriter) -> None:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(hf_dir.resolve().name)
        writer.add_file_type(DIRECT_TYPES[out_type][0])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        spec.write_hparams(writer)
        vocab.write(writer)
    return add_metadata


def _write_direct(hf_dir: Path, out_path: Path, spec: ModelSpec, vocab: Vocabulary,
                  sources: list[SourceTensor], out_type: str, progress: bool) -> Path:
    typed = tensor_types(sources, out_type)
    logger.info("writing %s (%s, %d tensors)", out_path, out_type, len(typed))
    return write_gguf(out_path, spec.arch_name, _metadata_writer(hf_dir, spec, vocab, out_type), typed, progress)


def convert_hf_to_gguf(hf_dir, out_path, *, out_type: str = "f16", overwrite: bool = False,
                       progress: bool = True, n_threads: int = 0) -> Path:
    """Convert a Llama/Mistral/Qwen2 Hugging Face checkpoint directory to a GGUF file of `out_type`.

    `n_threads` is used by llama.cpp's quantizer (0: all cores) for types other than
    f32/f16/bf16/q8_0. Returns the output path.
    """
    hf_dir, out_path, out_type = Path(hf_dir), Path(out_path), out_type.lower()
    _check_paths(hf_dir, out_path, out_type, overwrite)
    clean_leftovers(out_path)
    spec = read_model_spec(hf_dir)
    checkpoint = open_checkpoint(hf_dir)
    sources = plan_tensors(spec, checkpoint)
    vocab = read_vocabulary(hf_dir, spec.n_vocab)

    if out_type in DIRECT_TYPES:
        _check_free_space(out_path, sum(data_nbytes(s.shape, t) for s, t in tensor_types(sources, out_type)))
        return _write_direct(hf_dir, out_path, spec, vocab, sources, out_type, progress)

    intermediate_type = "bf16" if "BF16" in checkpoint.dtypes else "f16"
    intermediate_bytes = sum(data_nbytes(s.shape, t) for s, t in tensor_types(sources, intermediate_type))
    _check_free_space(out_path, intermediate_bytes * 3 // 2)  # the intermediate file plus a <= 8-bit result
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=temp_dir_prefix(out_path)) as tmp_dir:
        intermediate = Path(tmp_dir) / f"{out_path.stem}.{intermediate_type}.gguf"
        _write_direct(hf_dir, intermediate, spec, vocab, sources, intermediate_type, progress)
        logger.info("quantizing to %s with llama.cpp", out_type)
        quantize(intermediate, out_path, out_type, n_threads=n_threads, overwrite=True)
    return out_path
