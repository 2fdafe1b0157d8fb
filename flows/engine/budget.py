"""Hard spending caps: no create that could take spend past a cap.

Two caps, both optional:

- `max_usd` caps one run of the job: every process that runs with the same run id (shards
  started as one run pass the same `--run-id`) shares it;
- `max_total_usd` caps everything ever spent on the target, across runs, shards and jobs,
  capped or not.

Every create intent holds its price (`Hold`: `Runner.price`, `ProviderRules.hold`: the plan's
price, or the dearer one a service tier may be billed at; times the provider's
`flows.engine.markup.CostMarkup` where it bills tokens besides the image, so the first creates
of a run cannot pass a cap on prices alone) from before it is journalled until it is
settled: at the provider's reported cost when its task finishes, at what it held when it
may have been billed (uncertain), at 0 when nothing was created or the provider failed the
task. A created task whose cost is never reported (pending) stays held: it may have been
billed. A reported cost above its hold is what the ledger counts (the provider's word);
the markup warns once and holds more from then on.

Every run records its spend on the target (`flows.engine.ledger`). With a cap, each hold is
committed to the ledger under the target's lease before its create, against the ledger and
the spend files of the uncapped runs beside it, so processes on several machines cannot
overshoot together; without one, the process keeps its own spend file (flushed every
`FLUSH_EVERY_S`, folded into the ledger at the end: no lease per create). Holds sit in the
ledger under their intent's id, so settling is idempotent (a hold settles once, whoever
settles it, in whichever run) and a hold whose create never left is released by the next
run that finds its cell `reserved`: a kill never leaves spend counted that no provider
billed. A create that does not fit waits while this process has creates in flight (they may
cost less than held); once nothing of ours is in flight and it still does not fit, the
budget is exhausted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nbp.flows.engine.ledger import Ledger, SpendRecord

T = TypeVar("T")
EPSILON_USD = 1e-9
FLUSH_EVERY_S = 2.0  # how stale an uncapped run's spend may look to a capped one


class BudgetExhausted(Exception):
    """The next create could take spend past a cap."""


@dataclass(frozen=True)
class Hold:
    """The price one create intent holds until it is settled.

    `ledger_run`: the run whose share of the target's spend holds it (None: a journal entry
    of version 1 written without a cap: no ledger holds it); `intent`: its key among the
    open holds (None: a hold of journal version 1, counted in the ledger's totals only)."""

    usd: float
    intent: str | None = None
    ledger_run: str | None = None


@dataclass
class Budget:
    max_usd: float | None = None
    max_total_usd: float | None = None
    run_id: str = ""
    ledger: Ledger | None = None          # required when a cap is set
    spent_usd: float = 0.0                # this process: settled costs (earlier runs' too)
    reserved_usd: float = 0.0             # this process: holds of its creates in flight
    exhausted: bool = False
    _changed: asyncio.Condition | None = field(default=None, repr=False)
    # Without a cap: this process's spend file, flushed now and then.
    _own: SpendRecord | None = field(default=None, repr=False)
    _flusher: asyncio.Task[None] | None = field(default=None, repr=False)
    _dirty: bool = field(default=False, repr=False)
    # Whole products: what this process promised products whose creates have not held
    # their price yet (`pledge`), so two products never both count on the same room.
    pledged_usd: float = 0.0
    _pledging: asyncio.Lock | None = field(default=None, repr=False)
    # What this process changed in the ledger's entry for its run (`run_usd`).
    _ledgered_usd: float = field(default=0.0, repr=False)

    @property
    def run_usd(self) -> float:
        """This run's spend as the target's ledger counts it (this process's share of its
        entry): the holds of its own creates, at what they settled for or still held at.
        A task an earlier run created and paid for, collected now, is that run's spend: it
        settles in the earlier run's entry and is not counted here."""
        own = self._own.total_usd if self._own is not None else 0.0
        return max(0.0, self._ledgered_usd + own)

    async def target_usd(self) -> float | None:
        """Everything spent on the target by every run, as its ledger and the spend files of
        the uncapped runs beside it say; None when they cannot be read."""
        if self.ledger is None:
            return None
        ledger = self.ledger
        try:
            data = await asyncio.to_thread(ledger.read)
            others = await asyncio.to_thread(ledger.others_spend, ledger.heartbeat.holder)
        except (OSError, ValueError):  # LedgerInvalid is a ValueError too
            return None
        own = self._own.total_usd if self._own is not None else 0.0
        return float(data["total_usd"]) + others + own

    @property
    def capped(self) -> bool:
        return self.max_usd is not None or self.max_total_usd is not None

    # -- the run's life ---------------------------------------------------------------------

    async def start(self) -> None:
        """Before anything is paid: the target's ledger reads (`LedgerInvalid` otherwise),
        the spend of processes that died is folded into it, and an uncapped run starts its
        own spend file."""
        if self.ledger is None:
            return
        await asyncio.to_thread(self.ledger.read)
        await self.ledger.fold_dead()
        if not self.capped:
            self._own = SpendRecord(self.ledger.heartbeat.holder, self.run_id)
            self._flusher = asyncio.create_task(self._flushing())

    async def close(self) -> None:
        """The run ends: an uncapped run's spend goes into the ledger, its file goes."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        if self._own is not None and self.ledger is not None:
            await _whole(self._fold_own(self.ledger, self._own))
            self._own = None

    # -- whole products ---------------------------------------------------------------------

    async def pledge(self, amount_usd: float) -> bool:
        """Room for a whole product's creates, promised before the first of them: True when
        every cap allows the ledger's spend, the other uncapped runs', this process's holds
        and promises, and `amount_usd` (promised then; each create's `reserve` still holds
        its own price); False: the product should not start. Without a cap: always True."""
        if not self.capped or amount_usd <= EPSILON_USD:
            return True
        assert self.ledger is not None
        if self._pledging is None:
            self._pledging = asyncio.Lock()
        ledger = self.ledger
        async with self._pledging:
            data = await asyncio.to_thread(ledger.read)
            promised = self.pledged_usd + amount_usd
            run = data["runs"].get(self.run_id, 0.0) + promised
            if self.max_usd is not None and run > self.max_usd + EPSILON_USD:
                return False
            if self.max_total_usd is not None:
                others = await asyncio.to_thread(ledger.others_spend, ledger.heartbeat.holder)
                if data["total_usd"] + others + promised > self.max_total_usd + EPSILON_USD:
                    return False
            self.pledged_usd = promised
            return True

    def unpledge(self, amount_usd: float) -> None:
        """A promised create held its price, or will not be made."""
        self.pledged_usd = max(0.0, self.pledged_usd - amount_usd)

    # -- holds ------------------------------------------------------------------------------

    async def reserve(self, intent: str, estimate_usd: float) -> Hold:
        """Hold the price of one create intent, or raise `BudgetExhausted`."""
        if not self.capped:
            self.reserved_usd += estimate_usd
            if self._own is not None:
                self._own.open[intent] = estimate_usd
                self._dirty = True
            return Hold(estimate_usd, intent, self.run_id if self._own else None)
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            while True:
                if not self.exhausted and await _whole(self._commit(intent, estimate_usd)):
                    self.reserved_usd += estimate_usd
                    return Hold(estimate_usd, intent, self.run_id)
                if self.exhausted or self.reserved_usd <= EPSILON_USD:
                    self.exhausted = True
                    self._changed.notify_all()
                    raise BudgetExhausted(self._message(estimate_usd))
                await self._changed.wait()  # one of ours may settle for less

    async def settle(self, hold: Hold, actual_usd: float, *, here: bool = True) -> None:
        """Turn a hold into spend (0: nothing was billed). `here`: this process made the
        hold (and counts it as in flight); a hold of an earlier run settles too."""
        if here:
            self.reserved_usd = max(0.0, self.reserved_usd - hold.usd)
        self.spent_usd += actual_usd
        own = self._own
        if here and own is not None and hold.intent in own.open:
            del own.open[hold.intent]
            own.settled_usd += actual_usd
            self._dirty = True
        elif hold.ledger_run is not None and self.ledger is not None:
            await _whole(self._settle_in_ledger(hold, actual_usd))
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    # -- the ledger -------------------------------------------------------------------------

    async def _commit(self, intent: str, amount: float) -> bool:
        """Add `amount` to the ledger as the intent's hold if every cap allows it, counting
        what the uncapped processes on the target spent and hold."""
        assert self.ledger is not None, "a capped budget needs the target's ledger"
        ledger = self.ledger
        async with ledger.changing():
            data = await asyncio.to_thread(ledger.read)
            run = data["runs"].get(self.run_id, 0.0)
            if self.max_usd is not None and run + amount > self.max_usd + EPSILON_USD:
                return False
            total = data["total_usd"]
            if self.max_total_usd is not None:
                others = await asyncio.to_thread(ledger.others_spend, ledger.heartbeat.holder)
                if total + others + amount > self.max_total_usd + EPSILON_USD:
                    return False
            data["runs"][self.run_id] = run + amount
            data["total_usd"] = total + amount
            data["open"][intent] = {"usd": amount, "run": self.run_id}
            await asyncio.to_thread(ledger.write, data)
            self._ledgered_usd += amount
            return True

    async def _settle_in_ledger(self, hold: Hold, actual_usd: float) -> None:
        """The hold's place in the ledger becomes `actual_usd`, once: a hold no longer open
        was settled already (or its reservation never reached the ledger)."""
        assert self.ledger is not None and hold.ledger_run is not None
        ledger = self.ledger
        async with ledger.changing():
            data = await asyncio.to_thread(ledger.read)
            if hold.intent is None:  # journal version 1: its hold is in the totals only
                held, run = hold.usd, hold.ledger_run
            elif (found := data["open"].pop(hold.intent, None)) is not None:
                held, run = found["usd"], found["run"]
            else:
                return
            delta = actual_usd - held
            data["runs"][run] = max(0.0, data["runs"].get(run, 0.0) + delta)
            data["total_usd"] = max(0.0, data["total_usd"] + delta)
            await asyncio.to_thread(ledger.write, data)
            if run == self.run_id:
                self._ledgered_usd += delta

    async def _flushing(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            with contextlib.suppress(OSError):  # the next flush tries again
                await self._flush()

    async def _flush(self) -> None:
        if self._dirty and self._own is not None and self.ledger is not None:
            self._dirty = False
            await asyncio.to_thread(self.ledger.write_spend, self._own)

    async def _fold_own(self, ledger: Ledger, own: SpendRecord) -> None:
        async with ledger.changing():
            data = await asyncio.to_thread(ledger.read)
            ledger.fold(data, own)
            await asyncio.to_thread(ledger.write, data)
            self._ledgered_usd += own.total_usd  # `run_usd` no longer counts the file
            self._own = None
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(ledger.drop_spend, own.holder)

    def _message(self, estimate_usd: float) -> str:
        caps = []
        if self.max_usd is not None:
            caps.append(f"max_usd ${self.max_usd:.2f} for this run")
        if self.max_total_usd is not None:
            caps.append(f"max_total_usd ${self.max_total_usd:.2f} for the target")
        return (f"budget reached ({', '.join(caps)}): ${self.spent_usd:.2f} spent by this "
                f"process; the next image (~${estimate_usd:.3f}) could exceed it")


async def _whole(change: Coroutine[Any, Any, T]) -> T:
    """A ledger change, finished even when its caller is cancelled (a stop request): the
    caller hears the cancel only once the change is written and the lease released, so
    whatever it does next (release the hold) sees the ledger as the change left it."""
    task = asyncio.ensure_future(change)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait((task,))
        if not task.cancelled():
            task.exception()  # retrieved; the caller's cancel is what goes on
        raise
