"""`rast pull`: download hub models into the Hugging Face cache ahead of time; print their paths."""

from __future__ import annotations

from typing import Annotated

import typer

from rast_gguf.cli import options as o


def pull_command(
    refs: Annotated[list[str], typer.Argument(metavar="REF...", help="owner/repo:QUANT or owner/repo:file.gguf "
                                              "(optionally owner/repo@revision:...); owner/repo[@revision] or a local "
                                              "folder for a safetensors checkpoint, converted once.")],
    convert_type: o.ConvertType = o.CONVERT_TYPE,
):
    """Download GGUF models from the hub (HF_ENDPOINT, HF_HOME, HF_TOKEN are honoured); files already
    in the cache are not downloaded again. Checkpoints are downloaded and converted to GGUF once.

    Example: rast pull Qwen/Qwen2.5-7B-GGUF:Q4_K_M Qwen/Qwen2.5-1.5B-Instruct-GGUF:qwen2.5-1.5b-instruct-q8_0.gguf
    """
    from rast_gguf.checkpoints import is_checkpoint_dir
    from rast_gguf.hub import pull, resolve_model_ref

    for ref in refs:
        for path in [resolve_model_ref(ref, convert_type)] if is_checkpoint_dir(ref) else pull(ref, convert_type):
            typer.echo(path)
