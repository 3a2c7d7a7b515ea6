"""rast_convert: Hugging Face checkpoints -> GGUF for rast-gguf, and quantization.

`convert_hf_to_gguf(hf_dir, out_path, out_type="f16")` converts a Llama / Mistral / Qwen2
safetensors checkpoint (with its tokenizer) to a GGUF file llama.cpp loads; `quantize(in_gguf,
out_gguf, type_name)` is llama.cpp's quantizer. Every error a user can cause is a `ConversionError`
with a one-line message. A library of its own: it imports nothing from rast_gguf (which calls it:
`rast convert`, checkpoints given where models are expected, `rast quantize`).
Modules: safetensors_reader (mmap'd shards), hf_config (config.json), architectures (tensor
names, shapes, q/k permutation), vocab / vocab_bpe / vocab_spm (tokenizer metadata),
gguf_output (streamed writing), convert (the orchestration), quantize (llama.cpp's quantizer),
progress (the bar).
"""

from rast_convert.convert import convert_hf_to_gguf, output_type_names
from rast_convert.errors import ConversionError
from rast_convert.quantize import quantize

__all__ = ["ConversionError", "convert_hf_to_gguf", "output_type_names", "quantize"]
