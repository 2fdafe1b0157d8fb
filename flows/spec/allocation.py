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
from nbp.flows.spec.rate import Rate


@dataclass(frozen=True)
class LaneEstimate:
    """A channel as the plan sees it."""

    key: str
    price_usd: float            # mean price of one of this job's cells here
    rate: Rate | None
    max_in_flight: int
    latency_s: float

    def per_second(self) -> float:
        by_slots = self.max_in_flight / max(self.latency_s, 1e-3)
        return min(by_slots, self.rate.per_second) if self.rate else by_slots

    def seconds(self, cells: int) -> float:
        return duration_s(cells, self.rate, self.max_in_flight, self.latency_s)

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
    cells: int, rate: Rate | None, max_in_flight: int, mean_latency_s: float
) -> float:
    """One channel's time for `cells` (flows.spec.plan's module docstring)."""
    if cells <= 0:
        return 0.0
    by_rate = rate.window_s * (math.ceil(cells / rate.count) - 1) if rate else 0.0
    by_concurrency = mean_latency_s * (math.ceil(cells / max(1, max_in_flight)) - 1)
    return max(by_rate, by_concurrency) + mean_latency_s


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
