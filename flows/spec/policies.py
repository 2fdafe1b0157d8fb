"""Routing policies: how a job's cells are spread over its channels (design.md, "Channels
and routing"). One class per policy serves both sides, so the plan's estimate and the run
follow the same rule:

    policy = routing_policy("cheapest")
    policy.dynamic(deadline=True)                 # the router: cells go where there is room
    policy.rank(lanes, price)                     # the router: the order channels are tried
    policy.allocate(estimates, 10_000, 7200.0)    # the plan: cells per channel

The router (`flows.engine.routing.Router`) hands channels to cells at run time; the plan
(`flows.spec.allocation.allocate`) estimates where they will go. Both look a policy up by the
spec's `routing:` name in `POLICIES`; the schema's `routing` enum lists the same names
(tests/flows/spec/test_policies.py). A new policy is a subclass here, added to `POLICIES`
and to that enum.

Lanes are whatever the caller keeps per channel (the router's `Lane`, the plan's
`LaneEstimate`): the run-time methods are generic over them and take what they need to know
as functions; the plan's arithmetic needs an `Estimate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, Protocol, TypeVar

L = TypeVar("L")


class Estimate(Protocol):
    """What the plan knows of a channel (`flows.spec.allocation.LaneEstimate`)."""

    @property
    def price_usd(self) -> float: ...

    def per_second(self) -> float:
        """Cells it finishes per second."""
        ...

    def capacity(self, seconds: float, most: int) -> int:
        """The most cells (up to `most`) it finishes within `seconds`."""
        ...


class RoutingPolicy:
    """One `routing:` value. The base class is the common case: channels in spec order,
    each cell waiting for its channel, nothing held back."""

    name: ClassVar[str]
    # `deadline:` means something to it (the loader refuses a deadline with any other)
    uses_deadline: ClassVar[bool] = False
    # The provider list is an order of fallbacks (the plan shows the primary and the rest)
    ordered: ClassVar[bool] = False

    # -- at run time (flows.engine.routing) -------------------------------------------------

    def dynamic(self, *, deadline: bool) -> bool:
        """Whether a cell goes to whichever channel can take it now, rather than waiting
        for the first one it may use. `deadline`: the run has one."""
        return False

    def rank(self, lanes: Sequence[L], price: Callable[[L], float]) -> list[L]:
        """The order a cell tries its channels in; `price(lane)`: USD for the cell there."""
        return list(lanes)

    def admit(
        self, ranked: list[L], until_deadline: Callable[[L], float] | None,
        waiting: Callable[[], int],
    ) -> list[L]:
        """The ranked channels a dynamic cell may take now. `until_deadline(lane)`: cells
        the lane can finish before the deadline (None: no deadline); `waiting()`: cells of
        the run still to place."""
        return ranked

    def prefer(self, ready: list[L], load: Callable[[L], float]) -> list[L]:
        """Channels that can take a cell now, in the order to try them; `load(lane)`: the
        share of its in-flight slots in use."""
        return ready

    # -- in the plan (flows.spec.allocation) ------------------------------------------------

    def allocate(
        self, lanes: Sequence[Estimate], cells: int, deadline_s: float | None = None
    ) -> list[int]:
        """Cells per lane, in the order of `lanes` (at least one lane)."""
        raise NotImplementedError


class Fallback(RoutingPolicy):
    """The channels in spec order: a cell waits for the first one it has not tried; the
    others only take cells the first cannot run. The plan puts every cell on the first."""

    name = "fallback"
    ordered = True

    def allocate(
        self, lanes: Sequence[Estimate], cells: int, deadline_s: float | None = None
    ) -> list[int]:
        return [cells] + [0] * (len(lanes) - 1)


class Spread(RoutingPolicy):
    """The first channel with capacity now (a free in-flight slot and a create free in its
    rate window; the least loaded when several have one): every channel takes the next
    cell whenever it can, so throughput is about the sum of the channels. The plan shares
    the cells in proportion to each channel's throughput, so they finish together."""

    name = "spread"

    def dynamic(self, *, deadline: bool) -> bool:
        return True

    def prefer(self, ready: list[L], load: Callable[[L], float]) -> list[L]:
        return sorted(ready, key=load)

    def allocate(
        self, lanes: Sequence[Estimate], cells: int, deadline_s: float | None = None
    ) -> list[int]:
        return proportional(lanes, cells)


class Cheapest(RoutingPolicy):
    """Without a deadline: fallback over the channels sorted by price (the plan: every cell
    on the cheapest). With one: spread over the cheapest channels that can finish the cells
    still waiting by the deadline; a dearer channel joins only while the cheaper ones
    cannot, judged at run time from each channel's rate window, in-flight cap and observed
    latency, in the plan from its estimate. When even all of them cannot, the plan shares
    the cells as spread does (as fast as possible)."""

    name = "cheapest"
    uses_deadline = True

    def dynamic(self, *, deadline: bool) -> bool:
        return deadline

    def rank(self, lanes: Sequence[L], price: Callable[[L], float]) -> list[L]:
        return sorted(lanes, key=price)  # stable: equal prices keep the spec's order

    def admit(
        self, ranked: list[L], until_deadline: Callable[[L], float] | None,
        waiting: Callable[[], int],
    ) -> list[L]:
        if until_deadline is None:
            return ranked
        needed = max(1, waiting())
        admitted: list[L] = []
        capacity = 0.0
        for lane in ranked:
            admitted.append(lane)
            capacity += until_deadline(lane)
            if capacity >= needed:
                break
        return admitted

    def allocate(
        self, lanes: Sequence[Estimate], cells: int, deadline_s: float | None = None
    ) -> list[int]:
        order = self.rank(range(len(lanes)), lambda i: lanes[i].price_usd)
        if deadline_s is None:
            return [cells if i == order[0] else 0 for i in range(len(lanes))]
        counts = [0] * len(lanes)
        left = cells
        for i in order:
            counts[i] = min(left, lanes[i].capacity(deadline_s, left))
            left -= counts[i]
            if left == 0:
                return counts
        return proportional(lanes, cells)  # the deadline cannot be met: as fast as possible


def proportional(lanes: Sequence[Estimate], cells: int) -> list[int]:
    """Largest-remainder shares of `cells` by throughput."""
    weights = [lane.per_second() for lane in lanes]
    total = sum(weights) or 1.0
    exact = [cells * w / total for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(lanes)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: cells - sum(counts)]:
        counts[i] += 1
    return counts


POLICIES: Mapping[str, RoutingPolicy] = {
    policy.name: policy for policy in (Fallback(), Spread(), Cheapest())
}
ROUTINGS: tuple[str, ...] = tuple(POLICIES)              # the schema's `routing` enum
DEFAULT_ROUTING = Fallback.name
DEADLINE_ROUTINGS: tuple[str, ...] = tuple(
    name for name, policy in POLICIES.items() if policy.uses_deadline
)


def routing_policy(routing: str | RoutingPolicy) -> RoutingPolicy:
    """The policy of a `routing:` name (a policy is returned as it is)."""
    if isinstance(routing, RoutingPolicy):
        return routing
    try:
        return POLICIES[routing]
    except KeyError:
        raise ValueError(f"unknown routing {routing!r} (known: {', '.join(ROUTINGS)})") from None
