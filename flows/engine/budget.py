"""Hard spending caps: no create that could take spend past a cap.

Two caps, both optional:

- `max_usd` caps one run of the job: every process that runs with the same run id (shards
  started as one run pass the same `--run-id`) shares it;
- `max_total_usd` caps everything ever spent on the target, across runs, shards and jobs.

A create reserves its price (the plan's price, `ProviderRules.price`) before its intent is
journalled; the reservation becomes the provider's reported cost when the task finishes, or 0
when the provider failed it. A created task whose cost is never reported (pending, uncertain,
lost) stays counted at its price: it may have been billed. Resuming a task an earlier run
created reserves nothing: it was counted when it was created.

With a cap, spend lives in `{target}/.nbp/budget.json`, changed only under the target's
budget lease, so processes on several machines cannot overshoot together. A create that does
not fit waits while this process has creates in flight (they may cost less than reserved);
once nothing of ours is in flight and it still does not fit, the budget is exhausted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from flows.engine.lease import Heartbeat, Lease
from outputs.sink import Sink

LEDGER = ".nbp/budget.json"
LEDGER_LOCK = ".nbp/locks/budget"
EPSILON_USD = 1e-9


class BudgetExhausted(Exception):
    """The next create could take spend past a cap."""


@dataclass
class Ledger:
    """Spend on a target, by run id, shared by every process through a lease."""

    sink: Sink
    heartbeat: Heartbeat

    def read(self) -> dict[str, Any]:
        data = self.sink.get_json(LEDGER)
        if not isinstance(data, dict):
            return {"total_usd": 0.0, "runs": {}}
        return {"total_usd": float(data.get("total_usd", 0.0)),
                "runs": {str(k): float(v) for k, v in dict(data.get("runs", {})).items()}}

    def write(self, data: dict[str, Any]) -> None:
        self.sink.put_json(LEDGER, data)

    def lease(self) -> Lease:
        return Lease(self.sink, LEDGER_LOCK, self.heartbeat)


@dataclass
class Budget:
    max_usd: float | None = None
    max_total_usd: float | None = None
    run_id: str = ""
    ledger: Ledger | None = None          # required when a cap is set
    spent_usd: float = 0.0                # this process: settled costs
    reserved_usd: float = 0.0             # this process: creates in flight
    exhausted: bool = False
    _changed: asyncio.Condition | None = field(default=None, repr=False)

    @property
    def capped(self) -> bool:
        return self.max_usd is not None or self.max_total_usd is not None

    async def reserve(self, estimate_usd: float) -> None:
        """Reserve the price of one create, or raise `BudgetExhausted`."""
        if not self.capped:
            self.reserved_usd += estimate_usd
            return
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            while True:
                if not self.exhausted and await self._commit(estimate_usd):
                    self.reserved_usd += estimate_usd
                    return
                if self.exhausted or self.reserved_usd <= EPSILON_USD:
                    self.exhausted = True
                    self._changed.notify_all()
                    raise BudgetExhausted(self._message(estimate_usd))
                await self._changed.wait()  # one of ours may settle for less

    async def settle(
        self, estimate_usd: float, actual_usd: float, *, reserved_by: str | None = None,
        in_flight: bool = True,
    ) -> None:
        """Turn a reservation into spend (0 for a task the provider did not bill).
        `reserved_by`: the run whose budget holds it, when an earlier run reserved it;
        `in_flight`: whether this process reserved it (and counts it as in flight)."""
        if in_flight:
            self.reserved_usd = max(0.0, self.reserved_usd - estimate_usd)
        self.spent_usd += actual_usd
        delta = actual_usd - estimate_usd
        if self.capped and abs(delta) > EPSILON_USD:
            await self._adjust(delta, reserved_by or self.run_id)
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    async def _commit(self, amount: float) -> bool:
        """Add `amount` to the ledger if every cap allows it (under the lease)."""
        assert self.ledger is not None, "a capped budget needs the target's ledger"
        ledger = self.ledger
        async with ledger.lease():
            data = await asyncio.to_thread(ledger.read)
            run = data["runs"].get(self.run_id, 0.0)
            if self.max_usd is not None and run + amount > self.max_usd + EPSILON_USD:
                return False
            total = data["total_usd"]
            if self.max_total_usd is not None and total + amount > self.max_total_usd + EPSILON_USD:
                return False
            data["runs"][self.run_id] = run + amount
            data["total_usd"] = total + amount
            await asyncio.to_thread(ledger.write, data)
            return True

    async def _adjust(self, delta: float, run_id: str) -> None:
        assert self.ledger is not None
        ledger = self.ledger
        async with ledger.lease():
            data = await asyncio.to_thread(ledger.read)
            data["runs"][run_id] = max(0.0, data["runs"].get(run_id, 0.0) + delta)
            data["total_usd"] = max(0.0, data["total_usd"] + delta)
            await asyncio.to_thread(ledger.write, data)

    def _message(self, estimate_usd: float) -> str:
        caps = []
        if self.max_usd is not None:
            caps.append(f"max_usd ${self.max_usd:.2f} for this run")
        if self.max_total_usd is not None:
            caps.append(f"max_total_usd ${self.max_total_usd:.2f} for the target")
        return (f"budget reached ({', '.join(caps)}): ${self.spent_usd:.2f} spent by this "
                f"process; the next image (~${estimate_usd:.3f}) could exceed it")
