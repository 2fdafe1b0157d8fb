"""How many cells each channel takes under each routing: the plan's estimate of what the
router (flows.engine.routing) will do, from the same prices and limits.

    lanes = [LaneEstimate("kie", 0.09, Rate(20, 10), 100, 20.0), ...]
    allocate("spread", lanes, 10_000)           # [3334, 3333, 3333]
    allocate("cheapest", lanes, 10_000, 7200)   # the cheapest first, up to the deadline

    fallback   every cell on the first channel (the others take only what it cannot run)
    spread     in proportion to each channel's throughput, so they finish together
    cheapest   without a deadline, every cell on the cheapest channel; with one, the
               cheapest channels first, each up to what it can finish by the deadline, and
               in proportion to throughput when even all of them cannot
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from flows.spec.rate import Rate


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
    routing: str, lanes: Sequence[LaneEstimate], cells: int, deadline_s: float | None = None
) -> list[int]:
    """Cells per lane, in the order of `lanes`."""
    if not lanes:
        return []
    if routing == "spread":
        return _proportional(lanes, cells)
    if routing == "cheapest":
        order = sorted(range(len(lanes)), key=lambda i: lanes[i].price_usd)
        if deadline_s is None:
            return [cells if i == order[0] else 0 for i in range(len(lanes))]
        return _by_deadline(lanes, cells, deadline_s, order)
    return [cells] + [0] * (len(lanes) - 1)


def meets(lanes: Sequence[LaneEstimate], counts: Sequence[int], deadline_s: float) -> bool:
    return all(lane.seconds(n) <= deadline_s for lane, n in zip(lanes, counts, strict=True))


def _by_deadline(
    lanes: Sequence[LaneEstimate], cells: int, deadline_s: float, order: list[int]
) -> list[int]:
    counts = [0] * len(lanes)
    left = cells
    for i in order:
        counts[i] = min(left, lanes[i].capacity(deadline_s, left))
        left -= counts[i]
        if left == 0:
            return counts
    return _proportional(lanes, cells)  # the deadline cannot be met: as fast as possible


def _proportional(lanes: Sequence[LaneEstimate], cells: int) -> list[int]:
    """Largest-remainder shares of `cells` by throughput."""
    weights = [lane.per_second() for lane in lanes]
    total = sum(weights) or 1.0
    exact = [cells * w / total for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(lanes)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: cells - sum(counts)]:
        counts[i] += 1
    return counts
