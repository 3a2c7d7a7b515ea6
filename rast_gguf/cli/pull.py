"""`rast pull`: download hub models into the Hugging Face cache ahead of time; print their paths."""

from __future__ import annotations

from typing import Annotated

import typer


def pull_command(
    refs: Annotated[list[str], typer.Argument(metavar="REF...", help="owner/repo:QUANT or owner/repo:file.gguf "
                                              "(optionally owner/repo@revision:...).")],
):
    """Download GGUF models from the hub (HF_ENDPOINT, HF_HOME, HF_TOKEN are honoured); files already
    in the cache are not downloaded again.

    Example: rast pull Qwen/Qwen2.5-7B-GGUF:Q4_K_M Qwen/Qwen2.5-1.5B-Instruct-GGUF:qwen2.5-1.5b-instruct-q8_0.gguf
    """
    from rast_gguf.hub import pull

    for ref in refs:
        for path in pull(ref):
            typer.echo(path)
