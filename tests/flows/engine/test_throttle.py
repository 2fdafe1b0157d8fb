"""Throttles: a sliding window that never exceeds its limit, adaptive on rate-limit signals."""

from __future__ import annotations

import asyncio
import time

import pytest

from nbp.flows.engine.throttle import InFlightLimit, SlidingWindowLimiter
from nbp.flows.spec.rate import Rate


@pytest.mark.parametrize(
    ("text", "count", "window"),
    [("20/10s", 20, 10.0), ("100/m", 100, 60.0), ("5/500ms", 5, 0.5), ("3/s", 3, 1.0)],
)
def test_rate_parses(text: str, count: int, window: float) -> None:
    assert Rate.parse(text) == Rate(count, window)


@pytest.mark.parametrize("text", ["", "20", "0/10s", "x/10s", "20/0s", "20/10 parsecs"])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        Rate.parse(text)


def acquire_times(limiter: SlidingWindowLimiter, n: int) -> list[float]:
    async def go() -> list[float]:
        start, times = time.monotonic(), []
        for _ in range(n):
            await limiter.acquire()
            times.append(time.monotonic() - start)
        return times

    return asyncio.run(go())


def test_no_window_ever_holds_more_than_the_limit() -> None:
    limiter = SlidingWindowLimiter(Rate(4, 0.4))
    times = acquire_times(limiter, 12)
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u - t < 0.4) <= 4
    assert times[-1] == pytest.approx(0.9, abs=0.15)  # and it keeps the limit busy


def test_a_rate_limit_signal_halves_the_window_and_pauses() -> None:
    limiter = SlidingWindowLimiter(Rate(8, 0.5))
    limiter.penalise(retry_after=0.3)
    assert limiter.usable == 4
    times = acquire_times(limiter, 1)
    assert times[0] >= 0.28


def test_usable_rate_recovers_after_quiet_windows() -> None:
    limiter = SlidingWindowLimiter(Rate(4, 0.1))
    limiter.penalise(retry_after=0.0)
    limiter.penalise(retry_after=0.0)
    assert limiter.usable == 1
    time.sleep(0.5)
    acquire_times(limiter, 1)
    assert limiter.usable > 1


def test_in_flight_limit_caps_and_shrinks() -> None:
    async def go() -> tuple[int, int]:
        limit = InFlightLimit(3)
        peak = 0

        async def one() -> None:
            nonlocal peak
            await limit.acquire()
            peak = max(peak, limit.in_flight)
            await asyncio.sleep(0.01)
            await limit.release()

        await asyncio.gather(*(one() for _ in range(20)))
        await limit.acquire()
        await limit.acquire()
        limit.shrink()  # provider said: too many at once
        usable = limit.usable
        return peak, usable

    peak, usable = asyncio.run(go())
    assert peak == 3
    assert usable == 1


def test_every_release_listener_hears_every_release() -> None:
    async def go() -> tuple[list[str], int]:
        limit = InFlightLimit(2)
        heard: list[str] = []
        limit.add_release_listener(lambda: heard.append("first"))
        limit.add_release_listener(lambda: heard.append("second"))
        await limit.acquire()
        await limit.acquire()
        await limit.release()
        await limit.release()
        return heard, limit.in_flight

    heard, in_flight = asyncio.run(go())
    assert heard == ["first", "second", "first", "second"]
    assert in_flight == 0


def test_a_create_counts_from_its_answer_when_the_answer_comes_late() -> None:
    """The provider admits a create somewhere between sending and answering, so a slow
    create must not free its place in the window before the provider's copy does."""

    async def go() -> float:
        limiter = SlidingWindowLimiter(Rate(2, 0.3))
        start = time.monotonic()
        await limiter.acquire()
        await limiter.acquire()
        await asyncio.sleep(0.2)  # both creates travel slowly
        limiter.answered()
        limiter.answered()
        await limiter.acquire()
        return time.monotonic() - start

    assert asyncio.run(go()) >= 0.2 + 0.3
