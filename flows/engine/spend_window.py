"""Money per rolling window: no window of `limits.<provider>.spend.window_s` seconds holds
more than `usd` of creates, all accounts of the provider together.

Google caps what a billing account spends in any rolling 10 minutes (Tier 1 $10, Tier 2 $50,
Tier 3 $200; past it every request answers 429 RESOURCE_EXHAUSTED, protocols-gemini.md §10),
and extra keys usually share one billing account: so one `SpendWindow` serves every channel
of its provider (`flows.engine.job.make_throttles`), in this process.

    window = SpendWindow(SpendLimit(10.0, 600.0))
    await window.reserve(intent_key, 0.134)   # waits until $0.134 more fits, then holds it
    window.answered(intent_key)               # the create's answer came: counted from now
    window.billed(intent_key, 0.1375)         # ... at what the provider says it cost
    window.release(intent_key)                # nothing was created: nothing was billed

A create holds what the budget holds for it (`Runner.price`: `ProviderRules.hold` times the
provider's `flows.engine.markup.CostMarkup`, which covers the thinking and text tokens
Google bills besides the image: an image of $0.134 costs about $0.1375) from the moment it
is sent: the throttle reserves it before the intent is journalled
(`AccountThrottle.before_create`), so a create that waits here has no intent yet. It counts
from then until one window after its answer: the provider bills it somewhere between the
send and the answer, so whichever moment its window counts from, ours counts too. A create
whose answer never comes stays counted. An answer that reports the cost replaces the hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from nbp.flows.spec.rate import SpendLimit

# Server and client clocks see a create a few ms apart (as `throttle.WINDOW_MARGIN_S`).
WINDOW_MARGIN_S = 0.05
# How long a router waits to look again at a window another create is queued for.
QUEUED_WAIT_S = 0.05
EPSILON_USD = 1e-9


@dataclass
class _Held:
    usd: float         # what it counts for: the create's hold, then its cost
    at: float          # when it was reserved; once answered, when the answer came
    answered: bool = False


class SpendWindow:
    """Rolling-window spend of one provider (see the module docstring)."""

    def __init__(self, limit: SpendLimit, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = limit.window_s + WINDOW_MARGIN_S
        self.waits = 0                  # creates that had to wait for room
        self._clock = clock
        self._held: dict[str, _Held] = {}
        self._lock = asyncio.Lock()     # FIFO: waiters are served in arrival order
        self._changed = asyncio.Event()

    # -- what it holds ------------------------------------------------------------------

    def held_usd(self) -> float:
        """What the window counts now."""
        self._forget(self._clock())
        return sum(h.usd for h in self._held.values())

    def wait_time(self, usd: float) -> float:
        """Seconds until `usd` more fits (0: now; inf: only after an answer arrives)."""
        now = self._clock()
        self._forget(now)
        counted = self._counted(usd)
        excess = sum(h.usd for h in self._held.values()) + counted - self.limit.usd
        if excess <= EPSILON_USD or not self._held:
            return 0.0
        freed = 0.0
        for held in sorted((h for h in self._held.values() if h.answered), key=lambda h: h.at):
            freed += held.usd
            if freed >= excess - EPSILON_USD:
                return max(0.0, held.at + self.window_s - now)
        return math.inf

    def ready_in(self, usd: float) -> float:
        """`wait_time`, and a little more while another create waits for room (`reserve`
        serves that one first): what a router reads before it picks a channel."""
        wait = self.wait_time(usd)
        return max(wait, QUEUED_WAIT_S) if self._lock.locked() else wait

    # -- a create's life ------------------------------------------------------------------

    async def reserve(self, key: str, usd: float) -> None:
        """Wait until `usd` fits, then hold it under `key`. A key held
        already (the same intent sent again) is counted once."""
        if key in self._held:
            return
        async with self._lock:
            waited = False
            while (wait := self.wait_time(usd)) > 0:
                waited = True
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(),
                                           None if math.isinf(wait) else wait)
            self.waits += waited
            self._hold(key, usd)

    def try_reserve(self, key: str, usd: float) -> bool:
        """Hold `usd` under `key` now if it fits and nobody waits for room (no await between
        the check and the hold)."""
        if key in self._held:
            return True
        if self._lock.locked() or self.wait_time(usd) > 0:
            return False
        self._hold(key, usd)
        return True

    def answered(self, key: str) -> None:
        """The create's answer (or failure) arrived: it counts one window from now."""
        held = self._held.get(key)
        if held is not None:
            held.at, held.answered = self._clock(), True
            self._changed.set()

    def billed(self, key: str, cost_usd: float | None) -> None:
        """The provider reported what the create cost: the window counts that (what later
        creates hold learns from it in `flows.engine.markup`, where the runner reports it)."""
        held = self._held.get(key)
        if held is None or cost_usd is None or cost_usd < 0:
            return
        held.usd = cost_usd
        self._changed.set()

    def release(self, key: str) -> None:
        """Nothing was created (refused, rate limited, never sent): nothing was billed."""
        if self._held.pop(key, None) is not None:
            self._changed.set()

    # -- inside ---------------------------------------------------------------------------

    def _counted(self, usd: float) -> float:
        # Never more than the whole window: an image the window holds alone always goes.
        return min(usd, self.limit.usd)

    def _hold(self, key: str, usd: float) -> None:
        self._held[key] = _Held(self._counted(usd), self._clock())

    def _forget(self, now: float) -> None:
        gone = [key for key, h in self._held.items()
                if h.answered and now - h.at >= self.window_s]
        for key in gone:
            del self._held[key]
