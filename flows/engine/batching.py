"""Batch channels: a `BatchProvider` (Gemini's Batch API) as the runner sees a provider, so
every cell keeps its own lifecycle in the journal while many cells travel as one batch.

    channel = BatchChannel(batch_provider, label="nbp-catalog-1a2b3c4d")
    key = channel.place(cell_id)         # joins the open group: "{display name}|{cell id}"
    ...                                  # the runner journals create_sent with that key
    submitted = await channel.submit(request)   # returns once the group's batch exists
    await channel.poll(submitted)        # Pending until the batch ends; one GET per batch
    data = await channel.download(image) # the cell's image, spooled to disk while streaming

Groups. Cells join the open group of their model id (a batch runs one model) until it holds
`MAX_REQUESTS` cells, its expected result bytes reach `MAX_RESULT_BYTES` (a results file
small enough to download reliably) or its input file `MAX_INPUT_BYTES` (references travel
inline), or `LINGER_S` pass without a new cell. Its display name, unique to this process and
group, is in every member's journal entry *before* the batch is created (the runner journals
the key), so after a lost create answer or a kill the batch is found again by listing
(`recover`), and no batch is ever created twice for the same cells: a create whose answer
was lost is followed by a listing, and sent again only when the listing shows no batch of
that name.

Waiting. A batch takes up to a day. `poll` answers Pending from one shared `get_batch` per
batch, asked again after the job's poll interval or a tenth of the batch's age, whichever is
longer (at most every 30 min); after `wait_s` of this run it raises `TaskPending`, so the cell
ends the run `pending` with its batch in the journal and the next run collects it. A failed,
expired or cancelled batch is `TaskFailed` for each of its cells (nothing to collect: a new
task may be created), a refused line is that cell's `ContentRejected` or `TaskFailed`.

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
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from flows.engine.policy import TaskPending
from flows.spec.settings import CELLS_PER_BATCH
from providers.base import (
    BATCH_DONE,
    BatchJob,
    BatchProvider,
    BatchResult,
    Capabilities,
    Finished,
    ImageRequest,
    Pending,
    ResultImage,
    Submitted,
)
from providers.errors import (
    ProviderError,
    RequestNotSent,
    SubmitUncertain,
    TaskFailed,
    TransientError,
)

log = logging.getLogger("nbp.batching")

MAX_REQUESTS = CELLS_PER_BATCH  # cells per batch
# Expected base64 result bytes per image (protocols-gemini.md §6: a 2K image is ~8 MB in
# base64); a batch's results file stays under MAX_RESULT_BYTES.
EXPECTED_RESULT_BYTES: Mapping[str, int] = {"1K": 3 * 2**20, "2K": 8 * 2**20, "4K": 30 * 2**20}
MAX_RESULT_BYTES = 1 * 2**30
# The JSONL input file, references inline in base64: under the documented 2 GB per file.
MAX_INPUT_BYTES = 3 * 2**29
LINGER_S = 0.5                # a group leaves this long after its last cell joined
GRACE_S = 2.0                 # ... waiting at most this for members still journalling
CREATE_ATTEMPTS = 4
DEFAULT_WAIT_S = 600.0        # how long one run waits for its batches before leaving them
AGE_FRACTION = 0.1            # a batch is looked at again after a tenth of its age ...
MAX_CHECK_INTERVAL_S = 1800.0  # ... and at least every half hour
SPOOL_PREFIX = "spool:"
KEY_SEPARATOR = "|"


@dataclass
class _Group:
    display_name: str
    model: str | None = None               # the model id its requests ask for
    members: set[str] = field(default_factory=set)          # cell ids placed
    requests: dict[str, ImageRequest] = field(default_factory=dict)  # ... and submitted
    result_bytes: int = 0
    input_bytes: int = 0
    closed: bool = False                   # no new member joins
    sent: bool = False                     # its batch is being (or was) created
    last_joined: float = field(default_factory=time.monotonic)
    job: asyncio.Future[BatchJob] | None = None


@dataclass
class _Tracked:
    job: BatchJob
    checked: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # key -> its result (the image spooled to disk) or its refusal, once streamed
    outcomes: dict[str, Finished | BatchResult] | None = None


class BatchChannel:
    """One batch account as a `providers.base.Provider` for the runner (see the module
    docstring); `label` makes display names unique to this process."""

    def __init__(
        self, provider: BatchProvider, *, label: str, wait_s: float = DEFAULT_WAIT_S,
    ) -> None:
        self.batches = provider
        self.name = provider.name
        self.label = label
        self.wait_s = wait_s
        caps = provider.capabilities
        self.capabilities: Capabilities = replace(caps, recoverable_submit=True,
                                                  idempotent_submit=False, can_cancel=True)
        # One GET per batch per this many seconds; the run sets it from the job's rules.
        self.poll_interval_s = caps.poll_interval_s
        self.model = getattr(provider, "model", provider.name)
        self._groups: dict[str, _Group] = {}
        self._creators: set[asyncio.Task[None]] = set()  # referenced until done
        # the group open for new cells, per model id asked (a batch runs one model)
        self._open: dict[str | None, _Group] = {}
        self._sequence = 0
        self._tracked: dict[str, _Tracked] = {}
        self._cancelled: dict[str, bool] = {}  # batch -> whether Google confirmed its cancel
        self._started = time.monotonic()
        self._spool = Path(tempfile.mkdtemp(prefix="nbp-batch-spool-"))

    # -- grouping ---------------------------------------------------------------------------

    def place(self, cell_id: str, request: ImageRequest) -> str:
        """The cell joins the open group of its model; its key names the group's display
        name."""
        model = request.options.get("model")
        group = self._open.get(model)
        expected = EXPECTED_RESULT_BYTES.get(request.resolution,
                                             max(EXPECTED_RESULT_BYTES.values()))
        sent = input_bytes(request)
        if group is None or group.closed or len(group.members) >= MAX_REQUESTS or (
            group.members and (group.result_bytes + expected > MAX_RESULT_BYTES
                               or group.input_bytes + sent > MAX_INPUT_BYTES)
        ):
            if group is not None:
                group.closed = True
            self._sequence += 1
            group = _Group(f"{self.label}-{self._sequence:05d}", model)
            self._groups[group.display_name] = group
            self._open[model] = group
            creator = asyncio.get_running_loop().create_task(self._leave_when_ready(group))
            self._creators.add(creator)
            creator.add_done_callback(self._creators.discard)
        group.members.add(cell_id)
        group.result_bytes += expected
        group.input_bytes += sent
        group.last_joined = time.monotonic()
        return f"{group.display_name}{KEY_SEPARATOR}{cell_id}"

    async def prepare(self, request: ImageRequest) -> ImageRequest:
        """Nothing: references travel inline in the batch's input file."""
        return request

    async def submit(self, request: ImageRequest) -> Submitted:
        """Wait for the cell's group to become a batch at the provider."""
        display, cell_id = _split(request.idempotency_key)
        group = self._groups.get(display)
        if group is None or group.sent or cell_id not in group.members:
            raise RequestNotSent(f"batch {display} left without this cell; it was not sent")
        group.requests[cell_id] = request
        if group.job is None:
            group.job = asyncio.get_running_loop().create_future()
        job = await asyncio.shield(group.job)
        return self._submitted(job, cell_id)

    async def _leave_when_ready(self, group: _Group) -> None:
        """Close the group when full or quiet, let its members finish journalling, create."""
        while not group.closed and time.monotonic() - group.last_joined < LINGER_S:
            await asyncio.sleep(LINGER_S / 5)
        group.closed = True
        if self._open.get(group.model) is group:
            del self._open[group.model]
        until = time.monotonic() + GRACE_S
        while len(group.requests) < len(group.members) and time.monotonic() < until:
            await asyncio.sleep(0.02)
        group.sent = True
        if group.job is None:
            group.job = asyncio.get_running_loop().create_future()
        future = group.job
        try:
            if not group.requests:
                raise RequestNotSent("no cell of the group was submitted")
            job = await self._create(group)
        except BaseException as exc:  # every member hears it
            if not future.done():
                future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            future.set_result(job)
        finally:
            self._groups.pop(group.display_name, None)
        with contextlib.suppress(BaseException):
            future.exception()  # retrieved: no "never retrieved" warning without members

    async def _create(self, group: _Group) -> BatchJob:
        """Create the batch once: after a lost answer, list before ever sending again."""
        requests = sorted(group.requests.items())
        for attempt in range(CREATE_ATTEMPTS):
            try:
                job = await self.batches.create_batch(group.display_name, requests)
                log.info("batch %s: %d cells, %s", group.display_name, len(requests), job.name)
                return job
            except (SubmitUncertain, TransientError) as exc:
                found = await self._find(group.display_name)
                if found is not None:
                    return found
                if attempt == CREATE_ATTEMPTS - 1:
                    raise
                log.warning("batch %s: %s; no such batch at the provider, creating again",
                            group.display_name, exc)
                await asyncio.sleep(min(30.0, 2.0**attempt))
        raise AssertionError("unreachable")

    async def _find(self, display_name: str) -> BatchJob | None:
        for attempt in range(3):
            try:
                return await self.batches.find_batch(display_name)
            except TransientError:
                await asyncio.sleep(2.0**attempt)
        raise SubmitUncertain(f"batch {display_name}: the create's answer was lost and the "
                              "provider's list of batches cannot be read")

    def _submitted(self, job: BatchJob, cell_id: str) -> Submitted:
        self._track(job)
        return Submitted(self.name, f"{job.name}/{cell_id}",
                         {"batch": job.name, "display_name": job.display_name,
                          "cell": cell_id})

    # -- after a kill -----------------------------------------------------------------------

    async def recover(self, request: ImageRequest) -> Submitted | None:
        """The batch an earlier run created for this cell, by its display name; None when
        it was never created (the cell may be created afresh)."""
        display, cell_id = _split(request.idempotency_key)
        job = await self._find(display)
        return None if job is None else self._submitted(job, cell_id)

    # -- following a batch ------------------------------------------------------------------

    async def poll(self, submitted: Submitted) -> Pending | Finished:
        tracked = await self._refresh(submitted.extra["batch"],
                                      submitted.extra.get("display_name", ""))
        job = tracked.job
        if job.state not in BATCH_DONE:
            if time.monotonic() - self._started > self.wait_s:
                raise TaskPending(f"batch {job.name} is still {job.state} (Google's target "
                                  "turnaround is 24 h); the next run collects it")
            return Pending(job.state)
        if job.state != "succeeded":
            raise TaskFailed(f"batch {job.name} ended {job.state}: {job.error or 'no reason'}",
                             code=f"batch_{job.state}")
        outcomes = await self._results(tracked)
        outcome = outcomes.get(submitted.extra.get("cell") or _cell_of(submitted.task_id))
        if outcome is None:
            raise TaskFailed(f"batch {job.name} has no result for this cell", code="no_result")
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

    def pending_batches(self) -> list[BatchJob]:
        """Batches this run followed that had not ended (for the run's summary)."""
        return [t.job for t in self._tracked.values() if t.job.state not in BATCH_DONE]

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
        """Stream the batch's results once, each image to its own spool file."""
        async with tracked.lock:
            if tracked.outcomes is None:
                outcomes: dict[str, Finished | BatchResult] = {}
                folder = self._spool / tracked.job.name.replace("/", "_")
                folder.mkdir(parents=True, exist_ok=True)
                async for result in self.batches.batch_results(tracked.job):
                    outcomes[result.key] = await self._spooled(folder, result)
                tracked.outcomes = outcomes
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


def is_batch(provider: object) -> bool:
    return isinstance(provider, BatchChannel)
