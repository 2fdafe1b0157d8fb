"""The spend window: no rolling window holds more than its USD, on a virtual clock (the
waits are computed, not slept), then once on the real one through `reserve`."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from nbp.flows.engine.spend_window import WINDOW_MARGIN_S, SpendWindow
from nbp.flows.engine.throttle import AccountThrottle, InFlightLimit
from nbp.flows.spec.rate import SpendLimit

PRICE = 0.134  # a 1K image on Google's standard tier


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tier_1() -> tuple[SpendWindow, Clock]:
    clock = Clock()
    return SpendWindow(SpendLimit(10.0, 600.0), clock=clock), clock


def test_tier_1_takes_74_images_then_waits_for_the_oldest_to_leave() -> None:
    window, clock = tier_1()
    for i in range(74):
        assert window.try_reserve(f"k{i}", PRICE), i
        window.answered(f"k{i}")
        clock.now += 1.0
    assert window.held_usd() == pytest.approx(74 * PRICE)  # $9.916: a 75th would pass $10
    assert not window.try_reserve("k74", PRICE)
    # the first answer came at t=1000: it leaves the window 600 s (and a margin) later
    assert window.wait_time(PRICE) == pytest.approx(1000 + 600 + WINDOW_MARGIN_S - clock.now)
    clock.now = 1000 + 600 + WINDOW_MARGIN_S
    assert window.try_reserve("k74", PRICE)


def test_an_unanswered_create_stays_counted_until_its_answer() -> None:
    window, clock = tier_1()
    for i in range(74):
        assert window.try_reserve(f"k{i}", PRICE)
    clock.now += 3600.0  # an hour later, no answer yet: the provider may still bill them
    assert math.isinf(window.wait_time(PRICE))
    window.answered("k0")
    assert window.wait_time(PRICE) == pytest.approx(600 + WINDOW_MARGIN_S)


def test_a_create_counts_from_its_answer_not_its_send() -> None:
    window, clock = tier_1()
    for i in range(74):
        window.try_reserve(f"k{i}", PRICE)
    clock.now += 50.0  # a slow answer: the provider may bill at its end
    for i in range(74):
        window.answered(f"k{i}")
    clock.now += 600.0  # 600 s after the send, only 550 s after the answer
    assert not window.try_reserve("late", PRICE)
    clock.now += 50.0 + WINDOW_MARGIN_S
    assert window.try_reserve("late", PRICE)


def test_nothing_created_is_nothing_held() -> None:
    window, _ = tier_1()
    for i in range(74):
        window.try_reserve(f"k{i}", PRICE)
    window.release("k3")  # refused, rate limited or never sent: not billed
    assert window.try_reserve("next", PRICE)
    assert not window.try_reserve("one-more", PRICE)


def test_the_same_intent_sent_again_is_held_once() -> None:
    window, _ = tier_1()
    assert window.try_reserve("k", PRICE) and window.try_reserve("k", PRICE)
    assert window.held_usd() == pytest.approx(PRICE)


def test_reported_costs_replace_holds() -> None:
    """Google bills thinking and text tokens besides the image: $0.1375 for a $0.134 image.
    What the answers cost is what the window counts from then on (what later creates hold
    is the runner's `CostMarkup`, tested in test_markup.py)."""
    window, clock = tier_1()
    for i in range(72):
        window.try_reserve(f"k{i}", PRICE)
        window.answered(f"k{i}")
        window.billed(f"k{i}", 0.1375)
    assert window.held_usd() == pytest.approx(72 * 0.1375)  # $9.90
    assert not window.try_reserve("k72", 0.1474)  # a hold of 1.1 x the price: no room
    clock.now += 600 + WINDOW_MARGIN_S
    assert window.held_usd() == 0.0


def test_an_image_the_window_holds_alone_always_goes() -> None:
    window = SpendWindow(SpendLimit(0.2, 10.0), clock=Clock())
    assert window.try_reserve("alone", 0.201)  # counted as 0.2 at most


def test_waiters_are_served_in_order_and_never_pass_the_cap() -> None:
    """On the real clock: $0.40 per 0.3 s at $0.134 is 2 images per window."""
    window = SpendWindow(SpendLimit(0.4, 0.3))

    async def go() -> list[float]:
        start = time.monotonic()
        times: list[float] = []

        async def one(i: int) -> None:
            await window.reserve(f"k{i}", PRICE)
            times.append(time.monotonic() - start)
            window.answered(f"k{i}")

        await asyncio.gather(*(one(i) for i in range(6)))
        return times

    times = asyncio.run(go())
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u - t < 0.3) <= 2, times
    assert times[-1] == pytest.approx(0.7, abs=0.2)  # three windows: 0, ~0.35, ~0.7
    assert window.waits >= 2  # the third and the fifth found the window full


@pytest.mark.parametrize(("usd", "window"), [(0.0, 600.0), (10.0, 0.0), (10.0, 86_401.0)])
def test_a_limit_out_of_bounds_is_refused(usd: float, window: float) -> None:
    with pytest.raises(ValueError, match="spend"):
        SpendLimit(usd, window)


def test_tier_figures() -> None:
    assert [SpendLimit(usd, 600).images_per_window(PRICE) for usd in (10, 50, 200)] == [
        74, 373, 1492]
    assert SpendLimit(10, 600).render() == "$10 / 10 min"


def test_the_throttle_gives_back_a_hold_whose_rate_wait_was_cancelled() -> None:
    from nbp.flows.engine.throttle import SlidingWindowLimiter
    from nbp.flows.spec.rate import Rate

    window = SpendWindow(SpendLimit(1.0, 60.0))
    throttle = AccountThrottle("gemini", SlidingWindowLimiter(Rate(1, 60.0)), InFlightLimit(4),
                               1.0, spend=window)

    async def go() -> None:
        await throttle.before_create(key="first", usd=PRICE)
        waiting = asyncio.create_task(throttle.before_create(key="second", usd=PRICE))
        await asyncio.sleep(0.05)  # held in the spend window, waiting for a rate token
        assert window.held_usd() == pytest.approx(2 * PRICE)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(go())
    assert window.held_usd() == pytest.approx(PRICE)


def test_a_rate_signal_pauses_an_account_without_a_rate_window() -> None:
    throttle = AccountThrottle("gemini", None, InFlightLimit(4), 1.0)
    throttle.rate_limited(0.2)
    assert 0.15 < throttle.pause_left() <= 0.2
    started = time.monotonic()
    asyncio.run(throttle.before_create())
    assert time.monotonic() - started >= 0.15
    assert throttle.signals == 1
    fresh = AccountThrottle("gemini", None, InFlightLimit(4), 1.0)
    fresh.rate_limited(None)  # no Retry-After: one second, doubling while signals come
    assert 0.9 < fresh.pause_left() <= 1.0
    fresh.rate_limited(None)
    assert 1.9 < fresh.pause_left() <= 2.0
