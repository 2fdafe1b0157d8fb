"""Never pay twice, through the real CLI (`nbp run` in a child process, the Prefect flow on a
real server) and real HTTP against the emulators, with faults injected into them. In every
test the evidence is what the emulator received: creates per cell, never the exit code alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from nbp.providers.emulator.hub import EmulatorHub
from tests.conftest import ROOT, run_nbp

pytestmark = pytest.mark.prefect
PROVIDERS = ["kie", "hiapi", "runware"]
LATENCY_S = 0.3


@pytest.fixture(scope="module")
def hub() -> Iterator[EmulatorHub]:
    with EmulatorHub.start(PROVIDERS, latency_s=LATENCY_S) as running:
        yield running


@pytest.fixture
def emulators(hub: EmulatorHub) -> EmulatorHub:
    hub.reset()
    for emulator in hub.emulators.values():
        emulator.configure(
            latency_s=LATENCY_S, rate_limit=None, submit_5xx_prob=0.0, poll_5xx_prob=0.0,
            drop_after_create_prob=0.0, fail_prob=0.0, truncate_download_prob=0.0,
            max_concurrency=None,
        )
    return hub


def spec_file(tmp_path: Path, prompts: list[str], name: str = "pay-once",
              **changes: Any) -> Path:
    spec: dict[str, Any] = {
        "version": 1, "name": name, "provider": "kie",
        "matrix": {"prompt": prompts, "aspect_ratio": ["1:1"]},
        "output": {"target": str(tmp_path / "out")},
        "limits": {p: {"poll_interval": 0.1} for p in PROVIDERS},
    }
    spec.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def nbp(prefect_api_url: str, hub: EmulatorHub, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, **hub.environ()}
    env.pop("PYTEST_CURRENT_TEST", None)
    return run_nbp(*args, env=env)


def start_nbp(prefect_api_url: str, hub: EmulatorHub, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, **hub.environ()}
    env.pop("PYTEST_CURRENT_TEST", None)
    return subprocess.Popen([sys.executable, "-m", "nbp.flows.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def manifest(tmp_path: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp_path / "out" / "manifest.parquet")


def statuses(tmp_path: Path) -> dict[str, int]:
    return dict(manifest(tmp_path).group_by("status").len().iter_rows())


def once_each(hub: EmulatorHub, provider: str, prompts: list[str]) -> bool:
    return all(hub[provider].creates_for(p) == 1 for p in prompts)


def test_a_poll_outage_is_ridden_out(
    prefect_api_url: str, emulators: EmulatorHub, tmp_path: Path
) -> None:
    prompts = [f"outage {i}" for i in range(4)]
    spec = spec_file(tmp_path, prompts)

    def outage() -> None:  # polls fail for 3 s once the tasks exist
        deadline = time.monotonic() + 60
        while len(emulators["kie"].creates) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        emulators["kie"].configure(poll_5xx_prob=1.0)
        time.sleep(3.0)
        emulators["kie"].configure(poll_5xx_prob=0.0)

    fault = threading.Thread(target=outage)
    fault.start()
    done = nbp(prefect_api_url, emulators, "run", str(spec))
    fault.join()
    assert done.returncode == 0, done.stderr[-2000:]
    assert once_each(emulators, "kie", prompts)


def test_a_task_that_cannot_be_collected_stays_pending_and_the_next_run_collects_it(
    prefect_api_url: str, emulators: EmulatorHub, tmp_path: Path
) -> None:
    """Polls fail longer than --patience: the cells end pending with their task ids (paid,
    counted in the spend), and the next run collects those tasks without creating any."""
    prompts = [f"pending {i}" for i in range(3)]
    spec = spec_file(tmp_path, prompts)
    emulators["kie"].configure(poll_5xx_prob=1.0)
    first = nbp(prefect_api_url, emulators, "run", str(spec), "--patience", "1.5")
    assert first.returncode == 1
    frame = manifest(tmp_path)
    assert set(frame["status"]) == {"pending"}
    assert frame["remote_task_id"].null_count() == 0
    assert frame["cost_usd"].sum() == pytest.approx(3 * 0.09)
    again = nbp(prefect_api_url, emulators, "run", str(spec), "--patience", "1.5")
    assert again.returncode == 1 and statuses(tmp_path) == {"pending": 3}
    assert manifest(tmp_path)["cost_usd"].sum() == pytest.approx(3 * 0.09)  # still counted
    status = json.loads(nbp(prefect_api_url, emulators, "status", str(tmp_path / "out"),
                            "--json").stdout)
    assert status["spend_usd"] == pytest.approx(3 * 0.09)
    emulators["kie"].configure(poll_5xx_prob=0.0)
    second = nbp(prefect_api_url, emulators, "run", str(spec))
    assert second.returncode == 0, second.stderr[-2000:]
    assert statuses(tmp_path) == {"succeeded": 3}
    assert once_each(emulators, "kie", prompts)


def test_a_download_that_keeps_breaking_leaves_the_cell_pending_not_paid_again(
    prefect_api_url: str, emulators: EmulatorHub, tmp_path: Path
) -> None:
    prompts = [f"broken download {i}" for i in range(2)]
    spec = spec_file(tmp_path, prompts)
    emulators["kie"].configure(truncate_download_prob=1.0)
    first = nbp(prefect_api_url, emulators, "run", str(spec), "--patience", "1.5")
    assert first.returncode == 1 and set(manifest(tmp_path)["status"]) == {"pending"}
    emulators["kie"].configure(truncate_download_prob=0.0)
    assert nbp(prefect_api_url, emulators, "run", str(spec)).returncode == 0
    assert once_each(emulators, "kie", prompts)


def test_an_output_path_holding_a_foreign_file_fails_before_anything_is_paid(
    prefect_api_url: str, emulators: EmulatorHub, tmp_path: Path
) -> None:
    spec = spec_file(tmp_path, ["mine", "theirs"], output={
        "target": str(tmp_path / "out"), "path": "{prompt}.{ext}"})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "theirs.png").write_bytes(b"someone else's file")
    done = nbp(prefect_api_url, emulators, "run", str(spec))
    assert done.returncode == 1
    frame = manifest(tmp_path)
    theirs = frame.filter(pl.col("prompt") == "theirs").row(0, named=True)
    assert theirs["status"] == "failed" and theirs["error_code"] == "OutputTaken"
    assert emulators["kie"].creates_for("theirs") == 0 and emulators["kie"].creates_for("mine") == 1
    assert (tmp_path / "out" / "theirs.png").read_bytes() == b"someone else's file"


def test_a_kill_after_the_image_was_written_costs_no_new_task(
    prefect_api_url: str, emulators: EmulatorHub, tmp_path: Path
) -> None:
    """The state a kill between writing the image and journalling success leaves behind:
    the journal says the task finished, the image is on disk, no manifest row. The rerun
    collects the same task again and overwrites its own image."""
    spec = spec_file(tmp_path, ["written"])
    assert nbp(prefect_api_url, emulators, "run", str(spec)).returncode == 0
    out = tmp_path / "out"
    entry_path = next((out / ".nbp" / "cells").glob("*.json"))
    entry = json.loads(entry_path.read_text())
    entry.update(state="finished", row=None)
    entry_path.write_text(json.dumps(entry))
    (out / "manifest.parquet").unlink()
    again = nbp(prefect_api_url, emulators, "run", str(spec))
    assert again.returncode == 0, again.stderr[-2000:]
    assert emulators["kie"].creates_for("written") == 1
    assert statuses(tmp_path) == {"succeeded": 1}
    assert manifest(tmp_path)["cost_usd"][0] == pytest.approx(0.09)  # counted once


def test_a_corrupt_journal_entry_is_reported_and_never_created_blindly(
    prefect_api_url: str, emulators: EmulatorHub, tmp_path: Path
) -> None:
    prompts = ["kept", "damaged"]
    spec = spec_file(tmp_path, prompts)
    assert nbp(prefect_api_url, emulators, "run", str(spec)).returncode == 0
    frame = manifest(tmp_path)
    damaged = frame.filter(pl.col("prompt") == "damaged")["cell_id"][0]
    (tmp_path / "out" / ".nbp" / "cells" / f"{damaged}.json").write_text('{"cell_id": "')
    again = nbp(prefect_api_url, emulators, "run", str(spec), "--force")
    assert again.returncode == 1
    row = manifest(tmp_path).filter(pl.col("cell_id") == damaged).row(0, named=True)
    assert row["status"] == "uncertain" and "unreadable" in row["error_message"]
    assert emulators["kie"].creates_for("damaged") == 1  # not re-created, even with --force
    assert emulators["kie"].creates_for("kept") == 2     # --force did redo the other one
    assert (tmp_path / "out" / "index.html").exists()


def test_shards_of_one_run_share_its_budget(
    prefect_api_url: str, emulators: EmulatorHub, tmp_path: Path
) -> None:
    """Three shards started as one run (the same --run-id), max_usd 0.45 ($0.09 a cell):
    together they create at most 5 cells, not 5 each."""
    prompts = [f"shared budget {i}" for i in range(12)]
    spec = spec_file(tmp_path, prompts, budget={"max_usd": 0.45})
    shards = [start_nbp(prefect_api_url, emulators, "run", str(spec), "--shard", f"{i}/3",
                        "--run-id", "weekly-1") for i in range(3)]
    for shard in shards:
        shard.communicate(timeout=180)
    assert len(emulators["kie"].creates) == 5
    frame = manifest(tmp_path)
    assert frame.height == 12 and frame["cost_usd"].sum() <= 0.45 + 1e-9
    assert frame["run_id"].unique().to_list() == ["weekly-1"]


def test_max_total_usd_caps_the_target_across_runs(
    prefect_api_url: str, emulators: EmulatorHub, tmp_path: Path
) -> None:
    first = spec_file(tmp_path, [f"first {i}" for i in range(3)], name="first",
                      budget={"max_total_usd": 0.4})
    second = spec_file(tmp_path, [f"second {i}" for i in range(3)], name="second",
                       budget={"max_total_usd": 0.4})
    assert nbp(prefect_api_url, emulators, "run", str(first)).returncode == 0
    assert nbp(prefect_api_url, emulators, "run", str(second)).returncode == 1
    assert len(emulators["kie"].creates) == 4  # 4 x $0.09 <= $0.40 < 5 x $0.09
    frame = manifest(tmp_path)
    assert set(frame["job"]) == {"first", "second"} and frame.height == 6


def test_two_runs_of_one_job_on_one_target_create_each_cell_once(
    prefect_api_url: str, emulators: EmulatorHub, tmp_path: Path
) -> None:
    prompts = [f"twice {i}" for i in range(6)]
    spec = spec_file(tmp_path, prompts)
    runs = [start_nbp(prefect_api_url, emulators, "run", str(spec)) for _ in range(2)]
    for child in runs:
        child.communicate(timeout=180)
    assert once_each(emulators, "kie", prompts)
    # whichever run ended last, the other's cells were not lost from the manifest
    assert nbp(prefect_api_url, emulators, "run", str(spec)).returncode == 0
    assert statuses(tmp_path) == {"succeeded": 6}
    assert once_each(emulators, "kie", prompts)


def test_two_jobs_writing_one_target_at_once_keep_both_jobs_rows(
    prefect_api_url: str, emulators: EmulatorHub, tmp_path: Path
) -> None:
    specs = [spec_file(tmp_path, [f"{name} {i}" for i in range(4)], name=name)
             for name in ("alpha", "beta")]
    runs = [start_nbp(prefect_api_url, emulators, "run", str(spec)) for spec in specs]
    for child in runs:
        _, err = child.communicate(timeout=180)
        assert child.returncode == 0, err[-2000:]
    frame = manifest(tmp_path)
    assert frame.group_by("job").len().sort("job").rows() == [("alpha", 4), ("beta", 4)]


@pytest.mark.parametrize(
    ("provider", "status"),
    [
        pytest.param("kie", "uncertain", id="kie-cannot-be-asked"),
        pytest.param("hiapi", "succeeded", id="hiapi-same-idempotency-key"),
        pytest.param("runware", "succeeded", id="runware-task-uuid-looked-up"),
    ],
)
def test_a_create_that_was_accepted_and_answered_5xx_is_paid_once(
    prefect_api_url: str, emulators: EmulatorHub, tmp_path: Path, provider: str, status: str
) -> None:
    """The provider created the task and answered 504. Kie cannot be asked: the cell is
    uncertain, counted as spent, and not created again by the next run; HiAPI's idempotency
    key and Runware's taskUUID bring the one task back."""
    emulators[provider].configure(create_5xx_after_create_prob=1.0)
    spec = spec_file(tmp_path, ["accepted"], provider=provider)
    first = nbp(prefect_api_url, emulators, "run", str(spec))
    emulators[provider].configure(create_5xx_after_create_prob=0.0)
    row = manifest(tmp_path).row(0, named=True)
    assert row["status"] == status, row["error_message"]
    assert emulators[provider].creates_for("accepted") == 1
    if status == "uncertain":
        assert first.returncode == 1 and row["cost_usd"] > 0
        assert nbp(prefect_api_url, emulators, "run", str(spec)).returncode == 1
        assert emulators[provider].creates_for("accepted") == 1
        retried = nbp(prefect_api_url, emulators, "run", str(spec), "--retry-uncertain")
        assert retried.returncode == 0 and emulators[provider].creates_for("accepted") == 2


