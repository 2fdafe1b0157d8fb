"""The engine: runs cells against providers, plain asyncio, no Prefect.

One coroutine per cell in flight (a bounded worker pool, so memory stays flat in the number
of cells). For each cell: reuse it when an earlier run succeeded; take its claim on the
target (no other run works on it meanwhile); resume what the journal says an earlier run
left (collect a created task, apply the resend rule to a create whose answer was never
recorded); else check its output path is writable, take an in-flight slot, reserve its price,
journal the intent, create, journal the task id, poll to the end, download, verify, write.

Every failure goes through `flows.engine.policy.decide`; the journal's states are in
`flows.engine.journal`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from flows.engine.batching import BatchChannel
from flows.engine.budget import Budget, BudgetExhausted
from flows.engine.journal import LIVE_TASK, Journal, JournalEntry, JournalState
from flows.engine.lease import Heartbeat, Lease
from flows.engine.policy import (
    DEFAULT_RETRY,
    FINAL_AFTER_CREATE,
    HANDLED,
    CellInvalid,
    CreateUncertain,
    Decision,
    OutputTaken,
    Resend,
    RetryPolicy,
    TaskPending,
    Unsubmittable,
    decide,
    resend_rule,
    with_retries,
)
from flows.engine.progress import Progress
from flows.engine.references import ReferenceLoader
from flows.engine.routing import Router, Ticket
from flows.engine.throttle import AccountThrottle
from flows.engine.verify import verify_image
from flows.spec.channels import Channel
from flows.spec.model import Cell, JobSpec
from flows.spec.settings import ProviderRules
from outputs.manifest import ManifestRow
from outputs.sink import Sink
from providers.base import Finished, ImageRequest, Pending, Provider, Reference, Submitted
from providers.errors import (
    ProviderError,
    RateLimited,
    Rejected,
    RequestNotSent,
    ResultMismatch,
    SubmitUncertain,
    TaskFailed,
    TransientError,
)
from providers.model import pixel_size

log = logging.getLogger("nbp.runner")

CLAIMS_DIR = ".nbp/claims"
# A create that ended with one of these created nothing: refused, rate limited, never sent.
NOT_CREATED: tuple[type[BaseException], ...] = (Rejected, RateLimited, RequestNotSent)


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
    path_owners: Mapping[str, str] = field(default_factory=dict)  # output_path -> cell_id
    force: bool = False
    retry_uncertain: bool = False
    retry: RetryPolicy = DEFAULT_RETRY
    models: Mapping[str, str] = field(default_factory=dict)  # provider -> its default model id
    # channel key -> the model ids its creates asked for (the run's record names them)
    asked: dict[str, set[str]] = field(default_factory=dict)

    def model_of(self, provider: str, cell: Cell) -> str | None:
        """The model id a cell asks `provider` for: its pinned one, else the default."""
        return cell.model or self.models.get(provider)

    @property
    def holder(self) -> str:
        return self.heartbeat.holder if self.heartbeat else self.run_id


@dataclass
class _Attempt:
    """Mutable record of one cell's life, turned into its manifest row at the end."""

    cell: Cell
    attempts: int = 0
    provider: str = ""
    channel: str = ""               # channel key of the live create or task
    ticket: Ticket | None = None    # the channel slot this process holds for it
    submitted: Submitted | None = None
    submitted_at: float | None = None
    spent_usd: float = 0.0          # earlier tasks of this cell (settled)
    reserved_usd: float = 0.0       # the live create or task, counted until settled
    reserved_by: str | None = None  # run id whose budget holds `reserved_usd`
    key: str | None = None          # idempotency key of the live create
    reserved_here: bool = False     # this process reserved `reserved_usd` (not an earlier run)
    settled: bool = False           # the live task's cost is already in `spent_usd`
    in_flight: bool = False         # this process holds an in-flight slot for the task


