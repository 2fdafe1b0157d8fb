"""How many cells each channel takes under each routing: the plan's estimate of what the
router (flows.engine.routing) will do, from the same prices and limits. Each policy's rule
is its class's (`flows.spec.policies`); here is the plan's model of a channel.

    lanes = [LaneEstimate("kie", 0.09, Rate(20, 10), 100, 20.0), ...]
    allocate("spread", lanes, 10_000)           # [3334, 3333, 3333]
    allocate("cheapest", lanes, 10_000, 7200)   # the cheapest first, up to the deadline
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from nbp.flows.spec.policies import RoutingPolicy, routing_policy
from nbp.flows.spec.rate import Rate, SpendLimit


@dataclass(frozen=True)
class LaneEstimate:
    """A channel as the plan sees it."""

    key: str
    price_usd: float            # mean price of one of this job's cells here
    rate: Rate | None
    max_in_flight: int
    latency_s: float
    # this channel's share of its provider's spend window (the provider's accounts split it)
    spend: SpendLimit | None = None

    def per_second(self) -> float:
        by_slots = self.max_in_flight / max(self.latency_s, 1e-3)
        found = min(by_slots, self.rate.per_second) if self.rate else by_slots
        if self.spend is not None and self.price_usd > 0:
            found = min(found, self.spend.usd / self.price_usd / self.spend.window_s)
        return found

    def seconds(self, cells: int) -> float:
        return duration_s(cells, self.rate, self.max_in_flight, self.latency_s,
                          self.spend, self.price_usd)

    def binding(self, cells: int) -> str | None:
        """Which limit decides `seconds(cells)`: "spend", "rate" or "in_flight" (None: all
        cells go in one wave, only the latency counts)."""
        terms = duration_terms(cells, self.rate, self.max_in_flight, self.latency_s,
                               self.spend, self.price_usd)
        name, longest = max(terms.items(), key=lambda item: item[1])
        return name if longest > 0 else None

    def capacity(self, seconds: float, most: int) -> int:
        """The most cells (up to `most`) this channel finishes within `seconds`."""
        low, high = 0, most
        while low < high:
            mid = (low + high + 1) // 2
            if self.seconds(mid) <= seconds:
                low = mid
            else:
                high = mid - 1
        return low


def duration_s(
    cells: int, rate: Rate | None, max_in_flight: int, mean_latency_s: float,
    spend: SpendLimit | None = None, price_usd: float = 0.0,
) -> float:
    """One channel's time for `cells` (flows.spec.plan's module docstring)."""
    if cells <= 0:
        return 0.0
    terms = duration_terms(cells, rate, max_in_flight, mean_latency_s, spend, price_usd)
    return max(terms.values()) + mean_latency_s


def duration_terms(
    cells: int, rate: Rate | None, max_in_flight: int, mean_latency_s: float,
    spend: SpendLimit | None = None, price_usd: float = 0.0,
) -> dict[str, float]:
    """When the last create can leave under each limit: the rate window, the waves of tasks
    in flight, the spend window (`images_per_window` of `price_usd` per window)."""
    if cells <= 0:
        return {"rate": 0.0, "in_flight": 0.0, "spend": 0.0}
    by_rate = rate.window_s * (math.ceil(cells / rate.count) - 1) if rate else 0.0
    by_concurrency = mean_latency_s * (math.ceil(cells / max(1, max_in_flight)) - 1)
    by_spend = 0.0
    if spend is not None and price_usd > 0:
        per_window = spend.images_per_window(price_usd) or spend.usd / price_usd
        by_spend = spend.window_s * (math.ceil(cells / per_window - 1e-9) - 1)
    return {"rate": by_rate, "in_flight": by_concurrency, "spend": by_spend}


def allocate(
    routing: str | RoutingPolicy, lanes: Sequence[LaneEstimate], cells: int,
    deadline_s: float | None = None,
) -> list[int]:
    """Cells per lane, in the order of `lanes`, as the `routing` policy spreads them."""
    if not lanes:
        return []
    return routing_policy(routing).allocate(lanes, cells, deadline_s)


def meets(lanes: Sequence[LaneEstimate], counts: Sequence[int], deadline_s: float) -> bool:
    return all(lane.seconds(n) <= deadline_s for lane, n in zip(lanes, counts, strict=True))
