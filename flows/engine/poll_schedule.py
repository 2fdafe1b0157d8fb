"""When to poll each remote task of one channel: when the account's tasks are likely done.

One `PollSchedule` per channel (provider account, `AccountThrottle.polling`); `Runner._wait`
asks it when to poll each task and tells it what each poll saw:

    ticket = schedule.start(accepted_at)        # the provider took the task (monotonic)
    await schedule.wait(ticket)                 # ... poll, sent at `sent_at` ...
    schedule.pending(ticket, sent_at)           # or schedule.finished(ticket, sent_at)
    schedule.leave(ticket)                      # always, last (a no-op after `finished`)

**Before any task of the channel has finished**, tasks follow the provider's ladder: its
documented first interval, then 1.25x longer each step (protocols.md §3.3, §4.3: poll often
at first, then back off). Tasks created together (a *cohort*: within a quarter of the first
interval of its first task) take turns on one ladder: each step is cut into one turn per
member (at least `MIN_TURN_S` long), a turn polls the member polled longest ago, and a
pending answer stands for the whole cohort. So no task is polled more often than the ladder
says, 50 tasks created at once cost one poll per turn instead of 50 per step, and the cohort
sees its first task finish within a turn (a fiftieth of a step here, or 50 ms).

**After**, every finished task gives an estimate of its duration: the middle between the
last poll that saw it running (its own, or its cohort's) and the one that saw it done; seen
done at its first poll, as far below that poll as the middle of the plan's first group is
below its end. The last `WINDOW` estimates make the plan: sorted, cut into groups no wider
than `GAP_FRACTION` of their median, one poll per group where `GROUP_END_SHARE` of its tasks
had finished. Polls are densest where tasks finish, and none is spent to save less lateness
than a group's width: alike latencies (2 s +- 20 ms) get one poll, just before the slowest
recent tasks, spread ones (10-30 s) one every few seconds across their range. A task still
running after a group's poll is looked at again `FOLLOW_UP_FRACTION` of a group's width
later (at least `MIN_FOLLOW_UP_S`), then twice as far each time (a task that late is an
outlier: it may take much longer), up to `max_interval_s`, and no later than the next group
(straight to it when the two groups touch). Aiming before the slowest costs a task in five a
second poll tens of milliseconds later and sees the rest done sooner: bench/span.py measured
a shorter span that way than with one poll after the slowest (the estimates wander with the
machine's load, and the slowest of 64 of them is late for most tasks).

A finish is news for the tasks still waiting: each whose next poll moved earlier is woken
(the first finish of a cohort sends the rest of it, just as old, to poll at once); when tasks
are alike, one found running at its first poll holds back the first polls of the others
until the next finish (its twins are running too). A task seen done at its first poll only
says it took *at most* that long, so one task in `PROBE_EVERY` is a probe, polled first
`PROBE_DEPTH` earlier than the plan: a probe that finds its task done shows the provider got
faster (alike durations longer than it are dropped) and the next task probes again, twice as
deep, until one finds its task running. A provider that got slower shows in the follow-ups.

An explicit `limits.<provider>.poll_interval` (`floor_s`) is the ladder's first interval and
the shortest time between two polls of one task. A rate-limit signal on a poll pauses every
poll of the channel (`limited`). The constants were chosen by simulating 300 tasks, 50 at a
time, against narrow, wide (10-30 s), long-tailed and shifting latencies; the tests in
tests/flows/engine/test_poll_schedule.py hold the figures, bench/span.py measures the span
(BENCHMARKS.md, "Issue 24: span").
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections import deque
from dataclasses import dataclass, field

GROWTH = 1.25                # each ladder step: 1.25x as long as the one before
MIN_TURN_S = 0.05            # a cohort's turns: one per member per ladder step, never closer
COHORT_FRACTION = 0.25       # of the first interval: tasks created that close are one cohort
WINDOW = 64                  # recent durations the plan is made of
GAP_FRACTION = 0.15          # of the median duration: the lateness one poll is worth
GROUP_END_SHARE = 0.8        # a group's poll: where this share of its tasks had finished
MIN_FOLLOW_UP_S = 0.03       # follow-ups past a group: never closer than this
FOLLOW_UP_FRACTION = 0.1     # ... and at least this share of a group's width
FIRST_HIT_FRACTION = 0.9     # seen done at its first poll, with nothing faster known yet
WAKE_EPSILON_S = 0.005       # a plan that moved by less wakes nobody
ALIKE_SHARE = 0.9            # of recent tasks in the plan's first group: tasks are alike
PROBE_EVERY = 64             # one task in this many is a probe: its first poll comes early
PROBE_DEPTH = 0.1            # ... by this share of the first planned poll
MAX_PROBE_DEPTH = 0.5        # a probe that saw its task done sends the next one deeper


@dataclass(eq=False)
class _Cohort:
    """Tasks created together, sharing one ladder before the channel has seen a finish."""

    anchor: float                      # when the provider took its first member's task
    members: list[Ticket] = field(default_factory=list)
    step: int = 0                      # ladder step
    turn: float = 0.0                  # how far into the step, 0 <= turn < 1
    pending_at: float = 0.0            # absolute time of its last pending answer
    holder: Ticket | None = None       # the member whose turn it is

    def turn_time(self, first_s: float, max_s: float) -> float:
        """Absolute time of the current turn."""
        def length(step: int) -> float:  # from the step's poll to the next one's
            return min(max_s, first_s * GROWTH ** (step + 1))

        start = first_s + sum(length(k) for k in range(self.step))
        return self.anchor + start + length(self.step) * self.turn


@dataclass(eq=False)
class Ticket:
    """One task being polled: when the provider took it and what its polls saw."""

    created: float                     # monotonic time the provider took the task
    learn: bool = True                 # its duration teaches the schedule (not a resumed task)
    polls: int = 0
    last_poll: float = 0.0             # absolute time of its last poll (`created` before any)
    pending_s: float = 0.0             # elapsed when a poll (its own or its cohort's) saw it
    cohort: _Cohort | None = None      # running; None once the channel has seen a finish
    done: bool = False
    probe: float = 0.0                 # a probe: its first poll this much earlier (share)
    _waiter: asyncio.Future[None] | None = field(default=None, repr=False)
    _due: float = math.inf             # when its current sleep ends

    def __post_init__(self) -> None:
        self.last_poll = self.created


class PollSchedule:
    """When to poll each task of one channel (see the module docstring)."""

    def __init__(self, first_interval_s: float, max_interval_s: float = 30.0, *,
                 floor_s: float = 0.0) -> None:
        # The longest gap is a cap (a batch's `--batch-wait` lowers it) that only an explicit
        # floor may raise; the documented first interval stays under it.
        self.max_interval_s = max(max_interval_s, floor_s)
        self.first_interval_s = min(max(first_interval_s, floor_s), self.max_interval_s)
        self.floor_s = floor_s
        self._durations: deque[float] = deque(maxlen=WINDOW)
        self._plan: tuple[float, ...] = ()        # elapsed times of the planned polls
        self._started = 0                         # tasks started since the first finish
        self._probe_depth = PROBE_DEPTH           # the next probe's
        self._follow_up_s = self.first_interval_s
        self._gap_s = 0.0                         # how wide a group may be
        self._alike = False                       # the first group holds nearly every task
        self._running_at = 0.0                    # a first poll since the last finish found
                                                  # its task running this late (alike tasks)
        self._waiting: dict[Ticket, None] = {}   # insertion order: oldest first
        self._cohort: _Cohort | None = None       # the newest, which new tasks may join
        self._paused_until = 0.0

    # -- what a caller tells it ------------------------------------------------------------

    def start(self, now: float, *, learn: bool = True) -> Ticket:
        """The provider took a task at `now` (monotonic); `learn=False` for a task an
        earlier run created (its age is unknown, so its duration teaches nothing)."""
        ticket = Ticket(created=now, learn=learn)
        self._waiting[ticket] = None
        if learn and self._durations:
            self._started += 1
            if self._started % PROBE_EVERY == 0:
                ticket.probe = self._probe_depth
        if learn and not self._durations:
            cohort = self._cohort
            if cohort is None or not cohort.members or (
                    now - cohort.anchor > COHORT_FRACTION * self.first_interval_s):
                cohort = self._cohort = _Cohort(anchor=now)
            cohort.members.append(ticket)
            ticket.cohort = cohort
            if cohort.holder is None:
                cohort.holder = ticket
        return ticket

    def pending(self, ticket: Ticket, sent_at: float) -> None:
        """A poll sent at `sent_at` saw the task still running."""
        self._polled(ticket, sent_at)
        ticket.pending_s = max(ticket.pending_s, sent_at - ticket.created)
        if ticket.probe:
            ticket.probe = 0.0
            self._probe_depth = PROBE_DEPTH  # the latency did not move: back to routine
        elif ticket.polls == 1 and ticket.cohort is None and self._alike and ticket.learn:
            # Its twins, alike and not polled yet, are running too: they wait a follow-up.
            self._running_at = max(self._running_at, ticket.pending_s)
        cohort = ticket.cohort
        if cohort is not None:
            cohort.pending_at = max(cohort.pending_at, sent_at)
            if cohort.holder is ticket:
                self._next_turn(cohort)

    def finished(self, ticket: Ticket, sent_at: float) -> None:
        """A poll sent at `sent_at` saw the task done: learn its duration, and wake every
        waiting task that should now poll sooner."""
        self._polled(ticket, sent_at)
        probe_hit = bool(ticket.probe) and ticket.polls == 1
        cohort = ticket.cohort
        self._forget(ticket)
        if ticket.learn:
            lower = ticket.pending_s
            if cohort is not None:
                lower = max(lower, cohort.pending_at - ticket.created)
            self.observe(sent_at - ticket.created, lower, probe_hit=probe_hit)

    def leave(self, ticket: Ticket) -> None:
        """The task is no longer polled (finished, failed, left for the next run); its
        turn, if it had one, goes to the next member of its cohort at once."""
        if not ticket.done:
            self._forget(ticket)

    def limited(self, retry_after: float | None, now: float) -> None:
        """A poll was refused for rate: no poll of the channel before Retry-After (or the
        first interval)."""
        pause = retry_after if retry_after is not None else self.first_interval_s
        self._paused_until = max(self._paused_until, now + pause)

    def observe(self, finished_by_s: float, pending_s: float = 0.0, *,
                probe_hit: bool = False) -> None:
        """A task was seen done `finished_by_s` after the provider took it, and running at
        `pending_s` (0: never seen running); `probe_hit`: by a probe's early first poll."""
        if pending_s > 0.0:
            estimate = (min(pending_s, finished_by_s) + finished_by_s) / 2
        elif self._durations:
            # Somewhere in the first group of durations, as far below this poll as the
            # middle of that group is below its end.
            low = min(self._durations)
            estimate = finished_by_s - max(0.0, self._plan[0] - low) / 2
        else:
            estimate = finished_by_s * (1 + FIRST_HIT_FRACTION) / 2
        first = not self._durations
        if probe_hit:
            self._probed(finished_by_s)
        self._durations.append(max(0.0, estimate))
        before, running_at = self._plan, self._running_at
        self._replan()
        if first:
            self._dissolve()
        if first or running_at > 0.0 or _earlier(self._plan, before):
            self._wake_earlier()

    # -- what it answers -------------------------------------------------------------------

    @property
    def typical_s(self) -> float | None:
        """The median of the recent durations (None before any task finished): how long a
        task of this account takes, for routing's throughput estimates."""
        if not self._durations:
            return None
        ordered = sorted(self._durations)
        return ordered[len(ordered) // 2]

    @property
    def plan(self) -> tuple[float, ...]:
        """Seconds after the provider took a task at which it is polled (then follow-ups);
        empty until a task has finished."""
        return self._plan

    def due(self, ticket: Ticket, now: float) -> float:
        """Absolute time (monotonic) of the ticket's next poll; inf while another member
        of its cohort has the turn."""
        cohort = ticket.cohort
        if cohort is not None:
            if cohort.holder is not ticket:
                return math.inf
            at = cohort.turn_time(self.first_interval_s, self.max_interval_s)
        else:
            at = ticket.created + self._next_elapsed(ticket.pending_s)
            if ticket.probe and not ticket.polls and self._plan:
                at = ticket.created + (1 - ticket.probe) * self._plan[0]
        if ticket.polls:
            at = max(at, ticket.last_poll + self.floor_s)
        return max(at, self._paused_until)

    async def wait(self, ticket: Ticket) -> None:
        """Sleep until the ticket's poll is due (woken sooner when another task's answer
        moves it earlier)."""
        loop = asyncio.get_running_loop()
        while (due := self.due(ticket, time.monotonic())) > time.monotonic():
            waiter = ticket._waiter = loop.create_future()
            ticket._due = due
            handle = None if math.isinf(due) else loop.call_later(
                due - time.monotonic(), _wake, waiter)
            try:
                await waiter
            finally:
                if handle is not None:
                    handle.cancel()
                ticket._waiter, ticket._due = None, math.inf

    # -- inside ----------------------------------------------------------------------------

    def _next_elapsed(self, pending_s: float) -> float:
        """Elapsed time of the next poll of a task last seen running at `pending_s`."""
        plan = self._plan
        if not plan:
            # Nothing learnt and no cohort (a cohort left after a failed poll): the ladder.
            elapsed, step = self.first_interval_s, 0
            while elapsed <= pending_s:
                step += 1
                elapsed += min(self.max_interval_s, self.first_interval_s * GROWTH**step)
            return elapsed
        index = bisect.bisect_right(plan, pending_s + WAKE_EPSILON_S)
        if index == 0:
            return max(plan[0], self._running_at + self._follow_up_s)
        # Seen running past a group's end: follow up soon, then twice as far each time (a
        # task this late is an outlier: it may take much longer); no further than the next
        # group, straight to it when the two groups touch.
        passed = plan[index - 1]
        follow_up = pending_s + min(self.max_interval_s,
                                    self._follow_up_s + pending_s - passed)
        if index == len(plan):
            return follow_up
        touching = plan[index] - passed <= 2 * self._gap_s
        return plan[index] if touching else min(plan[index], follow_up)

    def _replan(self) -> None:
        ordered = sorted(self._durations)
        gap = GAP_FRACTION * ordered[len(ordered) // 2]
        groups: list[list[float]] = [[ordered[0]]]
        for value in ordered[1:]:
            if value - groups[-1][0] > gap:
                groups.append([])
            groups[-1].append(value)
        self._plan = tuple(g[math.ceil(GROUP_END_SHARE * len(g)) - 1] for g in groups)
        self._gap_s = gap
        self._alike = len(groups[0]) >= ALIKE_SHARE * len(ordered)
        self._running_at = 0.0
        self._follow_up_s = min(self.first_interval_s, max(
            MIN_FOLLOW_UP_S, self.floor_s, FOLLOW_UP_FRACTION * gap))

    def _probed(self, finished_by_s: float) -> None:
        """A probe saw its task done earlier than the plan's first poll. Durations drawn
        as one group (alike) that are longer than it are out of date: the provider got
        faster. The next task probes again, deeper, until a probe finds its task running."""
        if len(self._plan) == 1:
            kept = [d for d in self._durations if d <= finished_by_s]
            self._durations.clear()
            self._durations.extend(kept)
        self._probe_depth = min(MAX_PROBE_DEPTH, 2 * self._probe_depth)
        self._started = -1  # the next task

    def _polled(self, ticket: Ticket, sent_at: float) -> None:
        ticket.polls += 1
        ticket.last_poll = sent_at

    def _forget(self, ticket: Ticket) -> None:
        ticket.done = True
        self._waiting.pop(ticket, None)
        cohort = ticket.cohort
        if cohort is None:
            return
        ticket.cohort = None
        cohort.members.remove(ticket)
        if cohort.holder is ticket:
            cohort.holder = None
            if cohort.members:
                self._next_turn(cohort, advance=False)

    def _next_turn(self, cohort: _Cohort, *, advance: bool = True) -> None:
        """Hand the turn to the member polled longest ago, one turn later."""
        if advance:
            length = min(self.max_interval_s, self.first_interval_s * GROWTH ** (cohort.step + 1))
            cohort.turn += max(1.0 / max(1, len(cohort.members)), MIN_TURN_S / length)
            if cohort.turn >= 1.0 - 1e-9:
                cohort.step, cohort.turn = cohort.step + 1, 0.0
        cohort.holder = min(cohort.members, key=lambda m: (m.polls > 0, m.last_poll),
                            default=None)
        if cohort.holder is not None:
            _wake(cohort.holder._waiter)

    def _dissolve(self) -> None:
        """The channel has seen a finish: every cohort member follows the plan from now."""
        for ticket in self._waiting:
            if ticket.cohort is not None:
                ticket.pending_s = max(ticket.pending_s,
                                       ticket.cohort.pending_at - ticket.created)
        for ticket in self._waiting:
            ticket.cohort = None
        self._cohort = None

    def _wake_earlier(self) -> None:
        now = time.monotonic()
        for ticket in self._waiting:
            if ticket._waiter is not None and (
                    self.due(ticket, now) < ticket._due - WAKE_EPSILON_S):
                _wake(ticket._waiter)


def _earlier(plan: tuple[float, ...], before: tuple[float, ...]) -> bool:
    """Whether some task's next poll may come sooner on `plan` than on `before`."""
    return len(plan) > len(before) or any(
        new < old - WAKE_EPSILON_S for new, old in zip(plan, before, strict=False))


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
