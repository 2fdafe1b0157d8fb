"""Ctrl-C, SIGTERM and kill -9 through the real CLI (`nbp run` in a child process of its own
process group, the Prefect flow on the session's server) against the emulators. The evidence
is what the emulator received: creates per cell, before and after the rerun."""

from __future__ import annotations

import json
import os
import re
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

from nbp.providers.emulator.hub import EmulatorHub
from tests.conftest import ROOT

pytestmark = pytest.mark.prefect
LATENCY_S = 1.0


@pytest.fixture(scope="module")
def hub() -> Iterator[EmulatorHub]:
    with EmulatorHub.start(["kie"], latency_s=LATENCY_S) as running:
        yield running


@pytest.fixture
def kie(hub: EmulatorHub) -> EmulatorHub:
    hub.reset()
    hub["kie"].configure(latency_s=LATENCY_S, rate_limit=None, submit_5xx_prob=0.0,
                         poll_5xx_prob=0.0, fail_prob=0.0, max_concurrency=None)
    return hub


def prompts(count: int) -> list[str]:
    return [f"stop {i:03d}." for i in range(count)]


def spec_file(tmp_path: Path, names: list[str], **changes: Any) -> Path:
    spec: dict[str, Any] = {
        "version": 1, "name": "stop-and-go", "provider": "kie",
        "matrix": {"prompt": names},
        "output": {"target": str(tmp_path / "out")},
        "limits": {"kie": {"poll_interval": 0.2}},
    }
    spec.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def start(
    prefect_api_url: str, hub: EmulatorHub, *args: str, env_extra: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """`nbp` as a terminal would run it: the leader of its own process group."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, **hub.environ(), **(env_extra or {})}
    env.pop("PYTEST_CURRENT_TEST", None)
    return subprocess.Popen(
        [sys.executable, "-m", "nbp.flows.cli", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )


def wait_for(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def rows(tmp_path: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp_path / "out" / "manifest.parquet")


def creates_per_prompt(hub: EmulatorHub, names: list[str]) -> list[int]:
    """How many creates the emulator received for each prompt."""
    return [hub["kie"].creates_for(name) for name in names]


@pytest.mark.parametrize(("signum", "code"), [
    pytest.param(signal.SIGINT, 130, id="ctrl-c"),
    pytest.param(signal.SIGTERM, 143, id="sigterm"),
])
def test_a_stop_request_stops_creating_writes_the_manifest_and_a_rerun_pays_nothing_twice(
    prefect_api_url: str, kie: EmulatorHub, tmp_path: Path, signum: int, code: int
) -> None:
    names = prompts(24)
    spec = spec_file(tmp_path, names, budget={"max_total_usd": 100},
                     limits={"kie": {"poll_interval": 0.2, "rate": "6/1s"}})
    kie["kie"].configure(rate_limit=(6, 1.0))
    child = start(prefect_api_url, kie, "run", str(spec))
    wait_for(lambda: len(kie["kie"].creates) >= 6)
    os.killpg(child.pid, signum)  # the whole group, as a terminal does
    stopped = time.monotonic()
    _, err = child.communicate(timeout=60)
    assert child.returncode == code, err[-3000:]
    assert time.monotonic() - stopped < 20
    assert "Traceback" not in err, err[-3000:]
    assert "stopping" in err
    sent_before = len(kie["kie"].creates)
    assert sent_before < len(names)  # it stopped creating
    frame = rows(tmp_path)
    assert set(frame["status"]) <= {"succeeded", "pending", "skipped"}, frame["error_message"]
    assert frame.filter(pl.col("status") == "pending")["remote_task_id"].null_count() == 0
    # the ledger holds exactly what was created, nothing for cells that never left
    ledger = yaml.safe_load((tmp_path / "out" / ".nbp" / "budget.json").read_text())
    assert ledger["total_usd"] == pytest.approx(0.09 * sent_before)

    again = start(prefect_api_url, kie, "run", str(spec))
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err[-3000:]
    assert creates_per_prompt(kie, names) == [1] * len(names)
    assert set(rows(tmp_path)["status"]) == {"succeeded"}
    ledger = yaml.safe_load((tmp_path / "out" / ".nbp" / "budget.json").read_text())
    assert ledger["total_usd"] == pytest.approx(0.09 * len(names)) and ledger["open"] == {}


def test_ctrl_c_with_the_output_piped_to_a_reader_that_quits_too(
    prefect_api_url: str, kie: EmulatorHub, tmp_path: Path
) -> None:
    """`nbp run spec | tee run.log`, Ctrl-C: the terminal stops `tee` with nbp, and every
    later write to the pipe fails. The run still ends as a stop request ends it (manifest,
    exit 130) instead of dying of the broken pipe, and the rerun pays nothing twice."""
    names = prompts(24)
    spec = spec_file(tmp_path, names, limits={"kie": {"poll_interval": 0.2, "rate": "6/1s"}})
    kie["kie"].configure(rate_limit=(6, 1.0))
    child = start(prefect_api_url, kie, "run", str(spec))
    wait_for(lambda: len(kie["kie"].creates) >= 6)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    child.stderr.close()  # the reader is gone
    os.killpg(child.pid, signal.SIGINT)
    assert child.wait(timeout=60) == 130
    assert len(kie["kie"].creates) < len(names)
    assert set(rows(tmp_path)["status"]) <= {"succeeded", "pending", "skipped"}

    again = start(prefect_api_url, kie, "run", str(spec))
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err[-3000:]
    assert creates_per_prompt(kie, names) == [1] * len(names)


def test_a_kill_while_cells_wait_for_the_rate_window_leaves_them_unsent(
    prefect_api_url: str, kie: EmulatorHub, tmp_path: Path
) -> None:
    """Kie's window is full: the other cells wait for a rate token. Their intent is not yet
    journalled, so after kill -9 the rerun creates them, and marks uncertain only a create
    that was really on its way."""
    names = prompts(18)
    spec = spec_file(tmp_path, names, limits={"kie": {"poll_interval": 0.2, "rate": "6/2s"}})
    kie["kie"].configure(rate_limit=(6, 2.0))
    child = start(prefect_api_url, kie, "run", str(spec))
    wait_for(lambda: len(kie["kie"].creates) >= 6)
    time.sleep(0.3)  # the window is full: the rest wait for tokens
    os.killpg(child.pid, signal.SIGKILL)
    child.communicate(timeout=30)
    sent = len(kie["kie"].creates)

    again = start(prefect_api_url, kie, "run", str(spec))
    _, err = again.communicate(timeout=120)
    frame = rows(tmp_path)
    uncertain = frame.filter(pl.col("status") == "uncertain")
    assert uncertain.height <= 1, uncertain["error_message"].to_list()
    assert frame.height == len(names) and sent < len(names)
    for row in frame.iter_rows(named=True):
        created = kie["kie"].creates_for(row["prompt"])
        if row["status"] == "uncertain":  # its intent was journalled: maybe sent, never twice
            assert created <= 1
        else:
            assert (row["status"], created) == ("succeeded", 1), row["error_message"]
    assert again.returncode == (1 if uncertain.height else 0), err[-3000:]


SPENT = re.compile(r"^  spent +\$ *([0-9.]+)(?:  this run; \$([0-9.]+) in all on the target)?$",
                   re.MULTILINE)


def summary_spend(out: str) -> tuple[str, float, float | None]:
    """(the run id, "spent" and "in all") from the summary `nbp run` printed."""
    run_id = re.search(r"^job \S+  run (\S+)", out, re.MULTILINE)
    found = SPENT.search(out)
    assert run_id and found, out
    total = found.group(2)
    return run_id.group(1), float(found.group(1)), None if total is None else float(total)


@pytest.mark.parametrize("budget", [
    pytest.param({"max_total_usd": 100}, id="capped"),
    pytest.param({}, id="uncapped"),
])
def test_a_rerun_after_a_stop_reports_its_own_spend_as_the_ledger_counts_it(
    prefect_api_url: str, kie: EmulatorHub, tmp_path: Path, budget: dict[str, float]
) -> None:
    """Seen: Ctrl-C, then the rerun said it spent $6.67 where the ledger had $3.02 for it
    ($8.05 in all): it counted the tasks the stopped run had paid for and it collected. The
    summary, the Prefect summary table and the run's record say the ledger's figure."""
    from nbp.outputs.runs import read_records
    from nbp.outputs.sink import Sink
    from tests.flows.orchestration.test_flow import flow_run_and_artifacts

    names = prompts(24)
    spec = spec_file(tmp_path, names, limits={"kie": {"poll_interval": 0.2, "rate": "6/1s"}},
                     **({"budget": budget} if budget else {}))
    kie["kie"].configure(rate_limit=(6, 1.0))
    child = start(prefect_api_url, kie, "run", str(spec))
    wait_for(lambda: len(kie["kie"].creates) >= 9)
    os.killpg(child.pid, signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130, err[-3000:]
    assert set(rows(tmp_path)["status"]) >= {"pending"}  # tasks the rerun collects
    first, first_spent, _ = summary_spend(out)

    again = start(prefect_api_url, kie, "run", str(spec),
                  env_extra={"PREFECT_LOGGING_LEVEL": "INFO"})  # its plain progress lines
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err[-3000:]
    rerun, spent, total = summary_spend(out)
    ledger = json.loads((tmp_path / "out" / ".nbp" / "budget.json").read_text())
    assert first_spent == pytest.approx(ledger["runs"][first], abs=0.005)
    assert spent == pytest.approx(ledger["runs"][rerun], abs=0.005)
    assert spent == pytest.approx(0.09 * len(names) - ledger["runs"][first])
    assert total == pytest.approx(ledger["total_usd"], abs=0.005)
    assert ledger["total_usd"] == pytest.approx(0.09 * len(names))
    assert f"${spent:.2f} spent" in [line for line in err.splitlines() if " done: " in line][-1]
    _, artifacts = flow_run_and_artifacts(spec)
    (row,) = json.loads(artifacts["nbp-summary-stop-and-go"].data)
    assert row["spent_usd"] == pytest.approx(ledger["runs"][rerun])
    assert row["target_spent_usd"] == pytest.approx(ledger["total_usd"])
    records = {r.run_id: r for r in read_records(Sink(str(tmp_path / "out")))}
    assert records[rerun].spent_usd == pytest.approx(ledger["runs"][rerun])
    assert records[first].spent_usd == pytest.approx(ledger["runs"][first])

