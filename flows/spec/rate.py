"""Time as specs and providers write it: a create rate ("20/10s" is 20 creates per 10
seconds) and a duration ("1h30m", the `deadline` of cheapest routing)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_DURATION = re.compile(r"^\s*(?:\d+(?:\.\d+)?\s*[smhd]\s*)+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_DURATION_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in "90m", "2h", "1h30m", "1d" (`ValueError` otherwise)."""
    if not _DURATION.match(text):
        raise ValueError(f"duration {text!r} is not a number and a unit (s, m, h, d), "
                         "e.g. '2h' or '1h30m'")
    seconds = sum(float(amount) * _DURATION_UNIT_S[unit]
                  for amount, unit in _DURATION_PART.findall(text))
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be longer than zero")
    return seconds


@dataclass(frozen=True)
class Rate:
    """`count` creates per `window_s` seconds. `Rate.parse("20/10s")`."""

    count: int
    window_s: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        match = _RATE.match(text)
        if not match:
            raise ValueError(f"rate {text!r} is not of the form N/Ws, e.g. '20/10s'")
        count, amount, unit = int(match[1]), match[2], match[3]
        window = (float(amount) if amount else 1.0) * _UNIT_S[unit]
        if count < 1 or window <= 0:
            raise ValueError(f"rate {text!r} must allow at least one create per positive window")
        return cls(count, window)

    @property
    def per_second(self) -> float:
        return self.count / self.window_s
