"""Stop requests: the first ends every wait, the second ends creates on the wire too."""

from __future__ import annotations

import asyncio
import signal

import pytest

from nbp.flows.engine.interrupt import Interrupt
from nbp.flows.engine.policy import Interrupted


def test_a_first_request_ends_waits_but_not_a_create_on_the_wire() -> None:
    async def go() -> tuple[str, bool]:
        interrupt = Interrupt()
        waited = asyncio.ensure_future(interrupt.waiting(asyncio.sleep(30)))
        sending = asyncio.ensure_future(interrupt.sending(_answer_after(0.2)))
        await asyncio.sleep(0.05)
        interrupt.request(signal.SIGINT)
        with pytest.raises(Interrupted, match="SIGINT"):
            await asyncio.wait_for(waited, 1)
        with pytest.raises(Interrupted):  # nothing new starts waiting
            await interrupt.waiting(asyncio.sleep(0))
        return await asyncio.wait_for(sending, 1), interrupt.hard

    assert asyncio.run(go()) == ("task-1", False)


def test_a_second_request_stops_waiting_for_creates_on_the_wire() -> None:
    async def go() -> Interrupt:
        interrupt = Interrupt()
        sending = asyncio.ensure_future(interrupt.sending(_answer_after(30)))
        interrupt.request(signal.SIGTERM)
        await asyncio.sleep(0.05)
        assert not sending.done()
        interrupt.request(signal.SIGTERM)
        with pytest.raises(Interrupted, match="on the wire"):
            await asyncio.wait_for(sending, 1)
        return interrupt

    interrupt = asyncio.run(go())
    assert interrupt.exit_code == 143 and interrupt.hard


def test_requests_before_the_loop_runs_still_count() -> None:
    interrupt = Interrupt()
    heard: list[int] = []
    interrupt.listeners.append(lambda i: heard.append(len(i.signals)))
    interrupt.request(signal.SIGINT)

    async def go() -> None:
        with pytest.raises(Interrupted):
            await interrupt.waiting(asyncio.sleep(5))

    asyncio.run(go())
    assert heard == [1] and interrupt.exit_code == 130


async def _answer_after(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "task-1"
