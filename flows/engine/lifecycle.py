"""A cell's life as code: its states, the transitions between them, and the journal entry
and budget hold each transition changes. The runner calls transitions; it never writes a
journal entry itself.

    unsent ──reserve──▶ reserved ──send──▶ create_sent ──created──▶ created ──finished──▶
      ▲   ◀──release───┘   ▲                 │  │  │                 │  │
      │                    └────not_sent─────┘  │  └──uncertain──▶ uncertain
      └────────────nothing_created──────────────┘                  │  └──cancelled──▶ cancelled
                                                 task_failed ──▶ failed ◀──┘ (from created,
    finished ──written──▶ written ──succeeded──▶ succeeded             finished, create_sent)

What each state means to the next run (the manifest's names in brackets):

    unsent        nothing of this cell reached a provider: it is created afresh
    reserved      a create intent exists (id, key, channel, price held) and has not left:
                  its hold is released and the cell is created afresh
    create_sent   the create is leaving or has left: the resend rule decides (recover it,
                  send it again with the same key, or [uncertain])
    created       the provider named the task: it is polled, never created again [pending]
    finished      the provider finished it; its image is being collected [pending]
    written       (in memory) the image is written and verified; `succeeded` records it
    succeeded     done: its manifest row is in the entry; skipped unless --force
    uncertain     a create may have reached a provider that cannot be asked: counted at its
                  price, never sent again unless the user asks (--retry-uncertain)
    failed        the provider failed the task (or refused its content): tried again
    cancelled     the provider confirmed the cancel of its task: created afresh
    unreadable    the entry cannot be read: as uncertain (a create may have been sent)

Which transitions are durable: all but `written` (the `succeeded` entry follows at once, and
an image at the cell's own path is rewritten by the next run), `finished` until the run ends
without its image (`pending` writes it; a rerun from `created` polls the finished task again
and its hold settles once), and the first `reserve` of a run without a budget cap (no ledger
holds its price; an intent that never left needs no record). `send` is written after every
wait (slot, budget, uploads, rate token), right before the request leaves. Client task ids
and idempotency keys belong to one intent (`Intent`): random, journalled with it, re-sent
only as that intent.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from nbp.flows.engine.budget import Budget, Hold
from nbp.flows.engine.journal import Journal, JournalEntry, JournalState
from nbp.outputs.manifest import ManifestRow
from nbp.providers.base import Finished, Submitted

# From which states each transition may start (anything else is a bug: `LifecycleError`).
NO_TASK = frozenset({"unsent", "failed", "cancelled", "succeeded", "uncertain", "unreadable"})
TRANSITIONS: dict[str, frozenset[str]] = {
    "reserve": NO_TASK,
    "release": frozenset({"reserved"}),
    "send": frozenset({"reserved", "create_sent"}),
    "not_sent": frozenset({"create_sent"}),
    "nothing_created": frozenset({"create_sent"}),
    "created": frozenset({"create_sent"}),
    "uncertain": frozenset({"create_sent"}),
    "finished": frozenset({"created"}),
    "task_failed": frozenset({"create_sent", "created", "finished"}),
    "cancelled": frozenset({"created"}),
    "pending": frozenset({"created", "finished"}),
    "written": frozenset({"finished"}),
    "succeeded": frozenset({"written"}),
    "moved": frozenset({"succeeded"}),
    "recollect": frozenset({"succeeded"}),
    "adopted": frozenset({"unsent"}),
}


class LifecycleError(RuntimeError):
    """A transition from a state it cannot start from: a bug, never a provider's doing."""


@dataclass(frozen=True)
class Intent:
    """One create: a random id, the key it is sent with (idempotency key / client task id),
    where it goes and the price it holds. Re-sent only as itself."""

    id: str
    key: str
    provider: str
    channel: str
    price_usd: float

    @classmethod
    def new(cls, provider: str, channel: str, price_usd: float) -> Intent:
        key = str(uuid.uuid4())
        return cls(key, key, provider, channel, price_usd)


