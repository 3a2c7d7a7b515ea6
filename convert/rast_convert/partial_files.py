"""Partial outputs of `rast convert` / `rast quantize`: named so that a later run can find them.

A file being written is a hidden sibling of its target, `.NAME.PID.RANDOM.part` (a temporary
folder: `.NAME.PID.RANDOM`), renamed over the target only when complete and removed on any error
or Ctrl-C. A run killed outright (SIGKILL, power loss) cannot clean up, so `clean_leftovers(target)`,
called at the start of the next run for the same target, removes the partial files and folders
whose writing process is gone (an older `NAME.part` too) and says so in one line on stderr.
Those of a process still running are left alone.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
from pathlib import Path


def partial_path(target: str | os.PathLike, suffix: str = ".part") -> Path:
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def temp_dir_prefix(target: str | os.PathLike) -> str:
    """A tempfile prefix for a temporary folder beside `target` (clean_leftovers finds it)."""
    return f".{Path(target).name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leftovers(target: str | os.PathLike) -> list[Path]:
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        return []
    mine = re.compile(re.escape(f".{target.name}.") + r"(\d+)\.[A-Za-z0-9_]+(\.part)?$")
    found = []
    for path in parent.iterdir():
        match = mine.match(path.name)
        if match and not _alive(int(match.group(1))):
            found.append(path)
    legacy = target.with_name(target.name + ".part")  # quantize's name before pids were in it
    if legacy.is_file():
        found.append(legacy)
    return sorted(found)


def clean_leftovers(target: str | os.PathLike) -> list[Path]:
    """Remove what interrupted runs for `target` left behind; one stderr line when there was any."""
    removed = []
    for path in leftovers(target):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            pass
    if removed:
        size = ", ".join(p.name for p in removed[:3]) + (", ..." if len(removed) > 3 else "")
        print(f"removed {len(removed)} partial file(s) left by an interrupted run for {target}: {size}",
              file=sys.stderr)
    return removed
