"""Budget cap, image verification and the retry loop: plain functions, no Prefect."""

from __future__ import annotations

import asyncio
import io

import pytest
from flows.engine.policy import RetryPolicy, with_retries
from PIL import Image

from flows.engine.budget import Budget, BudgetExhausted
from flows.engine.throttle import AccountThrottle, InFlightLimit, SlidingWindowLimiter
from flows.engine.verify import verify_image
from flows.spec.rate import Rate
from providers.errors import RateLimited, Rejected, ResultMismatch, TransientError


def test_budget_counts_tasks_in_flight_and_waits_for_them() -> None:
    async def go() -> None:
        budget = Budget(max_usd=0.25)
        await budget.reserve(0.09)
        await budget.reserve(0.09)
        third = asyncio.create_task(budget.reserve(0.09))  # 0.27 could be spent: wait
        await asyncio.sleep(0.01)
        assert not third.done()
        await budget.settle(0.09, 0.0)  # one failed and was not billed: room again
        await asyncio.wait_for(third, 1)
        assert budget.reserved_usd == pytest.approx(0.18)
        await budget.settle(0.09, 0.09)
        await budget.settle(0.09, 0.09)
        with pytest.raises(BudgetExhausted, match=r"\$0.25"):
            await budget.reserve(0.09)  # nothing in flight and 0.27 > 0.25: stop

    asyncio.run(go())


def test_no_budget_means_no_cap() -> None:
    async def go() -> None:
        budget = Budget(max_usd=None)
        for _ in range(1000):
            await budget.reserve(1.0)

    asyncio.run(go())


def image_bytes(size: tuple[int, int], fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def test_verify_accepts_exactly_what_was_asked() -> None:
    assert verify_image(image_bytes((1376, 768), "PNG"), "png", (1376, 768)) == (1376, 768)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(image_bytes((1376, 768), "JPEG"), "wrong_format", id="jpeg-for-png"),
        pytest.param(image_bytes((1024, 1024), "PNG"), "wrong_size", id="wrong-size"),
        pytest.param(image_bytes((1376, 768), "PNG")[:-5000], "undecodable", id="truncated"),
        pytest.param(b"<html>not an image</html>", "undecodable", id="html"),
    ],
)
def test_verify_rejects_what_was_not_asked(data: bytes, code: str) -> None:
    with pytest.raises(ResultMismatch) as caught:
        verify_image(data, "png", (1376, 768))
    assert caught.value.code == code


FAST = RetryPolicy(max_attempts=4, base_s=0.001, cap_s=0.002)


def test_transient_errors_are_retried_then_raised() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TransientError("503")
        return "ok"

    assert asyncio.run(with_retries(flaky, policy=FAST)) == "ok"

    async def down() -> str:
        raise TransientError("503")

    with pytest.raises(TransientError):
        asyncio.run(with_retries(down, policy=FAST))


def test_rejections_are_never_retried() -> None:
    calls = 0

    async def invalid() -> None:
        nonlocal calls
        calls += 1
        raise Rejected("bad enum")

    with pytest.raises(Rejected):
        asyncio.run(with_retries(invalid, policy=FAST))
    assert calls == 1


def test_rate_limits_slow_the_account_down_and_honour_retry_after() -> None:
    throttle = AccountThrottle(
        "kie", SlidingWindowLimiter(Rate(20, 10.0)), InFlightLimit(5), poll_interval_s=1.0
    )
    calls = 0

    async def limited() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RateLimited("429", retry_after=0.05)
        if calls == 2:
            raise RateLimited("too many tasks in flight", concurrency=True)
        return "ok"

    async def go() -> str:
        await throttle.in_flight.acquire()
        await throttle.in_flight.acquire()
        return await with_retries(limited, throttle=throttle, policy=FAST)

    assert asyncio.run(go()) == "ok"
    assert throttle.rate is not None and throttle.rate.usable == 5  # halved twice
    assert throttle.in_flight.usable == 1  # a concurrency signal lowered the cap
