"""Batch channels: a `BatchProvider` (Gemini's Batch API) as the runner sees any provider,
so every cell keeps its own lifecycle in the journal while many cells travel as one batch.

    channel = channel_for(adapter, label="nbp-catalog-1a2b3c4d", wait_s=600, poll_interval_s=60)
    request = await channel.prepare(request)    # joins the open group: its key names it,
                                                # "{display name}|{cell id}"
    ...                                         # the runner journals create_sent with that key
    submitted = await channel.submit(request)   # returns once the group's batch exists
    await channel.poll(submitted)        # Pending until the batch ends; one GET per batch
    data = await channel.download(image) # the cell's image, spooled to disk while streaming

Groups. Cells join the open group of their model id (a batch runs one model) until the next
would pass a limit of the provider's `BatchLimits` (`Capabilities.batch`: requests per batch,
expected result bytes, input file bytes; references travel inline), or `LINGER_S` pass
without a new cell. Its display name, unique to this process and group, is in every member's
journal entry *before* the batch is created, so after a lost create answer or a kill the
batch is found again by listing (`recover`).

A lost create answer is the runner's to handle, as for any provider (`Resend.RECOVER`): every
member hears `SubmitUncertain` and asks `recover`, which lists the provider's batches by the
group's display name once for all of them; a member sends again only when the listing shows
no batch of that name, and only then may the group be created again (`submit` answers
`SubmitUncertain` until a listing has spoken), so no batch is ever created twice for the
same cells.

Waiting. A batch takes up to a day. `poll` answers Pending from one shared `get_batch` per
batch, asked again after the job's poll interval or a tenth of the batch's age, whichever is
longer (at most every 30 min); after `wait_s` of this run it raises `TaskPending`, so the cell
ends the run `pending` with its batch in the journal and the next run collects it. The wait
ends on time: the runner's polls of a batch cell come at most `LONGEST_POLL_GAP_S` (and
`wait_s`) apart (`flows.engine.job.make_throttles`), and a poll within that gap of the end holds
until the batch is done or the wait is over (`--batch-wait 5` waited 31 s when the first poll
came after the runner's 30 s cap). A failed
or cancelled batch is `TaskFailed` for each of its cells (nothing to collect: a new task may
be created), a refused line is that cell's `ContentRejected` or `TaskFailed`.

Lifetimes. A batch that expired (48 h pending or running) ran none of its cells, or, should
the provider serve results for it, those cells only: every other cell hears `TaskExpired`
(nothing billed; the runner moves it to the next channel, else leaves it for the next run).
A batch whose results the provider no longer serves (kept 6 weeks) is `ResultsExpired` for
every cell, heard from one download: those images were billed and are never created again.
When a succeeded batch's own count of failed requests (`BatchJob.failed_requests`) differs
from the error lines its results hold, a warning names both: the results decide.

Results are streamed line by line (`BatchProvider.batch_results`) into one spool file per
cell on local disk, never held in memory; `download` reads a cell's file; the spool folder
goes when the channel closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from nbp.flows.engine.policy import Step, StepEnd, TaskPending, step_end
from nbp.providers.base import (
    BATCH_DONE,
    BatchJob,
    BatchLimits,
    BatchProvider,
    BatchResult,
    Capabilities,
    Finished,
    ImageRequest,
    Pending,
    Provider,
    ResultImage,
    Submitted,
)
from nbp.providers.errors import (
    ProviderError,
    RequestNotSent,
    ResultsExpired,
    SubmitUncertain,
    TaskExpired,
    TaskFailed,
    TransientError,
)

log = logging.getLogger("nbp.batching")

LINGER_S = 0.5                # a group leaves this long after its last cell joined
GRACE_S = 2.0                 # ... waiting at most this for members still journalling
DEFAULT_WAIT_S = 600.0        # how long one run waits for its batches before leaving them
AGE_FRACTION = 0.1            # a batch is looked at again after a tenth of its age ...
MAX_CHECK_INTERVAL_S = 1800.0  # ... and at least every half hour
LONGEST_POLL_GAP_S = 30.0     # the runner polls a batch cell at least this often
SPOOL_PREFIX = "spool:"
EXPIRED_CODE = "batch_expired"  # the error code of a cell whose batch expired before it ran
KEY_SEPARATOR = "|"

# Where a group's create stands: members gather, the create is on its way, the batch exists,
# its answer was lost (a listing must speak before anything is sent again), or it surely
# does not exist (refused, never sent, or not listed): the next member's send creates it.
Phase = Literal["gathering", "sending", "created", "uncertain", "absent"]


def channel_for(
    adapter: Provider | BatchProvider, *, label: str, wait_s: float = DEFAULT_WAIT_S,
    poll_interval_s: float | None = None,
) -> Provider:
    """The engine's channel to an adapter: the adapter itself, or for a batch provider a
    `BatchChannel` (`label` makes its display names unique to this process; `poll_interval_s`
    is the job's, from its rules)."""
    if isinstance(adapter, BatchProvider):
        return BatchChannel(adapter, label=label, wait_s=wait_s, poll_interval_s=poll_interval_s)
    return adapter


@dataclass
class _Attempt:
    """One create of a group's batch: the members it waits for and the requests they sent."""

    expected: set[str]
    requests: dict[str, ImageRequest] = field(default_factory=dict)
    outcome: asyncio.Future[BatchJob] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class _Group:
    display_name: str
    model: str | None = None               # the model id its requests ask for
    members: set[str] = field(default_factory=set)   # cell ids placed
    result_bytes: int = 0
    input_bytes: int = 0
    closed: bool = False                   # no new member joins
    last_joined: float = field(default_factory=time.monotonic)
    phase: Phase = "gathering"
    attempt: _Attempt | None = None        # the create gathering or on its way
    sent_with: frozenset[str] = frozenset()  # the cells of the last create sent
    job: BatchJob | None = None            # the batch, once created or found
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one listing at a time


@dataclass
class _Tracked:
    job: BatchJob
    checked: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # key -> its result (the image spooled to disk) or its refusal, once streamed
    outcomes: dict[str, Finished | BatchResult] | None = None
    gone: ResultsExpired | None = None   # its results are no longer served: every cell's word


class BatchChannel:
    """One batch account as a `providers.base.Provider` for the runner (see the module
    docstring); `label` makes display names unique to this process, `poll_interval_s` (the
    job's; default the provider's) spaces the looks at one batch."""

    def __init__(
        self, provider: BatchProvider, *, label: str, wait_s: float = DEFAULT_WAIT_S,
        poll_interval_s: float | None = None,
    ) -> None:
        caps = provider.capabilities
        if caps.batch is None:
            raise ValueError(f"{provider.name} declares no batch limits (Capabilities.batch)")
        self.batches = provider
        self.name = provider.name
        self.label = label
        self.wait_s = wait_s
        self.limits: BatchLimits = caps.batch
        self.capabilities: Capabilities = replace(caps, recoverable_submit=True,
                                                  idempotent_submit=False, can_cancel=True)
        self.poll_interval_s = caps.poll_interval_s if poll_interval_s is None else (
            poll_interval_s)
        self.model = getattr(provider, "model", provider.name)
        # The longest the runner may wait between two polls of a cell (its throttle's cap).
        self.poll_gap_s = min(LONGEST_POLL_GAP_S, wait_s)
        self._groups: dict[str, _Group] = {}
        self._creators: set[asyncio.Task[None]] = set()  # referenced until done
        # the group open for new cells, per model id asked (a batch runs one model)
        self._open: dict[str | None, _Group] = {}
        self._sequence = 0
        self._found: dict[str, BatchJob] = {}      # earlier runs' batches, by display name
        self._finding: dict[str, asyncio.Lock] = {}
        self._tracked: dict[str, _Tracked] = {}
        self._cancelled: dict[str, bool] = {}  # batch -> whether Google confirmed its cancel
        self._started = time.monotonic()
        self._spool = Path(tempfile.mkdtemp(prefix="nbp-batch-spool-"))

    # -- grouping ---------------------------------------------------------------------------

    async def prepare(self, request: ImageRequest) -> ImageRequest:
        """The cell (`request.cell_id`) joins the open group of its model; the request comes
        back keyed by the group ("{display name}|{cell id}"). References need nothing: they
        travel inline in the batch's input file."""
        if not request.cell_id:
            raise ValueError("a batch member needs its cell_id")
        return replace(request, idempotency_key=self._place(request.cell_id, request))

    def _place(self, cell_id: str, request: ImageRequest) -> str:
        limits = self.limits
        model = request.options.get("model")
        group = self._open.get(model)
        expected = limits.result_bytes(request.resolution)
        sent = input_bytes(request)
        if group is None or group.closed or len(group.members) >= limits.max_requests or (
            group.members and (group.result_bytes + expected > limits.max_result_bytes
                               or group.input_bytes + sent > limits.max_input_bytes)
        ):
            if group is not None:
                group.closed = True
            group = self._new_group(model)
        group.members.add(cell_id)
        group.result_bytes += expected
        group.input_bytes += sent
        group.last_joined = time.monotonic()
        return f"{group.display_name}{KEY_SEPARATOR}{cell_id}"

    def _new_group(self, model: str | None) -> _Group:
        self._sequence += 1
        group = _Group(f"{self.label}-{self._sequence:05d}", model)
        self._groups[group.display_name] = group
        self._open[model] = group
        group.attempt = _Attempt(group.members)  # the first create waits for every member
        self._start(self._send_when_ready(group, group.attempt, linger=True))
        return group

    def _start(self, creator: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(creator)
        self._creators.add(task)
        task.add_done_callback(self._creators.discard)

    async def submit(self, request: ImageRequest) -> Submitted:
        """Wait for the cell's group to become a batch at the provider. A send after a lost
        answer (`SubmitUncertain`) creates the group again only once a listing showed no
        batch of its name (`recover`); until then it is `SubmitUncertain` again."""
        display, cell_id = _split(request.idempotency_key)
        group = self._groups.get(display)
        if group is None or cell_id not in group.members:
            raise RequestNotSent(f"batch {display} has no place for this cell; it was not sent")
        if group.phase == "created":
            if cell_id not in group.sent_with:
                raise RequestNotSent(f"batch {display} left without this cell; it was not sent")
            assert group.job is not None
            return self._submitted(group.job, cell_id)
        if group.phase == "uncertain":
            raise SubmitUncertain(f"batch {display}: its create may have reached the "
                                  "provider; a listing must show it is not there first")
        if group.phase == "absent":  # the runner's word: send the same cells again
            group.phase = "gathering"
            group.attempt = _Attempt({*group.sent_with, cell_id})
            self._start(self._send_when_ready(group, group.attempt, linger=False))
        attempt = group.attempt
        if group.phase != "gathering" or attempt is None:
            raise RequestNotSent(f"batch {display} left without this cell; it was not sent")
        attempt.requests[cell_id] = request
        job = await asyncio.shield(attempt.outcome)
        return self._submitted(job, cell_id)

    async def _send_when_ready(self, group: _Group, attempt: _Attempt, *, linger: bool) -> None:
        """Close the group when full or quiet (`linger`), let its members finish
        journalling, create its batch; every member waiting hears the outcome."""
        while linger and not group.closed and time.monotonic() - group.last_joined < LINGER_S:
            await asyncio.sleep(LINGER_S / 5)
        group.closed = True
        if self._open.get(group.model) is group:
            del self._open[group.model]
        until = time.monotonic() + GRACE_S
        while len(attempt.requests) < len(attempt.expected) and time.monotonic() < until:
            await asyncio.sleep(0.02)
        group.phase = "sending"
        future = attempt.outcome
        try:
            if not attempt.requests:
                raise RequestNotSent("no cell of the group was submitted")
            group.sent_with = frozenset(attempt.requests)
            requests = sorted(attempt.requests.items())
            job = await self.batches.create_batch(group.display_name, requests)
            log.info("batch %s: %d cells, %s", group.display_name, len(requests), job.name)
        except BaseException as exc:  # every member hears it
            group.phase = "absent" if _nothing_created(exc) else "uncertain"
            if not future.done():
                future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            group.phase, group.job = "created", job
            future.set_result(job)
        finally:
            group.attempt = None  # its requests (references inline) are let go
        with contextlib.suppress(BaseException):
            future.exception()  # retrieved: no "never retrieved" warning without members

    def _submitted(self, job: BatchJob, cell_id: str) -> Submitted:
        self._track(job)
        return Submitted(self.name, f"{job.name}/{cell_id}",
                         {"batch": job.name, "display_name": job.display_name,
                          "cell": cell_id}, group=job.name)

    # -- a lost answer, a kill ----------------------------------------------------------------

    async def recover(self, request: ImageRequest) -> Submitted | None:
        """The batch that holds this cell, found by its group's display name; None when
        there is none (the cell may be sent again). A group of this run is listed once
        for all its members, and answers only for the cells its last create carried."""
        display, cell_id = _split(request.idempotency_key)
        group = self._groups.get(display)
        if group is None:  # an earlier run's group
            job = await self._find(display)
            return None if job is None else self._submitted(job, cell_id)
        async with group.lock:
            if group.phase == "uncertain":
                found = await self.batches.find_batch(display)
                group.phase, group.job = ("created", found) if found else ("absent", None)
        if group.phase == "created" and cell_id in group.sent_with:
            assert group.job is not None
            return self._submitted(group.job, cell_id)
        return None

    async def _find(self, display_name: str) -> BatchJob | None:
        """An earlier run's batch by its display name: one listing however many ask."""
        async with self._finding.setdefault(display_name, asyncio.Lock()):
            if display_name not in self._found:
                job = await self.batches.find_batch(display_name)
                if job is None:
                    return None
                self._found[display_name] = job
            return self._found[display_name]

    # -- following a batch ------------------------------------------------------------------

    async def poll(self, submitted: Submitted) -> Pending | Finished:
        tracked = await self._refresh(submitted.extra["batch"],
                                      submitted.extra.get("display_name", ""))
        job = tracked.job
        while job.state not in BATCH_DONE:
            left = self._started + self.wait_s - time.monotonic()
            if left <= 0:
                raise TaskPending(f"batch {job.name} is still {job.state} (Google's target "
                                  "turnaround is 24 h); the next run collects it")
            if left > self.poll_gap_s:  # the runner's next poll comes before the end
                return Pending(job.state)
            # The end of the wait is nearer than the runner's next poll: hold this one.
            await asyncio.sleep(min(left, self.check_interval_s(job)))
            tracked = await self._refresh(job.name, job.display_name)
            job = tracked.job
        cell = submitted.extra.get("cell") or _cell_of(submitted.task_id)
        if job.state == "expired":
            outcome = (await self._results(tracked)).get(cell) if job.results else None
            if outcome is None:
                raise TaskExpired(f"batch {job.name} expired before it ran this cell ("
                                  f"{job.error or 'pending or running for 48 h'}); nothing "
                                  "was billed for it", code=EXPIRED_CODE)
        elif job.state != "succeeded":
            raise TaskFailed(f"batch {job.name} ended {job.state}: {job.error or 'no reason'}",
                             code=f"batch_{job.state}")
        else:
            outcome = (await self._results(tracked)).get(cell)
            if outcome is None:
                raise TaskFailed(f"batch {job.name} has no result for this cell",
                                 code="no_result")
        if isinstance(outcome, Finished):
            return outcome
        assert outcome.error is not None
        raise outcome.error

    async def download(self, image: ResultImage) -> bytes:
        if image.data is not None:
            return image.data
        url = image.url or ""
        if not url.startswith(SPOOL_PREFIX):
            raise TaskFailed(f"not a batch result: {url[:80]}", code="no_result")
        path = Path(url[len(SPOOL_PREFIX):])
        try:  # kept until the channel closes: a retried step reads it again
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:  # never the provider's word: the next run streams it again
            raise TransientError(f"the spooled result {path.name} is gone") from None

    async def cancel(self, submitted: Submitted) -> bool:
        """Cancel the cell's batch (once for all its cells); True when Google confirms it."""
        name = submitted.extra.get("batch")
        if not name:
            return False
        if name not in self._cancelled:
            self._cancelled[name] = await self.batches.cancel_batch(name)
        return self._cancelled[name]

    async def aclose(self) -> None:
        for creator in list(self._creators):
            creator.cancel()
        await self.batches.aclose()
        await asyncio.to_thread(shutil.rmtree, self._spool, True)

    # -- shared per batch -------------------------------------------------------------------

    def _track(self, job: BatchJob) -> _Tracked:
        tracked = self._tracked.get(job.name)
        if tracked is None:
            tracked = self._tracked[job.name] = _Tracked(job, time.monotonic())
        return tracked

    async def _refresh(self, name: str, display_name: str) -> _Tracked:
        """The batch as of a moment ago: one GET however many cells ask, and fewer the older
        the batch (`check_interval_s`)."""
        tracked = self._tracked.get(name)
        if tracked is None:
            tracked = self._track(BatchJob(name, display_name, "pending"))
            tracked.checked = 0.0
        async with tracked.lock:
            stale = time.monotonic() - tracked.checked >= self.check_interval_s(tracked.job)
            if tracked.job.state not in BATCH_DONE and stale:
                tracked.job = await self.batches.get_batch(name)
                tracked.checked = time.monotonic()
        return tracked

    def check_interval_s(self, job: BatchJob) -> float:
        """Seconds between two looks at a batch: the job's poll interval while it is young,
        then a tenth of its age (a batch of 5 hours is looked at every 30 minutes), at most
        `MAX_CHECK_INTERVAL_S`: a backoff suited to a turnaround of hours."""
        age = time.time() - job.created_at if job.created_at else 0.0
        return min(MAX_CHECK_INTERVAL_S, max(self.poll_interval_s, AGE_FRACTION * age))

    async def _results(self, tracked: _Tracked) -> dict[str, Finished | BatchResult]:
        """Stream the batch's results once, each image to its own spool file; results no
        longer served are said once, for every cell."""
        async with tracked.lock:
            if tracked.gone is not None:
                raise tracked.gone
            if tracked.outcomes is None:
                outcomes: dict[str, Finished | BatchResult] = {}
                folder = self._spool / tracked.job.name.replace("/", "_")
                folder.mkdir(parents=True, exist_ok=True)
                failed = 0
                try:
                    async for result in self.batches.batch_results(tracked.job):
                        failed += result.failed
                        outcomes[result.key] = await self._spooled(folder, result)
                except ResultsExpired as exc:
                    tracked.gone = exc
                    raise
                tracked.outcomes = outcomes
                check_failed_count(tracked.job, failed)
            return tracked.outcomes

    async def _spooled(self, folder: Path, result: BatchResult) -> Finished | BatchResult:
        finished = result.finished
        if finished is None or not finished.images or finished.images[0].data is None:
            if result.error is None:
                return replace(result, error=TaskFailed("the batch returned no image for it",
                                                        code="no_image"))
            return result
        path = folder / f"{result.key}.img"
        await asyncio.to_thread(path.write_bytes, finished.images[0].data)
        return replace(finished, images=(ResultImage(url=f"{SPOOL_PREFIX}{path}"),))


def check_failed_count(job: BatchJob, found: int) -> bool:
    """Whether a succeeded batch's own count of failed requests is the error lines its
    results held; a warning naming both when not (the results decide each cell)."""
    if job.state != "succeeded" or job.failed_requests is None or job.failed_requests == found:
        return True
    log.warning("batch %s reports %d failed request(s) (batchStats.failedRequestCount) but "
                "its results hold %d error line(s); each cell follows its own line",
                job.name, job.failed_requests, found)
    return False


def input_bytes(request: ImageRequest) -> int:
    """About what the request adds to the batch's JSONL file: its references in base64 and
    its prompt, plus the line's JSON."""
    references = sum(len(r.data or b"") for r in request.references)
    return 4 * references // 3 + len(request.prompt.encode()) + 1024


def _split(key: str | None) -> tuple[str, str]:
    display, sep, cell_id = (key or "").rpartition(KEY_SEPARATOR)
    if not sep:
        raise ProviderError(f"not a batch key: {key!r}")
    return display, cell_id


def _cell_of(task_id: str) -> str:
    return task_id.rpartition("/")[2]


def _nothing_created(exc: BaseException) -> bool:
    """Whether a failed create surely made no batch: it never left, or the provider refused
    it (`policy.STEP_ENDS`); anything else may have made one."""
    return isinstance(exc, Exception) and step_end(Step.CREATE, exc) in (
        StepEnd.RETRY, StepEnd.REFUSED)

