"""Write one result as three files in a folder: `<stem>.json`, `<stem>.md` and, when the plot
function draws one (matplotlib installed), `<stem>.png`. Used by `rast eval` and `rast analyze`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path


def write_result_files(out_dir: str | os.PathLike, stem: str, data: dict, markdown: str,
                       plot: Callable[[Path], Path | None]) -> list[Path]:
    """The paths written, in order json, md, png (the png only if `plot` returned one)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
    written[0].write_text(json.dumps(data, indent=2) + "\n")
    written[1].write_text(markdown + "\n")
    png = plot(out_dir / f"{stem}.png")
    return written + ([png] if png else [])
