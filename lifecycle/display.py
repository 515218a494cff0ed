"""What a user reads while lifecycle runs: one log-line helper and one way to print numbers.

* :func:`say` is the log line of the library (loading a model, compiling DeepSpeed ops): one line on
  stderr, from the main process only, so it never mixes into a command's results on stdout.
* :func:`number`, :func:`count`, :func:`duration` and :func:`size` are the one formatter of scores,
  losses, perplexities, token and parameter counts, times and bytes, for the console, the summary
  and model cards alike: a perplexity of ``2302318768.897`` prints as ``2.30e9``, a count of tokens
  as ``1,234,567``.

Only rich is imported here (lazily), so every module may use it without slowing ``lifecycle --help``.
"""

from __future__ import annotations

import math
import os
from typing import Any


def is_main_process() -> bool:
    """Under ``accelerate launch`` only rank 0 talks; the others would print every line N times."""
    return os.environ.get("RANK", "0") == "0"


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True, highlight=False)


def say(message: str, console: Any = None) -> None:
    """One plain line on stderr (no rich markup), main process only."""
    if is_main_process():
        (console or stderr_console()).print(message, markup=False, highlight=False)


def number(value: Any, decimals: int = 4) -> str:
    """A score, loss or perplexity, readable at any magnitude.

    Below 1: ``decimals`` places (``0.6100``, lm-eval's convention for accuracies); from 1 to 10⁶
    about ``decimals + 1`` significant digits (``2.3026``, ``123.46``, ``12,346``); from 10⁶, or below
    10⁻ᵈᵉᶜⁱᵐᵃˡˢ, three significant digits in exponent form (``2.30e9``, ``1.23e-5``). Integers are
    counts (:func:`count`); anything that is not a number is shown as it is.
    """
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return count(value)
    if not math.isfinite(value):
        return str(value)  # nan, inf, -inf
    magnitude = abs(value)
    if magnitude >= 1e6 or (0 < magnitude < 10 ** -decimals):
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    places = decimals if magnitude < 1 else max(decimals - int(math.log10(magnitude)), 0)
    return f"{value:,.{places}f}"


_SUFFIXES = ((1e12, "T"), (1e9, "B"), (1e6, "M"))


def compact(value: Any, digits: int = 4) -> str:
    """A number for a table cell: at most ``digits`` significant digits, thousands separated, millions
    and up with a suffix (``2.3B``, ``53,536``, ``6.226``); ``-`` for None or NaN; anything else as its text."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "-" if math.isnan(value) else ("∞" if value > 0 else "-∞")
    magnitude = abs(value)
    for scale, suffix in _SUFFIXES:
        if magnitude >= scale:
            return f"{value / scale:.{max(digits - 1, 1)}g}{suffix}" if value / scale < 100 else f"{value / scale:,.0f}{suffix}"
    if magnitude >= 10 ** (digits - 1) or (float(value).is_integer() and magnitude < 1e6):
        return f"{value:,.0f}"
    if magnitude >= 1e-3:
        text = f"{value:.{digits}g}"
        return text if "e" not in text else f"{value:.{digits}f}"
    return f"{value:.2e}"


def count(value: Any) -> str:
    """A count (tokens, parameters, items) with thousands separators: ``1,234,567``."""
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else number(value)


def short_count(value: int) -> str:
    """A large count in three significant digits: ``4.58M``, ``135M``, ``1.71B``; small ones as they are."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return str(value)


def duration(seconds: float) -> str:
    """``0.4 s``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def size(num_bytes: int) -> str:
    """Bytes on disk in decimal units (``18.3 MB``), as the Hub shows them."""
    from rich.filesize import decimal

    return decimal(num_bytes)


__all__ = ["compact", "count", "duration", "is_main_process", "number", "say", "short_count", "size", "stderr_console"]
