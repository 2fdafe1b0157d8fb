"""The router on its own: which channel a cell gets, with what, and when it must wait."""

from __future__ import annotations

import asyncio

import pytest

from nbp.flows.engine.routing import Lane, Router
from nbp.flows.engine.spend_window import SpendWindow
from nbp.flows.engine.throttle import AccountThrottle, InFlightLimit, SlidingWindowLimiter
from nbp.flows.spec.channels import Channel
from nbp.flows.spec.model import Cell
from nbp.flows.spec.rate import Rate, SpendLimit

CELL = Cell("c0", 0, "a fig", "1:1", "1K", "png", (), {}, 0, "c0.png")


def lane(key: str, *, rate: str | None = None, slots: int = 10, price: float = 0.1,
         latency: float = 1.0) -> Lane:
    throttle = AccountThrottle(
        provider=key, rate=SlidingWindowLimiter(Rate.parse(rate)) if rate else None,
        in_flight=InFlightLimit(slots), poll_interval_s=0.1)
    return Lane(Channel(key, key.upper()), throttle, lambda cell: price, latency)


def test_spread_gives_each_create_its_own_token_and_never_overfills_a_window() -> None:
    async def go() -> list[str]:
        lanes = [lane("a", rate="1/60s"), lane("b", rate="1/60s")]
        router = Router("spread", lanes)
        first = await router.take(CELL)
        second = await router.take(CELL)
        assert first is not None and second is not None and first.spent and second.spent
        third = asyncio.create_task(router.take(CELL))
        await asyncio.sleep(0.05)
        assert not third.done()  # both windows are spent: it waits, it does not overfill
        third.cancel()
        return [first.key, second.key]

    assert sorted(asyncio.run(go())) == ["a", "b"]


def test_an_unsent_create_gives_its_token_back() -> None:
    async def go() -> None:
        only = lane("a", rate="1/60s")
        router = Router("spread", [only])
        ticket = await router.take(CELL)
        assert ticket is not None and only.ready_in() > 0
        await ticket.release()  # budget refused, say: nothing was sent
        assert only.ready_in() == 0.0
        again = await router.take(CELL)
        assert again is not None and again.key == "a"

    asyncio.run(go())


def test_spread_prefers_the_least_loaded_channel_and_wakes_on_a_free_slot() -> None:
    async def go() -> None:
        a, b = lane("a", slots=2), lane("b", slots=1)
        router = Router("spread", [a, b])
        keys = [(await router.take(CELL)) for _ in range(3)]
        assert sorted(t.key for t in keys if t) == ["a", "a", "b"]
        waiting = asyncio.create_task(router.take(CELL))
        await asyncio.sleep(0.02)
        assert not waiting.done()
        first = keys[2]
        assert first is not None
        await first.release()
        got = await asyncio.wait_for(waiting, 1.0)
        assert got is not None and got.key == first.key

    asyncio.run(go())


def test_fallback_waits_for_the_first_channel_it_has_not_tried() -> None:
    async def go() -> None:
        router = Router("fallback", [lane("a", slots=1), lane("b")])
        held = await router.take(CELL)
        assert held is not None and held.key == "a"
        other = await router.take(CELL, exclude={"a"})
        assert other is not None and other.key == "b"
        waiting = asyncio.create_task(router.take(CELL))
        await asyncio.sleep(0.02)
        assert not waiting.done()  # fallback does not move a cell because "a" is busy
        await held.release()
        got = await asyncio.wait_for(waiting, 1.0)
        assert got is not None and got.key == "a"
        assert await router.take(CELL, exclude={"a", "b"}) is None

    asyncio.run(go())


@pytest.mark.parametrize(("deadline_s", "expected"), [(3600.0, {"cheap"}),
                                                      (5.0, {"cheap", "dear"})])
