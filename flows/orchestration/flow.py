"""The Prefect flow `nbp-run`: the same flow for `nbp run` and `prefect deployment run`.

Prefect sees one task run per chunk of cells (never one per image); inside a chunk cells
run concurrently on asyncio under the shared throttles. The flow reports progress as an
artifact while it runs, and a summary table and a markdown artifact linking the gallery and
manifest at the end. If Prefect cancels the run or it crashes, the hooks ask the providers to
cancel the remote tasks the journal says are still running, where the API can (a task counts
as cancelled only when the provider confirms). A stop request to `nbp run` (Ctrl-C, SIGTERM)
is not a cancel: creates stop, tasks stay running for the next run to collect, and the flow
run ends `Cancelled` with the manifest and gallery written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from typing import Any

import polars as pl
from prefect import flow, get_run_logger, task
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
from nbp.flows.engine.progress import Progress
from nbp.flows.engine.runner import Runner
from nbp.flows.orchestration.emulation import serve_emulators
from nbp.flows.orchestration.run_options import OPTIONS, engine_options
from nbp.flows.orchestration.secrets import secret_blocks
from nbp.flows.orchestration.shared_limits import shared_limiter
from nbp.flows.spec.model import Cell

FLOW_NAME = "nbp-run"
ARTIFACT_INTERVAL_S = 5.0


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


def build_flow(
    listeners: Iterable[Callable[[Progress], None]] = (),
    interrupt: Interrupt | None = None,
) -> Flow[..., Coroutine[Any, Any, dict[str, Any]]]:
    """The `nbp-run` flow; `listeners` see every progress update (the CLI's live line).
    `interrupt`: SIGINT and SIGTERM become its stop requests while the flow runs (`nbp run`
    in a terminal); without it Prefect's own signal handling applies (deployments). The
    flow's result is the run's summary (`RunResult.to_json`), carried by its final state
    (`final_state`)."""
    watchers = tuple(listeners)

    async def cancel_unless_stopped(
        flow: Flow[Any, Any], flow_run: FlowRun, state: State[Any]
    ) -> None:
        if interrupt is None or not interrupt.requested:  # a stop leaves tasks running
            await cancel_remote_tasks(flow, flow_run, state)

    @flow(
        name=FLOW_NAME,
        on_cancellation=[cancel_unless_stopped],
        on_crashed=[cancel_unless_stopped],
        persist_result=False,
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
        reporter = asyncio.create_task(_report_progress(progress, logger))
        try:
            with _stop_requests(interrupt):
                result = await run_job(options, hooks=hooks, progress=progress)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        if interrupt is None or not interrupt.hard:  # asked twice: no more waiting
            await _final_artifacts(result)
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


async def _report_progress(progress: Progress, logger: logging.LoggerAdapter[Any] | Any) -> None:
    """A progress artifact updated every few seconds (cheap: one API call each)."""
    artifact_id = None
    while True:
        await asyncio.sleep(ARTIFACT_INTERVAL_S)
        percent = 100.0 * progress.done / max(1, progress.total)
        with contextlib.suppress(Exception):
            if artifact_id is None:
                artifact_id = await acreate_progress_artifact(
                    percent, key="nbp-progress", description=progress.line()
                )
            else:
                await aupdate_progress_artifact(artifact_id, percent, progress.line())
        logger.info(progress.line())


async def _final_artifacts(result: RunResult) -> None:
    table = [{"status": status, "cells": count} for status, count in result.counts.items()]
    table.append({"status": "spent_usd", "cells": round(result.spent_usd, 4)})
    with contextlib.suppress(Exception):
        await acreate_table_artifact(table, key="nbp-summary", description=result.job)
        lines = [
            f"# nbp run `{result.run_id}` of `{result.job}`",
            "",
            f"- gallery: [{result.gallery_uri}]({result.gallery_uri})",
            f"- manifest: [{result.manifest_uri}]({result.manifest_uri})",
            f"- cells: {result.counts}",
            f"- spent: ${result.spent_usd:.2f}",
        ]
        if result.stop_reason:
            lines.append(f"- stopped early: {result.stop_reason}")
        await acreate_markdown_artifact("\n".join(lines), key="nbp-result")
