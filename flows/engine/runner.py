"""The engine: runs cells against providers, plain asyncio, no Prefect.

One coroutine per cell in flight (a bounded worker pool, so memory stays flat in the number
of cells). For each cell: reuse it when an earlier run succeeded; take its claim on the
target (no other run works on it meanwhile); resume what the journal says an earlier run
left (collect a created task, apply the resend rule to a create whose answer was never
recorded, release an intent that never left); else check its output path is writable, take
an in-flight slot, hold its price, prepare the request (uploads; a batch channel's placement
in a group), take a rate token, journal the intent, create, journal the task id, poll to the
end, download, verify, write. Batch and direct channels are the same `Provider` here.

A cell's states and their journal entries are `flows.engine.lifecycle`'s (the runner calls
its transitions); what each error does is `flows.engine.policy`'s; a stop request (Ctrl-C,
SIGTERM) is `flows.engine.interrupt`'s.

Two provider signals change what the run does with a channel beyond one cell. A model id the
provider does not serve (`ModelNotFound`, a 404) drops that model on that channel for the run,
said once: no later cell asks that channel for it, each goes on by the job's routing (another
channel, or fails `model_not_found` where none is left). An overloaded model (`Overloaded`:
nothing was created) is waited out on the same channel like a rate limit; once a cell has
waited `RetryPolicy.patience_s` there and its routing has another channel for it, it moves
(`ChannelOverloaded`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from nbp.flows.engine.budget import Budget, BudgetExhausted
from nbp.flows.engine.interrupt import Interrupt
from nbp.flows.engine.journal import Journal, JournalEntry
from nbp.flows.engine.lease import Heartbeat, Lease
from nbp.flows.engine.lifecycle import CellLife, Intent
from nbp.flows.engine.markup import CostMarkup, cell_hold, markups_for
from nbp.flows.engine.policy import (
    DEFAULT_RETRY,
    HANDLED,
    CellInvalid,
    CreateUncertain,
    Decision,
    Interrupted,
    OutputTaken,
    Resend,
    RetryPolicy,
    Step,
    StepEnd,
    TaskPending,
    Unsubmittable,
    decide,
    resend_rule,
    step_end,
    with_retries,
)
from nbp.flows.engine.progress import Progress
from nbp.flows.engine.references import ReferenceLoader
from nbp.flows.engine.refresh import TargetState
from nbp.flows.engine.routing import Router, Ticket
from nbp.flows.engine.throttle import AccountThrottle
from nbp.flows.engine.verify import verify_image
from nbp.flows.spec.model import Cell, JobSpec
from nbp.flows.spec.settings import ProviderRules
from nbp.outputs.layout import CLAIMS_DIR
from nbp.outputs.manifest import ManifestRow
from nbp.outputs.sink import Sink
from nbp.providers import registry
from nbp.providers.base import (
    Finished,
    ImageRequest,
    Pending,
    Provider,
    Reference,
    Submitted,
    sent_seed,
)
from nbp.providers.errors import (
    ModelNotFound,
    Overloaded,
    ProviderError,
    RateLimited,
    RequestNotSent,
    TaskFailed,
    TransientError,
)
from nbp.providers.model import pixel_size

log = logging.getLogger("nbp.runner")

T = TypeVar("T")


class ChannelOverloaded(TransientError):
    """A channel's model stayed overloaded for the run's patience and the cell's routing has
    another channel: nothing was created here, the cell goes on there (`policy.decide`: the
    next provider)."""


@dataclass
class RunContext:
    """Everything a run shares across cells."""

    spec: JobSpec
    run_id: str                                 # this run of the job (shards may share it)
    sink: Sink
    journal: Journal
    providers: Mapping[str, Provider]           # by channel key (flows.spec.channels)
    rules: Mapping[str, ProviderRules]          # by provider: prices and limits
    throttles: Mapping[str, AccountThrottle]    # by channel key
    budget: Budget
    progress: Progress
    router: Router
    heartbeat: Heartbeat | None = None          # claims cells on the target when set
    journalled: set[str] = field(default_factory=set)  # cells with a journal entry
    target: TargetState | None = None           # who owns each output path (refresh)
    force: bool = False
    retry_uncertain: bool = False
    retry: RetryPolicy = DEFAULT_RETRY
    models: Mapping[str, str] = field(default_factory=dict)  # provider -> its default model id
    # channel key -> the model ids its creates asked for (the run's record names them)
    asked: dict[str, set[str]] = field(default_factory=dict)
    interrupt: Interrupt | None = None          # Ctrl-C / SIGTERM: stop where cells stand
    emulated: bool = False                      # the providers are the local emulators
    # by provider: what its creates hold over their price (`flows.engine.markup`); one for
    # each of `rules` that is not given, from its `initial_markup`
    markups: dict[str, CostMarkup] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.markups = {**markups_for(self.rules), **self.markups}

    def model_of(self, provider: str, cell: Cell) -> str | None:
        """The model id a cell asks `provider` for: its pinned one, else the default."""
        return cell.model or self.models.get(provider)

    @property
    def holder(self) -> str:
        return self.heartbeat.holder if self.heartbeat else self.run_id


class Runner:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.references = ReferenceLoader.for_spec(ctx.spec)
        self.stop: Unsubmittable | None = None               # fail-fast / budget: run-wide
        self.dead: dict[str, ProviderError] = {}             # account refused: per provider
        # (channel, model id) the provider does not serve: dropped for the run
        self.dropped: dict[tuple[str, str], ModelNotFound] = {}
        self.busy = 0                                        # cells another run holds
        self.not_started = 0                                 # cells a stop request left
        self._pledged: dict[str, float] = {}                 # cell -> its product's promise

    # -- fan-out ------------------------------------------------------------------------

    async def run_cells(self, cells: Iterable[Cell], *, workers: int) -> list[ManifestRow]:
        """Run every cell with at most `workers` cells active; rows in input order (none for
        a cell another live run is working on, nor for one a stop request left unstarted:
        the manifest keeps what an earlier run wrote of it)."""
        items = list(cells)
        wanted = [c.cell_id for c in items if c.cell_id in self.ctx.journalled]
        previous = await asyncio.to_thread(self.ctx.journal.read, wanted) if wanted else {}
        rows: list[ManifestRow | None] = [None] * len(items)
        refused = await self._pledge_products(items, previous)
        queue: asyncio.Queue[tuple[int, Cell]] = asyncio.Queue()
        for index, cell in enumerate(items):
            if cell.cell_id in refused:
                rows[index] = self._final(self._life(cell, previous.get(cell.cell_id)), cell,
                                          "skipped", "budget", refused[cell.cell_id])
                self.ctx.progress.finished("skipped", 0.0)
            else:
                queue.put_nowait((index, cell))

        async def worker() -> None:
            while True:
                try:
                    index, cell = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if self.interrupted:
                    self.not_started += 1
                    continue
                try:
                    rows[index] = await self.run_cell(cell, previous.get(cell.cell_id))
                    self._unpledge(cell)
                except Exception as exc:  # a bug in one cell must not end the run
                    self._unpledge(cell)
                    log.exception("cell %s: unexpected error", cell.cell_id)
                    rows[index] = self._row(
                        self._life(cell), cell, "failed", error_code="internal_error",
                        error_message=f"{type(exc).__name__}: {exc} (its journal entry is kept: "
                                      "the next run collects any task it created)")
                    self.ctx.progress.finished("failed", 0.0)

        await asyncio.gather(*(worker() for _ in range(max(1, min(workers, len(items))))))
        return [row for row in rows if row is not None]

    async def _pledge_products(
        self, cells: list[Cell], previous: Mapping[str, JournalEntry]
    ) -> dict[str, str]:
        """Whole products under a budget cap (cells with a dataset key): each product's
        creates are promised together (`Budget.pledge`) before any of them starts; a product
        that does not fit whole is skipped whole, never left half done. Returns the refused
        cells, with why."""
        budget = self.ctx.budget
        if not budget.capped or not any(cell.key for cell in cells):
            return {}
        refused: dict[str, str] = {}
        for key, group in itertools.groupby(cells, key=lambda c: tuple(sorted(c.key.items()))):
            product = list(group)
            costs = {c.cell_id: self._estimate(c) for c in product
                     if self._needs_create(previous.get(c.cell_id))}
            if await budget.pledge(sum(costs.values())):
                self._pledged.update(costs)
                continue
            why = (f"budget: product {dict(key)} needs ${sum(costs.values()):.2f} for its "
                   f"{len(costs)} image(s) and would not fit whole; not started")
            refused.update({c.cell_id: why for c in product if c.cell_id in costs})
        return refused

    def _needs_create(self, entry: JournalEntry | None) -> bool:
        """Whether a cell may be created in this run (no task of it exists or may exist)."""
        if entry is None or entry.state in ("unsent", "failed", "cancelled", "reserved"):
            return True
        return entry.state == "succeeded" and self.ctx.force

    def _estimate(self, cell: Cell) -> float:
        """A create's price on the cell's first channel (its pinned provider's, else the
        spec's first): what a product's promise counts."""
        routed = self.ctx.spec.routed
        provider = cell.provider or (routed[0] if routed else "")
        return self.price(provider, cell) if provider in self.ctx.rules else 0.0

    def _unpledge(self, cell: Cell) -> None:
        self.ctx.budget.unpledge(self._pledged.pop(cell.cell_id, 0.0))

    @property
    def interrupted(self) -> bool:
        return self.ctx.interrupt is not None and self.ctx.interrupt.requested

    # -- one cell -----------------------------------------------------------------------

    async def run_cell(
        self, cell: Cell, previous: JournalEntry | None = None
    ) -> ManifestRow | None:
        """One cell to the end of this run's work on it; None when another run holds it."""
        ctx = self.ctx
        if (previous and previous.state == "succeeded" and previous.row and not ctx.force
                and previous.row.output_path == cell.output_path
                and not self._target.missing(previous.row.output_path or "")):
            ctx.progress.finished("succeeded", 0.0, reused=True)
            return _named(previous.row, cell)
        claim = None
        if ctx.heartbeat is not None:
            claim = Lease(ctx.sink, f"{CLAIMS_DIR}/{cell.cell_id}", ctx.heartbeat)
            if not await claim.try_acquire():
                self.busy += 1
                ctx.progress.finished("skipped", 0.0)
                return None
            # The holder before us may have journalled since this chunk read the journal.
            previous = (await asyncio.to_thread(ctx.journal.read, [cell.cell_id])).get(
                cell.cell_id
            )
        try:
            life = self._life(cell, previous)
            try:
                row = await self._run_owned(life, cell)
            except asyncio.CancelledError:
                await self._on_cancel(life)
                raise
            ctx.progress.finished(str(row.status), life.cost_here)  # this run's, not the row's
            return row
        finally:
            if claim is not None:
                await asyncio.shield(claim.release())

    def _life(self, cell: Cell, previous: JournalEntry | None = None) -> CellLife:
        ctx = self.ctx
        if previous is None:
            return CellLife(cell.cell_id, ctx.journal, ctx.budget, run_id=ctx.run_id,
                            holder=ctx.holder)
        return CellLife.resume(previous, ctx.journal, ctx.budget, run_id=ctx.run_id,
                               holder=ctx.holder)

    async def _run_owned(self, life: CellLife, cell: Cell) -> ManifestRow:
        if life.state == "succeeded" and life.row and not self.ctx.force:
            if self._target.missing(life.row.output_path or ""):
                return await self._recollect(life, cell)  # its image is gone
            if life.row.output_path != cell.output_path:
                return await self._move(life, cell)
            return _named(life.row, cell)  # another run finished it while we waited
        if life.state != "unsent":
            resumed = await self._resume(life, cell)
            if resumed is not None:
                return resumed
        elif (adopted := await self._adopt(life, cell)) is not None:
            return adopted
        return await self._run_channels(life, cell)

    async def _adopt(self, life: CellLife, cell: Cell) -> ManifestRow | None:
        """A cell whose path holds the image of the same request from before its reference
        fingerprint was known (`Cell.adopts`): that image is this cell's, unpaid."""
        owner = self._target.owner(cell.output_path)
        if cell.adopts is None or owner is None or owner.cell_id != cell.adopts:
            return None
        found = (await asyncio.to_thread(self.ctx.journal.read, [cell.adopts])).get(cell.adopts)
        if found is None or found.state != "succeeded" or found.row is None:
            return None
        row = dataclasses.replace(found.row, cell_id=cell.cell_id, run_id=self.ctx.run_id,
                                  spec_cell_id=cell.spec_cell_id, template=cell.template)
        await life.adopted(row)
        return row

    async def _recollect(self, life: CellLife, cell: Cell) -> ManifestRow:
        """A succeeded cell whose image is gone from the target: collected again from its
        task where the provider still serves it (nothing is paid), else reported; created
        again only when the user asks (`--force`)."""
        provider = self.ctx.providers.get(life.channel)
        why = "no task is recorded to collect it from"
        if life.submitted is not None and provider is not None:
            life.recollect()
            try:
                return await self._collect(life, cell, provider,
                                           self.ctx.throttles[life.channel])
            except HANDLED as exc:
                why = f"collecting it again from its task failed: {type(exc).__name__}: {exc}"
        elif life.submitted is not None:
            why = f"its task is at {life.channel}, which this run does not use"
        return self._final(life, cell, "failed", "image_missing",
                           f"its image is gone from {cell.output_path}; {why}. Nothing was "
                           "paid (--force creates it again)")

    async def _move(self, life: CellLife, cell: Cell) -> ManifestRow:
        """A succeeded cell whose path the spec now renders differently (a changed
        `output.path`, a new encoding): its image moves there, nothing is paid."""
        row = life.row
        assert row is not None and row.output_path is not None
        sink, old = self.ctx.sink, row.output_path
        data = await asyncio.to_thread(sink.read_bytes, old)
        if data is None or (row.sha256 and hashlib.sha256(data).hexdigest() != row.sha256):
            return self._final(life, cell, "failed", "image_missing",
                               f"its image is no longer at {old}; nothing was paid (run with "
                               "--force to create it again)")
        try:
            self._check_writable(cell)
            uri = await asyncio.to_thread(self._write, cell, data)
        except OutputTaken as exc:
            return self._final(life, cell, "failed", "OutputTaken", f"moving its image: {exc}")
        moved = dataclasses.replace(row, output_path=cell.output_path, output_uri=uri,
                                    run_id=self.ctx.run_id, template=cell.template)
        await life.moved(moved)
        await asyncio.to_thread(sink.delete, old)  # its own image, now at the new path
        return moved

    async def _resume(self, life: CellLife, cell: Cell) -> ManifestRow | None:
        """What an earlier run left: a row when this run's work on the cell ends here, None
        when the cell may be created afresh."""
        ctx = self.ctx
        if life.state in ("unreadable", "uncertain") and not ctx.retry_uncertain:
            return self._row(life, cell, "uncertain", error_code=life.state,
                             error_message=life.reason or "")
        if life.state == "reserved":
            await life.release("its create never left: an earlier run stopped before it")
            return None
        if life.state not in ("create_sent", "created", "finished"):
            return None
        provider = ctx.providers.get(life.channel)
        if provider is None:
            status = "pending" if life.live_task else "uncertain"
            where = life.provider if life.channel == life.provider else (
                f"{life.provider} (account {life.channel.partition(':')[2]})")
            return self._row(life, cell, status, error_code="provider_not_in_spec",
                             error_message=f"its task is at {where}, which this run does not "
                                           "use; add it back to collect the task")
        try:
            if life.state == "create_sent" and not await self._resend(life, cell, provider):
                return None  # never created: create afresh
            return await self._collect(life, cell, provider, ctx.throttles[life.channel])
        except HANDLED as exc:
            if decide(exc) is Decision.REROUTE:  # its batch expired: the next channel
                return await self._run_channels(life, cell, expired=exc)
            return await self._ended(life, cell, exc, decide(exc))

    async def _resend(self, life: CellLife, cell: Cell, provider: Provider) -> bool:
        """A create an earlier run sent without recording its answer: True when its task is
        now `created`, False when it was never created (the cell is unsent)."""
        rule = resend_rule(provider.capabilities)
        if rule is Resend.NEVER:
            await life.uncertain(
                f"a create was sent to {life.provider} and the run stopped before its answer "
                "was recorded; it may exist and be billed (nbp run --retry-uncertain creates "
                "it again)")
            if self.ctx.retry_uncertain:
                return False  # the user accepts paying twice: create afresh
            raise CreateUncertain(life.reason)
        assert life.intent is not None
        if rule is Resend.RECOVER:  # asked by its key: nothing is read, prepared or placed
            request = self._request(cell, life.provider, life.intent.key,
                                    tuple(Reference(uri) for uri in cell.references))
            found = await self._recover(life, provider, request)
            if found is None:
                await life.nothing_created(f"{life.provider} has no task for its key: it "
                                           "never arrived")
                return False
            await life.created(found)
            return True
        references = await self._prepared_references(cell, provider, life)
        request = self._request(cell, life.provider, life.intent.key, references)
        await self._create(life, provider, request, self.ctx.throttles[life.channel], rule)
        return True

    async def _prepared_references(
        self, cell: Cell, provider: Provider, life: CellLife
    ) -> tuple[Reference, ...]:
        """A resent create's references, prepared again (uploads are the provider's part)."""
        request = self._request(cell, life.provider, None, await self._references(cell))
        prepared = await self._waiting(with_retries(
            lambda: provider.prepare(request), Step.PREPARE, policy=self.ctx.retry))
        return prepared.references

    async def _run_channels(
        self, life: CellLife, cell: Cell, *, expired: BaseException | None = None
    ) -> ManifestRow:
        """Channels as the router hands them out; what each failure leads to is
        `policy.decide`'s: a new task on the same channel, another channel, or the end.
        `expired`: the cell's task expired unrun on its channel (an earlier run's batch)."""
        spec = self.ctx.spec
        last: BaseException | None = expired
        tried: set[str] = {life.channel} if expired is not None else set()
        tasks_on: dict[str, int] = {}
        again: str | None = None  # the channel of a failed task that gets a new one
        try:
            references = await self._references(cell)
        except HANDLED as exc:
            return await self._ended(life, cell, exc, decide(exc))
        while True:
            if self.stop is not None:
                return self._final(life, cell, self.stop.status, self.stop.code,
                                   self.stop.message)
            try:
                self._check_writable(cell)
                ticket = await self._waiting(
                    self.ctx.router.take(cell, self._excluded(cell, tried), only=again))
            except HANDLED as exc:
                return await self._ended(life, cell, exc, decide(exc))
            if ticket is None and again is not None:  # that channel was dropped meanwhile
                tried.add(again)
                again = None
                continue
            if ticket is None:
                break
            try:
                return await self._attempt(life, cell, ticket, references, tried)
            except HANDLED as exc:
                decision, last = decide(exc), exc
            if isinstance(last, ModelNotFound):
                self._drop_model(ticket.key, last)
            if decision in (Decision.INTERRUPTED, Decision.STOP, Decision.PENDING,
                            Decision.UNCERTAIN, Decision.FINAL):
                return await self._ended(life, cell, last, decision)
            if decision is Decision.DROP_ACCOUNT:
                assert isinstance(last, ProviderError)
                self.dead[ticket.key] = last  # every later cell of this account would hit it
            if decision is Decision.REROUTE:
                expired = last
            tasks_on[ticket.key] = tasks_on.get(ticket.key, 0) + 1
            again = None
            if decision is Decision.RETRY_TASK and tasks_on[ticket.key] <= spec.retries:
                again = ticket.key
            else:
                tried.add(ticket.key)
        if expired is not None:  # no channel left: it may still run where it expired
            return await self._ended(life, cell, expired, Decision.REROUTE)
        last = last or self._model_gone(cell) or next(iter(self.dead.values()), None)
        if last is None:
            where = f"of {cell.provider} (the cell's pinned provider)" if cell.provider else (
                "of this job")
            return self._final(life, cell, "failed", "no_channel", f"no channel {where} is left")
        return await self._ended(life, cell, last, Decision.FINAL)

    async def _ended(
        self, life: CellLife, cell: Cell, exc: BaseException, decision: Decision
    ) -> ManifestRow:
        """The row of a cell whose work in this run ends with `exc`."""
        if decision is Decision.INTERRUPTED:
            if life.state == "reserved":
                await life.release(str(exc))
            if life.live_task:
                await life.pending(str(exc))
            status = "pending" if life.live_task or life.state == "create_sent" else (
                "uncertain" if life.state == "uncertain" else "skipped")
            return self._row(life, cell, status, error_code="interrupted",
                             error_message=f"{exc} ({_NEXT_RUN[status]})")
        if isinstance(exc, Unsubmittable):
            return self._final(life, cell, exc.status, exc.code, exc.message)
        if decision is Decision.REROUTE:  # its task expired unrun and no channel is left
            row = self._row(life, cell, "pending", error_code=getattr(exc, "code", None),
                            error_message=f"{exc} (no other channel took it: the next run "
                                          "creates it again)")
            return dataclasses.replace(row, remote_task_id=None, task_group=None)
        if decision is Decision.PENDING:
            if life.live_task:
                await life.pending(str(exc))
            return self._row(life, cell, "pending", error_code="pending",
                             error_message=f"{exc} (the next run collects the task)")
        if decision is Decision.UNCERTAIN:
            return self._row(life, cell, "uncertain", error_code=type(exc).__name__,
                             error_message=f"{type(exc).__name__}: {exc} (not re-sent, to "
                                           "never pay twice; nbp run --retry-uncertain)")
        return self._failed(life, cell, exc)

    # -- one create and its task ------------------------------------------------------------

    async def _attempt(
        self, life: CellLife, cell: Cell, ticket: Ticket, references: tuple[Reference, ...],
        tried: set[str],
    ) -> ManifestRow:
        """One create on the ticket's channel (its slot is held) and its task to the end.
        `tried`: the channels the cell is done with (an overload may move it elsewhere)."""
        ctx, channel = self.ctx, ticket.lane.channel
        provider, throttle = ctx.providers[ticket.key], ctx.throttles[ticket.key]
        ctx.asked.setdefault(ticket.key, set()).add(ctx.model_of(channel.provider, cell) or "")
        intent = Intent.new(channel.provider, ticket.key, self.price(channel.provider, cell))
        slot = _Slot(ticket, ctx.progress)
        try:
            try:
                self._check_still_submittable(ticket.key, cell)
                await self._waiting(life.reserve(intent))
                self._unpledge(cell)  # its own hold counts now
            except BudgetExhausted as exc:
                self.stop = self.stop or Unsubmittable("skipped", "budget", str(exc))
                raise self.stop from exc
            request = await self._prepare(life, provider, throttle,
                                          self._request(cell, channel.provider, intent.key,
                                                        references))
            await self._create(life, provider, request, throttle,
                               resend_rule(provider.capabilities), ticket,
                               elsewhere=lambda: bool(ctx.router.open_channels(
                                   cell, self._excluded(cell, tried | {ticket.key}))))
            ctx.progress.submitted += 1
            return await self._collect(life, cell, provider, throttle, slot)
        finally:
            await slot.release()

    async def _prepare(
        self, life: CellLife, provider: Provider, throttle: AccountThrottle,
        request: ImageRequest,
    ) -> ImageRequest:
        """The provider's preparation (reference uploads) before the intent is journalled:
        whatever fails here, nothing was created."""
        try:
            return await self._waiting(with_retries(
                lambda: provider.prepare(request), Step.PREPARE, throttle=throttle,
                policy=self.ctx.retry))
        except BaseException as exc:
            await asyncio.shield(life.release(f"not sent: preparing it failed ({exc})"))
            if isinstance(exc, HANDLED) or not isinstance(exc, Exception):
                raise
            raise CellInvalid(f"preparing the request: {type(exc).__name__}: {exc}") from exc

    async def _create(
        self, life: CellLife, provider: Provider, request: ImageRequest,
        throttle: AccountThrottle, rule: Resend, ticket: Ticket | None = None,
        *, elsewhere: Callable[[], bool] | None = None,
    ) -> Submitted:
        """Create the task; the intent is journalled right before each send, after the
        spend window and the rate token. A send that never left, or that the provider
        refused, moved the cell back (`_sent`) and bills nothing; one that may have reached
        the provider follows the resend rule. An overload (nothing created) is sent again
        here until `patience_s` has passed since the first; then, when `elsewhere()` says the
        cell has another channel, it ends the create as `ChannelOverloaded`."""
        key = request.idempotency_key  # what the spend window holds its price under
        price = life.intent.price_usd if life.intent is not None else 0.0
        overloaded_since: float | None = None

        async def before_each() -> None:
            spent = ticket is not None and ticket.spent
            if spent:
                assert ticket is not None
                ticket.token_used()
            await self._waiting(throttle.before_create(spent=spent, key=key, usd=price))

        async def send() -> Submitted:
            try:
                await life.send(request.idempotency_key)
            except Exception as exc:  # the intent is not durable: nothing may leave
                raise RequestNotSent(f"its intent could not be journalled: {exc}") from exc
            progress, sync = self.ctx.progress, int(provider.capabilities.synchronous)
            progress.sending, progress.generating = progress.sending + 1, progress.generating + sync
            leaving = time.monotonic()
            try:
                submitted = await self._sending(provider.submit(request))
                # The provider took the task somewhere between the send and its answer.
                life.accepted_at = (leaving + time.monotonic()) / 2
                return submitted
            except Exception as exc:
                await self._sent(life, exc)
                if life.state in ("reserved", "unsent"):  # nothing was created: not billed
                    throttle.not_billed(key)
                if isinstance(exc, Overloaded) and elsewhere is not None:
                    moving(exc)
                raise
            finally:  # what a stop request waits for
                progress.sending, progress.generating = (progress.sending - 1,
                                                         progress.generating - sync)

        def moving(exc: Overloaded) -> None:
            nonlocal overloaded_since
            now = time.monotonic()
            overloaded_since = overloaded_since or now
            if now - overloaded_since >= self.ctx.retry.patience_s and elsewhere is not None \
                    and elsewhere():
                raise ChannelOverloaded(
                    f"{life.channel} stayed overloaded for {now - overloaded_since:.0f} s "
                    f"({exc}); nothing was created there", code=exc.code) from exc

        for attempt in range(1, self.ctx.retry.max_attempts + 1):
            try:
                submitted = await with_retries(
                    send, Step.CREATE, throttle=throttle, policy=self.ctx.retry,
                    before_each=before_each, after_each=lambda: throttle.after_create(key),
                )
            except Exception as exc:
                if life.state == "reserved":  # nothing left: never sent, or refused again
                    await asyncio.shield(life.release(f"not sent: {exc}"))
                    raise
                if life.state != "create_sent":
                    raise  # the provider's word at the create (`_sent` recorded it)
                if isinstance(exc, Interrupted):
                    if rule is Resend.NEVER:  # else the next run asks the provider
                        await asyncio.shield(life.uncertain(str(exc)))
                    raise
                found = await self._after_lost_answer(life, provider, request, rule, exc)
                if found is None:  # never created, or the provider returns it for its key
                    await self._waiting(asyncio.sleep(self.ctx.retry.backoff(attempt)))
                    continue
                submitted = found
            await life.created(submitted)
            if submitted.finished is not None:  # a synchronous answer says what it cost
                throttle.billed(key, submitted.finished.cost_usd)
            return submitted
        await life.uncertain("create answers kept getting lost; giving up")
        raise CreateUncertain(life.reason)

    async def _sent(self, life: CellLife, exc: Exception) -> None:
        """The cell's state after a send raised (`policy.STEP_ENDS[Step.CREATE]`)."""
        end = step_end(Step.CREATE, exc)
        if isinstance(exc, Interrupted):
            return  # stopped while on the wire: `_create` decides
        if end is StepEnd.RETRY:  # never left, or rate limited: the intent waits again
            await life.not_sent(f"{type(exc).__name__}: {exc}")
        elif end is StepEnd.REFUSED:
            await life.nothing_created(f"refused: {type(exc).__name__}: {exc}")
        elif end in (StepEnd.CONTENT, StepEnd.TASK_FAILED):
            await life.task_failed(f"{type(exc).__name__}: {exc}")
        elif end is StepEnd.WRONG_IMAGE:
            await life.task_failed(f"{type(exc).__name__}: {exc}", billed=True)

    async def _after_lost_answer(
        self, life: CellLife, provider: Provider, request: ImageRequest, rule: Resend,
        exc: Exception,
    ) -> Submitted | None:
        """A create that may have reached the provider: its task if the provider can be
        asked and has it, None to send the same intent again (never created, or a key the
        provider answers with its original task); uncertain otherwise."""
        if rule is Resend.RECOVER:
            return await self._recover(life, provider, request)
        if rule is Resend.SAME_KEY:
            return None
        await life.uncertain(
            f"{type(exc).__name__}: {exc}; the create may have reached the provider")
        raise CreateUncertain(life.reason) from exc

    async def _recover(
        self, life: CellLife, provider: Provider, request: ImageRequest
    ) -> Submitted | None:
        """The provider's word on a create by its client-chosen id; a question that keeps
        failing leaves the cell as it is (`create_sent`) for the next run to ask again."""
        until = time.monotonic() + self.ctx.retry.patience_s
        try:
            return await self._waiting(with_retries(
                lambda: provider.recover(request), Step.POLL, policy=self.ctx.retry,
                until=until))
        except ProviderError as exc:
            raise TaskPending(f"asking {life.provider} about a lost create kept failing: "
                              f"{type(exc).__name__}: {exc}") from exc

    async def _collect(
        self, life: CellLife, cell: Cell, provider: Provider, throttle: AccountThrottle,
        slot: _Slot | None = None,
    ) -> ManifestRow:
        """Follow a created (or finished) task to its image. Every step is retried where it
        stands for `RetryPolicy.patience_s`; then the cell is pending and keeps its task."""
        submitted = life.submitted
        assert submitted is not None
        until = time.monotonic() + self.ctx.retry.patience_s
        if life.state == "created":
            try:
                finished = submitted.finished if submitted.finished is not None else (
                    await self._waiting(self._wait(provider, submitted, throttle, until,
                                                   life.accepted_at)))
            except Exception as exc:
                end = step_end(Step.POLL, exc)
                if end in (StepEnd.TASK_FAILED, StepEnd.CONTENT):
                    await life.task_failed(f"{type(exc).__name__}: {exc}")
                elif end is StepEnd.WRONG_IMAGE:
                    await life.task_failed(f"{type(exc).__name__}: {exc}", billed=True)
                raise
            finally:
                if slot is not None:
                    await slot.release()
            held = life.hold.usd if life.hold is not None and not life.paid_before else None
            await life.finished(finished)
            if held is not None:  # its cost counted now: what it teaches the holds
                self.billed(life.provider, cell, held, finished.cost_usd)
        else:
            finished = await self._waiting(self._wait(provider, submitted, throttle, until))
        return await self._deliver(life, cell, provider, finished, until)

    async def _wait(
        self, provider: Provider, submitted: Submitted, throttle: AccountThrottle, until: float,
        accepted_at: float | None = None,
    ) -> Finished:
        """Poll until the task finishes, when the account's schedule says it is likely done
        (`flows.engine.poll_schedule`); each answer teaches the schedule. `accepted_at`: when
        this run's create reached the provider (monotonic); None for a task an earlier run
        created, whose age is unknown (it teaches nothing)."""
        schedule = throttle.polling
        ticket = schedule.start(accepted_at or time.monotonic(), learn=accepted_at is not None)

        async def poll() -> Pending | Finished:
            try:
                return await provider.poll(submitted)
            except RateLimited as exc:
                schedule.limited(exc.retry_after, time.monotonic())
                raise

        try:
            while True:
                await schedule.wait(ticket)
                sent_at = time.monotonic()
                outcome = await self._step(poll, Step.POLL, until, "poll")
                if isinstance(outcome, Finished):
                    schedule.finished(ticket, sent_at)
                    return outcome
                assert isinstance(outcome, Pending)
                schedule.pending(ticket, sent_at)
        finally:
            schedule.leave(ticket)

    async def _step(self, call: Any, step: Step, until: float, what: str) -> Any:
        """One step after the create, retried as `STEP_ENDS` says until `until`; then the task
        is left for the next run."""
        try:
            return await with_retries(call, step, policy=self.ctx.retry, until=until)
        except Exception as exc:
            if step_end(step, exc) in (StepEnd.RETRY, StepEnd.PATIENCE):
                raise TaskPending(f"{what} kept failing: {type(exc).__name__}: {exc}") from exc
            raise

    async def _deliver(
        self, life: CellLife, cell: Cell, provider: Provider, finished: Finished, until: float
    ) -> ManifestRow:
        if not finished.images:
            reason = "the provider reported success but returned no image"
            await life.task_failed(reason)
            raise TaskFailed(reason, code="no_image")
        # An image that came with a synchronous answer exists only here: it is written
        # whatever a stop request says (no task to come back to). A download is a wait.
        download = self._step(lambda: provider.download(finished.images[0]), Step.DOWNLOAD,
                              until, "download")
        synchronous = life.submitted is not None and life.submitted.finished is not None
        try:
            data = await (download if synchronous else self._waiting(download))
            expected = pixel_size(cell.aspect_ratio, cell.resolution)
            # Off the event loop: checking a 4K PNG inflates 50 MB of scanlines (~26 ms of
            # CPU with zlib-ng, which frees the GIL), a 1K PNG ~3 ms.
            width, height = await asyncio.to_thread(
                verify_image, data, cell.output_format, expected
            )
        except Exception as exc:
            if step_end(Step.VERIFY, exc) is StepEnd.WRONG_IMAGE or step_end(
                    Step.DOWNLOAD, exc) is StepEnd.TASK_FAILED:
                await life.task_failed(f"{type(exc).__name__}: {exc}")  # a new task may come
            raise
        uri = await self._step(lambda: asyncio.to_thread(self._write, cell, data), Step.WRITE,
                               until, "writing the image")
        life.written()
        row = self._row(
            life, cell, "succeeded", output_uri=uri, sha256=hashlib.sha256(data).hexdigest(),
            bytes=len(data), width=width, height=height,
            image_tokens=finished.usage.get("image"),
            thinking_tokens=finished.usage.get("thinking"),
            queue_s=finished.queue_s, generation_s=finished.generation_s,
            service_tier=finished.service_tier,
        )
        await life.succeeded(row)
        return row

    # -- waiting --------------------------------------------------------------------------

    async def _waiting(self, awaitable: Awaitable[T]) -> T:
        """A wait that a stop request ends (`Interrupted`)."""
        interrupt = self.ctx.interrupt
        return await (interrupt.waiting(awaitable) if interrupt else awaitable)

    async def _sending(self, awaitable: Awaitable[T]) -> T:
        """A create on the wire: awaited through a first stop request, not a second."""
        interrupt = self.ctx.interrupt
        return await (interrupt.sending(awaitable) if interrupt else awaitable)

    # -- checks ---------------------------------------------------------------------------

    def _check_still_submittable(self, channel: str, cell: Cell) -> None:
        """Cells that waited for a slot re-check what changed meanwhile."""
        if self.stop is not None:
            raise self.stop
        if channel in self.dead:
            raise self.dead[channel]
        gone = self.dropped.get((channel, self._model_asked(channel, cell)))
        if gone is not None:
            raise gone

    # -- models a channel does not serve --------------------------------------------------

    def _model_asked(self, channel: str, cell: Cell) -> str:
        """The model id a create of `cell` on `channel` names: the cell's pinned one, the
        spec's `options.<provider>.model`, else the provider's default (as its adapter)."""
        lane = self.ctx.router.lane(channel)
        provider = lane.channel.provider if lane else channel.partition(":")[0]
        options = request_options(self.ctx.spec.options.get(provider, {}), cell)
        return str(options.get("model") or self.ctx.models.get(provider) or "")

    def _excluded(self, cell: Cell, tried: set[str]) -> set[str]:
        """The channels the cell may not use now: those it is done with, accounts refused
        for the run, and channels where the model id it asks for was dropped."""
        gone = {channel for channel, model in self.dropped
                if self._model_asked(channel, cell) == model}
        return tried | self.dead.keys() | gone

    def _model_gone(self, cell: Cell) -> ModelNotFound | None:
        """Why a cell has no channel left when its model id was dropped on one it could use."""
        router = self.ctx.router
        for (channel, model), exc in self.dropped.items():
            lane = router.lane(channel)
            if lane is not None and router.serves(lane, cell) \
                    and self._model_asked(channel, cell) == model:
                return exc
        return None

    def _drop_model(self, channel: str, exc: ModelNotFound) -> None:
        """No cell asks `channel` for `exc.model` again in this run; said once."""
        if (channel, exc.model) in self.dropped:
            return
        self.dropped[channel, exc.model] = exc
        log.warning("%s: %s. Model %s is dropped on this channel for the run; its cells go "
                    "on by the job's routing", channel, exc.message, exc.model)

    def _check_writable(self, cell: Cell) -> None:
        """Before paying: the output path is free, already this cell's, or held by a cell
        of this job that the spec no longer produces (`flows.engine.refresh`)."""
        self._target.check(self.ctx.sink, cell)

    def _write(self, cell: Cell, data: bytes) -> str:
        """Write the image; a file at its path is overwritten only when it is this cell's,
        or a superseded cell's whose image was kept as history first."""
        sink = self.ctx.sink
        try:
            return str(sink.write_bytes(cell.output_path, data, overwrite=False))
        except FileExistsError:
            self._target.take(sink, cell)
            return str(sink.write_bytes(cell.output_path, data, overwrite=True))

    @property
    def _target(self) -> TargetState:
        if self.ctx.target is None:
            self.ctx.target = TargetState(self.ctx.spec.name)
        return self.ctx.target

    async def _references(self, cell: Cell) -> tuple[Reference, ...]:
        """The cell's reference images, read once for all its attempts."""
        try:
            return tuple(
                [await asyncio.to_thread(self.references.load, uri) for uri in cell.references]
            )
        except (OSError, ValueError, ProviderError) as exc:  # refused, missing, too large
            raise CellInvalid(f"reference image: {exc}") from exc

    def _request(
        self, cell: Cell, name: str, key: str | None, references: tuple[Reference, ...]
    ) -> ImageRequest:
        return ImageRequest(
            prompt=cell.prompt,
            aspect_ratio=cell.aspect_ratio,
            resolution=cell.resolution,
            output_format=cell.output_format,
            references=references,
            seed=cell.seed,
            options=request_options(self.ctx.spec.options.get(name, {}), cell),
            idempotency_key=key,
            cell_id=cell.cell_id,
        )

    async def _on_cancel(self, life: CellLife) -> None:
        """The cell's coroutine was cancelled (Prefect cancelled the flow run): ask the
        provider to cancel its task; it is `cancelled` only when the provider confirms,
        else the journal stays as it is and the next run collects the task."""
        submitted = life.submitted
        provider = self.ctx.providers.get(life.channel)
        if (not life.live_task or submitted is None or provider is None
                or not provider.capabilities.can_cancel):
            return
        with contextlib.suppress(Exception):
            if await asyncio.shield(provider.cancel(submitted)) is True and life.state == "created":
                await asyncio.shield(life.cancelled())

    # -- money ----------------------------------------------------------------------------

    def price(self, provider: str, cell: Cell) -> float:
        """What one task of `cell` holds on `provider` until its cost is known: the dearest
        price it may be billed at (`ProviderRules.hold`: a tier's, or the standard one a
        cheaper tier may be served at) times the provider's markup (tokens billed besides
        the image: `flows.engine.markup`), held in full."""
        return cell_hold(self.ctx.rules[provider], self.ctx.markups[provider], cell)

    def billed(self, provider: str | None, cell: Cell, held_usd: float,
               cost_usd: float | None) -> None:
        """A task of `cell` that held `held_usd` on `provider` reported `cost_usd`: the
        provider's markup learns from it (`CostMarkup.seen`)."""
        name = provider or ""
        markup, rule = self.ctx.markups.get(name), self.ctx.rules.get(name)
        if markup is not None and rule is not None:
            markup.seen(rule.hold(cell.resolution, len(cell.references)), held_usd, cost_usd)

    # -- rows -----------------------------------------------------------------------------

    def _failed(self, life: CellLife, cell: Cell, exc: BaseException) -> ManifestRow:
        code = getattr(exc, "code", None) or type(exc).__name__
        message = f"{type(exc).__name__}: {exc}"
        if self.ctx.spec.fail_fast and self.stop is None:
            self.stop = Unsubmittable(
                "skipped", "fail_fast", f"not submitted: fail_fast after cell {cell.cell_id}"
            )
        return self._final(life, cell, "failed", str(code), message)

    def _final(
        self, life: CellLife, cell: Cell, status: str, code: str, message: str
    ) -> ManifestRow:
        return self._row(life, cell, status, error_code=code, error_message=message)

    def _row(self, life: CellLife, cell: Cell, status: str, **results: Any) -> ManifestRow:
        """The cell's manifest row: the only place the engine builds one. A task still
        held (pending, uncertain) costs its price until the provider reports one."""
        ctx = self.ctx
        now = time.time()
        submitted_at = life.submitted_at
        provider = life.provider or cell.provider or ctx.spec.provider
        return ManifestRow(
            cell_id=cell.cell_id,
            job=ctx.spec.name,
            run_id=ctx.run_id,
            provider=provider,
            account=self._account(life),
            model=ctx.model_of(provider, cell),
            prompt=cell.prompt,
            aspect_ratio=cell.aspect_ratio,
            resolution=cell.resolution,
            output_format=cell.output_format,
            references=list(cell.references),
            vars=dict(cell.vars),
            key=cell.key,
            replicate=cell.replicate,
            seed=cell.seed,
            dataset_row=cell.dataset_row,
            status=status,
            remote_task_id=life.submitted.task_id if life.submitted else None,
            task_group=life.submitted.group if life.submitted else None,
            attempts=life.attempts,
            cost_usd=life.cost_usd,
            submitted_at=_utc(submitted_at),
            completed_at=_utc(now) if status in ("succeeded", "failed") else None,
            latency_s=round(now - submitted_at, 3) if submitted_at else None,
            output_path=cell.output_path,
            spec_cell_id=cell.spec_cell_id,
            emulated=ctx.emulated,
            template=cell.template,
            seed_sent=self._seed_sent(life, cell, provider),
            **results,
        )

    def _seed_sent(self, life: CellLife, cell: Cell, provider: str) -> bool | None:
        """Whether the cell's create carried a seed (`providers.base.sent_seed`: where its
        provider documents one); None when no create was sent."""
        if life.attempts == 0:
            return None
        found = self.ctx.providers.get(life.channel)
        try:
            caps = found.capabilities if found is not None else registry.capabilities(provider)
        except KeyError:  # a provider this installation no longer has
            return None
        request = ImageRequest(prompt=cell.prompt, seed=cell.seed,
                               options=request_options(self.ctx.spec.options.get(provider, {}),
                                                       cell))
        return sent_seed(caps, request) is not None

    def _account(self, life: CellLife) -> str | None:
        lane = self.ctx.router.lane(life.channel) if life.channel else None
        return lane.channel.account if lane else None


# What the next run does with a cell a stop request left, by its manifest status.
_NEXT_RUN = {
    "pending": "the next run collects its task, or asks the provider about its create",
    "uncertain": "it may have reached the provider: not sent again unless asked",
    "skipped": "nothing was sent; the next run creates it",
}


class _Slot:
    """A channel's in-flight slot this cell holds while its create and polls go on."""

    def __init__(self, ticket: Ticket, progress: Progress) -> None:
        self.ticket, self.progress = ticket, progress
        progress.in_flight += 1
        self.held = True

    async def release(self) -> None:
        if self.held:
            self.held = False
            self.progress.in_flight -= 1
            await asyncio.shield(self.ticket.release())


def request_options(options: Mapping[str, Any], cell: Cell) -> dict[str, Any]:
    """The spec's options of a provider, with the cell's pinned model id (`model` axis)."""
    found = dict(options)
    if cell.model is not None:
        found["model"] = cell.model
    return found


def _named(row: ManifestRow, cell: Cell) -> ManifestRow:
    """A row an earlier run wrote, with the template name the spec now gives its cell (a
    name is no part of the request: renaming a template makes nothing anew)."""
    if row.template == cell.template:
        return row
    return dataclasses.replace(row, template=cell.template)


def _utc(timestamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, UTC) if timestamp else None
