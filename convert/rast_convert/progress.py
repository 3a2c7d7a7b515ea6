"""A byte-counting tqdm bar on stderr for the long steps of a conversion (never on stdout).

`progress_bar(total_bytes, description, enabled)` returns tqdm's bar (`update(n_bytes)`, `close()`);
with `enabled=False` or a zero total it is tqdm's disabled bar, which draws nothing.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total_bytes: int, description: str, enabled: bool = True) -> tqdm:
    return tqdm(total=total_bytes, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, leave=False, dynamic_ncols=True, disable=not enabled or total_bytes <= 0)
