"""Google's Batch API (`gemini-batch`) through the real CLI: `nbp run` in a child process,
the Prefect flow on a real server, real HTTP against the Gemini emulator. The evidence is the
batches the emulator received (`creates`: one record per batch job)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from nbp.providers.emulator.core import CONTENT_MARKER
from nbp.providers.emulator.hub import EmulatorHub
from tests.conftest import ROOT, run_nbp

pytestmark = pytest.mark.prefect
PROMPTS = ["a lemon on linen", "a lime on linen", "a quince on linen",
           f"a statue {CONTENT_MARKER}"]


@pytest.fixture(scope="module")
def hub() -> Iterator[EmulatorHub]:
    with EmulatorHub.start(["gemini"], latency_s=2.0) as running:
        yield running


@pytest.fixture
def gemini(hub: EmulatorHub) -> EmulatorHub:
    hub.reset()
    hub["gemini"].configure(latency_s=2.0, drop_after_create_prob=0.0, fail_prob=0.0)
    return hub


def spec_file(tmp_path: Path, **changes: Any) -> Path:
    spec: dict[str, Any] = {
        "version": 1, "name": "batch-cli", "provider": "gemini-batch",
        "matrix": {"prompt": PROMPTS}, "retries": 0,
        "output": {"target": str(tmp_path / "out")},
        "limits": {"gemini-batch": {"poll_interval": 0.2}},
        "budget": {"max_usd": 1.0},
        **changes,
    }
    path = tmp_path / "batch.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def env(prefect_api_url: str, hub: EmulatorHub) -> dict[str, str]:
    values = {**os.environ, "PREFECT_API_URL": prefect_api_url, **hub.environ()}
    values.pop("PYTEST_CURRENT_TEST", None)
    return values


def manifest(tmp_path: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp_path / "out" / "manifest.parquet")


def check_collected(tmp_path: Path) -> None:
    """Three images at half price, the refused line failed and free."""
    frame = manifest(tmp_path)
    assert dict(frame.group_by("status").len().iter_rows()) == {"succeeded": 3, "failed": 1}
    done = frame.filter(pl.col("status") == "succeeded")
    assert all(0.06 < cost < 0.075 for cost in done["cost_usd"])  # 0.067, not 0.134
    refused = frame.filter(pl.col("status") == "failed").row(0, named=True)
    assert refused["cost_usd"] == 0.0 and refused["error_code"] is not None


def flow_run_state(spec: Path) -> tuple[str, str]:
    """The newest flow run of `spec`: its state's type and name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    async def newest() -> tuple[str, str]:
        async with get_client() as client:
            runs = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=50)
        run = next(r for r in runs if r.parameters.get("spec") == str(spec))
        assert run.state is not None
        return run.state.type.value, run.state.name

    return asyncio.run(newest())


def test_a_batch_left_pending_is_collected_by_the_next_run_without_a_new_batch(
    prefect_api_url: str, gemini: EmulatorHub, tmp_path: Path
) -> None:
    spec = spec_file(tmp_path)
    first = run_nbp("run", str(spec), "--batch-wait", "0.5", env=env(prefect_api_url, gemini))
    assert first.returncode == 75, first.stderr[-2000:]  # only a running batch is left
    assert set(manifest(tmp_path)["status"]) == {"pending"}
    assert flow_run_state(spec) == ("COMPLETED", "4 pending")  # not a failure for Prefect
    status = run_nbp("status", str(tmp_path / "out"))
    assert "pending batches (1" in status.stdout and "4 cells" in status.stdout, status.stdout
    time.sleep(2.0)  # the batch finishes at the provider meanwhile
    second = run_nbp("run", str(spec), env=env(prefect_api_url, gemini))
    assert second.returncode == 1, second.stderr[-2000:]  # the refused line
    assert len(gemini["gemini"].creates) == 1
    check_collected(tmp_path)


def test_a_kill_while_the_batch_is_pending_then_a_rerun_creates_no_batch(
    prefect_api_url: str, gemini: EmulatorHub, tmp_path: Path
) -> None:
    gemini["gemini"].configure(latency_s=3.0)
    spec = spec_file(tmp_path)
    child = subprocess.Popen([sys.executable, "-m", "nbp.flows.cli", "run", str(spec)], cwd=ROOT,
                             env=env(prefect_api_url, gemini), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    journal = tmp_path / "out" / ".nbp" / "cells"

    def created() -> int:
        return sum('"state":"created"' in p.read_text() for p in journal.glob("*.json"))

    deadline = time.monotonic() + 120
    while created() < len(PROMPTS) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert len(gemini["gemini"].creates) == 1
    done = run_nbp("run", str(spec), env=env(prefect_api_url, gemini))
    assert done.returncode == 1, done.stderr[-2000:]
    assert len(gemini["gemini"].creates) == 1  # the same batch, collected
    check_collected(tmp_path)


def test_a_lost_create_answer_is_found_by_listing(
    prefect_api_url: str, gemini: EmulatorHub, tmp_path: Path
) -> None:
    gemini["gemini"].configure(drop_after_create_prob=1.0, latency_s=0.5)
    done = run_nbp("run", str(spec_file(tmp_path)), env=env(prefect_api_url, gemini))
    assert done.returncode == 1, done.stderr[-2000:]
    assert len(gemini["gemini"].creates) == 1  # created once, found again by its name
    check_collected(tmp_path)
    spent = next(line for line in done.stdout.splitlines() if line.strip().startswith("spent"))
    assert float(spent.split("$")[1]) == pytest.approx(0.20, abs=0.02)  # the budget: half price
