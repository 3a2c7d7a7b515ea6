"""A byte-counting progress bar on stderr for the long steps of a conversion.

`progress_bar(total_bytes, description, enabled)` returns an object with `update(n_bytes)` and
`close()`: tqdm's bar when tqdm is installed, else a minimal one-line bar of its own; with
`enabled=False` (or a zero total) a no-op. Progress never goes to stdout.
"""

from __future__ import annotations

import sys
import time


class _NoBar:
    def update(self, n_bytes: int) -> None:
        pass

    def close(self) -> None:
        pass


class _LineBar:
    """Redraws `description  42% 1.2/2.9 GB` on one stderr line, at most ten times a second."""

    def __init__(self, total: int, description: str):
        self.total, self.description, self.done, self.last_draw = total, description, 0, 0.0

    def update(self, n_bytes: int) -> None:
        self.done += n_bytes
        now = time.monotonic()
        if now - self.last_draw >= 0.1 or self.done >= self.total:
            self.last_draw = now
            percent = 100 * self.done // max(self.total, 1)
            sys.stderr.write(f"\r{self.description} {percent:3d}% {self.done / 1e9:.2f}/{self.total / 1e9:.2f} GB")
            sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def progress_bar(total_bytes: int, description: str, enabled: bool = True):
    if not enabled or total_bytes <= 0:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _LineBar(total_bytes, description)
    return tqdm(total=total_bytes, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, leave=False, dynamic_ncols=True)
