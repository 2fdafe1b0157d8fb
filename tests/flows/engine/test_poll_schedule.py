"""The poll schedule: polls go when a task is likely done, from what the account's latencies
say. Synthetic latencies through a small event simulation (a channel with tasks in flight,
each create followed at once by the next as a slot frees), then one run against the
Runware emulator counting the polls it received."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from nbp.flows.engine.poll_schedule import PollSchedule, Ticket
from tests.flows.engine.emulated import manifest, run, serving

Draw = Callable[[random.Random], float]


@dataclass
class Outcome:
    polls_per_task: float
    mean_late_s: float     # from a task finishing to the poll that saw it done
    span_s: float          # first create to the last task seen done
    gaps_s: list[float]    # between two polls of one task


def simulate(draw: Draw, *, tasks: int = 300, in_flight: int = 50, first_s: float = 1.5,
             floor_s: float = 0.0, fixed_s: float | None = None, seed: int = 1,
             schedule: PollSchedule | None = None) -> Outcome:
    """`tasks` tasks of `draw(rng)` seconds, `in_flight` at a time, polled as `schedule` (or
    a fresh one) says, or every `fixed_s` (the hand-written client). Polls take 4 ms there
    and back and leave up to 5 ms late (an event loop's lag)."""
    rng = random.Random(seed)
    schedule = schedule or PollSchedule(first_s, floor_s=floor_s)
    done_at: dict[Ticket, float] = {}
    last_poll: dict[Ticket, float] = {}
    busy: set[Ticket] = set()
    answers: list[tuple[float, int, Ticket, float, bool]] = []  # (at, seq, ticket, sent, done)
    order = itertools.count()
    now, started, polls, late, gaps, seen = 0.0, 0, 0, [], [], 0.0

    def due(ticket: Ticket) -> float:
        if fixed_s is not None:
            return last_poll[ticket] + fixed_s
        return schedule.due(ticket, now)

    while started < tasks or done_at:
        while len(done_at) < in_flight and started < tasks:
            ticket = schedule.start(now + 0.002)  # the provider took it half a trip later
            done_at[ticket], last_poll[ticket] = now + 0.002 + draw(rng), now + 0.002
            started += 1
        ready = [t for t in done_at if t not in busy]
        now = min(([answers[0][0]] if answers else []) + [max(now, due(t)) for t in ready])
        while answers and answers[0][0] <= now:
            _, _, ticket, sent, finished = heapq.heappop(answers)
            busy.discard(ticket)
            if finished:
                schedule.finished(ticket, sent)
                late.append(sent + 0.002 - done_at.pop(ticket))
                seen = now
            else:
                schedule.pending(ticket, sent)
        for ticket in [t for t in done_at if t not in busy and due(t) <= now]:
            sent = now + rng.uniform(0, 0.005)
            gaps.append(sent - last_poll[ticket])
            last_poll[ticket] = sent
            busy.add(ticket)
            polls += 1
            heapq.heappush(answers, (sent + 0.004, next(order), ticket, sent,
                                     sent + 0.002 >= done_at[ticket]))
    return Outcome(polls / tasks, sum(late) / len(late), seen, gaps)


def two_seconds(rng: random.Random) -> float:
    return 2.0 + rng.uniform(-0.01, 0.01)


def ten_to_thirty(rng: random.Random) -> float:
    return rng.uniform(10, 30)


def test_a_lone_task_follows_the_documented_ladder_until_a_task_has_finished() -> None:
    schedule = PollSchedule(1.5)
    ticket = schedule.start(100.0)
    assert schedule.due(ticket, 100.0) == 101.5
    schedule.pending(ticket, 101.5)
    assert schedule.due(ticket, 101.5) == pytest.approx(101.5 + 1.875)
    assert schedule.plan == ()


def test_tasks_created_together_take_turns_and_one_answer_stands_for_all() -> None:
    schedule = PollSchedule(1.5)
    tickets = [schedule.start(100.0 + i * 0.001) for i in range(50)]
    due = [schedule.due(t, 100.0) for t in tickets]
    assert due[0] == 101.5 and all(math.isinf(d) for d in due[1:])  # one turn, not 50 polls
    schedule.pending(tickets[0], 101.5)
    turn = [(i, schedule.due(t, 101.5)) for i, t in enumerate(tickets)
            if not math.isinf(schedule.due(t, 101.5))]
    assert turn == [(1, pytest.approx(101.55))]  # the next member, a turn later
    # Every member is polled at most once per ladder step (1.875 s here).
    polled: list[int] = []
    now = 101.5
    while now < 101.5 + 1.875:
        holder = next(i for i, t in enumerate(tickets) if not math.isinf(schedule.due(t, now)))
        now = schedule.due(tickets[holder], now)
        polled.append(holder)
        schedule.pending(tickets[holder], now)
    assert len(polled) == len(set(polled))


def test_the_first_finish_sends_the_rest_of_its_cohort_to_poll_at_once() -> None:
    schedule = PollSchedule(1.5)
    tickets = [schedule.start(100.0 + i * 0.001) for i in range(10)]
    schedule.pending(tickets[0], 101.5)
    schedule.finished(tickets[1], 101.55)
    assert schedule.plan == (pytest.approx(1.5245, abs=0.01),)
    assert all(schedule.due(t, 101.6) <= 101.6 for t in tickets[2:])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_alike_latencies_take_about_one_poll_each_and_are_seen_done_at_once(seed: int) -> None:
    """The shape of bench/span.py: 300 tasks of 2 s, 50 at a time; the documented 1.5 s
    first interval, nothing learnt at first."""
    ours = simulate(two_seconds, seed=seed)
    every_quarter = simulate(two_seconds, fixed_s=0.25, seed=seed)
    assert ours.polls_per_task <= 1.25 and every_quarter.polls_per_task >= 7.5
    # A 0.25 s interval sees a task done 0.125 s after it finished on average: 6 waves of
    # tasks lose 0.75 s. The first wave here is found by turns, the rest by the plan.
    assert ours.mean_late_s < 0.04
    assert ours.span_s < 6 * (2.0 + 0.05)


def test_wide_latencies_keep_polls_few_and_lateness_bounded() -> None:
    ours = simulate(ten_to_thirty, first_s=3.0, tasks=600)
    assert ours.polls_per_task < 7          # the old ladder from 3 s: ~5
    assert ours.mean_late_s < 2.5           # the old ladder: ~3.9 s


def test_a_long_tail_is_polled_where_it_finishes() -> None:
    def mostly_two(rng: random.Random) -> float:
        return 10.0 if rng.random() < 0.05 else two_seconds(rng)

    ours = simulate(mostly_two, tasks=600)
    assert ours.polls_per_task < 2.0 and ours.mean_late_s < 0.2


@pytest.mark.parametrize("in_flight", [1, 50])
def test_the_plan_follows_a_provider_that_gets_faster_then_slower(in_flight: int) -> None:
    durations = iter([20.0] * 100 + [8.0] * 300 + [12.0] * 200)
    schedule = PollSchedule(3.0)

    def next_duration(rng: random.Random) -> float:
        return next(durations) * rng.uniform(0.99, 1.01)

    simulate(next_duration, tasks=100, in_flight=in_flight, schedule=schedule)
    assert schedule.plan[0] == pytest.approx(20.2, rel=0.05)
    simulate(next_duration, tasks=300, in_flight=in_flight, schedule=schedule)
    assert schedule.plan[0] == pytest.approx(8.08, rel=0.05)   # probes found it faster
    simulate(next_duration, tasks=200, in_flight=in_flight, schedule=schedule)
    assert schedule.plan[0] == pytest.approx(12.12, rel=0.05)  # follow-ups found it slower


def test_an_explicit_poll_interval_is_the_first_interval_and_a_floor() -> None:
    ours = simulate(two_seconds, floor_s=0.5, tasks=200)
    assert min(ours.gaps_s) >= 0.5
    assert simulate(lambda rng: 0.2, floor_s=0.5, tasks=5, in_flight=1).mean_late_s >= 0.29


def test_a_rate_limited_poll_pauses_the_channel() -> None:
    schedule = PollSchedule(1.5)
    ticket = schedule.start(100.0)
    schedule.limited(4.0, 100.5)
    assert schedule.due(ticket, 100.5) == 104.5


def test_a_task_that_leaves_hands_its_turn_on_at_once() -> None:
    schedule = PollSchedule(1.5)
    tickets = [schedule.start(100.0) for _ in range(3)]
    schedule.pending(tickets[0], 101.5)
    assert schedule.due(tickets[1], 101.5) == pytest.approx(101.5 + 1.875 / 3)
    schedule.leave(tickets[1])  # its task failed, or its polls kept failing
    assert schedule.due(tickets[2], 101.51) == pytest.approx(101.5 + 1.875 / 3)
    assert math.isinf(schedule.due(tickets[0], 101.51))


def test_a_task_an_earlier_run_created_teaches_nothing() -> None:
    schedule = PollSchedule(1.5)
    resumed = schedule.start(100.0, learn=False)
    schedule.finished(resumed, 101.5)
    assert schedule.plan == () and schedule.typical_s is None


def test_a_waiting_task_is_woken_when_a_finish_moves_its_poll_earlier() -> None:
    async def go() -> float:
        schedule = PollSchedule(5.0)
        first, second = schedule.start(time.monotonic()), schedule.start(time.monotonic())
        waiting = asyncio.create_task(schedule.wait(second))  # not its turn: no end in sight
        await asyncio.sleep(0.05)
        assert not waiting.done()
        started = time.monotonic()
        schedule.finished(first, time.monotonic())  # done already: so is its twin
        await asyncio.wait_for(waiting, 1.0)
        return time.monotonic() - started

    assert asyncio.run(go()) < 0.1


def test_a_run_on_the_documented_schedule_polls_each_task_about_once(tmp_path: Path) -> None:
    """40 Runware cells of 1 s, 20 at a time, with no `poll_interval` (the documented 1.5 s
    first interval): the emulator counts every request."""
    spec = {
        "version": 1, "name": "polls", "provider": "runware",
        "matrix": {"prompt": ["a pear"], "aspect_ratio": ["1:1"]}, "repeat": 40,
        "output": {"target": str(tmp_path / "out")},
        "limits": {"runware": {"max_in_flight": 20}},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    with serving(["runware"], latency_s=1.0) as hub:
        result = run(path)
        emulator = hub["runware"]
        polls = len(emulator.requests) - len(emulator.creates)
    assert result.exit_code == 0 and result.counts["succeeded"] == 40
    assert len(emulator.creates) == 40
    assert polls <= 1.3 * 40  # a 0.25 s interval: 4 per task; the ladder alone: 1-2
    assert manifest(tmp_path).height == 40
