"""Assembling and running one job: spec -> cells -> chunks -> manifest and gallery.

Plain asyncio, no Prefect: `flows.orchestration.flow` plugs Prefect in through `RunHooks`
(each chunk a task, Secret blocks, shared rate limits); tests and benchmarks run it as is.
Chunks are the unit of orchestration (a few hundred cells each, never a task per image);
throttles, budget and providers are shared by every chunk of the process.

Memory does not grow with the number of cells: the job's cells expand again as they are read
(`flows.spec.cells.ExpandedCells`), a chunk's cells are read only when it may start, each
chunk's rows go to a Parquet part in a local temp folder as it ends, and the manifest is
merged from the parts by streaming (`outputs.parts`), the gallery reading only its cards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import polars as pl

from nbp.flows.engine.batching import DEFAULT_WAIT_S, EXPIRED_CODE, BatchChannel, channel_for
from nbp.flows.engine.budget import Budget
from nbp.flows.engine.interrupt import Interrupt
from nbp.flows.engine.journal import Journal
from nbp.flows.engine.lease import Heartbeat, Lease
from nbp.flows.engine.ledger import Ledger
from nbp.flows.engine.markup import CostMarkup, cell_hold, markups_for
from nbp.flows.engine.policy import DEFAULT_RETRY, RetryPolicy, RunConfigurationError
from nbp.flows.engine.progress import Progress
from nbp.flows.engine.redo import Effective, effective, read_redos, record_redos
from nbp.flows.engine.reference_check import (
    ReferenceState,
    check_references,
    http_references,
    references_fingerprint,
)
from nbp.flows.engine.refresh import TargetState, apply_patches, patches, read_state
from nbp.flows.engine.routing import Router, make_lanes
from nbp.flows.engine.runner import RunContext, Runner
from nbp.flows.engine.spend_window import SpendWindow
from nbp.flows.engine.throttle import AccountThrottle, InFlightLimit, SlidingWindowLimiter
from nbp.flows.spec.channels import (
    Channel,
    channels,
    missing_credentials,
    shard_owners,
    split_for_shard,
)
from nbp.flows.spec.inputs import InputPolicy
from nbp.flows.spec.loader import load_job
from nbp.flows.spec.model import Cell, CellSource, GallerySpec, JobSpec
from nbp.flows.spec.plan import DEFAULT_LATENCY_S
from nbp.flows.spec.rate import Rate
from nbp.flows.spec.settings import ProviderRules, provider_rules
from nbp.flows.spec.shard import Shard
from nbp.outputs.layout import MANIFEST_LOCK, TARGET_KIND
from nbp.outputs.manifest import MANIFEST_NAME, retype_variables, rows_to_frame
from nbp.outputs.parts import ManifestParts, merge_parts
from nbp.outputs.review import decisions, review_frame, with_reviews
from nbp.outputs.runs import (
    RunRecord,
    inputs_digest,
    merge_record,
    relative_inputs,
    write_inputs,
)
from nbp.outputs.sink import Sink
from nbp.outputs.status import summarise
from nbp.outputs.steps import AFTER_WRITE, AfterWrite, Written, run_steps
from nbp.providers import registry
from nbp.providers.base import Provider

log = logging.getLogger("nbp.job")

DEFAULT_CHUNK_SIZE = 200
COPY_BLOCK = 1 << 20  # the merged manifest goes to the target a block at a time

# A chunk's rows as a frame: returned per row, Prefect would track every row of every task
# run in its flow-run context (one entry each, never dropped: ~200 bytes a cell).
ChunkRunner = Callable[[Runner, int, Sequence[Cell], int], Awaitable[pl.DataFrame]]
CredentialSource = Callable[[JobSpec], Awaitable[Mapping[str, str]]]
# Serves stand-ins for the spec's providers while the run lasts (`--emulate`), given the spec,
# the run's channels and the seconds a task takes (None: the stand-ins' default); yields the
# environment that points the real clients at them (base URLs, a key for every channel).
Emulation = Callable[
    [JobSpec, Sequence[Channel], float | None], AbstractAsyncContextManager[Mapping[str, str]]
]
LimiterFactory = Callable[[Rate, Provider], SlidingWindowLimiter]


async def run_plain_chunk(
    runner: Runner, index: int, cells: Sequence[Cell], workers: int
) -> pl.DataFrame:
    return await run_chunk_rows(runner, cells, workers)


async def run_chunk_rows(runner: Runner, cells: Sequence[Cell], workers: int) -> pl.DataFrame:
    """One chunk of cells to the end; its manifest rows as a frame."""
    return rows_to_frame(await runner.run_cells(cells, workers=workers))


def local_limiter(rate: Rate, provider: Provider) -> SlidingWindowLimiter:
    """The create-rate window of this process alone."""
    return SlidingWindowLimiter(rate)


@dataclass(frozen=True)
class RunHooks:
    """What the layer above plugs into a run; the defaults run it without Prefect."""

    chunk_runner: ChunkRunner = run_plain_chunk
    credentials: CredentialSource | None = None   # values of env vars the environment lacks
    rate_limiter: LimiterFactory = local_limiter
    interrupt: Interrupt | None = None            # stop requests (Ctrl-C, SIGTERM)
    emulation: Emulation | None = None            # what serves the emulators under `emulate`
    # What is made from the manifest once it is written (`outputs.steps`): the gallery, ...
    after_write: Sequence[AfterWrite] = AFTER_WRITE


@dataclass(frozen=True)
class RunOptions:
    """One run's settings as the engine takes them; `nbp run` and the `nbp-run` flow make
    them of the declared run options (`flows.orchestration.run_options.engine_options`)."""

    spec: str
    target: str | None = None
    emulate: bool = False
    force: bool = False
    max_usd: float | None = None
    shard: Shard | None = None          # this run takes the cells with hash % n == i
    chunk_size: int = DEFAULT_CHUNK_SIZE
    emulator_latency_s: float | None = None
    retry_uncertain: bool = False       # create again cells whose create may have happened
    inputs: InputPolicy | None = None   # what the spec may read; None: InputPolicy.from_environ
    # This run of the job: shards started as one run pass the same id and share max_usd.
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    # This process on the target (claims, cancel hooks): the flow run id under Prefect.
    holder: str = field(default_factory=lambda: uuid.uuid4().hex)
    retry: RetryPolicy = DEFAULT_RETRY
    own_accounts: bool = False          # with `shard`: use only the channels this shard owns
    flow_run_id: str | None = None      # the Prefect flow run, for the run's record
    batch_wait_s: float = DEFAULT_WAIT_S  # how long to wait for batches before leaving them
    spec_source: str | None = None      # what the run's record names as the spec's source
    failures_ok: bool = False           # a run with failed cells still succeeds (exit 0)
    command: tuple[str, ...] | None = None  # the command line that started it (record)
    redo_rejected: bool = False         # make the rejected images again (new seed, same path)
    archive_stale: bool = False         # move the images of stale cells to history


EXIT_PENDING = 75  # sysexits' EX_TEMPFAIL: only tasks to collect are left, run again later
NOT_DONE = ("failed", "uncertain", "skipped", "cancelled", "not_started")  # a failed run's


@dataclass
class RunResult:
    job: str
    run_id: str
    target: str
    manifest_uri: str
    gallery_uri: str | None             # `written["gallery"]`: what `nbp run` prints
    counts: dict[str, int]
    spent_usd: float                    # this run's, as the target's ledger counts it
    stop_reason: str | None = None
    interrupted_by: int | None = None   # the signal that stopped the run, if one did
    # Why cells did not succeed: `nbp status`'s groups of this run's rows, most common first.
    failures: tuple[dict[str, Any], ...] = ()
    failures_ok: bool = False           # the user asked for success despite failed cells
    waiting: int = 0                    # pending cells whose batch runs (or expired)
    emulated: bool = False              # the local emulators served it: nothing was paid
    products: str | None = None         # completeness per product (with a dataset key)
    written: Mapping[str, str] = field(default_factory=dict)  # after-write step -> its URI
    target_spent_usd: float | None = None  # every run's on the target (None: unreadable)

    @property
    def outcome(self) -> str:
        """interrupted | failed (some cell failed, is uncertain, was not sent, or its task
        could not be collected) | pending (only tasks that take their time are left: a
        running Google batch, cells of an expired one that the next run creates anew, a cell
        another run holds) | succeeded."""
        if self.interrupted_by is not None:
            return "interrupted"
        if any(self.counts.get(status) for status in NOT_DONE):
            return "failed"
        if self.counts.get("pending", 0) > self.waiting:
            return "failed"  # a task we could not collect: polls or downloads kept failing
        if any(n for status, n in self.counts.items() if status != "succeeded"):
            return "pending"
        return "succeeded"

    @property
    def exit_code(self) -> int:
        """128 + the signal when a stop request ended the run (130 SIGINT, 143 SIGTERM); 0
        when every cell succeeded (or failures are accepted: `failures_ok`); 75 when only
        tasks to collect are left; 1 when cells failed."""
        outcome = self.outcome
        if outcome == "interrupted":
            assert self.interrupted_by is not None
            return 128 + self.interrupted_by
        if outcome == "pending":
            return EXIT_PENDING
        return 1 if outcome == "failed" and not self.failures_ok else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job, "run_id": self.run_id, "target": self.target,
            "manifest": self.manifest_uri, "gallery": self.gallery_uri,
            "counts": self.counts, "spent_usd": round(self.spent_usd, 4),
            "stop_reason": self.stop_reason, "exit_code": self.exit_code,
            "outcome": self.outcome, "interrupted_by": self.interrupted_by,
            "failures": list(self.failures), "waiting": self.waiting,
            "emulated": self.emulated, "products": self.products,
            "written": dict(self.written),
            "target_spent_usd": None if self.target_spent_usd is None
            else round(self.target_spent_usd, 4),
        }


async def run_job(
    options: RunOptions,
    *,
    hooks: RunHooks = RunHooks(),
    progress: Progress | None = None,
) -> RunResult:
    """Run a job to the end and write its manifest and gallery."""
    job = load_job(options.spec, policy=options.inputs)
    spec = job.spec
    if options.target:
        spec = replace(spec, output=replace(spec.output, target=options.target))
    if options.max_usd is not None:
        spec = replace(spec, max_usd=options.max_usd)
    owners = partial(shard_owners, spec) if options.own_accounts else None
    target_sink = Sink(spec.output.target, spec.output.storage_options)
    await asyncio.to_thread(claim_target_kind, target_sink, emulated=options.emulate)
    all_cells = await asyncio.to_thread(_effective_cells, target_sink, job.cells,
                                        redo_rejected=options.redo_rejected)
    states: dict[str, ReferenceState] = {}
    if not options.emulate:  # never pay for a cell whose reference does not answer
        states = await _checked_references(all_cells, spec)
        all_cells = Effective(all_cells.cells, all_cells.redos,
                              await asyncio.to_thread(_fingerprints, all_cells, states))
    cells = select_shard(all_cells, options.shard, owners)
    progress = progress or Progress()
    progress.total, progress.job, progress.emulated = len(cells), spec.name, options.emulate
    if hooks.interrupt is not None:  # the cells a stop leaves are "not started", not queued
        progress.stopped = progress.stopped or hooks.interrupt.requested
        hooks.interrupt.listeners.append(progress.stop)
    used = run_channels(spec, options)
    inputs = relative_inputs(((f.role, f.path, f.sha256) for f in job.inputs), spec.base_dir)
    record = RunRecord.start(run_id=options.run_id, job=spec.name,
                             spec_source=options.spec_source or spec.source,
                             spec_text=spec.text, flow_run_id=options.flow_run_id,
                             shard=str(options.shard) if options.shard else None,
                             spec_folder=spec.base_dir,
                             emulated=options.emulate, command=options.command or (),
                             inputs_sha256=inputs_digest(inputs),
                             dataset=spec.dataset.path
                             if options.inputs and options.inputs.dataset and spec.dataset
                             else "")
    async with open_providers(spec, options, hooks.credentials, used,
                              hooks.emulation) as (providers, emulated), \
            Heartbeat(Sink(spec.output.target, spec.output.storage_options),
                      options.holder) as heartbeat:
        sink = heartbeat.sink
        journal = Journal(sink)
        rules = {
            channel.provider: provider_rules(spec, channel.provider,
                                             providers[channel.key].capabilities,
                                             emulated=emulated)
            for channel in used
        }
        markups = markups_for(rules)
        budget = Budget(spec.max_usd, spec.max_total_usd, options.run_id,
                        Ledger(sink, heartbeat))
        await budget.start()  # the ledger reads, before anything is paid
        throttles = make_throttles(
            rules, providers, hooks.rate_limiter, used,
            poll_floors={name for name, limits in spec.limits.items()
                         if limits.poll_interval_s is not None})
        ctx = RunContext(
            spec=spec, run_id=options.run_id, sink=sink, journal=journal,
            providers=providers, rules=rules, throttles=throttles,
            budget=budget, progress=progress, heartbeat=heartbeat,
            router=make_router(spec, used, rules, throttles, progress, markups),
            markups=markups,
            journalled=await asyncio.to_thread(journal.cell_ids),
            target=await asyncio.to_thread(read_state, sink, spec.name, all_cells),
            force=options.force,
            retry_uncertain=options.retry_uncertain, retry=options.retry,
            models={c.provider: str(getattr(providers[c.key], "model", c.provider))
                    for c in used},
            interrupt=hooks.interrupt, emulated=emulated,
        )
        runner = Runner(ctx)
        if states:
            runner.references.use_check(states)
        with tempfile.TemporaryDirectory(prefix="nbp-manifest-") as folder:
            parts = ManifestParts(folder)
            try:
                await run_chunks(runner, cells, options.chunk_size, hooks.chunk_runner, parts)
            finally:
                await budget.close()  # this run's spend into the target's ledger
            spent, target_spent = budget.run_usd, await budget.target_usd()
            counts = await asyncio.to_thread(parts.counts)
            failures, products = await asyncio.to_thread(_failure_groups, parts)
            waiting = await asyncio.to_thread(_waiting_in_groups, parts)
            record = replace(record, channels=tuple(
                _channel_record(c, sorted(ctx.asked.get(c.key, ()))
                                or [ctx.models.get(c.provider, "")], rules[c.provider])
                for c in used))
            if inputs:
                await asyncio.to_thread(write_inputs, sink, options.run_id, inputs)
            manifest_uri, written = await write_outputs(
                heartbeat, parts, all_cells if options.shard else None, title=spec.name,
                record=record.ended(counts, spent),
                gallery=spec.output.gallery, state=ctx.target,
                archive_stale=options.archive_stale, steps=hooks.after_write,
            )
    if runner.busy:
        counts["busy"] = runner.busy  # another live run on the target holds these cells
    interrupt = hooks.interrupt
    stop = runner.stop.message if runner.stop else None
    signum = None
    if interrupt is not None and interrupt.requested:
        signum = interrupt.signals[0]
        not_started = max(0, progress.total - progress.ended)
        if not_started:
            counts["not_started"] = not_started  # the manifest keeps their earlier rows
        stop = f"stopped by {interrupt.signal_name}"
    return RunResult(
        spec.name, options.run_id, spec.output.target, str(manifest_uri),
        written.get("gallery"), counts, spent, stop, signum,
        failures, options.failures_ok, waiting, options.emulate, products, written,
        target_spent,
    )


async def _checked_references(cells: CellSource, spec: JobSpec) -> dict[str, ReferenceState]:
    """Every distinct http(s) reference of the job, asked once (`reference_check`)."""
    urls = await asyncio.to_thread(http_references, cells)
    if not urls:
        return {}
    states = await check_references(urls, spec.policy)
    failed = sum(1 for state in states.values() if not state.ok)
    if failed:
        log.warning("%d of %d reference URL(s) do not answer; their cells are not sent",
                    failed, len(states))
    return states


def _fingerprints(cells: CellSource, states: Mapping[str, ReferenceState]) -> dict[str, str]:
    """What each cell's reference URLs answered (ETag, Last-Modified), by the cell's id:
    folded into its id (`flows.engine.redo.fingerprinted`)."""
    if not states:
        return {}
    found = {}
    for cell in cells:
        if cell.references and (fp := references_fingerprint(cell.references, states)):
            found[cell.cell_id] = fp
    return found


def _effective_cells(sink: Sink, cells: CellSource, *, redo_rejected: bool) -> Effective:
    """The spec's cells as this target makes them (`flows.engine.redo`); with
    `redo_rejected`, every cell whose current image was rejected in review gets a redo
    first (one pass over the cells)."""
    redos = read_redos(sink)
    if redo_rejected:
        rejected = {cell_id for cell_id, decision in decisions(sink).items()
                    if decision.decision == "rejected"}
        if rejected:
            again = [c for c in cells if effective(c, redos).cell_id in rejected]
            made = record_redos(sink, again, redos)
            redos.update({redo.cell_id: redo for redo in made})
            log.info("redoing %d rejected image(s) with a new seed", len(made))
    return Effective(cells, redos)


def _channel_record(
    channel: Channel, models: Sequence[str], rule: ProviderRules
) -> dict[str, Any]:
    """A channel as the run's record names it: the model ids its creates asked for and the
    prices the run used (the plan's and the budget's), so a figure can be recomputed."""
    return {"key": channel.key, "provider": channel.provider, "account": channel.account,
            "model": ", ".join(models), "models": list(models),
            "prices_usd": dict(rule.prices_usd),
            "price_per_reference_usd": rule.price_per_reference_usd}


def claim_target_kind(sink: Sink, *, emulated: bool) -> None:
    """A target holds emulated or live cells, never both: placeholder images must never
    end up in a real catalog, nor a paid run look like an experiment. The first run (of
    this version) marks the target; a run of the other kind is refused before anything is
    sent. The mark is the target's, so it is read as input."""
    kind = "emulated" if emulated else "live"
    try:
        found = sink.get_json(TARGET_KIND)
    except ValueError:
        found = None
    if not isinstance(found, dict) or not isinstance(found.get("emulated"), bool):
        sink.put_json(TARGET_KIND, {"emulated": emulated})
        return
    if found["emulated"] == emulated:
        return
    held = "emulated" if found["emulated"] else "live"
    how = ("run with --emulate, or choose another --target for the live run"
           if found["emulated"] else "drop --emulate, or choose another --target to emulate")
    raise RunConfigurationError(
        f"{sink.target} holds {held} cells: a {kind} run may not write into it ({how})")


