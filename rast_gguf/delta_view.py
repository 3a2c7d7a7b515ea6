"""Colour a generated text piece by how much the small pair's delta moved its token.

`delta_class(stats)` sorts one step's `DeltaStats` into a class: "changed" (RAST picked another
token than the large model alone would have), "raised" / "boosted" (the delta made the chosen token
at least SHIFT_RAISED / SHIFT_BOOSTED nats more likely), "lowered" (it was picked although the delta
made it less likely), or "" (barely touched). `colorize(piece, stats, color)` wraps the piece in the
class's ANSI style and `legend(color)` explains the styles. Both are pure functions of their
arguments; `use_color(stream)` decides colour once (a terminal, and NO_COLOR unset). Without colour
the text comes back unchanged.
"""

from __future__ import annotations

import os
from typing import TextIO

from rast_gguf.generate import DeltaStats

SHIFT_BOOSTED = 1.0    # nats: p(chosen) multiplied by e or more
SHIFT_RAISED = 0.25    # nats: p(chosen) up by about 28% or more
RESET = "\x1b[0m"
STYLES = {
    "changed": "\x1b[1;35m",  # bold magenta
    "boosted": "\x1b[1;32m",  # bold green
    "raised": "\x1b[32m",     # green
    "lowered": "\x1b[33m",    # yellow
}
LEGEND = {
    "changed": "RAST picked another token than the large model alone",
    "boosted": f"the delta made this token >= e^{SHIFT_BOOSTED:g} times more likely",
    "raised": f"the delta made it >= e^{SHIFT_RAISED:g} times more likely",
    "lowered": f"the delta made it >= e^{SHIFT_RAISED:g} times less likely",
}


def use_color(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def delta_class(stats: DeltaStats) -> str:
    if stats.changed:
        return "changed"
    if stats.shift >= SHIFT_BOOSTED:
        return "boosted"
    if stats.shift >= SHIFT_RAISED:
        return "raised"
    if stats.shift <= -SHIFT_RAISED:
        return "lowered"
    return ""


def colorize(piece: str, stats: DeltaStats | None, color: bool) -> str:
    style = STYLES.get(delta_class(stats)) if stats is not None and color else None
    if not style or not piece:
        return piece
    return f"{style}{piece}{RESET}"


def legend(color: bool) -> str:
    """One line per class; each label is drawn in its own style when color is on."""
    lines = ["colours (how the small pair's delta moved each token):"]
    for name, text in LEGEND.items():
        label = f"{STYLES[name]}{name}{RESET}" if color else f"[{name}]"
        lines.append(f"  {label}: {text}")
    lines.append("  plain: barely moved")
    return "\n".join(lines)
