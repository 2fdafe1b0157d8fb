"""Times a provider reports about a task, read as seconds (`Finished.queue_s`,
`Finished.generation_s`).

    epoch_s(1757584164490)     # 1757584164.49: milliseconds, by magnitude
    epoch_s("1734513807")      # 1734513807.0: Wiro's seconds, as text
    epoch_s("0")               # None: Wiro's "not reached"
    between(1.0, 3.5)          # 2.5; None when either is missing or the end comes first
"""

from __future__ import annotations

from typing import Any

# An epoch timestamp this large is in milliseconds: as seconds it would be past the year 5000.
MILLISECONDS_FROM = 1e11


def epoch_s(value: Any) -> float | None:
    """A Unix timestamp (a number or its text; seconds or milliseconds) in seconds; None for
    anything else, and for 0 or less (unset)."""
    number = number_of(value)
    if number is None or number <= 0:
        return None
    return number / 1000 if number >= MILLISECONDS_FROM else number


def number_of(value: Any) -> float | None:
    """A finite number, or its text; None otherwise (booleans included)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def between(start: float | None, end: float | None) -> float | None:
    """Seconds from `start` to `end` (rounded to the millisecond); None when either is None
    or `end` comes before `start`."""
    if start is None or end is None or end < start:
        return None
    return round(end - start, 3)
