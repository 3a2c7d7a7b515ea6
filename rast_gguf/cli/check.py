"""`rast check`: a compatibility report for a large model and its delta pair(s)."""

from __future__ import annotations

import typer

from rast_gguf.cli import options as o
from rast_gguf.cli.models import resolve_models


def _size(n_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024


def format_report(report) -> str:
    header = ("role", "file", "arch", "params", "type", "n_vocab", "tokenizer", "template", "size")
    table = [header]
    for row in report.rows:
        i = row.info
        if i is None:
            table.append((row.role, row.path, "-", "-", "-", "-", "-", "-", "unreadable"))
            continue
        table.append((row.role, row.path, i.architecture or "?", f"{i.n_params / 1e6:,.1f}M", i.file_type,
                      str(i.n_vocab), f"{i.tokenizer_model}/{i.tokenizer_pre or '-'}",
                      "yes" if i.has_chat_template else "no", _size(i.file_size)))
    widths = [max(len(r[c]) for r in table) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table]
    if report.n_shared is not None:
        lines.append(f"shared vocabulary: {report.n_shared} tokens")
    lines += [f"problem: {p}" for p in report.problems]
    lines += [f"warning: {w}" for w in report.warnings]
    lines.append("verdict: " + ("compatible" if report.ok else "NOT compatible"))
    return "\n".join(lines)


def check_command(large: o.Large = None, base: o.Base = None, tuned: o.Tuned = None,
                  convert_type: o.ConvertType = o.CONVERT_TYPE, verbose: o.Verbose = False):
    """Check that models can run together: files, shapes, quantization, vocabularies.

    Example: rast check -m Qwen2.5-7B-Q4_K_M.gguf --base Qwen2.5-1.5B-Q8_0.gguf --tuned SimpleRL-1.5B-Q8_0.gguf
    """
    from rast_gguf import _llama
    from rast_gguf.check import check_models

    _llama.set_verbose(verbose)
    large_path, pairs = resolve_models(large, base, tuned, None, 0, None, convert_type=convert_type)
    report = check_models(str(large_path), pairs)
    typer.echo(format_report(report))
    raise typer.Exit(0 if report.ok else 1)
