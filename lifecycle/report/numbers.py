"""Numbers as a reader wants them: ``2.30B``, ``53,536``, ``6.226``, ``0.61``; never ``2302318768.8970``."""

from __future__ import annotations

import math
from typing import Any

_SUFFIXES = ((1e12, "T"), (1e9, "B"), (1e6, "M"))


def readable(value: Any, digits: int = 4) -> str:
    """A number in at most ``digits`` significant digits, thousands separated, millions and up with a
    suffix; ``-`` for None or NaN; anything else as its text."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "-" if math.isnan(value) else ("∞" if value > 0 else "-∞")
    size = abs(value)
    for scale, suffix in _SUFFIXES:
        if size >= scale:
            return f"{value / scale:.{max(digits - 1, 1)}g}{suffix}" if value / scale < 100 else f"{value / scale:,.0f}{suffix}"
    if size >= 10 ** (digits - 1) or (float(value).is_integer() and size < 1e6):
        return f"{value:,.0f}"
    if size >= 1e-3:
        text = f"{value:.{digits}g}"
        return text if "e" not in text else f"{value:.{digits}f}"
    return f"{value:.2e}"


def readable_bytes(size: int | float | None) -> str:
    """``141,952`` bytes as ``139 KiB``."""
    if size is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{readable(size)} {unit}" if unit == "B" else f"{size:.3g} {unit}"
        size /= 1024
    return f"{size:.3g} GiB"


def readable_seconds(seconds: float | None) -> str:
    """``4.6 s``, ``3 min 12 s``, ``1 h 05 min``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


__all__ = ["readable", "readable_bytes", "readable_seconds"]
