"""Which channel a cell is created on next (design.md, "Channels and routing").

The spec's routing policy (`flows.spec.policies`: fallback, spread, cheapest) says in which
order a cell tries its channels, whether it waits for one or takes whichever can take it
now, and which of those it may take; the router applies it to live channels: a channel's
throughput comes from its rate window, in-flight cap and latency (what its poll schedule
observed while running; until then the plan's estimate).

`take` returns a `Ticket` with an in-flight slot of the channel held. Under a dynamic policy
(spread, cheapest by a deadline) it also holds the create's token of the rate window, taken
in the same step as the choice, so two cells never count on one token (`Ticket.spent`); a
ticket whose create is not sent gives it back (`release`).

Which channels a cell may use at all is its pin's: a cell pinned to a provider (a `provider`
matrix axis, `Cell.provider`) goes to that provider's channels only, the others to the
channels of the spec's `provider:` list (`routed`). Which of those it may still use (a
channel it failed on, an account refused for the run) is the runner's to say (`exclude`):
the never-pay-twice rules do not change with routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from nbp.flows.engine.throttle import AccountThrottle
from nbp.flows.spec.channels import Channel
from nbp.flows.spec.model import Cell
from nbp.flows.spec.policies import RoutingPolicy, routing_policy


@dataclass
class Lane:
    """A channel at run time: its throttle, its price and how long its tasks take."""

    channel: Channel
    throttle: AccountThrottle
    price: Callable[[Cell], float]           # USD for one task of the cell (ranks lanes)
    planned_latency_s: float                 # the plan's estimate, until tasks are observed
    held: Callable[[Cell], float] | None = None  # what its create holds (else `price`)

    @property
    def key(self) -> str:
        return self.channel.key

    @property
    def latency_s(self) -> float:
        """How long a task takes here: what the account's poll schedule has observed
        (`PollSchedule.typical_s`), else the plan's estimate."""
        return self.throttle.polling.typical_s or self.planned_latency_s

    def per_second(self) -> float:
        """Cells this channel can finish per second: its rate window or its in-flight cap
        over its latency, whichever binds."""
        by_slots = self.throttle.in_flight.usable / max(self.latency_s, 1e-3)
        rate = self.throttle.rate
        if rate is None:
            return by_slots
        return min(by_slots, rate.usable / rate.window_s)

    def ready_in(self, cell: Cell | None = None) -> float:
        """Seconds until this channel can take a cell (inf while its slots are full): its
        rate window, a pause after a rate signal, and its provider's spend window for the
        cell's price."""
        throttle = self.throttle
        if not throttle.in_flight.has_room():
            return math.inf
        wait = max(throttle.rate.wait_time() if throttle.rate else 0.0, throttle.pause_left())
        if throttle.spend is not None and cell is not None:
            wait = max(wait, throttle.spend.ready_in((self.held or self.price)(cell)))
        return wait

    def load(self) -> float:
        slots = self.throttle.in_flight
        return slots.in_flight / max(1, slots.usable)


@dataclass
class Ticket:
    """A cell's claim on one channel for one create."""

    lane: Lane
    spent: bool = False       # the create's token of the rate window is already taken
    released: bool = field(default=False, repr=False)

    @property
    def key(self) -> str:
        return self.lane.key

    async def release(self) -> None:
        """The slot (and an unused token) go back; once."""
        if self.released:
            return
        self.released = True
        if self.spent and self.lane.throttle.rate is not None:
            self.lane.throttle.rate.refund()
            self.spent = False
        await self.lane.throttle.in_flight.release()

    def token_used(self) -> None:
        """The create left with the spent token: nothing to give back."""
        self.spent = False


