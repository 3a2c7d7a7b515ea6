"""rast_convert: Hugging Face checkpoints -> GGUF for rast-gguf, and quantization.

`convert_hf_to_gguf(hf_dir, out_path, out_type="f16")` converts a Llama / Mistral / Qwen2
safetensors checkpoint (with its tokenizer) to a GGUF file llama.cpp loads; `quantize(in_gguf,
out_gguf, type_name)` is llama.cpp's quantizer (`rast_gguf.quantize.quantize_gguf`). Every error a
user can cause is a `ConversionError` (a `rast_gguf.errors.RastError`) with a one-line message.
Modules: safetensors_reader (mmap'd shards), hf_config (config.json), architectures (tensor
names, shapes, q/k permutation), vocab / vocab_bpe / vocab_spm (tokenizer metadata),
gguf_output (streamed writing), convert (the orchestration), progress (the bar).
"""

from rast_convert.convert import convert_hf_to_gguf, output_type_names
from rast_convert.errors import ConversionError
from rast_gguf.quantize import quantize_gguf as quantize

__all__ = ["ConversionError", "convert_hf_to_gguf", "output_type_names", "quantize"]
