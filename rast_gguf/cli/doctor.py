"""`rast doctor`: which llama.cpp build, backend and devices this installation runs on."""

from __future__ import annotations

import json
from typing import Optional

import typer


def doctor_command(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    rpc: Optional[str] = typer.Option(None, "--rpc", metavar="HOST:PORT,...", show_default=False,
                                      help="Also list these RPC servers' devices and free memory."),
) -> None:
    """Report the llama.cpp build, its backend devices (CUDA, Metal, CPU) and their free memory.

    Exits with status 1 when an --rpc server cannot be used (each is listed with the reason)."""
    from rast_gguf.doctor import format_report, report
    from rast_gguf.rpc import parse_endpoints

    info = report(parse_endpoints(rpc))
    print(json.dumps(info, indent=2) if as_json else format_report(info))
    if any("error" in server for server in info["rpc_servers"]):
        raise typer.Exit(1)
