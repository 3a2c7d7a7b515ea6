"""`rast convert` (Hugging Face checkpoint -> GGUF) and `rast quantize` (GGUF -> GGUF)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

OutType = Annotated[str, typer.Option("--type", "-t", help="Output type: f16, bf16, f32, q8_0, or a llama.cpp "
                                      "quantization (q4_k_m, q5_k_m, q6_k, q4_0, ...).")]
Output = Annotated[Path, typer.Option("-o", "--output", help="Output GGUF file (must not exist unless --force).")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite the output file if it exists.")]
Threads = Annotated[int, typer.Option("--threads", help="Threads for llama.cpp's quantizer (0: all cores).")]


def convert_command(hf_dir: Annotated[Path, typer.Argument(help="Directory of a Hugging Face checkpoint.")],
                    output: Output, out_type: OutType = "f16", force: Force = False, threads: Threads = 0):
    """Convert a Llama / Mistral / Qwen2 safetensors checkpoint (with its tokenizer) to GGUF.

    Example: rast convert ./Qwen2.5-1.5B -o qwen2.5-1.5b-q8_0.gguf --type q8_0
    """
    from rast_gguf.checkpoints import convert_checkpoint

    out = convert_checkpoint(hf_dir, output, out_type, overwrite=force, n_threads=threads)
    typer.echo(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {out_type})", err=True)


def quantize_command(input_gguf: Annotated[Path, typer.Argument(help="GGUF file to re-quantize.")],
                     output: Output, out_type: OutType = "q4_k_m", force: Force = False, threads: Threads = 0):
    """Re-quantize a GGUF file with llama.cpp's own quantizer.

    Example: rast quantize qwen2.5-7b-f16.gguf -o qwen2.5-7b-q4_k_m.gguf --type q4_k_m
    """
    from rast_gguf.quantize import quantize_gguf

    out = quantize_gguf(input_gguf, output, out_type, n_threads=threads, overwrite=force)
    typer.echo(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {out_type})", err=True)