def test_a_403_on_one_poll_neither_drops_the_task_nor_the_account(
    prefect_api_url: str, emulators: EmulatorHub, tmp_path: Path
) -> None:
    prompts = [f"proxy {i}" for i in range(3)]
    emulators["kie"].configure(poll_403_count=1)
    done = nbp(prefect_api_url, emulators, "run", str(spec_file(tmp_path, prompts)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert once_each(emulators, "kie", prompts)


def test_bombs_and_oversized_images_fail_their_cell_and_the_run_goes_on(
    prefect_api_url: str, emulators: EmulatorHub, tmp_path: Path
) -> None:
    prompts = ["fine", "[emulate:bomb] bomb", "[emulate:oversize] huge"]
    emulators["kie"].configure(oversize_bytes=70 * 2**20)
    spec = spec_file(tmp_path, prompts, retries=0)
    done = nbp(prefect_api_url, emulators, "run", str(spec))
    assert done.returncode == 1
    frame = manifest(tmp_path)
    by_prompt = {row["prompt"]: row for row in frame.iter_rows(named=True)}
    assert by_prompt["fine"]["status"] == "succeeded"
    assert by_prompt["[emulate:bomb] bomb"]["status"] == "failed"
    assert by_prompt["[emulate:oversize] huge"]["error_code"] == "too_large"
    assert all(emulators["kie"].creates_for(p) == 1 for p in prompts)
    assert (tmp_path / "out" / "index.html").exists()


@pytest.mark.parametrize(
    ("spec_text", "says"),
    [
        pytest.param("""version: 1
name: bomb
provider: kie
a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
matrix: {prompt: *g}
""", "YAML", id="alias-bomb"),
        pytest.param("""version: 1
name: huge
provider: kie
matrix:
  prompt: [a, b, c, d, e, f, g, h, i, j]
  resolution: [1K, 2K, 4K]
  x1: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
  x2: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
  x3: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
  x4: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
  x5: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
  x6: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
repeat: 100
""", "cells", id="10^8-cells"),
        pytest.param("""version: 1
name: peek
provider: kie
matrix: {prompt: [a]}
references: [/etc/passwd]
""", "outside", id="reference-outside-the-spec-folder"),
        pytest.param("""version: 1
name: chain
provider: kie
matrix: {prompt: [a]}
references: ["simplecache::http://127.0.0.1:1/latest/meta-data/x.png"]
""", "::", id="chained-fsspec-url"),
        pytest.param("""version: 1
name: clobber
provider: kie
matrix: {prompt: [a]}
output: {path: manifest.parquet}
""", "manifest.parquet", id="nbp-own-file-as-output"),
        pytest.param("""version: 1
name: nogcs
provider: kie
matrix: {prompt: [a]}
output: {target: "gs://bucket/x"}
""", "gcsfs", id="protocol-not-installed"),
        pytest.param("""version: 1
name: exfiltrate
provider: kie
matrix: {prompt: [a]}
base_urls: {kie: "https://collector.example"}
""", "API key", id="spec-base-url-to-a-foreign-host"),
    ],
)
def test_hostile_specs_are_refused_quickly_and_nothing_is_sent(
    prefect_api_url: str, emulators: EmulatorHub, tmp_path: Path, spec_text: str, says: str
) -> None:
    path = tmp_path / "hostile.yaml"
    path.write_text(spec_text)
    started = time.monotonic()
    checked = nbp(prefect_api_url, emulators, "validate", str(path))
    assert checked.returncode == 2 and says in checked.stderr, checked.stderr[-2000:]
    assert time.monotonic() - started < 10  # a child process: interpreter start-up included
    ran = nbp(prefect_api_url, emulators, "run", str(path))
    assert ran.returncode == 2
    assert emulators["kie"].requests == [] and not (tmp_path / "runs").exists()


def test_a_prompt_refused_while_polling_ends_the_cell_at_once(
    prefect_api_url: str, emulators: EmulatorHub, tmp_path: Path
) -> None:
    """Runware answers getResponse for the refused task with HTTP 400 and an error item
    naming it, in a code nbp has never seen: the provider's word on that task, not a fault
    to retry for --patience (ten minutes)."""
    emulators["runware"].configure(failure="code", content_code="contentModerated")
    spec = spec_file(tmp_path, ["a refused [emulate:content] prompt"], provider="runware")
    started = time.monotonic()
    done = nbp(prefect_api_url, emulators, "run", str(spec))
    assert done.returncode == 1 and time.monotonic() - started < 60, done.stderr[-2000:]
    row = manifest(tmp_path).row(0, named=True)
    assert (row["status"], row["error_code"]) == ("failed", "contentModerated")
    assert "contentModerated" in done.stdout  # the reason, at the end of the run
    assert emulators["runware"].creates_for("refused") == 1


@pytest.mark.parametrize("provider", ["hiapi", "runware"])
def test_the_same_spec_into_a_second_target_creates_new_tasks(
    prefect_api_url: str, emulators: EmulatorHub, tmp_path: Path, provider: str
) -> None:
    """`nbp run --from A --target B`: a new intent for every cell, so HiAPI does not hand
    back A's tasks for a reused Idempotency-Key and Runware does not refuse a reused
    taskUUID: B gets tasks (and images) of its own."""
    spec = spec_file(tmp_path, ["monthly 1", "monthly 2"], provider=provider)
    assert nbp(prefect_api_url, emulators, "run", str(spec)).returncode == 0
    again = nbp(prefect_api_url, emulators, "run", "--from", str(tmp_path / "out"),
                "--target", str(tmp_path / "second"), "--spec-dir", str(tmp_path))
    assert again.returncode == 0, again.stderr[-2000:]
    first = set(manifest(tmp_path)["remote_task_id"])
    second = set(pl.read_parquet(tmp_path / "second" / "manifest.parquet")["remote_task_id"])
    assert not first & second and len(second) == 2
    assert [emulators[provider].creates_for(f"monthly {i}") for i in (1, 2)] == [2, 2]
