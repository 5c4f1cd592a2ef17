"""A text progress bar for job messages: `▰▰▰▰▱▱▱▱▱▱ 40%`."""

from __future__ import annotations

FILLED = "▰"
EMPTY = "▱"


def progress_bar(step: int, total: int, width: int = 12) -> str:
    """The bar for `step` of `total` (clamped to 0–100 %), with the percentage."""
    fraction = 0.0 if total <= 0 else min(1.0, max(0.0, step / total))
    filled = round(fraction * width)
    return f"{FILLED * filled}{EMPTY * (width - filled)} {round(fraction * 100)}%"
