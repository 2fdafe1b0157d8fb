"""Counting a run as it goes: cells done / failed / pending / in flight, spend, rate, ETA.

The runner updates one `Progress`; whoever watches (the terminal bar, plain log lines, a
Prefect progress artifact) reads it on its own schedule, so watching never slows the run
down. A cell is *done* when it reached a final state: succeeded, failed, uncertain (not sent
again unless asked) or cancelled. A cell can also end this run's work without being done:
pending (its task, a running Google batch say, is left for the next run to collect) or
skipped (nothing was sent; the next run sends it); after a stop request the cells never
reached are *not started*. Each of these is its own count, never counted as done.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

# The ETA's pace: over at least the last RATE_WINDOW cells this run ended and at least the
# last RATE_WINDOW_S seconds. Cells in flight together end together (50 tasks of 8 s end
# within a second), so a window of cells alone measured the burst, not the pace: the first
# wave's ETA was a few seconds for a minute's work.
RATE_WINDOW = 64
RATE_WINDOW_S = 30.0
KEPT_ENDS = 4096  # ends remembered for the pace (a few per millisecond at most matter)

# Final states other than succeeded/failed: done, shown only when some cell has them.
OTHER_DONE = ("uncertain", "cancelled")
# Ends of this run's work that are not done: shown on their own, only when some cell has them.
NOT_DONE = ("pending", "skipped")
# Ends that take no time (nothing sent, or a stop): not in the rate nor the ETA's pace.
UNWORKED = ("skipped", "cancelled")


@dataclass
class Progress:
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    cancelled: int = 0
    pending: int = 0         # created tasks left for the next run to collect
    uncertain: int = 0       # creates that may have reached a provider; not re-sent
    reused: int = 0          # succeeded in an earlier run, not submitted again
    worked: int = 0          # ended by this run's own work (not reused, skipped, cancelled)
    in_flight: int = 0
    sending: int = 0         # creates on the wire, waiting for their answer
    generating: int = 0      # ... of which synchronous: the answer is the image itself
    submitted: int = 0
    spent_usd: float = 0.0
    job: str = ""            # the job's name, once its spec is loaded
    emulated: bool = False   # the local emulators serve it: the spend "would cost"
    stopped: bool = False    # a stop request came: the cells not reached stay not started
    started: float = field(default_factory=time.monotonic)
    listeners: list[Callable[[Progress], None]] = field(default_factory=list)
    # (when, cells this run ended itself): the recent rate, for the ETA
    _ended: deque[tuple[float, int]] = field(
        default_factory=lambda: deque(maxlen=KEPT_ENDS), init=False, repr=False)

    @property
    def done(self) -> int:
        """Cells in a final state (module docstring): what the bar fills and "N/M done"
        counts."""
        return self.succeeded + self.failed + self.uncertain + self.cancelled

    @property
    def ended(self) -> int:
        """Cells this run's work is over for: done, pending or skipped."""
        return self.done + self.pending + self.skipped

    @property
    def not_started(self) -> int:
        """Cells neither ended nor in flight: after a stop request, never to be reached by
        this run (before one, still queued)."""
        return max(0, self.total - self.ended - self.in_flight)

    def stop(self, _: object = None) -> None:
        """A stop request came (an `Interrupt` listener)."""
        self.stopped = True

    @property
    def elapsed_s(self) -> float:
        return max(1e-9, time.monotonic() - self.started)

    def finished(self, status: str, cost_usd: float, *, reused: bool = False) -> None:
        if status == "succeeded":
            self.succeeded += 1
        elif status == "failed":
            self.failed += 1
        elif status == "cancelled":
            self.cancelled += 1
        elif status == "pending":
            self.pending += 1
        elif status == "uncertain":
            self.uncertain += 1
        else:
            self.skipped += 1
        if reused:
            self.reused += 1
        else:
            self.spent_usd += cost_usd
            if status not in UNWORKED:
                self.worked += 1
                self._ended.append((time.monotonic(), self.worked))
        for listener in self.listeners:
            listener(self)

    def eta_s(self) -> float | None:
        """Seconds until every cell is done at the recent pace (see `RATE_WINDOW`; counted up
        to now: a stall makes it grow); None before a cell ended by this run's work."""
        left = self.total - self.ended
        if left <= 0:
            return 0.0
        if not self._ended:
            return None
        now = time.monotonic()
        since, ended = self.started, 0  # a young run: its pace from the start
        for at, worked in reversed(self._ended):
            if self.worked - worked >= RATE_WINDOW and now - at >= RATE_WINDOW_S:
                since, ended = at, worked
                break
        cells = self.worked - ended
        span = now - since
        return left * span / cells if cells > 0 and span > 0 else None

    @property
    def per_min(self) -> float:
        """Cells this run ended by its own work, per minute since it started."""
        return 60 * self.worked / self.elapsed_s

    def snapshot(self) -> dict[str, float | None]:
        eta = self.eta_s()
        return {
            "total": self.total,
            "done": self.done,
            "ended": self.ended,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
            "cancelled": self.cancelled,
            "pending": self.pending,
            "uncertain": self.uncertain,
            "in_flight": self.in_flight,
            "not_started": self.not_started if self.stopped else 0,
            "spent_usd": round(self.spent_usd, 4),
            "elapsed_s": round(self.elapsed_s, 1),
            "eta_s": None if eta is None else round(eta, 1),
            "cells_per_min": round(self.per_min, 1),
        }

    def ends(self) -> str:
        """"6 ok, 1 failed": ok and failed always, uncertain and cancelled when some cell
        is; the cells done."""
        return ", ".join([f"{self.succeeded} ok", f"{self.failed} failed", *self.other_done()])

    def other_done(self) -> list[str]:
        """["1 uncertain"]: the final states besides ok and failed, each when some cell is."""
        return [f"{getattr(self, end)} {end}" for end in OTHER_DONE if getattr(self, end)]

    def not_done(self) -> list[str]:
        """["2 pending", "3 skipped", "5 not started"]: the cells not done that this run
        will not work on again, each when some cell is (not started: after a stop)."""
        parts = [f"{getattr(self, end)} {end}" for end in NOT_DONE if getattr(self, end)]
        if self.stopped and self.not_started:
            parts.append(f"{self.not_started} not started")
        return parts

    def line(self) -> str:
        """One plain line: "7/18 done: 6 ok, 1 failed · 2 pending · 2 in flight · $0.63
        spent · 83.0/min · elapsed 0:05 · ETA 0:08"."""
        eta = self.eta_s()
        figures = [f"{self.done}/{self.total} done: {self.ends()}", *self.not_done(),
                   f"{self.in_flight} in flight",
                   f"${self.spent_usd:.2f} {'would cost' if self.emulated else 'spent'}",
                   f"{self.per_min:.1f}/min", f"elapsed {clock(self.elapsed_s)}",
                   f"ETA {clock(eta)}"]
        return " · ".join(figures)


def clock(seconds: float | None) -> str:
    """0:05, 12:34, 1:02:03; "?" when unknown."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class Beat:
    """When a plain progress line is due: every `every_s` seconds, or sooner when another
    `step` of the cells is done (a 300-cell run prints about ten lines, not three hundred);
    never once every cell has ended: the run's last line says that (it came twice)."""

    every_s: float = 10.0
    step: float = 0.1
    _at: float = field(default_factory=time.monotonic)
    _done: int = 0  # cells ended at the last line

    def due(self, progress: Progress) -> bool:
        if progress.total and progress.ended >= progress.total:
            return False
        now = time.monotonic()
        stepped = progress.total > 0 and (
            progress.ended - self._done >= max(1.0, self.step * progress.total))
        if stepped or now - self._at >= self.every_s:
            self._at, self._done = now, progress.ended
            return True
        return False
