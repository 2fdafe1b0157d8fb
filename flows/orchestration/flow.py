"""The Prefect flow `nbp-run`: the same flow for `nbp run` and `prefect deployment run`.

Prefect sees one task run per chunk of cells (never one per image); inside a chunk cells
run concurrently on asyncio under the shared throttles. The flow run is named after
the job and run id (`cup-axes-ff93f32c`); it reports progress as an artifact while it runs
(`nbp-progress-<job>`: the final count when it ends), and at the end a one-row table of the
run (`nbp-summary-<job>`) and a markdown artifact with its outcome, counts, spend and where
the gallery and manifest are (`nbp-result-<job>`). If Prefect cancels the run or it
crashes, the hooks ask the providers to cancel the remote tasks the journal says are still
running, where the API can (a task counts as cancelled only when the provider confirms).
A stop request to `nbp run` (Ctrl-C, SIGTERM) is not a cancel: creates stop, tasks stay
running for the next run to collect, and the flow run ends `Cancelled` with the manifest
and gallery written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl
from prefect import flow, get_client, get_run_logger, task
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import FlowRun, State
from prefect.flows import Flow
from prefect.runtime import flow_run as runtime_flow_run
from prefect.settings import get_current_settings
from prefect.states import Cancelled, Completed, Failed

from nbp.flows.engine.interrupt import Interrupt
from nbp.flows.engine.job import (
    DEFAULT_CHUNK_SIZE,
    LimiterFactory,
    RunHooks,
    RunResult,
    local_limiter,
    run_chunk_rows,
    run_job,
)
from nbp.flows.engine.progress import Beat, Progress
from nbp.flows.engine.runner import Runner
from nbp.flows.orchestration.emulation import serve_emulators
from nbp.flows.orchestration.run_options import OPTIONS, engine_options
from nbp.flows.orchestration.secrets import secret_blocks
from nbp.flows.orchestration.shared_limits import shared_limiter
from nbp.flows.spec.model import Cell

FLOW_NAME = "nbp-run"
ARTIFACT_INTERVAL_S = 5.0  # the progress artifact's updates (one API call each)
TICK_S = 0.5               # how often the reporter looks at the progress


@task(name="nbp-chunk", task_run_name="chunk-{index}", cache_policy=NO_CACHE, retries=0)
async def run_chunk(
    runner: Runner, index: int, cells: Sequence[Cell], workers: int
) -> pl.DataFrame:
    """One chunk of cells; retries happen per cell inside, never by re-running a chunk. The
    rows come back as one frame: Prefect tracks each item of a returned list in the flow
    run's context for good (a dict entry, a tuple and a weakref, ~200 bytes a cell:
    `link_state_to_task_run_result` in prefect/utilities/engine), one frame is one entry."""
    return await run_chunk_rows(runner, cells, workers)


async def _chunk_as_task(
    runner: Runner, index: int, cells: Sequence[Cell], workers: int
) -> pl.DataFrame:
    frame: pl.DataFrame = await run_chunk(runner, index, cells, workers)
    return frame


async def cancel_remote_tasks(
    flow: Flow[Any, Any], flow_run: FlowRun, state: State[Any]
) -> None:
    """on_cancellation / on_crashed: ask the providers to cancel what the journal says this
    flow run left running (an async hook: Prefect awaits it in the flow's own loop)."""
    from nbp.flows.orchestration.cancel import cancel_submitted

    parameters = flow_run.parameters or {}
    with contextlib.suppress(Exception):
        await cancel_submitted(parameters["spec"], parameters.get("target"),
                               holder=str(flow_run.id))


def final_state(result: RunResult) -> State[Any] | dict[str, Any]:
    """The flow run's end, so Prefect automations see what the exit code says: Cancelled
    (a stop request), Failed (cells failed, uncertain or not sent; unless the run accepts
    failures), Completed named "N pending" (only tasks to collect are left), Completed (the
    summary itself). Each carries the run's summary."""
    counts, outcome, data = result.counts, result.outcome, result.to_json()
    if outcome == "interrupted":
        left = "; tasks left running for the next run" if counts.get("pending") else ""
        return Cancelled(message=f"{result.stop_reason}{left}", data=data)
    if outcome == "failed" and not result.failures_ok:
        return Failed(message=failure_summary(result), data=data)
    if outcome == "pending":
        pending = counts.get("pending", 0) + counts.get("busy", 0)
        return Completed(name=f"{pending} pending", data=data,
                         message=f"{pending} cell(s) wait for a running Google batch (or "
                                 "another run on the target); the next run collects them")
    return data


def failure_summary(result: RunResult) -> str:
    """How many cells did not succeed, and the commonest reason."""
    bad = sum(n for status, n in result.counts.items() if status != "succeeded")
    top = result.failures[0] if result.failures else None
    why = ""
    if top:
        reason = ": ".join(str(x) for x in (top["error_code"], top["error_message"]) if x)
        why = f"; most often ({top['count']}x {top['status']}): {reason[:300]}"
    return f"{bad} of {sum(result.counts.values())} cell(s) did not succeed{why}"


def slug(text: str) -> str:
    """`text` as Prefect takes it in an artifact key: lowercase letters, digits and dashes
    ("Cup_Axes.v2" -> "cup-axes-v2")."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "job"


def artifact_key(kind: str, job: str) -> str:
    """The key of one of a job's artifacts (`nbp-progress-cup-axes`): each job its own
    history in the UI's Artifacts page, each run a new version of it."""
    return f"nbp-{kind}-{slug(job)}"


def run_name(job: str, run_id: str, shard: str | None = None) -> str:
    """A flow run's name: the job and the first 8 characters of the run id
    (`cup-axes-ff93f32c`), and the shard when it is one (`...-shard-2-4`)."""
    name = f"{slug(job)}-{slug(run_id[:8])}"
    return f"{name}-shard-{slug(shard)}" if shard else name


def _spec_stem(spec: str) -> str:
    """The spec's file name without its extension: the job's name until its spec is read
    (a deployment's run is renamed when it differs)."""
    return re.split(r"[/\\]", spec.rstrip("/"))[-1].rpartition(".")[0] or spec


def build_flow(
    listeners: Iterable[Callable[[Progress], None]] = (),
    interrupt: Interrupt | None = None,
    job: str | None = None,
) -> Flow[..., Coroutine[Any, Any, dict[str, Any]]]:
    """The `nbp-run` flow; `listeners` see every progress update (the CLI's live line).
    `interrupt`: SIGINT and SIGTERM become its stop requests while the flow runs (`nbp run`
    in a terminal); without it Prefect's own signal handling applies (deployments). `job`:
    the job's name when the caller knows it (the flow run gets its name from the start);
    else the spec's file name stands in until the spec is read. The flow's result is the
    run's summary (`RunResult.to_json`), carried by its final state (`final_state`)."""
    watchers = tuple(listeners)

    def name_of_run() -> str:
        parameters = runtime_flow_run.parameters
        run_id = parameters.get("run_id") or str(runtime_flow_run.id)[:12]
        return run_name(job or _spec_stem(str(parameters.get("spec", ""))), run_id,
                        parameters.get("shard"))

    async def cancel_unless_stopped(
        flow: Flow[Any, Any], flow_run: FlowRun, state: State[Any]
    ) -> None:
        if interrupt is None or not interrupt.requested:  # a stop leaves tasks running
            await cancel_remote_tasks(flow, flow_run, state)

    @flow(
        name=FLOW_NAME,
        flow_run_name=name_of_run,
        on_cancellation=[cancel_unless_stopped],
        on_crashed=[cancel_unless_stopped],
        persist_result=False,
        # A path, not the default: Prefect would ask the server for its default result
        # storage twice as the run starts (~0.1 s before the first create) for results it
        # never writes (persist_result=False).
        result_storage=Path(get_current_settings().results.local_storage_path),
        log_prints=False,
    )
    async def nbp_run(
        spec: str,
        target: str | None = None,
        emulate: bool = False,
        force: bool = False,
        max_usd: float | None = None,
        shard: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        emulator_latency_s: float | None = None,
        shared_limits: bool = False,
        retry_uncertain: bool = False,
        run_id: str | None = None,
        allow_paths: list[str] | None = None,
        max_cells: int | None = None,
        patience_s: float | None = None,
        own_accounts: bool = False,
        batch_wait_s: float | None = None,
        spec_source: str | None = None,
        succeed_with_failures: bool = False,
        allow_private_hosts: bool = False,
        dataset: str | None = None,
        redo_rejected: bool = False,
        archive_stale: bool = False,
        command: list[str] | None = None,
    ) -> dict[str, Any]:
        """Run the job spec `spec` (a path or fsspec URL); see `nbp run --help`. Shards
        started as one run pass the same `run_id` (they share `budget.max_usd`); with
        `own_accounts` each shard uses only the channels it owns; `spec_source` names the
        spec in the run's record when `spec` is a copy (`nbp run --from`); `command`: the
        command line that started it (`nbp run` passes its own). The flow run
        ends Failed when cells failed, were uncertain or not sent (unless
        `succeed_with_failures`), Completed named "N pending" when only tasks to collect are
        left (a running Google batch), Cancelled when a stop request ended it."""
        # The parameters as called: read before any other local name is bound.
        given = {name: value for name, value in locals().items() if name in OPTIONS}
        logger = get_run_logger()
        this_run = str(runtime_flow_run.id)
        options = engine_options(given, holder=this_run, flow_run_id=this_run)
        limiter: LimiterFactory = shared_limiter if shared_limits else local_limiter
        hooks = RunHooks(chunk_runner=_chunk_as_task, credentials=secret_blocks,
                         rate_limiter=limiter, interrupt=interrupt, emulation=serve_emulators)
        progress = Progress(listeners=list(watchers))
        for watcher in watchers:  # the live line from the start (and what a stop waits for)
            watcher(progress)
        report = Report(progress, logger, options.run_id, shard)
        reporter = asyncio.create_task(report.follow())
        try:
            with _stop_requests(interrupt):
                result = await run_job(options, hooks=hooks, progress=progress)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        if interrupt is None or not interrupt.hard:  # asked twice: no more waiting
            await report.final(result)
            logger.info("%s: %s", result.job, progress.line())
        return final_state(result)  # type: ignore[return-value]

    return nbp_run


# The deployments' entrypoint (prefect.yaml: flows/orchestration/flow.py:nbp_run).
nbp_run = build_flow()


STOP_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _stop_requests(interrupt: Interrupt | None) -> Iterator[None]:
    """SIGINT and SIGTERM become `interrupt`'s stop requests while the block runs (in place
    of KeyboardInterrupt and Prefect's SIGTERM handling)."""
    if interrupt is None:
        yield
        return
    loop = asyncio.get_running_loop()
    installed: dict[int, Any] = {}
    for signum in STOP_SIGNALS:
        with contextlib.suppress(ValueError, RuntimeError):  # not the main thread
            previous = signal.getsignal(signum)
            loop.add_signal_handler(signum, interrupt.request, signum)
            installed[signum] = previous
    try:
        yield
    finally:
        for signum, previous in installed.items():
            loop.remove_signal_handler(signum)
            signal.signal(signum, previous)  # Prefect's SIGTERM bridge, Python's SIGINT


class Report:
    """What Prefect's UI shows of a run while it works and when it ends: the progress
    artifact (created once the job is known, updated every `ARTIFACT_INTERVAL_S`, final at
    the end), a plain progress line in the flow run's log on a `Beat` (every 10 s or 10 %),
    the flow run's name (renamed once if the spec's file name stood in for the job), and
    the summary and result artifacts. Every call to Prefect is best effort: the UI never
    stops a run."""

    def __init__(self, progress: Progress, logger: logging.LoggerAdapter[Any] | Any,
                 run_id: str, shard: str | None) -> None:
        self.progress, self.logger = progress, logger
        self.run_id, self.shard = run_id, shard
        self.artifact: Any = None  # the progress artifact's id, once created
        self.updated = 0.0
        self.named = False

    async def follow(self) -> None:
        beat = Beat()
        while True:
            await asyncio.sleep(TICK_S)
            progress = self.progress
            if not progress.job:
                continue  # the spec is being read
            if not self.named:
                self.named = True
                await self._name(progress.job)
            if time.monotonic() - self.updated >= ARTIFACT_INTERVAL_S:
                await self._show(progress.line())
            if beat.due(progress):
                self.logger.info(progress.line())

    async def final(self, result: RunResult) -> None:
        """The progress artifact at the run's end (100 % when every cell is done), the
        summary table and the result."""
        outcome = result.outcome if result.interrupted_by is None else (
            result.stop_reason or "interrupted")
        self.progress.job = self.progress.job or result.job
        await self._show(f"{outcome}: {self.progress.line()}")
        with contextlib.suppress(Exception):
            await acreate_table_artifact(summary_table(result),
                                         key=artifact_key("summary", result.job),
                                         description=f"run {result.run_id} of {result.job}")
            await acreate_markdown_artifact(result_markdown(result),
                                            key=artifact_key("result", result.job),
                                            description=f"run {result.run_id} of {result.job}")

    async def _show(self, description: str) -> None:
        progress = self.progress
        percent = 100.0 * progress.done / progress.total if progress.total else 100.0
        self.updated = time.monotonic()
        with contextlib.suppress(Exception):
            if self.artifact is None:
                self.artifact = await acreate_progress_artifact(
                    percent, key=artifact_key("progress", progress.job),
                    description=description)
            else:
                await aupdate_progress_artifact(self.artifact, percent, description)

    async def _name(self, job: str) -> None:
        wanted = run_name(job, self.run_id, self.shard)
        if runtime_flow_run.name == wanted:
            return
        with contextlib.suppress(Exception):
            async with get_client() as client:
                await client.set_flow_run_name(runtime_flow_run.id, wanted)


# The summary table's columns: counts always shown, then any other status the run had.
SUMMARY_COUNTS = ("succeeded", "failed", "pending", "skipped")


def summary_table(result: RunResult) -> list[dict[str, Any]]:
    """One row: the run, its outcome and its counts by status, what it cost and what every
    run on the target did (a run's table is one version of the job's `nbp-summary-<job>`
    key: the versions are its history)."""
    counts = result.counts
    row: dict[str, Any] = {"run_id": result.run_id, "outcome": result.outcome,
                           "cells": sum(counts.values())}
    row.update({status: counts.get(status, 0) for status in SUMMARY_COUNTS})
    row.update({status: n for status, n in counts.items() if status not in row})
    money = "would_cost_usd" if result.emulated else "spent_usd"
    row[money] = round(result.spent_usd, 4)
    if result.target_spent_usd is not None:  # every run's on the target
        row[f"target_{money}"] = round(result.target_spent_usd, 4)
    return [row]


def result_markdown(result: RunResult) -> str:
    """The run's outcome as markdown that reads in Prefect's UI: counts, spend, where the
    gallery and manifest are (a link only for an http(s) URL: a local or bucket path means
    nothing to a browser, so it is shown as code to copy), why cells did not succeed."""
    counts = ", ".join(f"{n} {status}" for status, n in result.counts.items() if n) or "none"
    spent = f"${result.spent_usd:.2f}"
    total = result.target_spent_usd
    if total is not None and total - result.spent_usd >= 0.005:
        spent += f" this run, ${total:.2f} in all on the target"
    if result.emulated:
        spent = f"would cost {spent} (emulated: placeholder images, nothing was paid)"
    lines = [
        f"### {result.job} · run {code(result.run_id)} · {result.outcome}",
        "",
        f"- **cells**: {counts} (of {sum(result.counts.values())})",
        f"- **spent**: {spent}",
    ]
    if result.gallery_uri:
        lines.append(f"- **gallery**: {location(result.gallery_uri)}")
    lines.append(f"- **manifest**: {location(result.manifest_uri)}")
    if result.products:
        lines.append(f"- **products**: {result.products}")
    if result.stop_reason:
        lines.append(f"- **stopped early**: {result.stop_reason}")
    pending = result.counts.get("pending", 0)
    if pending:
        lines.append(f"- **pending**: {pending} cell(s) keep their task for the next run, "
                     "which collects it (nothing is paid twice)")
    if result.failures:
        lines += ["", "| cells | status | why |", "|---:|---|---|"]
        for group in result.failures[:5]:
            why = ": ".join(str(x) for x in (group.get("error_code"), group.get("error_message"))
                            if x) or "(no reason recorded)"
            lines.append(f"| {group['count']} | {group['status']} | {_cell(why[:300])} |")
    return "\n".join(lines)


def location(uri: str) -> str:
    """A link for an http(s) URL, else the path as code."""
    if re.match(r"https?://", uri):
        return f"[{_cell(uri)}](<{uri}>)"
    return code(uri)


def code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"


def _cell(text: str) -> str:
    """Text for a markdown table cell or link text: no pipes, brackets or line breaks."""
    return re.sub(r"[\r\n]+", " ", text).replace("|", "\\|").replace("[", "\\[").replace(
        "]", "\\]")
