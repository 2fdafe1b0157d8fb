"""Throttles: a sliding window that never exceeds its limit, adaptive on rate-limit signals."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from nbp.flows.engine.throttle import AccountThrottle, InFlightLimit, SlidingWindowLimiter
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


def test_polling_backs_off_to_a_cap() -> None:
    throttle = AccountThrottle("kie", None, InFlightLimit(1), poll_interval_s=2.0)
    delays = [throttle.next_poll_delay(n) for n in range(30)]
    assert delays[0] == 2.0
    assert delays == sorted(delays)
    assert delays[-1] == throttle.max_poll_interval_s


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


def throttle_polling(first: float = 1.5) -> AccountThrottle:
    return AccountThrottle("runware", None, InFlightLimit(1), poll_interval_s=first)


def polls_for(throttle: AccountThrottle, duration: float) -> tuple[int, float]:
    """Polls a task of `duration` seconds takes on the throttle's schedule, and how late
    the poll that saw it done came; the throttle learns from it as `Runner._wait` does."""
    elapsed, polls, pending_at = 0.0, 0, 0.0
    while True:
        elapsed += throttle.next_poll_delay(polls, elapsed)
        polls += 1
        if elapsed >= duration:
            throttle.observe_duration(elapsed, pending_at)
            return polls, elapsed - duration
        pending_at = elapsed


def test_before_any_task_finished_polling_starts_at_the_documented_interval() -> None:
    throttle = throttle_polling(first=1.5)
    assert throttle.next_poll_delay(0, 0.0) == 1.5
    assert throttle.next_poll_delay(1, 1.5) == pytest.approx(1.875)


def test_polling_learns_the_accounts_latency_and_takes_two_or_three_polls() -> None:
    rng = random.Random(7)
    throttle = throttle_polling(first=0.25)
    for _ in range(50):  # a first wave teaches the schedule
        polls_for(throttle, 2.0 + rng.uniform(-0.01, 0.01))
    results = [polls_for(throttle, 2.0 + rng.uniform(-0.01, 0.01)) for _ in range(300)]
    polls = [p for p, _ in results]
    late = [lag for _, lag in results]
    assert sum(polls) / len(polls) <= 2.5  # a fixed 0.25 s interval needs 8
    assert max(polls) <= 4
    assert sum(late) / len(late) < 0.06   # a fixed 0.25 s interval: ~0.125 s on average
    assert throttle.polling.expected_s == pytest.approx(2.0, abs=0.1)


def test_the_first_poll_follows_the_latency_down_and_up() -> None:
    throttle = throttle_polling()
    for duration in [20.0] * 100:
        polls_for(throttle, duration)
    assert throttle.polling.expected_s == pytest.approx(20.0, rel=0.1)
    for duration in [8.0] * 300:  # the provider got faster: first polls come earlier
        polls_for(throttle, duration)
    assert throttle.polling.expected_s == pytest.approx(8.0, rel=0.1)
    for duration in [12.0] * 100:  # and slower again
        polls_for(throttle, duration)
    assert throttle.polling.expected_s == pytest.approx(12.0, rel=0.1)


def test_wide_latencies_keep_polls_few_and_lateness_bounded() -> None:
    rng = random.Random(3)
    throttle = throttle_polling(first=3.0)
    results = [polls_for(throttle, rng.uniform(10, 30)) for _ in range(1000)][200:]
    assert sum(p for p, _ in results) / len(results) < 6      # the old backoff: ~5
    assert sum(lag for _, lag in results) / len(results) < 2.5  # the old backoff: ~3.9 s


def test_a_late_task_is_polled_ever_less_often_up_to_the_cap() -> None:
    throttle = throttle_polling()
    for _ in range(20):
        polls_for(throttle, 2.0)
    delays, elapsed = [], 0.0
    for polls in range(60):
        delays.append(throttle.next_poll_delay(polls, elapsed))
        elapsed += delays[-1]
    after_first = delays[1:]
    assert after_first == sorted(after_first)
    assert after_first[0] <= 0.25 and after_first[-1] == throttle.max_poll_interval_s
