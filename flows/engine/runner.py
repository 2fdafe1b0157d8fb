"""The engine: runs cells against providers, plain asyncio, no Prefect.

One coroutine per cell in flight (a bounded worker pool, so memory stays flat in the number
of cells). For each cell, in order: skip it when an earlier run already succeeded, resume its
remote task when an earlier run created one, else take an in-flight slot, reserve budget and a
create token, submit, journal the remote task id at once, poll to a terminal state, download,
verify, write. A failed task is tried again up to `retries` times, then the next provider of
the fallback list; content rejections are final.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flows.engine.budget import Budget, BudgetExhausted
from flows.engine.journal import Journal, JournalEntry, JournalState
from flows.engine.policy import (
    DEFAULT_RETRY,
    HANDLED,
    Decision,
    OutputTaken,
    Resend,
    RetryPolicy,
    Unsubmittable,
    decide,
    resend_rule,
    with_retries,
)
from flows.engine.progress import Progress
from flows.engine.references import ReferenceLoader
from flows.engine.throttle import AccountThrottle
from flows.engine.verify import verify_image
from flows.spec.model import Cell, JobSpec
from flows.spec.settings import ProviderRules
from outputs.manifest import ManifestRow
from outputs.sink import Sink
from providers.base import Finished, ImageRequest, Pending, Provider, Submitted
from providers.errors import ProviderError, SubmitUncertain, TaskFailed
from providers.model import pixel_size

log = logging.getLogger("nbp.runner")


@dataclass
class RunContext:
    """Everything a run shares across cells."""

    spec: JobSpec
    run_id: str
    sink: Sink
    journal: Journal
    providers: Mapping[str, Provider]
    rules: Mapping[str, ProviderRules]          # prices and limits, one resolver for all
    throttles: Mapping[str, AccountThrottle]
    budget: Budget
    progress: Progress
    journalled: set[str] = field(default_factory=set)  # cells with a journal entry
    path_owners: Mapping[str, str] = field(default_factory=dict)  # output_path -> cell_id
    force: bool = False
    retry: RetryPolicy = DEFAULT_RETRY
    models: Mapping[str, str] = field(default_factory=dict)  # provider -> model id


@dataclass
class _Attempt:
    """Mutable record of one cell's life, turned into its manifest row at the end."""

    cell: Cell
    attempts: int = 0
    provider: str = ""
    submitted: Submitted | None = None
    submitted_at: float | None = None
    spent_usd: float = 0.0  # every billed attempt of this cell


