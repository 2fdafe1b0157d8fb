"""Counting a run as it goes: cells done / failed / in flight, spend, rate.

The runner updates one `Progress`; whoever watches (the terminal bar, plain log lines, a
Prefect progress artifact) reads `snapshot()` on its own schedule, so watching never slows
the run down.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


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
    in_flight: int = 0
    sending: int = 0         # creates on the wire, waiting for their answer
    generating: int = 0      # ... of which synchronous: the answer is the image itself
    submitted: int = 0
    spent_usd: float = 0.0
    started: float = field(default_factory=time.monotonic)
    listeners: list[Callable[[Progress], None]] = field(default_factory=list)

    @property
    def done(self) -> int:
        return (self.succeeded + self.failed + self.skipped + self.cancelled + self.pending
                + self.uncertain)

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
        for listener in self.listeners:
            listener(self)

    def snapshot(self) -> dict[str, float]:
        elapsed = max(1e-9, time.monotonic() - self.started)
        fresh = self.done - self.reused
        return {
            "total": self.total,
            "done": self.done,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
            "cancelled": self.cancelled,
            "pending": self.pending,
            "uncertain": self.uncertain,
            "in_flight": self.in_flight,
            "spent_usd": round(self.spent_usd, 4),
            "elapsed_s": round(elapsed, 1),
            "cells_per_min": round(60 * fresh / elapsed, 1),
        }

    def line(self) -> str:
        s = self.snapshot()
        left = "".join(f", {s[k]} {k}" for k in ("pending", "uncertain") if s[k])
        return (
            f"{s['done']}/{s['total']} done ({s['succeeded']} ok, {s['failed']} failed, "
            f"{s['skipped']} skipped{left}), {s['in_flight']} in flight, "
            f"${s['spent_usd']:.2f} spent, {s['cells_per_min']}/min"
        )
