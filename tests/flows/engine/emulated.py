"""What the engine tests against the emulators share: a hub whose variables the real clients
read, a run of a spec without Prefect, and the manifest it wrote."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from nbp.flows.engine.job import RunHooks, RunOptions, RunResult, run_job
from nbp.flows.orchestration.emulation import serve_emulators
from nbp.flows.spec.shard import Shard
from nbp.providers.emulator.gemini import GeminiEmulator
from nbp.providers.emulator.hub import EmulatorHub


@contextlib.contextmanager
def serving(providers: Sequence[str], latency_s: float) -> Iterator[EmulatorHub]:
    """The emulators of `providers`, with the environment pointing the clients at them
    (restored afterwards)."""
    with EmulatorHub.start(list(providers), latency_s=latency_s) as running:
        saved = dict(os.environ)
        os.environ.update(running.environ())
        try:
            yield running
        finally:
            os.environ.clear()
            os.environ.update(saved)


def run(spec: Path, *, shard: str | None = None, **options: Any) -> RunResult:
    """`spec` run to the end; `shard` as "i/n"."""
    found = Shard.parse(shard) if shard else None
    return asyncio.run(run_job(RunOptions(spec=str(spec), shard=found, **options),
                               hooks=RunHooks(emulation=serve_emulators)))


def manifest(tmp_path: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp_path / "out" / "manifest.parquet")


def ledger_spend(tmp_path: Path, result: RunResult) -> float:
    """What the target's ledger (`{tmp_path}/out/.nbp/budget.json`) says `result`'s run
    spent, once every hold is settled."""
    ledger = json.loads((tmp_path / "out" / ".nbp" / "budget.json").read_text())
    assert ledger["open"] == {}  # every hold settled
    return float(ledger["runs"][result.run_id])


def fresh_gemini(hub: EmulatorHub, **settings: Any) -> GeminiEmulator:
    """The hub's Google emulator, reset (every emulator's tasks and settings) and set up
    with `settings` (`GeminiEmulator.configure`)."""
    hub.reset()
    found = hub["gemini"]
    assert isinstance(found, GeminiEmulator)
    found.configure(**settings)
    return found
