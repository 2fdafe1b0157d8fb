"""Time as specs and providers write it: a create rate ("20/10s" is 20 creates per 10
seconds), money per rolling window (`spend: {usd: 10, window: 600}`) and a duration ("1h30m",
the `deadline` of cheapest routing)."""

from __future__ import annotations

import math
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


# A spend window longer than a day is no throttle any more: `budget.max_usd` caps a run.
MAX_SPEND_WINDOW_S = 86_400.0
UNBOUNDED_IMAGES = 2**31


@dataclass(frozen=True)
class SpendLimit:
    """At most `usd` of creates in any rolling `window_s` seconds, all accounts of a provider
    together (Google caps a billing account: Tier 1 $10 per 10 minutes).

        SpendLimit(10.0, 600.0).images_per_window(0.134)   # 74
    """

    usd: float
    window_s: float

    def __post_init__(self) -> None:
        if not self.usd > 0:
            raise ValueError(f"spend usd must be more than 0 (got {self.usd:g})")
        if not 0 < self.window_s <= MAX_SPEND_WINDOW_S:
            raise ValueError(f"spend window must be more than 0 and at most "
                             f"{MAX_SPEND_WINDOW_S:g} seconds (got {self.window_s:g})")

    def images_per_window(self, price_usd: float) -> int:
        """Whole images of `price_usd` that fit in one window (0 when one does not)."""
        if price_usd <= 0:
            return UNBOUNDED_IMAGES  # a free image never fills the window
        return math.floor(self.usd / price_usd + 1e-9)

    def render(self) -> str:
        """"$10 / 10 min", as `nbp plan` says it."""
        usd = f"${self.usd:g}" if self.usd >= 1 else f"${self.usd:.2f}"
        return f"{usd} / {_window(self.window_s)}"


def _window(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