class CellLife:
    """One cell's state in this run and the transitions that change it (module docstring)."""

    def __init__(self, cell_id: str, journal: Journal, budget: Budget, *, run_id: str,
                 holder: str) -> None:
        self.cell_id = cell_id
        self.journal, self.budget = journal, budget
        self.run_id, self.holder = run_id, holder
        self.state: str = "unsent"
        self.attempts = 0                      # creates sent, all runs
        self.provider = ""                     # of the live intent or task
        self.channel = ""                      # its channel key
        self.intent: Intent | None = None
        self.hold: Hold | None = None          # the live intent's price, until settled
        self.held_here = False                 # this process made `hold`
        self.submitted: Submitted | None = None
        self.submitted_at: float | None = None
        # When this run's create reached the provider (monotonic; the poll schedule's clock).
        self.accepted_at: float | None = None
        self.spent_usd = 0.0                   # settled tasks of this cell
        self.spent_here = 0.0                  # ... of them, holds this process made
        self.reason: str | None = None
        self.row: ManifestRow | None = None    # of a succeeded entry
        self.journalled = False                # the target has an entry for this cell
        self.paid_before = False               # collecting again a task already paid for

    # -- reading --------------------------------------------------------------------------

    @classmethod
    def resume(cls, entry: JournalEntry, journal: Journal, budget: Budget, *, run_id: str,
               holder: str) -> CellLife:
        """The cell as an earlier run's entry left it."""
        life = cls(entry.cell_id, journal, budget, run_id=run_id, holder=holder)
        life.state, life.journalled = entry.state, True
        life.attempts, life.spent_usd, life.reason = entry.attempts, entry.spent_usd, entry.reason
        life.provider, life.channel = entry.provider, entry.channel_key
        life.submitted, life.submitted_at, life.row = entry.submitted, entry.submitted_at, entry.row
        if entry.idempotency_key is not None or entry.intent is not None:
            key = entry.idempotency_key or entry.intent or ""
            life.intent = Intent(entry.intent or key, key, entry.provider, entry.channel_key,
                                 entry.reserved_usd)
        if entry.reserved_usd > 0:
            ledger_run = entry.reserved_by
            if entry.intent is None and not budget.capped:  # version 1 without a cap
                ledger_run = None
            life.hold = Hold(entry.reserved_usd, entry.intent, ledger_run)
        return life

    @property
    def cost_usd(self) -> float:
        """What the cell may have cost: settled tasks plus the live hold (pending)."""
        return round(self.spent_usd + (self.hold.usd if self.hold else 0.0), 6)

    @property
    def cost_here(self) -> float:
        """What the cell cost this run (`Budget.run_usd`'s share): settled holds this process
        made, plus its live hold if it made it; a task an earlier run paid for costs 0."""
        held = self.hold.usd if self.hold is not None and self.held_here else 0.0
        return round(self.spent_here + held, 6)

    @property
    def live_task(self) -> bool:
        return self.state in ("created", "finished")

    # -- before the create ------------------------------------------------------------------

    async def reserve(self, intent: Intent) -> None:
        """A new create intent holds its price (`BudgetExhausted` when it does not fit; the
        cell is unsent again, whatever was raised)."""
        self._check("reserve")
        self.intent, self.provider, self.channel = intent, intent.provider, intent.channel
        self.submitted, self.submitted_at, self.reason = None, None, None
        ledgered = self.budget.capped
        if ledgered:  # a ledger will hold it: the next run must be able to release it
            await self._write("reserved", reserved=intent.price_usd)
        else:
            self.state = "reserved"
        try:
            self.hold = await self.budget.reserve(intent.id, intent.price_usd)
            self.held_here = True
        except BaseException:
            # The hold may have reached the ledger before we heard back: settle it at 0
            # (idempotent by intent) so nothing stays counted.
            self.hold = Hold(intent.price_usd, intent.id, self.run_id if ledgered else None)
            self.held_here = False
            await asyncio.shield(self._release("not reserved"))
            raise

    async def release(self, reason: str) -> None:
        """The intent never left: its hold goes, the cell is unsent."""
        self._check("release")
        await self._release(reason)

    async def send(self, key: str | None = None) -> None:
        """Durable right before the request leaves (after every wait). `key`: the key the
        request carries when it is not the intent's own (a batch's placement)."""
        self._check("send")
        if self.state == "create_sent":
            return  # the same intent sent again (a request that never left, a lost answer)
        assert self.intent is not None
        if key is not None and key != self.intent.key:
            self.intent = Intent(self.intent.id, key, self.intent.provider,
                                 self.intent.channel, self.intent.price_usd)
        self.attempts += 1
        self.submitted_at = time.time()
        await self._write("create_sent")

    async def not_sent(self, reason: str) -> None:
        """The request did not leave after all (no connection): the intent waits again."""
        self._check("not_sent")
        self.attempts -= 1
        self.reason = reason
        await self._write("reserved")

    async def nothing_created(self, reason: str) -> None:
        """The provider refused the create, or says it never created it: unsent, not paid."""
        self._check("nothing_created")
        await self._settle(0.0)
        self.reason = reason
        await self._write("unsent")

    # -- the create's outcome ---------------------------------------------------------------

    async def created(self, submitted: Submitted) -> None:
        self._check("created")
        self.submitted = submitted
        self.submitted_at = self.submitted_at or time.time()
        await self._write("created")

    async def uncertain(self, reason: str) -> None:
        """The create may have reached a provider that cannot be asked: spent at its price."""
        self._check("uncertain")
        await self._settle(self.hold.usd if self.hold else 0.0)
        self.reason = reason
        await self._write("uncertain")

    # -- the task ---------------------------------------------------------------------------

    async def finished(self, finished: Finished) -> None:
        """The provider finished the task: its cost is its reported one, else its price.
        Journalled only if the run ends before the image is written (`pending`): a rerun
        from `created` polls the finished task again, and its hold settles only once."""
        self._check("finished")
        if not self.paid_before:  # its cost was counted when it first finished
            price = self.hold.usd if self.hold else 0.0
            await self._settle(finished.cost_usd if finished.cost_usd is not None else price)
        self.state = "finished"

    async def pending(self, reason: str) -> None:
        """This run's work on a created task ends; the next run collects it."""
        self._check("pending")
        self.reason = reason
        if self.state == "finished":
            await self._write("finished")

    async def task_failed(self, reason: str, *, billed: bool = False) -> None:
        """The provider's word: the task failed (not billed), or its image proved wrong
        (`billed`; after `finished` its cost was settled already and stays)."""
        self._check("task_failed")
        if self.state != "finished":
            await self._settle(self.hold.usd if billed and self.hold else 0.0)
        self.reason = reason
        await self._write("failed")

    async def cancelled(self) -> None:
        """Only on the provider's confirmation that the task is cancelled."""
        self._check("cancelled")
        await self._settle(0.0)
        await self._write("cancelled")

    def written(self) -> None:
        self._check("written")
        self.state = "written"

    async def succeeded(self, row: ManifestRow) -> None:
        self._check("succeeded")
        self.row = row
        await self._write("succeeded", row=row)

    def recollect(self) -> None:
        """A succeeded cell whose image is missing from the target is collected again from
        its task (in memory: until it succeeds again, the journal keeps its success)."""
        self._check("recollect")
        self.state, self.paid_before = "created", True

    async def adopted(self, row: ManifestRow) -> None:
        """The image of the same request made before this cell had its id (`Cell.adopts`)
        is this cell's: succeeded, nothing created, nothing paid."""
        self._check("adopted")
        self.row = row
        await self._write("succeeded", row=row)

    async def moved(self, row: ManifestRow) -> None:
        """The succeeded cell's image now lives at the path the spec gives (`row`)."""
        self._check("moved")
        self.row = row
        await self._write("succeeded", row=row)

    # -- helpers ----------------------------------------------------------------------------

    def _check(self, transition: str) -> None:
        if self.state not in TRANSITIONS[transition]:
            raise LifecycleError(f"cell {self.cell_id}: {transition} from {self.state} "
                                 f"(allowed from {', '.join(sorted(TRANSITIONS[transition]))})")

    async def _release(self, reason: str) -> None:
        await self._settle(0.0)
        self.reason = reason
        if self.journalled:
            await self._write("unsent")
        else:
            self.state = "unsent"

    async def _settle(self, actual_usd: float) -> None:
        hold, here = self.hold, self.held_here
        self.hold, self.held_here = None, False
        self.spent_usd += actual_usd
        if here:
            self.spent_here += actual_usd
        if hold is not None:
            await self.budget.settle(hold, actual_usd, here=here)

    async def _write(self, state: JournalState, *, row: ManifestRow | None = None,
                     reserved: float | None = None) -> None:
        """Journal the cell in `state`; the state is the cell's only once it is durable."""
        hold = self.hold
        intent = self.intent if state in ("reserved", "create_sent", "created",
                                          "finished") else None
        entry = JournalEntry(
            cell_id=self.cell_id, state=state, run_id=self.run_id, provider=self.provider,
            holder=self.holder, attempts=self.attempts,
            intent=intent.id if intent else None, idempotency_key=intent.key if intent else None,
            reserved_usd=reserved if reserved is not None else (hold.usd if hold else 0.0),
            reserved_by=(self.run_id if reserved is not None and self.budget.capped
                         else hold.ledger_run if hold else None),
            spent_usd=self.spent_usd,
            task=self.submitted.to_json() if self.submitted else None,
            submitted_at=self.submitted_at, reason=self.reason, row=row,
            channel=self.channel if self.channel != self.provider else None,
        )
        await asyncio.to_thread(self.journal.write, entry)
        self.state, self.journalled = state, True