class Runner:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.references = ReferenceLoader()
        self.stop: Unsubmittable | None = None               # fail-fast / budget: run-wide
        self.dead: dict[str, ProviderError] = {}             # account refused: per provider

    # -- fan-out ------------------------------------------------------------------------

    async def run_cells(self, cells: Iterable[Cell], *, workers: int) -> list[ManifestRow]:
        """Run every cell with at most `workers` cells active; rows in input order."""
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
                rows[index] = await self.run_cell(cell, previous.get(cell.cell_id))

        await asyncio.gather(*(worker() for _ in range(max(1, min(workers, len(items))))))
        return [row for row in rows if row is not None]

    # -- one cell -----------------------------------------------------------------------

    async def run_cell(self, cell: Cell, previous: JournalEntry | None = None) -> ManifestRow:
        """One cell to its end; `previous` is its journal entry from an earlier run."""
        ctx = self.ctx
        if previous and previous.state == "succeeded" and previous.row and not ctx.force:
            ctx.progress.finished("succeeded", 0.0, reused=True)
            return previous.row
        state = _Attempt(cell, attempts=previous.attempts if previous else 0)
        resume = previous.submitted if previous and previous.state == "submitted" else None
        try:
            row = await self._run_providers(state, resume)
        except asyncio.CancelledError:
            await self._on_cancel(state)
            raise
        if row.status != "succeeded":
            await self._journal(state, "failed" if row.status == "failed" else "skipped", row)
        ctx.progress.finished(str(row.status), row.cost_usd or 0.0)
        return row

    async def _run_providers(self, state: _Attempt, resume: Submitted | None) -> ManifestRow:
        """Providers in fallback order; what each failure leads to is `policy.decide`'s."""
        spec = self.ctx.spec
        last: BaseException | None = None
        for name in spec.providers:
            if self.stop is not None:
                return self._final(state, self.stop.status, self.stop.code, self.stop.message)
            if name in self.dead:
                last = self.dead[name]
                continue
            for _ in range(spec.retries + 1):
                resumed = resume if resume is not None and resume.provider == name else None
                resume = None
                try:
                    return await self._attempt(state, name, resumed)
                except HANDLED as exc:
                    decision, last = decide(exc), exc
                if isinstance(last, Unsubmittable):
                    return self._final(state, last.status, last.code, last.message)
                if decision is Decision.FINAL:
                    hint = " (not re-sent, to never pay twice)" \
                        if isinstance(last, SubmitUncertain) else ""
                    return self._failed(state, last, hint=hint)
                if decision is Decision.DROP_ACCOUNT:
                    assert isinstance(last, ProviderError)
                    self.dead[name] = last  # every later cell of this account would hit it
                if decision is not Decision.RETRY_TASK:
                    break
        assert last is not None
        return self._failed(state, last)

    async def _attempt(
        self, state: _Attempt, name: str, resumed: Submitted | None
    ) -> ManifestRow:
        ctx, cell = self.ctx, state.cell
        provider, throttle = ctx.providers[name], ctx.throttles[name]
        estimate = self.price(name, cell)
        await throttle.in_flight.acquire()
        try:
            self._check_still_submittable(name)
            await ctx.budget.reserve(estimate)
        except BudgetExhausted as exc:
            await throttle.in_flight.release()
            self.stop = self.stop or Unsubmittable("skipped", "budget", str(exc))
            raise self.stop from exc
        except BaseException:
            await throttle.in_flight.release()
            raise
        billed = 0.0
        ctx.progress.in_flight += 1
        try:
            state.provider = name
            if resumed is not None:
                submitted = resumed
            else:
                state.attempts += 1
                request = await self._request(cell, name, state.attempts)
                submitted = await self._submit(provider, request, throttle)
                ctx.progress.submitted += 1
            state.submitted, state.submitted_at = submitted, state.submitted_at or time.time()
            if resumed is None:
                await self._journal(state, "submitted")
            finished = submitted.finished or await self._wait(provider, submitted, throttle)
            billed = finished.cost_usd if finished.cost_usd is not None else estimate
        finally:
            await throttle.in_flight.release()
            ctx.progress.in_flight -= 1
            await ctx.budget.settle(estimate, billed)
            state.spent_usd += billed
        return await self._deliver(state, provider, finished)

    def _check_still_submittable(self, name: str) -> None:
        """Cells that waited for a slot re-check what changed meanwhile."""
        if self.stop is not None:
            raise self.stop
        if name in self.dead:
            raise self.dead[name]

    async def _request(self, cell: Cell, name: str, attempt: int) -> ImageRequest:
        references = tuple(
            [await asyncio.to_thread(self.references.load, uri) for uri in cell.references]
        )
        return ImageRequest(
            prompt=cell.prompt,
            aspect_ratio=cell.aspect_ratio,
            resolution=cell.resolution,
            output_format=cell.output_format,
            references=references,
            seed=cell.seed,
            options=dict(self.ctx.spec.options.get(name, {})),
            idempotency_key=f"nbp-{cell.cell_id}-{name}-{attempt}",
        )

    async def _submit(
        self, provider: Provider, request: ImageRequest, throttle: AccountThrottle
    ) -> Submitted:
        """Create the task; after a lost answer, re-send only where the protocol makes that
        safe (idempotency key, or a client-chosen id that can be looked up)."""
        rule = resend_rule(provider.capabilities)
        for _ in range(self.ctx.retry.max_attempts):
            try:
                return await with_retries(
                    lambda: provider.submit(request), throttle=throttle,
                    policy=self.ctx.retry, before_each=throttle.before_create,
                    after_each=throttle.after_create,
                )
            except SubmitUncertain:
                if rule is Resend.RECOVER:
                    found = await with_retries(lambda: provider.recover(request))
                    if found is not None:
                        return found
                    continue  # never created: sending again is safe
                if rule is Resend.SAME_KEY:
                    continue  # the provider returns the original task for the same key
                raise
        raise SubmitUncertain("create answers kept getting lost; giving up")

    async def _wait(
        self, provider: Provider, submitted: Submitted, throttle: AccountThrottle
    ) -> Finished:
        polls = 0
        while True:
            await asyncio.sleep(throttle.next_poll_delay(polls))
            polls += 1
            outcome = await with_retries(lambda: provider.poll(submitted), policy=self.ctx.retry)
            if isinstance(outcome, Finished):
                return outcome
            assert isinstance(outcome, Pending)

    async def _deliver(
        self, state: _Attempt, provider: Provider, finished: Finished
    ) -> ManifestRow:
        cell = state.cell
        if not finished.images:
            raise TaskFailed("the provider reported success but returned no image", code="no_image")
        data = await with_retries(lambda: provider.download(finished.images[0]))
        expected = pixel_size(cell.aspect_ratio, cell.resolution)
        # Off the event loop: decoding a 4K PNG takes ~0.2 s of CPU (Pillow releases the GIL).
        width, height = await asyncio.to_thread(
            verify_image, data, cell.output_format, expected
        )
        uri = await asyncio.to_thread(self._write, cell, data)
        row = self._row(
            state, "succeeded", output_uri=uri, sha256=hashlib.sha256(data).hexdigest(),
            bytes=len(data), width=width, height=height,
        )
        await self._journal(state, "succeeded", row)
        return row

    def _write(self, cell: Cell, data: bytes) -> str:
        owner = self.ctx.path_owners.get(cell.output_path)
        overwrite = owner == cell.cell_id
        try:
            return str(self.ctx.sink.write_bytes(cell.output_path, data, overwrite=overwrite))
        except FileExistsError as exc:
            whose = f"cell {owner}" if owner else "a file nbp did not write"
            raise OutputTaken(
                f"{cell.output_path} already holds {whose}; not overwritten "
                "(change output.path or the target)"
            ) from exc

    async def _on_cancel(self, state: _Attempt) -> None:
        """Cancelled mid-flight: stop the remote task where the API can; otherwise leave the
        journal saying 'submitted' so the next run polls the task it already paid for."""
        submitted = state.submitted
        provider = self.ctx.providers.get(state.provider)
        if submitted is None or provider is None or not provider.capabilities.can_cancel:
            return
        with contextlib.suppress(Exception):
            await asyncio.shield(provider.cancel(submitted))
            row = self._row(state, "cancelled", error_code="cancelled",
                            error_message="run cancelled; remote task cancelled")
            await asyncio.shield(self._journal(state, "cancelled", row))

    # -- rows and journal ---------------------------------------------------------------

    def price(self, provider: str, cell: Cell) -> float:
        """What one task of `cell` costs on `provider`: the plan's price, reserved in full."""
        return self.ctx.rules[provider].price(cell.resolution, len(cell.references))

    def _failed(self, state: _Attempt, exc: BaseException, hint: str = "") -> ManifestRow:
        code = getattr(exc, "code", None) or type(exc).__name__
        message = f"{type(exc).__name__}: {exc}{hint}"
        if self.ctx.spec.fail_fast and self.stop is None:
            self.stop = Unsubmittable(
                "skipped", "fail_fast", f"not submitted: fail_fast after cell {state.cell.cell_id}"
            )
        return self._final(state, "failed", str(code), message)

    def _final(self, state: _Attempt, status: str, code: str, message: str) -> ManifestRow:
        return self._row(state, status, error_code=code, error_message=message)

    def _row(self, state: _Attempt, status: str, **results: Any) -> ManifestRow:
        """The cell's manifest row: the only place the engine builds one."""
        cell, ctx = state.cell, self.ctx
        now = time.time()
        submitted_at = state.submitted_at
        provider = state.provider or ctx.spec.provider
        return ManifestRow(
            cell_id=cell.cell_id,
            job=ctx.spec.name,
            run_id=ctx.run_id,
            provider=provider,
            model=ctx.models.get(provider),
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
            cost_usd=round(state.spent_usd, 6),
            submitted_at=_utc(submitted_at),
            completed_at=_utc(now) if status in ("succeeded", "failed") else None,
            latency_s=round(now - submitted_at, 3) if submitted_at else None,
            output_path=cell.output_path,
            **results,
        )

    async def _journal(
        self, state: _Attempt, entry_state: JournalState, row: ManifestRow | None = None
    ) -> None:
        await asyncio.to_thread(self.ctx.journal.write, self._entry(state, entry_state, row))

    def _entry(
        self, state: _Attempt, entry_state: JournalState, row: ManifestRow | None
    ) -> JournalEntry:
        return JournalEntry(
            cell_id=state.cell.cell_id, state=entry_state, run_id=self.ctx.run_id,
            provider=state.provider, attempts=state.attempts,
            task=state.submitted.to_json() if state.submitted else None,
            submitted_at=state.submitted_at, row=row,
        )


def _utc(timestamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, UTC) if timestamp else None