def test_cheapest_adds_a_dearer_channel_only_when_the_deadline_needs_it(
    deadline_s: float, expected: set[str]
) -> None:
    async def go() -> set[str]:
        cheap = lane("cheap", rate="2/1s", slots=100, price=0.09, latency=1.0)
        dear = lane("dear", slots=100, price=0.14, latency=1.0)
        router = Router("cheapest", [dear, cheap], deadline_s=deadline_s, waiting=lambda: 100)
        taken = [await router.take(CELL) for _ in range(2)]
        used = {t.key for t in taken if t}
        extra = await asyncio.wait_for(router.take(CELL), 2.0)
        return used | ({extra.key} if extra else set())

    assert asyncio.run(go()) == expected


def test_a_channel_learns_its_latency_from_its_poll_schedule() -> None:
    one = lane("a", latency=20.0)
    assert one.latency_s == 20.0  # the plan's estimate until a task was seen done
    for seconds in (2.0, 2.2, 1.8):
        one.throttle.observe_duration(seconds, seconds - 0.1)
    assert 1.5 < one.latency_s < 2.5


@pytest.mark.parametrize("routing", ["fallback", "spread", "cheapest"])
def test_a_pinned_cell_gets_its_provider_and_an_unpinned_one_the_listed_providers(
    routing: str,
) -> None:
    from dataclasses import replace

    async def go() -> tuple[str | None, str | None, object]:
        lanes = [lane("a", price=0.2), lane("b", price=0.1), lane("c", price=0.05)]
        router = Router(routing, lanes, routed=("a", "b"))
        pinned = await router.take(replace(CELL, provider="a"))
        unpinned = await router.take(CELL)
        gone = await router.take(replace(CELL, provider="a"), exclude={"a"})
        return (pinned.key if pinned else None, unpinned.key if unpinned else None, gone)

    pinned, unpinned, gone = asyncio.run(go())
    assert pinned == "a"        # cheapest would pick c, spread any: the pin decides
    assert unpinned in ("a", "b")  # never c: only pinned cells go there
    assert gone is None         # its provider's channel is spent: no other one instead


def test_a_router_leaves_the_throttles_other_listeners_in_place() -> None:
    async def go() -> list[str]:
        shared = lane("a", slots=1)
        heard: list[str] = []
        shared.throttle.in_flight.add_release_listener(lambda: heard.append("owner"))
        router = Router("spread", [shared])
        held = await router.take(CELL)
        assert held is not None
        waiting = asyncio.create_task(router.take(CELL))
        await asyncio.sleep(0.02)
        assert not waiting.done()
        await held.release()
        got = await asyncio.wait_for(waiting, 1.0)  # the router heard the release too
        assert got is not None and got.key == "a"
        return heard

    assert asyncio.run(go()) == ["owner"]


def test_the_router_follows_whatever_policy_it_is_given() -> None:
    from tests.flows.spec.test_policies import Dearest

    async def go() -> list[str]:
        router = Router(Dearest(), [lane("cheap", price=0.05), lane("dear", price=0.2)])
        taken = [await router.take(CELL), await router.take(CELL, exclude={"dear"})]
        return [t.key for t in taken if t]

    assert asyncio.run(go()) == ["dear", "cheap"]


def test_a_lane_waits_for_room_for_what_its_create_holds_not_its_price() -> None:
    """A flex image is priced at half the standard price but holds the standard one (it may
    be served at standard): the spend window must have room for the hold."""
    async def go() -> tuple[float, float]:
        window = SpendWindow(SpendLimit(0.2, 60.0))
        await window.reserve("earlier", 0.1)
        window.answered("earlier")
        throttle = AccountThrottle(provider="gemini", rate=None, in_flight=InFlightLimit(10),
                                   poll_interval_s=0.1, spend=window)
        priced = Lane(Channel("gemini", "GEMINI_API_KEY"), throttle, lambda cell: 0.067, 1.0)
        held = Lane(Channel("gemini", "GEMINI_API_KEY"), throttle, lambda cell: 0.067, 1.0,
                    held=lambda cell: 0.134)
        return priced.ready_in(CELL), held.ready_in(CELL)

    priced, held = asyncio.run(go())
    assert priced == 0.0 and held > 50.0