class Router:
    """Hands out channels to cells; one per run, shared by every chunk."""

    def __init__(
        self,
        routing: str | RoutingPolicy,
        lanes: Sequence[Lane],
        *,
        deadline_s: float | None = None,
        routed: Collection[str] | None = None,
        waiting: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = routing_policy(routing)
        self.routed = routed  # providers of unpinned cells; None: every channel's
        self.lanes: dict[str, Lane] = {lane.key: lane for lane in lanes}
        self.order = tuple(lanes)
        self.deadline_at = clock() + deadline_s if deadline_s is not None else None
        self.waiting = waiting   # cells of the run not yet created nor ended
        self.clock = clock
        self._changed = asyncio.Event()
        for lane in lanes:
            lane.throttle.in_flight.add_release_listener(self._changed.set)

    @property
    def dynamic(self) -> bool:
        """Whether cells go to whichever channel can take them now."""
        return self.policy.dynamic(deadline=self.deadline_at is not None)

    def lane(self, key: str) -> Lane | None:
        return self.lanes.get(key)

    async def take(
        self, cell: Cell, exclude: Collection[str] = (), *, only: str | None = None
    ) -> Ticket | None:
        """A channel for the cell's next create, slot held; None when none is left.
        `only`: that channel (a new task where the last one failed)."""
        if only is not None:
            lane = self.lanes.get(only)
            return await self._wait_for(lane) if lane and only not in exclude else None
        candidates = [lane for lane in self._ranked(cell)
                      if lane.key not in exclude and self.serves(lane, cell)]
        if not candidates:
            return None
        if not self.dynamic:
            return await self._wait_for(candidates[0])
        while True:
            usable = self._admitted(candidates)
            ticket = self._take_ready(usable, cell)
            if ticket is not None:
                return ticket
            soonest = min(lane.ready_in(cell) for lane in usable)
            self._changed.clear()  # a slot freed from here on wakes us
            timeout = None if math.isinf(soonest) else max(soonest, 0.001)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    def open_channels(self, cell: Cell, exclude: Collection[str] = ()) -> list[str]:
        """The channels the cell may still be created on, besides `exclude` (what an
        overloaded channel asks before a cell leaves it)."""
        return [lane.key for lane in self._ranked(cell)
                if lane.key not in exclude and self.serves(lane, cell)]

    def serves(self, lane: Lane, cell: Cell) -> bool:
        """Whether the cell may run on this channel at all (see the module docstring)."""
        provider = lane.channel.provider
        if cell.provider is not None:
            return provider == cell.provider
        return self.routed is None or provider in self.routed

    # -- choosing ----------------------------------------------------------------------------

    def _ranked(self, cell: Cell) -> list[Lane]:
        return self.policy.rank(self.order, lambda lane: lane.price(cell))

    def _admitted(self, ranked: list[Lane]) -> list[Lane]:
        """The ranked channels the policy lets a cell take now, judged by what each can
        finish before the deadline, if there is one."""
        if self.deadline_at is None:
            return self.policy.admit(ranked, None, self.waiting)
        left = self.deadline_at - self.clock()

        def until_deadline(lane: Lane) -> float:
            return lane.per_second() * max(0.0, left - lane.latency_s)

        return self.policy.admit(ranked, until_deadline, self.waiting)

    def _take_ready(self, lanes: list[Lane], cell: Cell | None = None) -> Ticket | None:
        """A ticket on a channel that can take the cell now, without waiting, tried in the
        policy's order of preference."""
        ready = self.policy.prefer([lane for lane in lanes if lane.ready_in(cell) == 0.0],
                                   Lane.load)
        for lane in ready:
            rate = lane.throttle.rate
            if rate is not None and not rate.try_spend():
                continue
            if not lane.throttle.in_flight.try_acquire():
                if rate is not None:
                    rate.refund()
                continue
            return Ticket(lane, spent=rate is not None)
        return None

    async def _wait_for(self, lane: Lane | None) -> Ticket | None:
        if lane is None:
            return None
        await lane.throttle.in_flight.acquire()
        return Ticket(lane)


def make_lanes(
    found: Sequence[Channel], throttles: Mapping[str, AccountThrottle],
    prices: Mapping[str, Callable[[Cell], float]], latency_s: Mapping[str, float],
    held: Mapping[str, Callable[[Cell], float]] | None = None,
) -> list[Lane]:
    """One lane per channel; `prices`, `latency_s` and `held` (what a create holds, where it
    differs from its price) by provider."""
    held = held or {}
    return [
        Lane(channel, throttles[channel.key], prices[channel.provider],
             latency_s.get(channel.provider, 20.0), held.get(channel.provider))
        for channel in found
    ]