class Runner:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.references = ReferenceLoader.for_spec(ctx.spec)
        self.stop: Unsubmittable | None = None               # fail-fast / budget: run-wide
        self.dead: dict[str, ProviderError] = {}             # account refused: per provider
        self.busy = 0                                        # cells another run holds

    # -- fan-out ------------------------------------------------------------------------

    async def run_cells(self, cells: Iterable[Cell], *, workers: int) -> list[ManifestRow]:
        """Run every cell with at most `workers` cells active; rows in input order (none for
        a cell another live run is working on)."""
        items = list(cells)
        wanted = [c.cell_id for c in items if c.cell_id in self.ctx.journalled]
        previous = await asyncio.to_thread(self.ctx.journal.read, wanted) if wanted else {}
        queue: asyncio.Queue[tuple[int, Cell]] = asyncio.Queue()
        for item in enumerate(items):
            queue.put_nowait(item)
        rows: list[ManifestRow | None] = [None] * len(items)

        async def worker() -> None:
            while True:
                try:
                    index, cell = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    rows[index] = await self.run_cell(cell, previous.get(cell.cell_id))
                except Exception as exc:  # a bug in one cell must not end the run
                    log.exception("cell %s: unexpected error", cell.cell_id)
                    rows[index] = self._row(
                        _Attempt(cell), "failed", error_code="internal_error",
                        error_message=f"{type(exc).__name__}: {exc} (its journal entry is kept: "
                                      "the next run collects any task it created)")
                    self.ctx.progress.finished("failed", 0.0)

        await asyncio.gather(*(worker() for _ in range(max(1, min(workers, len(items))))))
        return [row for row in rows if row is not None]

    # -- one cell -----------------------------------------------------------------------

    async def run_cell(
        self, cell: Cell, previous: JournalEntry | None = None
    ) -> ManifestRow | None:
        """One cell to the end of this run's work on it; None when another run holds it."""
        ctx = self.ctx
        if previous and previous.state == "succeeded" and previous.row and not ctx.force:
            ctx.progress.finished("succeeded", 0.0, reused=True)
            return previous.row
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
            state = _Attempt(cell)
            if previous is not None:
                state.attempts, state.spent_usd = previous.attempts, previous.spent_usd
            try:
                row = await self._run_owned(state, previous)
            except asyncio.CancelledError:
                await self._on_cancel(state)
                raise
            ctx.progress.finished(str(row.status), row.cost_usd or 0.0)
            return row
        finally:
            if claim is not None:
                await asyncio.shield(claim.release())

    async def _run_owned(self, state: _Attempt, previous: JournalEntry | None) -> ManifestRow:
        ctx = self.ctx
        if previous is not None:
            if previous.state == "succeeded" and previous.row and not ctx.force:
                return previous.row  # another run finished it while we waited for the claim
            resumed = await self._resume(state, previous)
            if resumed is not None:
                return resumed
        return await self._run_channels(state)

    async def _resume(self, state: _Attempt, previous: JournalEntry) -> ManifestRow | None:
        """What an earlier run left: a row when this run's work on the cell ends here, None
        when the cell may be created afresh."""
        ctx = self.ctx
        if previous.state in ("unreadable", "uncertain") and not ctx.retry_uncertain:
            return self._row(state, "uncertain", error_code=previous.state,
                             error_message=previous.reason or "")
        if previous.state not in (*LIVE_TASK, "create_sent"):
            return None
        name, key = previous.provider, previous.channel_key
        provider = ctx.providers.get(key)
        state.provider, state.channel, state.key = name, key, previous.idempotency_key
        state.reserved_usd, state.reserved_by = previous.reserved_usd, previous.reserved_by
        state.submitted, state.submitted_at = previous.submitted, previous.submitted_at
        state.settled = previous.state == "finished"  # its cost was counted when it finished
        if provider is None:
            status = "pending" if previous.state in LIVE_TASK else "uncertain"
            where = name if key == name else f"{name} (account {key.partition(':')[2]})"
            return self._row(state, status, error_code="provider_not_in_spec",
                             error_message=f"its task is at {where}, which this run does not "
                                           "use; add it back to collect the task")
        try:
            if previous.state == "create_sent":
                rule = resend_rule(provider.capabilities)
                if rule is Resend.NEVER and not ctx.retry_uncertain:
                    raise CreateUncertain(
                        f"a create was sent to {name} and the run stopped before its answer "
                        "was recorded; it may exist and be billed (nbp run --retry-uncertain "
                        "creates it again)"
                    )
                if rule is Resend.NEVER:
                    return None  # the user asked: create afresh
                submitted = await self._recreate_or_recover(state, provider, key, rule)
                if submitted is None:
                    return None  # it was never created: create afresh
                await self._created(state, submitted)
            return await self._collect(state, provider, ctx.throttles[key], slot_held=False)
        except HANDLED as exc:
            return self._ended(state, exc, decide(exc))

    async def _recreate_or_recover(
        self, state: _Attempt, provider: Provider, key: str, rule: Resend
    ) -> Submitted | None:
        """A create whose answer an earlier run never recorded, on a provider that can be
        asked: the task, or None when it was never created (its reservation is released)."""
        request = self._request(state.cell, state.provider, state.key,
                                await self._references(state.cell))
        throttle = self.ctx.throttles[key]
        try:
            if rule is Resend.RECOVER:
                found = await with_retries(lambda: provider.recover(request))
                if found is None:
                    await self._settle(state, 0.0)
                return found
            return await self._create(provider, request, throttle, rule)
        except (ProviderError, CellInvalid):
            await self._settle(state, 0.0)
            raise

    async def _run_channels(self, state: _Attempt) -> ManifestRow:
        """Channels as the router hands them out; what each failure leads to is
        `policy.decide`'s: a new task on the same channel, another channel, or the end."""
        spec, cell = self.ctx.spec, state.cell
        last: BaseException | None = None
        tried: set[str] = set()
        tasks_on: dict[str, int] = {}
        again: str | None = None  # the channel of a failed task that gets a new one
        try:
            references = await self._references(cell)
        except HANDLED as exc:
            return self._ended(state, exc, decide(exc))
        while True:
            if self.stop is not None:
                return self._final(state, self.stop.status, self.stop.code, self.stop.message)
            try:
                self._check_writable(cell)
            except HANDLED as exc:
                return self._ended(state, exc, decide(exc))
            ticket = await self.ctx.router.take(cell, tried | self.dead.keys(), only=again)
            if ticket is None and again is not None:  # that channel was dropped meanwhile
                tried.add(again)
                again = None
                continue
            if ticket is None:
                break
            try:
                return await self._attempt(state, ticket, references)
            except HANDLED as exc:
                decision, last = decide(exc), exc
            if decision in (Decision.STOP, Decision.PENDING, Decision.UNCERTAIN,
                            Decision.FINAL):
                return self._ended(state, last, decision)
            if decision is Decision.DROP_ACCOUNT:
                assert isinstance(last, ProviderError)
                self.dead[ticket.key] = last  # every later cell of this account would hit it
            tasks_on[ticket.key] = tasks_on.get(ticket.key, 0) + 1
            again = None
            if decision is Decision.RETRY_TASK and tasks_on[ticket.key] <= spec.retries:
                again = ticket.key
            else:
                tried.add(ticket.key)
        last = last or next(iter(self.dead.values()), None)
        if last is None:
            where = f"of {cell.provider} (the cell's pinned provider)" if cell.provider else (
                "of this job")
            return self._final(state, "failed", "no_channel", f"no channel {where} is left")
        return self._ended(state, last, Decision.FINAL)

    def _ended(self, state: _Attempt, exc: BaseException, decision: Decision) -> ManifestRow:
        """The row of a cell whose work in this run ends with `exc`."""
        if isinstance(exc, Unsubmittable):
            return self._final(state, exc.status, exc.code, exc.message)
        if decision is Decision.PENDING:
            return self._row(state, "pending", error_code="pending",
                             error_message=f"{exc} (the next run collects the task)")
        if decision is Decision.UNCERTAIN:
            return self._row(state, "uncertain", error_code=type(exc).__name__,
                             error_message=f"{type(exc).__name__}: {exc} (not re-sent, to "
                                           "never pay twice; nbp run --retry-uncertain)")
        return self._failed(state, exc)

    # -- one create and its task ------------------------------------------------------------

    async def _attempt(
        self, state: _Attempt, ticket: Ticket, references: tuple[Reference, ...]
    ) -> ManifestRow:
        """One create on the ticket's channel (its slot is held) and its task to the end."""
        ctx, cell, channel = self.ctx, state.cell, ticket.lane.channel
        provider, throttle = ctx.providers[ticket.key], ctx.throttles[ticket.key]
        key = f"nbp-{cell.cell_id}-{idempotency_part(channel)}-{state.attempts + 1}"
        request = self._request(cell, channel.provider, key, references)
        ctx.asked.setdefault(ticket.key, set()).add(ctx.model_of(channel.provider, cell) or "")
        estimate = self.price(channel.provider, cell)
        try:
            self._check_still_submittable(ticket.key)
            await ctx.budget.reserve(estimate)
        except BudgetExhausted as exc:
            await ticket.release()
            self.stop = self.stop or Unsubmittable("skipped", "budget", str(exc))
            raise self.stop from exc
        except BaseException:
            await ticket.release()
            raise
        if isinstance(provider, BatchChannel):  # the cell joins a batch: its key names it
            key = provider.place(cell.cell_id, request)
            request = replace(request, idempotency_key=key)
        state.provider, state.channel, state.key = channel.provider, ticket.key, key
        state.ticket, state.in_flight = ticket, True
        state.reserved_usd, state.reserved_by, state.reserved_here = estimate, ctx.run_id, True
        state.settled = False
        state.submitted, state.submitted_at = None, time.time()
        state.attempts += 1
        ctx.progress.in_flight += 1
        try:
            await self._journal(state, "create_sent")  # durable before the request leaves
            try:
                submitted = await self._create(
                    provider, request, throttle, resend_rule(provider.capabilities), ticket
                )
            except NOT_CREATED:
                await self._settle(state, 0.0)  # refused, or never left: nothing was created
                await self._journal(state, "failed")
                raise
            except CreateUncertain as exc:
                await self._journal(state, "uncertain", reason=str(exc))  # stays spent
                raise
            except Exception as exc:  # anything else after the request left: it may exist
                uncertain = CreateUncertain(f"{type(exc).__name__}: {exc}")
                await self._journal(state, "uncertain", reason=str(uncertain))
                raise uncertain from exc
            ctx.progress.submitted += 1
            await self._created(state, submitted)
            return await self._collect(state, provider, throttle, slot_held=True)
        finally:
            if state.in_flight:  # the task ended without reaching `_collect`'s release
                await ticket.release()
                ctx.progress.in_flight -= 1
                state.in_flight = False

    async def _create(
        self, provider: Provider, request: ImageRequest, throttle: AccountThrottle, rule: Resend,
        ticket: Ticket | None = None,
    ) -> Submitted:
        """Create the task. A request that never left is sent again; one whose answer was
        lost or came back as a server error follows the resend rule. The first send uses
        the rate-window token the router spent for `ticket`, if it did."""
        retried = (RequestNotSent,) if rule is Resend.NEVER else (TransientError,)

        async def before_each() -> None:
            spent = ticket is not None and ticket.spent
            if spent:
                assert ticket is not None
                ticket.token_used()
            await throttle.before_create(spent=spent)

        for _ in range(self.ctx.retry.max_attempts):
            try:
                return await with_retries(
                    lambda: provider.submit(request), throttle=throttle,
                    policy=self.ctx.retry, before_each=before_each,
                    after_each=throttle.after_create, transient=retried,
                )
            except NOT_CREATED:
                raise
            except (SubmitUncertain, TransientError) as exc:
                if rule is Resend.RECOVER:
                    found = await with_retries(lambda: provider.recover(request))
                    if found is not None:
                        return found
                    continue  # never created: sending again is safe
                if rule is Resend.SAME_KEY:
                    continue  # the provider returns the original task for the same key
                raise CreateUncertain(
                    f"{type(exc).__name__}: {exc}; the create may have reached the provider"
                ) from exc
        raise CreateUncertain("create answers kept getting lost; giving up")

    async def _created(self, state: _Attempt, submitted: Submitted) -> None:
        state.submitted = submitted
        state.submitted_at = state.submitted_at or time.time()
        await self._journal(state, "created")

    async def _collect(
        self, state: _Attempt, provider: Provider, throttle: AccountThrottle, *,
        slot_held: bool,
    ) -> ManifestRow:
        """Follow a created task to its image. Every step is retried where it stands for
        `RetryPolicy.patience_s`; then the cell is pending and keeps its task."""
        assert state.submitted is not None
        submitted = state.submitted
        until = time.monotonic() + self.ctx.retry.patience_s
        try:
            try:
                finished = submitted.finished or await self._wait(
                    provider, submitted, throttle, until
                )
            except TaskFailed:
                await self._settle(state, 0.0)  # the provider ended it: not billed
                await self._journal(state, "failed")
                raise
        finally:
            if slot_held and state.in_flight:
                assert state.ticket is not None  # `_attempt` holds the slot through it
                await state.ticket.release()
                self.ctx.progress.in_flight -= 1
                state.in_flight = False
        if not state.settled:
            await self._settle(state, finished.cost_usd if finished.cost_usd is not None
                               else state.reserved_usd)
            if self.ctx.budget.capped:  # the ledger counted it: a resume must not again
                await self._journal(state, "finished")
        try:
            return await self._deliver(state, provider, finished, until)
        except TaskPending:
            await self._journal(state, "finished")  # done and counted; its image is not yet
            raise

    async def _wait(
        self, provider: Provider, submitted: Submitted, throttle: AccountThrottle, until: float
    ) -> Finished:
        """Poll until the task finishes, on the account's learnt schedule; each task seen done
        teaches the schedule its duration (a resumed task's counts from this run's start)."""
        started = time.monotonic()
        polls, pending_at = 0, 0.0
        while True:
            await asyncio.sleep(
                throttle.next_poll_delay(polls, time.monotonic() - started)
            )
            polls += 1
            sent_at = time.monotonic() - started
            outcome = await self._step(lambda: provider.poll(submitted), until, "poll")
            if isinstance(outcome, Finished):
                throttle.observe_duration(sent_at, pending_at)
                return outcome
            assert isinstance(outcome, Pending)
            pending_at = sent_at

    async def _step(
        self, call: Any, until: float, what: str,
        final: tuple[type[BaseException], ...] = FINAL_AFTER_CREATE,
    ) -> Any:
        """One step after the create: every provider error but the provider's own word on
        the task (`final`) is retried until `until`; then the task is left for the next run."""
        try:
            return await with_retries(
                call, policy=self.ctx.retry, transient=(ProviderError,), final=final,
                until=until,
            )
        except final:
            raise
        except ProviderError as exc:
            raise TaskPending(f"{what} kept failing: {type(exc).__name__}: {exc}") from exc

    async def _deliver(
        self, state: _Attempt, provider: Provider, finished: Finished, until: float
    ) -> ManifestRow:
        cell = state.cell
        if not finished.images:
            await self._journal(state, "failed")
            raise TaskFailed("the provider reported success but returned no image", code="no_image")
        # A 404 on a result URL is an expired link, not a lost task: retried, then pending.
        data = await self._step(lambda: provider.download(finished.images[0]), until,
                                "download", final=(ResultMismatch,))
        expected = pixel_size(cell.aspect_ratio, cell.resolution)
        try:
            # Off the event loop: checking a 4K PNG inflates 50 MB of scanlines (~26 ms of
            # CPU with zlib-ng, which frees the GIL), a 1K PNG ~3 ms.
            width, height = await asyncio.to_thread(
                verify_image, data, cell.output_format, expected
            )
        except ResultMismatch:
            await self._journal(state, "failed")  # proved wrong: a new task may be created
            raise
        uri = await asyncio.to_thread(self._write, cell, data)
        row = self._row(
            state, "succeeded", output_uri=uri, sha256=hashlib.sha256(data).hexdigest(),
            bytes=len(data), width=width, height=height,
            image_tokens=finished.usage.get("image"),
            thinking_tokens=finished.usage.get("thinking"),
        )
        await self._journal(state, "succeeded", row)
        return row

    # -- checks ---------------------------------------------------------------------------

    def _check_still_submittable(self, channel: str) -> None:
        """Cells that waited for a slot re-check what changed meanwhile."""
        if self.stop is not None:
            raise self.stop
        if channel in self.dead:
            raise self.dead[channel]

    def _check_writable(self, cell: Cell) -> None:
        """Before paying: the output path is free or already this cell's."""
        owner = self.ctx.path_owners.get(cell.output_path)
        if owner == cell.cell_id or not self.ctx.sink.exists(cell.output_path):
            return
        whose = f"cell {owner}" if owner else "a file nbp did not write"
        raise OutputTaken(f"{cell.output_path} already holds {whose}; nothing was created "
                          "(change output.path or the target)")

    def _write(self, cell: Cell, data: bytes) -> str:
        """Write the image; a file at its path is overwritten only when it is this cell's
        (the journal says this cell's task finished, so an image there is its own)."""
        try:
            return str(self.ctx.sink.write_bytes(cell.output_path, data, overwrite=False))
        except FileExistsError:
            owner = self.ctx.path_owners.get(cell.output_path)
            if owner not in (None, cell.cell_id):
                raise OutputTaken(f"{cell.output_path} already holds cell {owner}; "
                                  "not overwritten") from None
            # Ours: a run stopped between writing the image and journalling it.
            return str(self.ctx.sink.write_bytes(cell.output_path, data, overwrite=True))

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
        )

    async def _on_cancel(self, state: _Attempt) -> None:
        """Cancelled mid-flight: stop the remote task where the API can; otherwise leave the
        journal as it is so the next run collects the task it already paid for."""
        submitted = state.submitted
        provider = self.ctx.providers.get(state.channel)
        if submitted is None or provider is None or not provider.capabilities.can_cancel:
            return
        with contextlib.suppress(Exception):
            await asyncio.shield(provider.cancel(submitted))
            row = self._row(state, "cancelled", error_code="cancelled",
                            error_message="run cancelled; remote task cancelled")
            await asyncio.shield(self._journal(state, "cancelled", row))

    # -- money ----------------------------------------------------------------------------

    def price(self, provider: str, cell: Cell) -> float:
        """What one task of `cell` costs on `provider`: the plan's price, reserved in full."""
        return self.ctx.rules[provider].price(cell.resolution, len(cell.references))

    async def _settle(self, state: _Attempt, actual_usd: float) -> None:
        """The live reservation becomes what the task cost (0: nothing billed)."""
        if state.reserved_usd == 0.0 and actual_usd == 0.0:
            return
        await self.ctx.budget.settle(
            state.reserved_usd, actual_usd, reserved_by=state.reserved_by,
            in_flight=state.reserved_here,
        )
        state.spent_usd += actual_usd
        state.reserved_usd, state.reserved_by, state.reserved_here = 0.0, None, False
        state.settled = True

    # -- rows and journal ---------------------------------------------------------------

    def _failed(self, state: _Attempt, exc: BaseException) -> ManifestRow:
        code = getattr(exc, "code", None) or type(exc).__name__
        message = f"{type(exc).__name__}: {exc}"
        if self.ctx.spec.fail_fast and self.stop is None:
            self.stop = Unsubmittable(
                "skipped", "fail_fast", f"not submitted: fail_fast after cell {state.cell.cell_id}"
            )
        return self._final(state, "failed", str(code), message)

    def _final(self, state: _Attempt, status: str, code: str, message: str) -> ManifestRow:
        return self._row(state, status, error_code=code, error_message=message)

    def _row(self, state: _Attempt, status: str, **results: Any) -> ManifestRow:
        """The cell's manifest row: the only place the engine builds one. A task still
        counted (pending, uncertain) costs its price until the provider reports one."""
        cell, ctx = state.cell, self.ctx
        now = time.time()
        submitted_at = state.submitted_at
        provider = state.provider or cell.provider or ctx.spec.provider
        return ManifestRow(
            cell_id=cell.cell_id,
            job=ctx.spec.name,
            run_id=ctx.run_id,
            provider=provider,
            account=self._account(state),
            model=ctx.model_of(provider, cell),
            prompt=cell.prompt,
            aspect_ratio=cell.aspect_ratio,
            resolution=cell.resolution,
            output_format=cell.output_format,
            references=list(cell.references),
            vars=dict(cell.vars),
            replicate=cell.replicate,
            seed=cell.seed,
            dataset_row=cell.dataset_row,
            status=status,
            remote_task_id=state.submitted.task_id if state.submitted else None,
            attempts=state.attempts,
            cost_usd=round(state.spent_usd + state.reserved_usd, 6),
            submitted_at=_utc(submitted_at),
            completed_at=_utc(now) if status in ("succeeded", "failed") else None,
            latency_s=round(now - submitted_at, 3) if submitted_at else None,
            output_path=cell.output_path,
            **results,
        )

    def _account(self, state: _Attempt) -> str | None:
        lane = self.ctx.router.lane(state.channel) if state.channel else None
        return lane.channel.account if lane else None

    async def _journal(
        self, state: _Attempt, entry_state: JournalState, row: ManifestRow | None = None,
        *, reason: str | None = None,
    ) -> None:
        entry = JournalEntry(
            cell_id=state.cell.cell_id, state=entry_state, run_id=self.ctx.run_id,
            provider=state.provider, holder=self.ctx.holder, attempts=state.attempts,
            idempotency_key=state.key, reserved_usd=state.reserved_usd,
            reserved_by=state.reserved_by, spent_usd=state.spent_usd,
            task=state.submitted.to_json() if state.submitted else None,
            submitted_at=state.submitted_at, reason=reason, row=row,
            channel=state.channel if state.channel != state.provider else None,
        )
        await asyncio.to_thread(self.ctx.journal.write, entry)


def request_options(options: Mapping[str, Any], cell: Cell) -> dict[str, Any]:
    """The spec's options of a provider, with the cell's pinned model id (`model` axis)."""
    found = dict(options)
    if cell.model is not None:
        found["model"] = cell.model
    return found


def idempotency_part(channel: Channel) -> str:
    """The channel in an idempotency key: the provider for its documented account (keys as
    before accounts existed), else provider and account."""
    return channel.key.replace(":", "-")


def _utc(timestamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, UTC) if timestamp else None
