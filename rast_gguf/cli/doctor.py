"""`rast doctor`: which llama.cpp build, backend and devices this installation runs on."""

from __future__ import annotations

import json

import typer


def doctor_command(as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Report the llama.cpp build, its backend devices (CUDA, Metal, CPU) and their free memory."""
    from rast_gguf.doctor import format_report, report

    info = report()
    print(json.dumps(info, indent=2) if as_json else format_report(info))