def _waiting_in_groups(parts: ManifestParts) -> int:
    """This run's pending cells whose task travels in a remote job (`task_group`: a batch,
    which takes hours), or whose batch expired unrun with no other channel to take them
    (the next run creates them anew): waiting, not a failure."""
    found = parts.scan().filter(
        (pl.col("status") == "pending")
        & (pl.col("task_group").is_not_null() | (pl.col("error_code") == EXPIRED_CODE))
    ).select(pl.len()).collect()
    return int(found.item())


def _failure_groups(parts: ManifestParts) -> tuple[tuple[dict[str, Any], ...], str | None]:
    """This run's reasons for cells that did not succeed, grouped as `nbp status` does, and
    its products' completeness (with a dataset key)."""
    summary = summarise(parts.scan())
    return (tuple(dataclasses.asdict(group) for group in summary.failures),
            summary.products_line())


async def run_chunks(
    runner: Runner, cells: Iterable[Cell], chunk_size: int, chunk_runner: ChunkRunner,
    parts: ManifestParts,
) -> None:
    """Run chunks concurrently, enough of them at once to keep every in-flight slot busy,
    and spill each chunk's rows to `parts` as it ends. Cells are taken from `cells` a chunk
    at a time, when a chunk may start: a run holds the cells of its running chunks only."""
    widest = _cells_at_once(runner)
    workers = min(widest, chunk_size)
    parallel = max(2, -(-widest // max(1, chunk_size)) + 1)
    gate = asyncio.Semaphore(parallel)

    running: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []

    async def one(index: int, chunk: Sequence[Cell]) -> None:
        try:
            frame = await chunk_runner(runner, index, chunk, workers)
            await asyncio.to_thread(parts.add, index, frame)
        finally:
            gate.release()

    def ended(task: asyncio.Task[None]) -> None:
        running.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            failures.append(error)

    chunks = enumerate(_chunked(cells, chunk_size))
    while True:
        await gate.acquire()  # before reading the next chunk's cells
        started = None if failures or runner.interrupted else next(chunks, None)
        if started is None:
            break
        task = asyncio.create_task(one(*started))
        running.add(task)
        task.add_done_callback(ended)
    await asyncio.gather(*running)
    if failures:
        raise failures[0]


async def write_outputs(
    heartbeat: Heartbeat, parts: ManifestParts, spec_order: Iterable[Cell] | None, *,
    title: str, record: RunRecord | None = None, gallery: GallerySpec | None = None,
    state: TargetState | None = None, archive_stale: bool = False,
    steps: Sequence[AfterWrite] = AFTER_WRITE,
) -> tuple[str, dict[str, str]]:
    """Merge this run's rows into `{target}/manifest.parquet`, then run the after-write
    `steps` on it (the gallery, ...: `outputs.steps`), under the target's manifest lease:
    runs and shards that end together each merge into what the one before them wrote, so no
    run's rows are lost. Returns the manifest's URI and what each step wrote. `spec_order`:
    sort the cells of the spec in its order (shards finish in any order). The merge streams
    through local files next to the parts (`outputs.parts.merge_parts`); a step reads only
    what it needs.
    `record`: the run's record (`outputs.runs`), merged with its other shards' likewise.
    `gallery`: the spec's `output.gallery` pivot (None: the default layout). `state`: the
    target as the run found it: this job's rows a new cell superseded, or that the spec no
    longer produces, are marked (`flows.engine.refresh`); `archive_stale`: the latter's
    images move to history."""
    sink = heartbeat.sink

    def write() -> tuple[str, dict[str, str]]:
        if record is not None:
            merge_record(sink, record)
        old = _local_manifest(sink, parts.folder)
        order = None if spec_order is None else cell_positions(spec_order)
        merged = os.path.join(parts.folder, "merged.parquet")
        merge_parts(old, parts, merged, order)
        typed = retype_variables(pl.scan_parquet(merged))
        if typed is not None:  # a variable whose values met other types (outputs.variables)
            retyped = os.path.join(parts.folder, "typed.parquet")
            typed.sink_parquet(retyped)
            merged = retyped
        if state is not None:  # superseded and stale rows of the job (flows.engine.refresh)
            found = patches(state, parts.scan(), sink, archive_stale=archive_stale)
            if not found.is_empty():
                patched = os.path.join(parts.folder, "patched.parquet")
                apply_patches(pl.scan_parquet(merged), found).sink_parquet(patched)
                merged = patched
        reviews = review_frame(sink)  # the review store is the one truth of that column
        if not reviews.is_empty():
            reviewed = os.path.join(parts.folder, "reviewed.parquet")
            with_reviews(pl.scan_parquet(merged), reviews).sink_parquet(reviewed)
            merged = reviewed
        with open(merged, "rb") as handle:
            blocks = iter(lambda: handle.read(COPY_BLOCK), b"")
            uri = sink.write_chunks(MANIFEST_NAME, blocks, overwrite=True)
        rows, columns = (gallery.rows, gallery.columns) if gallery else (None, None)
        written = Written(sink, pl.scan_parquet(merged), title, rows, columns,
                          run_id=record.run_id if record is not None else None)
        return uri, run_steps(steps, written)

    async with Lease(sink, MANIFEST_LOCK, heartbeat):
        return await asyncio.to_thread(write)


def _local_manifest(sink: Sink, folder: str) -> str | None:
    """A local copy of the target's manifest to scan (None when there is none)."""
    data = sink.read_bytes(MANIFEST_NAME)
    if data is None:
        return None
    path = os.path.join(folder, "old.parquet")
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def cell_positions(cells: Iterable[Cell], batch: int = 50_000) -> pl.DataFrame:
    """(cell_id, index) of every cell, built a batch at a time: the spec's order of a sharded
    run's manifest, ~30 bytes a cell instead of a dict of cells."""
    schema = {"cell_id": pl.String, "index": pl.Int64}
    frames = []
    pairs: list[tuple[str, int]] = []
    for cell in cells:
        pairs.append((cell.cell_id, cell.index))
        if len(pairs) >= batch:
            frames.append(pl.DataFrame(pairs, schema=schema, orient="row"))
            pairs = []
    frames.append(pl.DataFrame(pairs, schema=schema, orient="row"))
    return pl.concat(frames)


def _cells_at_once(runner: Runner) -> int:
    """How many cells may be in flight at once: every channel's slots when channels run
    side by side (spread, cheapest), else the first channel's (fallbacks take only what it
    cannot run)."""
    router = runner.ctx.router
    slots = [lane.throttle.in_flight.limit for lane in router.order]
    if not slots:
        return 1
    return sum(slots) if router.dynamic else slots[0]


def select_shard(
    cells: CellSource, shard: Shard | None,
    owners: Callable[[int], Callable[[Cell], Sequence[int]]] | None = None,
) -> CellSource:
    """Cells of shard "i/n" (by cell-id hash, so shards are stable across runs), filtered as
    they are read. `owners(n)`: which of n shards can run a cell (own_accounts), one of
    which takes it by the same hash."""
    if shard is None:
        return cells
    return ShardCells(cells, shard, owners(shard.count) if owners else None)


class ShardCells:
    """The cells of `shard`, filtered on every pass; `len()` costs one pass the first time."""

    def __init__(
        self, cells: CellSource, shard: Shard,
        owners: Callable[[Cell], Sequence[int]] | None = None,
    ) -> None:
        self.cells, self.shard, self.owners = cells, shard, owners
        self._len: int | None = None

    def __iter__(self) -> Iterator[Cell]:
        return (c for c in self.cells if self._owner(c) == self.shard.index)

    def _owner(self, cell: Cell) -> int:
        found = self.owners(cell) if self.owners else None
        spread = product_hash(cell)
        if not found:
            return spread % self.shard.count
        return found[spread % len(found)]

    def __len__(self) -> int:
        if self._len is None:
            self._len = sum(1 for _ in self)
        return self._len


def product_hash(cell: Cell) -> int:
    """What splits cells across shards: the cell's id, or its product's key when the
    dataset has one (a product is never split between shards)."""
    if not cell.key:
        return int(cell.cell_id, 16)
    text = json.dumps(sorted(cell.key.items()), default=str, ensure_ascii=False)
    return int(hashlib.sha256(text.encode()).hexdigest()[:16], 16)


def run_channels(spec: JobSpec, options: RunOptions) -> tuple[Channel, ...]:
    """The channels this process uses: all of the spec's, or with `own_accounts` the ones
    its shard owns (`flows.spec.channels.split_for_shard`)."""
    found = channels(spec)
    if not (options.own_accounts and options.shard):
        return found
    owned = split_for_shard(found, options.shard)
    if not owned:
        raise ValueError(f"shard {options.shard} owns no channel: this job has {len(found)} "
                         f"({', '.join(c.key for c in found)}); run at most that many shards "
                         "with own_accounts")
    return owned


def make_router(
    spec: JobSpec, used: Sequence[Channel], rules: Mapping[str, ProviderRules],
    throttles: Mapping[str, AccountThrottle], progress: Progress,
    markups: Mapping[str, CostMarkup],
) -> Router:
    """The run's router over its channels, priced and timed as the plan does; a lane reads
    a spend window for what its creates hold (`Runner.price`: the hold times `markups`)."""
    prices = {name: _cell_price(rule) for name, rule in rules.items()}
    held = {name: _cell_hold(rule, markups[name]) for name, rule in rules.items()}
    latency = {name: _planned_latency(rule) for name, rule in rules.items()}
    return Router(
        spec.routing, make_lanes(used, throttles, prices, latency, held),
        deadline_s=spec.deadline_s,
        routed=spec.routed,
        waiting=lambda: progress.not_started,
    )


def _cell_price(rule: ProviderRules) -> Callable[[Cell], float]:
    return lambda cell: rule.price(cell.resolution, len(cell.references))


def _planned_latency(rule: ProviderRules) -> float:
    """A task's time here until tasks are observed, as the plan has it: a batch's
    turnaround, else the usual latency, no less than an option's least (flex: 1 min)."""
    if rule.turnaround_s:
        return rule.turnaround_s
    least = rule.latency_range_s[0] if rule.latency_range_s else 0.0
    return max(DEFAULT_LATENCY_S, least)


def _cell_hold(rule: ProviderRules, markup: CostMarkup) -> Callable[[Cell], float]:
    return partial(cell_hold, rule, markup)


@contextlib.asynccontextmanager
async def open_providers(
    spec: JobSpec, options: RunOptions, credentials: CredentialSource | None = None,
    used: Sequence[Channel] | None = None, emulation: Emulation | None = None,
) -> AsyncIterator[tuple[dict[str, Provider], bool]]:
    """An adapter for every channel (`used`, else all of the spec's) by channel key, and
    whether they are emulated: under `emulate`, pointed at the emulators `emulation` serves
    (same clients, loopback HTTP; each extra account a key of its own there)."""
    used = channels(spec) if used is None else used
    serving = contextlib.AsyncExitStack()  # the emulators, while the adapters use them
    environ: Mapping[str, str] = os.environ
    if options.emulate:
        if emulation is None:
            raise RunConfigurationError("an emulated run needs the emulators: pass "
                                        "RunHooks(emulation=...) (nbp run --emulate does)")
        served = emulation(spec, used, options.emulator_latency_s)
        environ = {**os.environ, **await serving.enter_async_context(served)}
    elif credentials is not None:  # Secret blocks first: before anything is sent
        environ = {**os.environ, **await credentials(spec)}
    if missing := missing_credentials(used, environ):
        await serving.aclose()
        raise RunConfigurationError(missing_message(missing))
    providers: dict[str, Provider] = {}
    try:
        for channel in used:
            name = channel.provider
            cls = registry.get_class(name)
            own_url = registry.facts(name).base_url_variable in environ  # the user's choice
            base_url = None if options.emulate or own_url else spec.base_urls.get(name)
            adapter = cls(cls.settings_from_env(channel.environ(environ), base_url=base_url))
            rules = provider_rules(spec, name, adapter.capabilities, emulated=options.emulate)
            providers[channel.key] = channel_for(
                adapter, label=f"nbp-{spec.name}-{options.holder[:8]}",
                wait_s=options.batch_wait_s, poll_interval_s=rules.poll_interval_s)
        yield providers, options.emulate
    finally:
        for provider in providers.values():
            await provider.aclose()
        await serving.aclose()


def missing_message(missing: Mapping[str, Sequence[str]]) -> str:
    """Which variables to set, each named once, with the channels that need it."""
    named = "; ".join(f"{var} ({', '.join(names)})" for var, names in missing.items())
    return (f"missing API key(s): {named}. Set them in the environment, or name a Prefect "
            "Secret block for each under `credentials:` in the spec; nothing was sent")


def make_throttles(
    rules: Mapping[str, ProviderRules], providers: Mapping[str, Provider],
    rate_limiter: LimiterFactory = local_limiter, used: Sequence[Channel] | None = None,
    poll_floors: Collection[str] = (),
) -> dict[str, AccountThrottle]:
    """One throttle per channel (provider account), paced by its provider's rules, by
    channel key; `rate_limiter` builds the create-rate window (shared across processes
    through Prefect in orchestration). `used`: the channels (default: one per provider);
    `poll_floors`: the providers whose `poll_interval` the spec sets (no task of theirs is
    polled more often). A provider's spend window (`limits.<provider>.spend`) is one, shared
    by its channels."""
    throttles = {}
    windows = {name: SpendWindow(rule.spend) for name, rule in rules.items() if rule.spend}
    for channel in used if used is not None else [Channel(p, p) for p in providers]:
        rule, provider = rules[channel.provider], providers[channel.key]
        longest = AccountThrottle.max_poll_interval_s
        if isinstance(provider, BatchChannel):  # polls that see the end of --batch-wait
            longest = min(longest, provider.poll_gap_s)
        throttles[channel.key] = AccountThrottle(
            provider=channel.key,
            rate=rate_limiter(rule.rate, provider) if rule.rate else None,
            in_flight=InFlightLimit(rule.max_in_flight),
            poll_interval_s=rule.poll_interval_s,
            spend=windows.get(channel.provider),
            max_poll_interval_s=longest,
            poll_interval_is_floor=channel.provider in poll_floors,
        )
    return throttles


def _chunked(cells: Iterable[Cell], size: int) -> Iterator[list[Cell]]:
    """Chunks of about `size` cells that never split a product (cells of one dataset key
    come together: the dataset is the outer loop of the expansion), so a product's cells
    are run, and paid for, together (`Runner.run_cells`)."""
    chunk: list[Cell] = []
    for cell in cells:
        if len(chunk) >= max(1, size) and cell.key != chunk[-1].key:  # a product ended
            yield chunk
            chunk = []
        chunk.append(cell)
        if len(chunk) >= max(1, size) and not cell.key:  # no product: no need to look ahead
            yield chunk
            chunk = []
    if chunk:
        yield chunk
