"""Budget cap, image verification and the retry loop: plain functions, no Prefect."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
from PIL import Image

from nbp.flows.engine.budget import Budget, BudgetExhausted, Hold
from nbp.flows.engine.lease import Heartbeat
from nbp.flows.engine.ledger import Ledger
from nbp.flows.engine.policy import RetryPolicy, Step, with_retries
from nbp.flows.engine.throttle import AccountThrottle, InFlightLimit, SlidingWindowLimiter
from nbp.flows.engine.verify import verify_image
from nbp.flows.spec.rate import Rate
from nbp.outputs.sink import Sink
from nbp.providers.errors import RateLimited, Rejected, ResultMismatch, TransientError


def ledger(target: str, holder: str = "me") -> Ledger:
    sink = Sink(target)
    return Ledger(sink, Heartbeat(sink, holder))


def test_budget_counts_tasks_in_flight_and_waits_for_them() -> None:
    async def go() -> None:
        budget = Budget(max_usd=0.25, run_id="r", ledger=ledger("memory://budget-wait"))
        first = await budget.reserve("i1", 0.09)
        second = await budget.reserve("i2", 0.09)
        third = asyncio.create_task(budget.reserve("i3", 0.09))  # 0.27 could be spent: wait
        await asyncio.sleep(0.01)
        assert not third.done()
        await budget.settle(first, 0.0)  # it failed and was not billed: room again
        held = await asyncio.wait_for(third, 1)
        assert budget.reserved_usd == pytest.approx(0.18)
        await budget.settle(second, 0.09)
        await budget.settle(held, 0.09)
        with pytest.raises(BudgetExhausted, match=r"\$0.25"):
            await budget.reserve("i4", 0.09)  # nothing in flight and 0.27 > 0.25: stop

    asyncio.run(go())


def test_processes_of_one_run_share_max_usd_and_every_run_max_total_usd() -> None:
    """Two processes (shards) of run "a" share one ledger on the target: together they get
    max_usd, never each; a later run "b" has its own max_usd but meets max_total_usd."""
    async def go() -> None:
        target = "memory://budget-shared"
        shard_1 = Budget(max_usd=0.2, max_total_usd=0.35, run_id="a",
                         ledger=ledger(target, "p1"))
        shard_2 = Budget(max_usd=0.2, max_total_usd=0.35, run_id="a",
                         ledger=ledger(target, "p2"))
        held_1 = await shard_1.reserve("a1", 0.1)
        await shard_2.reserve("a2", 0.1)
        with pytest.raises(BudgetExhausted):
            await Budget(max_usd=0.2, run_id="a", ledger=ledger(target, "p3")).reserve("a3", 0.1)
        later = Budget(max_usd=0.2, max_total_usd=0.35, run_id="b", ledger=ledger(target, "p4"))
        await later.settle(await later.reserve("b1", 0.1), 0.1)
        with pytest.raises(BudgetExhausted, match="max_total_usd"):
            await later.reserve("b2", 0.1)  # only 0.05 of the target's 0.35 is left
        await shard_1.settle(held_1, 0.02)  # the provider reported less: room again
        await Budget(max_usd=0.2, max_total_usd=0.35, run_id="b",
                     ledger=ledger(target, "p5")).reserve("b3", 0.1)

    asyncio.run(go())


def test_a_hold_settles_once_whoever_settles_it() -> None:
    """Holds are in the ledger by intent: settling one twice (a rerun after a kill between
    the ledger and the journal) or releasing one that never reached the ledger changes
    nothing; so a kill never leaves spend counted that no provider billed."""
    async def go() -> None:
        target = "memory://budget-idempotent"
        budget = Budget(max_total_usd=1.0, run_id="r", ledger=ledger(target))
        held = await budget.reserve("i1", 0.3)
        assert ledger(target).read()["open"] == {"i1": {"usd": 0.3, "run": "r"}}
        await budget.settle(held, 0.1)
        await Budget(max_total_usd=1.0, run_id="s", ledger=ledger(target)).settle(
            held, 0.0, here=False)  # a later run settling it again: no change
        never = Hold(0.5, "i2", "r")  # reserved in the journal, killed before the ledger
        await budget.settle(never, 0.0, here=False)
        data = ledger(target).read()
        assert data["total_usd"] == pytest.approx(0.1) and data["open"] == {}
        assert data["runs"] == {"r": pytest.approx(0.1)}

    asyncio.run(go())


def test_concurrent_changes_of_one_process_lose_no_update() -> None:
    """The target's lease names a process, so its own coroutines take a lock too: twenty
    tasks settling at once all count."""
    async def go() -> dict[str, Any]:
        target = ledger("memory://budget-concurrent")
        budget = Budget(max_total_usd=100.0, run_id="r", ledger=target)
        holds = await asyncio.gather(*(budget.reserve(f"i{n}", 0.1) for n in range(20)))
        await asyncio.gather(*(budget.settle(hold, 0.05) for hold in holds))
        return target.read()

    data = asyncio.run(go())
    assert data["total_usd"] == pytest.approx(1.0) and data["open"] == {}


def test_no_budget_means_no_cap() -> None:
    async def go() -> None:
        budget = Budget(max_usd=None)
        for i in range(1000):
            await budget.reserve(f"i{i}", 1.0)

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

    assert asyncio.run(with_retries(flaky, Step.PREPARE, policy=FAST)) == "ok"

    async def down() -> str:
        raise TransientError("503")

    with pytest.raises(TransientError):
        asyncio.run(with_retries(down, Step.PREPARE, policy=FAST))


def test_rejections_are_never_retried() -> None:
    calls = 0

    async def invalid() -> None:
        nonlocal calls
        calls += 1
        raise Rejected("bad enum")

    with pytest.raises(Rejected):
        asyncio.run(with_retries(invalid, Step.CREATE, policy=FAST))
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
        return await with_retries(limited, Step.CREATE, throttle=throttle, policy=FAST)

    assert asyncio.run(go()) == "ok"
    assert throttle.rate is not None and throttle.rate.usable == 5  # halved twice
    assert throttle.in_flight.usable == 1  # a concurrency signal lowered the cap
