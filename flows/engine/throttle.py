"""Per-account throttles: a create-rate window, a cap on tasks in flight, both adaptive.

A provider + API key is one quota holder, so one `AccountThrottle` serves every cell of a run
that uses that account. Throttling lives here, never in adapters.

Create rate: documented limits are sliding windows ("20 new generation requests per 10 s",
protocols.md §4.5), so the limiter is a token bucket whose tokens come back exactly one window
after they were spent: N creates in any window, never more, and a full burst when idle.
A plain refilling bucket would allow 2N in a window after an idle burst. A create counts from
when its token is taken and, once its answer arrives (`answered()`), from the answer: the
provider admitted it somewhere in between, so the provider's window never sees more than
ours even when a create travels slowly (bench/rate.py measured 6 rejections and half the
rate when every create counted from its token: the first burst left late).

Adaptive: a rate-limit signal halves the usable tokens (never below one) and pauses creates
for Retry-After when given; every quiet window gives one token back. An account without a
create-rate window (Gemini publishes none) is paused instead: Retry-After when given, else a
pause that doubles with each signal that follows soon after another. A concurrency signal
(`RateLimited.concurrency`) lowers the in-flight cap the same way.

Spend: a provider with `limits.<provider>.spend` has one `SpendWindow`
(`flows.engine.spend_window`) that all its accounts share; a create waits there for room for
its price before it takes its rate token.

Polls go when the account's tasks are likely done (`flows.engine.poll_schedule`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from nbp.flows.engine.poll_schedule import PollSchedule
from nbp.flows.engine.spend_window import SpendWindow
from nbp.flows.spec.rate import Rate

# Server and client clocks see a create a few ms apart; leave that much room in each window.
WINDOW_MARGIN_S = 0.05
# How long a router waits to look again at a window another create is queued for.
QUEUED_WAIT_S = 0.05
# An account without a rate window: the pause after a rate signal without Retry-After, doubled
# for each signal within `PAUSE_STREAK_S` of the last, at most `MAX_PAUSE_S`.
FIRST_PAUSE_S = 1.0
MAX_PAUSE_S = 60.0
PAUSE_STREAK_S = 60.0


class SlidingWindowLimiter:
    """At most `usable` creates in any `window_s` seconds; adaptive `usable`."""

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self.window_s = rate.window_s + WINDOW_MARGIN_S
        self.usable = rate.count
        self._spent: deque[float] = deque()
        self._answered = 0  # the first entries of `_spent`: answer times, not token times
        self._paused_until = 0.0
        self._last_signal = 0.0
        self._lock = asyncio.Lock()
        self.signals = 0

    def _wait_time(self, now: float) -> float:
        while self._spent and now - self._spent[0] >= self.window_s:
            self._spent.popleft()
            self._answered = max(0, self._answered - 1)
        self._recover(now)
        wait = max(0.0, self._paused_until - now)
        if len(self._spent) >= self.usable:
            # Sorted: an answer time may be later than the token times after it.
            oldest_needed = sorted(self._spent)[len(self._spent) - self.usable]
            wait = max(wait, oldest_needed + self.window_s - now)
        return wait

    async def acquire(self) -> None:
        """Wait until a create fits inside the window, then spend it."""
        async with self._lock:  # FIFO: waiters are served in arrival order
            while (wait := self._wait_time(time.monotonic())) > 0:
                await asyncio.sleep(wait)
            self._spent.append(time.monotonic())

    def wait_time(self) -> float:
        """Seconds until a create would fit (0: now); a little more while another create
        is queued for one (`acquire` serves that one first)."""
        wait = self._wait_time(time.monotonic())
        return max(wait, QUEUED_WAIT_S) if self._lock.locked() else wait

    def try_spend(self) -> bool:
        """Spend a create now if one fits and nobody is queued for one (no await between
        the check and the spend, so two cells never count on one create)."""
        if self._lock.locked() or self._wait_time(time.monotonic()) > 0:
            return False
        self._spent.append(time.monotonic())
        return True

    def refund(self) -> None:
        """A create spent with `try_spend` was not sent after all: give it back."""
        if len(self._spent) > self._answered:
            self._spent.pop()

    async def acquire_spent(self) -> None:
        """What a create spent with `try_spend` still needs before it leaves (nothing
        here; a limiter shared across processes takes its shared token)."""

    def answered(self) -> None:
        """A create's answer (or failure) arrived: count the oldest unanswered create from now.

        Answers may come back in any order; which create takes which answer time does not
        matter, since the window only counts times."""
        now = time.monotonic()
        if self._answered < len(self._spent):
            self._spent[self._answered] = now
        else:  # its token already left the window (a very slow create): count it again
            self._spent.append(now)
        self._answered += 1

    def penalise(self, retry_after: float | None) -> None:
        """The provider said slow down: halve the usable window, pause if told how long."""
        now = time.monotonic()
        self.signals += 1
        self._last_signal = now
        self.usable = max(1, self.usable // 2)
        pause = retry_after if retry_after is not None else self.rate.window_s / self.rate.count
        self._paused_until = max(self._paused_until, now + pause)

    def _recover(self, now: float) -> None:
        if self.usable < self.rate.count and now - self._last_signal >= self.window_s:
            self.usable += 1
            self._last_signal = now


class InFlightLimit:
    """A cap on remote tasks not yet terminal; `shrink()` on a concurrency signal and a slow
    climb back as tasks finish without one."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.usable = self.limit
        self.in_flight = 0
        self._cond = asyncio.Condition()
        self._finished_since_shrink = 0
        self._release_listeners: list[Callable[[], None]] = []

    def add_release_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every release (a router waiting for capacity); every
        listener added is called, in the order added."""
        self._release_listeners.append(listener)

    async def acquire(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_flight < self.usable)
            self.in_flight += 1

    def has_room(self) -> bool:
        return self.in_flight < self.usable

    def try_acquire(self) -> bool:
        """Take a slot now if there is one (no await: nothing can take it meanwhile)."""
        if not self.has_room():
            return False
        self.in_flight += 1
        return True

    async def release(self) -> None:
        async with self._cond:
            self.in_flight -= 1
            if self.usable < self.limit:
                self._finished_since_shrink += 1
                if self._finished_since_shrink >= self.usable:
                    self.usable += 1
                    self._finished_since_shrink = 0
            self._cond.notify_all()
        for listener in self._release_listeners:
            listener()

    def shrink(self) -> None:
        """The provider refused for concurrency: allow one fewer than we have now."""
        self.usable = max(1, min(self.usable, self.in_flight) - 1)
        self._finished_since_shrink = 0


@dataclass
class AccountThrottle:
    """Everything that paces one provider account. `spend`: its provider's spend window,
    shared with the provider's other accounts (None: no spend limit)."""

    provider: str
    rate: SlidingWindowLimiter | None
    in_flight: InFlightLimit
    poll_interval_s: float
    max_poll_interval_s: float = 30.0
    # The spec set `limits.<provider>.poll_interval`: no task is polled more often.
    poll_interval_is_floor: bool = False
    spend: SpendWindow | None = None
    polling: PollSchedule = field(init=False, repr=False)
    paused_until: float = field(default=0.0, init=False)
    signals: int = field(default=0, init=False)    # rate signals of an account without a window
    _last_pause: tuple[float, float] = field(default=(0.0, 0.0), init=False, repr=False)

    def __post_init__(self) -> None:
        self.polling = PollSchedule(
            self.poll_interval_s, self.max_poll_interval_s,
            floor_s=self.poll_interval_s if self.poll_interval_is_floor else 0.0)

    async def before_create(
        self, spent: bool = False, *, key: str | None = None, usd: float = 0.0
    ) -> None:
        """Wait out a pause, then for room in the spend window (`key` holds `usd` there from
        now on), then for a create in the rate window; `spent`: the router already spent
        the create's token. What this reserved goes back if it is cancelled."""
        while (pause := self.paused_until - time.monotonic()) > 0:
            await asyncio.sleep(pause)
        holds = self.spend is not None and key is not None
        if holds:
            assert self.spend is not None and key is not None
            await self.spend.reserve(key, usd)
        try:
            if self.rate is None:
                return
            if spent:
                await self.rate.acquire_spent()
            else:
                await self.rate.acquire()
        except BaseException:
            if holds:
                assert self.spend is not None and key is not None
                self.spend.release(key)
            raise

    def after_create(self, key: str | None = None) -> None:
        """Every `before_create` is followed by this once the create answered or failed."""
        if self.rate is not None:
            self.rate.answered()
        if self.spend is not None and key is not None:
            self.spend.answered(key)

    def billed(self, key: str | None, cost_usd: float | None) -> None:
        """The create of `key` reported its cost (a synchronous answer): the spend window
        counts that instead of its price."""
        if self.spend is not None and key is not None:
            self.spend.billed(key, cost_usd)

    def not_billed(self, key: str | None) -> None:
        """The create of `key` created nothing (refused, rate limited, never left)."""
        if self.spend is not None and key is not None:
            self.spend.release(key)

    def rate_limited(self, retry_after: float | None, *, concurrency: bool = False) -> None:
        if concurrency:
            self.in_flight.shrink()
        if self.rate is not None:
            self.rate.penalise(retry_after)
        elif not concurrency:
            self._pause(retry_after)

    def pause_left(self) -> float:
        """Seconds before this account may create again after a rate signal (0: now)."""
        return max(0.0, self.paused_until - time.monotonic())

    def _pause(self, retry_after: float | None) -> None:
        """A rate signal to an account without a rate window: no create for Retry-After,
        else for a pause that doubles while signals keep coming."""
        now = time.monotonic()
        self.signals += 1
        last_at, last = self._last_pause
        if retry_after is not None:
            pause = retry_after
        elif now - last_at < PAUSE_STREAK_S and last > 0:
            pause = min(MAX_PAUSE_S, last * 2)
        else:
            pause = FIRST_PAUSE_S
        self._last_pause = (now, pause)
        self.paused_until = max(self.paused_until, now + pause)

    def observe_duration(self, finished_by_s: float, pending_at_s: float = 0.0) -> None:
        """A task of this account was seen done `finished_by_s` after its create's answer
        (`PollSchedule.observe`)."""
        self.polling.observe(finished_by_s, pending_at_s)
