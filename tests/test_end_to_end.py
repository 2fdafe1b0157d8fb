"""End to end: the real CLI, the real Prefect flow on a real local Prefect server, the real
clients over loopback HTTP against the emulators, the real filesystem (and S3 via moto)."""

from __future__ import annotations

import asyncio
import json
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
from PIL import Image

from nbp.providers.emulator.hub import EmulatorHub
from nbp.providers.model import pixel_size
from tests.conftest import ROOT, run_nbp
from tests.s3server import s3_server


def small_spec(tmp_path: Path, name: str = "e2e", **changes: Any) -> Path:
    spec: dict[str, Any] = {
        "version": 1,
        "name": name,
        "provider": "kie",
        "matrix": {
            "prompt": ["a teal lamp on a desk", "a red sneaker on marble"],
            "aspect_ratio": ["1:1", "9:16"],
            "resolution": ["1K"],
        },
        "output": {"target": str(tmp_path / "out"), "path": "{aspect_ratio}/{cell_id}.{ext}"},
        "limits": {"kie": {"poll_interval": 0.1}},
    }
    spec.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def child_env(prefect_api_url: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, **extra}
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def check_job_output(target: Path, cells: int) -> pl.DataFrame:
    frame = pl.read_parquet(target / "manifest.parquet")
    assert frame.height == cells
    assert set(frame["status"]) == {"succeeded"}
    for row in frame.iter_rows(named=True):
        with Image.open(target / row["output_path"]) as image:
            assert image.format == row["output_format"].upper().replace("JPG", "JPEG")
            assert image.size == pixel_size(row["aspect_ratio"], row["resolution"])
    assert (target / "index.html").stat().st_size > 0
    return frame


@pytest.mark.prefect
def test_the_flow_runs_a_spec_on_a_prefect_server(prefect_api_url: str, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    from nbp.flows.orchestration.flow import nbp_run

    spec = small_spec(tmp_path)
    result = asyncio.run(nbp_run(spec=str(spec), emulate=True, emulator_latency_s=0.2))
    assert result["exit_code"] == 0 and result["counts"]["succeeded"] == 4
    check_job_output(tmp_path / "out", 4)

    async def flow_runs() -> list[Any]:
        async with get_client() as client:
            return list(await client.read_flow_runs())

    runs = [r for r in asyncio.run(flow_runs()) if r.parameters.get("spec") == str(spec)]
    assert runs and runs[0].state and runs[0].state.is_completed()

    async def artifacts() -> list[Any]:
        async with get_client() as client:
            return list(await client.read_artifacts(limit=200))

    mine = {a.key: a for a in asyncio.run(artifacts()) if a.flow_run_id == runs[0].id}
    assert {"nbp-summary-e2e", "nbp-result-e2e"} <= set(mine)
    assert "index.html" in str(mine["nbp-result-e2e"].data)
    assert "manifest.parquet" in str(mine["nbp-result-e2e"].data)


@pytest.mark.prefect
def test_nbp_run_emulate_from_the_command_line(prefect_api_url: str, tmp_path: Path) -> None:
    spec = small_spec(tmp_path, seed=40, repeat=2)
    done = run_nbp("run", str(spec), "--emulate", "--emulator-latency", "0.2",
                   env=child_env(prefect_api_url))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "succeeded" in done.stdout
    frame = check_job_output(tmp_path / "out", 8)
    status = run_nbp("status", str(tmp_path / "out"))
    assert status.returncode == 0 and "succeeded" in status.stdout
    assert frame["job"].unique().to_list() == ["e2e"]
    # seed + replicate, as sent to the provider
    assert sorted(zip(frame["replicate"], frame["seed"], strict=True)) == [(0, 40)] * 4 + [
        (1, 41)] * 4
    as_json = run_nbp("status", str(tmp_path / "out"), "--json")
    summary = json.loads(as_json.stdout)
    assert summary["cells"] == 8 and summary["by_status"]["succeeded"] == 8
    assert summary["by_provider"] == {"kie": 8}


def test_invalid_spec_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    spec = small_spec(tmp_path, provider="nope", colour="blue")
    for command in (["validate", str(spec)], ["run", str(spec), "--emulate"], ["plan", str(spec)]):
        done = run_nbp(*command)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert f"{spec}:" in done.stderr and "nope" in done.stderr and "colour" in done.stderr
    assert not (tmp_path / "out").exists()


def test_plan_json(tmp_path: Path) -> None:
    done = run_nbp("plan", str(small_spec(tmp_path)), "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["cells"] == 4
    assert plan["estimated_cost_usd"] == pytest.approx(4 * 0.09)
    assert plan["estimated_seconds"] > 0
    assert "prefect" not in done.stderr.lower()


@pytest.fixture
def kie_hub() -> Iterator[EmulatorHub]:
    with EmulatorHub.start(["kie"], latency_s=1.5) as hub:
        yield hub


@pytest.mark.prefect
def test_a_run_killed_with_sigkill_resumes_without_paying_twice(
    prefect_api_url: str, kie_hub: EmulatorHub, tmp_path: Path
) -> None:
    prompts = [f"kill test {i}" for i in range(6)]
    spec = small_spec(tmp_path, matrix={"prompt": prompts, "aspect_ratio": ["1:1"]})
    env = child_env(prefect_api_url, **kie_hub.environ())
    child = subprocess.Popen(
        [sys.executable, "-m", "nbp.flows.cli", "run", str(spec)], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while len(kie_hub["kie"].creates) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    created_before = len(kie_hub["kie"].creates)
    assert 3 <= created_before <= 6
    done = run_nbp("run", str(spec), env=env)
    # Every create was journalled before it left: a cell whose create was in flight at the
    # kill is uncertain (Kie cannot be asked whether it exists), never created again; the
    # others were collected or created once.
    frame = pl.read_parquet(tmp_path / "out" / "manifest.parquet")
    uncertain = frame.filter(pl.col("status") == "uncertain")["prompt"].to_list()
    assert set(frame["status"]) <= {"succeeded", "uncertain"}, frame["error_message"]
    assert done.returncode == (1 if uncertain else 0), done.stderr[-3000:]
    for prompt in prompts:
        assert kie_hub["kie"].creates_for(prompt) <= 1, prompt
    if uncertain:  # the user accepts the risk of paying twice for those
        again = run_nbp("run", str(spec), "--retry-uncertain", env=env)
        assert again.returncode == 0, again.stderr[-3000:]
        for prompt in prompts:
            limit = 2 if prompt in uncertain else 1
            assert 1 <= kie_hub["kie"].creates_for(prompt) <= limit, prompt
    check_job_output(tmp_path / "out", 6)


@pytest.mark.prefect
def test_a_spread_run_killed_with_sigkill_collects_each_task_with_its_own_account(
    prefect_api_url: str, kie_hub: EmulatorHub, tmp_path: Path
) -> None:
    second_key = "emulated-kie-second-account"
    kie_hub["kie"].add_account(second_key)
    prompts = [f"spread kill {i}" for i in range(8)]
    spec = small_spec(tmp_path, matrix={"prompt": prompts, "aspect_ratio": ["1:1"]},
                      routing="spread", accounts={"kie": ["KIE_API_KEY", "KIE_API_KEY_2"]})
    env = child_env(prefect_api_url, **kie_hub.environ(), KIE_API_KEY_2=second_key)
    child = subprocess.Popen(
        [sys.executable, "-m", "nbp.flows.cli", "run", str(spec)], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    journal = tmp_path / "out" / ".nbp" / "cells"

    def created() -> int:  # tasks whose id the killed run journalled
        return sum('"state":"created"' in p.read_text() for p in journal.glob("*.json"))

    deadline = time.monotonic() + 120
    while (len(kie_hub["kie"].creates) < 4 or created() < 2) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done = run_nbp("run", str(spec), env=env)
    creates = kie_hub["kie"].creates
    for prompt in prompts:  # a create in flight at the kill is uncertain, never re-sent
        assert kie_hub["kie"].creates_for(prompt) <= 1, prompt
    frame = pl.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert set(frame["status"]) <= {"succeeded", "uncertain"}, frame["error_message"]
    assert done.returncode == (1 if "uncertain" in set(frame["status"]) else 0)
    account_of = {c.task_id: c.account for c in creates}
    collected = frame.filter(pl.col("status") == "succeeded")
    assert collected.height >= 1
    for row in collected.iter_rows(named=True):
        # a task is only visible to the account that created it: collecting it proves the key
        made_by = account_of[row["remote_task_id"]]
        assert row["account"] == ("KIE_API_KEY_2" if made_by == second_key else "KIE_API_KEY")
    assert {c.account for c in creates} == {kie_hub["kie"].api_key, second_key}


def test_own_accounts_needs_a_shard_that_owns_one(tmp_path: Path) -> None:
    spec = small_spec(tmp_path, accounts={"kie": ["KIE_API_KEY", "KIE_API_KEY_2"]})
    for args, says in ((["--own-accounts"], "needs --shard"),
                       (["--own-accounts", "--shard", "2/3"], "would own none"),
                       (["--own-accounts", "--shard", "0/2", "--shared-limits"],
                        "drop --shared-limits")):
        done = run_nbp("run", str(spec), "--emulate", *args)
        assert done.returncode == 2 and says in done.stderr, (args, done.stderr)
    assert not (tmp_path / "out").exists()


@pytest.mark.prefect
def test_a_job_writes_to_s3(prefect_api_url: str, tmp_path: Path) -> None:
    with s3_server() as s3:
        target = s3.url("jobs/e2e")
        spec = small_spec(
            tmp_path,
            output={"target": target, "storage_options": s3.storage_options},
        )
        done = run_nbp("run", str(spec), "--emulate", "--emulator-latency", "0.2",
                       env=child_env(prefect_api_url))
        assert done.returncode == 0, done.stderr[-3000:]
        fs = s3.fresh_fs()
        root = target.removeprefix("s3://")
        with fs.open(f"{root}/manifest.parquet", "rb") as handle:
            frame = pl.read_parquet(handle)
        assert frame.height == 4 and set(frame["status"]) == {"succeeded"}
        for row in frame.iter_rows(named=True):
            assert fs.exists(f"{root}/{row['output_path']}")
        assert fs.exists(f"{root}/index.html")


@pytest.mark.prefect
def test_a_run_is_reproduced_from_its_output_folder_alone(
    prefect_api_url: str, tmp_path: Path
) -> None:
    spec = small_spec(tmp_path, seed=7)
    env = child_env(prefect_api_url)
    first = run_nbp("run", str(spec), "--emulate", "--emulator-latency", "0.2", env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    before = pl.read_parquet(tmp_path / "out" / "manifest.parquet")
    spec.unlink()  # a colleague has the output folder, not the spec file
    again = run_nbp("run", "--from", str(tmp_path / "out"), "--force", "--spec-dir",
                    str(tmp_path), "--emulator-latency", "0.2", env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "running again run" in again.stderr
    assert "was emulated: emulating again" in again.stderr  # never silently paid
    after = pl.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert sorted(after["cell_id"]) == sorted(before["cell_id"])  # the same cells and seeds
    assert sorted(after["seed"]) == sorted(before["seed"])
    assert set(after["run_id"]) != set(before["run_id"])
    status = run_nbp("status", str(tmp_path / "out"), "--json")
    records = json.loads(status.stdout)["run_records"]
    assert len(records) == 2 and records[0]["spec_sha256"] == records[1]["spec_sha256"]
    sources = sorted(r["spec_source"] for r in records)  # the original, not the copy
    assert sources[1] == f"{sources[0]} (from {tmp_path / 'out'}@{before['run_id'][0]})"
    assert not list(tmp_path.glob(".nbp-from-*"))  # the spec copy is gone
    commands = sorted(r["command"] for r in records)  # what the researcher typed, each time
    assert commands[0][:3] == ["nbp", "run", "--from"] and commands[1][:2] == ["nbp", "run"]
    (kie,) = records[0]["channels"]
    assert kie["models"] == [kie["model"]] and kie["prices_usd"]["1K"] > 0
    missing = run_nbp("run", "--from", f"{tmp_path / 'out'}@nope", "--emulate", env=env)
    assert missing.returncode == 2 and "no run 'nope'" in missing.stderr


def test_a_hand_made_run_record_is_input_not_instructions(tmp_path: Path) -> None:
    """A record naming `spec_folder: "/"` and a spec whose reference is a relative path to a
    private file: the spec is validated as `nbp validate` would, its relative paths resolve
    in the folder the user names (the current one by default), never the record's; nothing
    is sent and no file is written outside the folders given."""
    import hashlib

    out = tmp_path / "out" / ".nbp" / "runs"
    out.mkdir(parents=True)
    text = yaml.safe_dump({"version": 1, "name": "hostile", "provider": "kie",
                           "matrix": {"prompt": ["p"]}, "references": ["etc/hostname"],
                           "output": {"target": str(tmp_path / "out")}})
    record = {"run_id": "evil", "job": "hostile", "spec_source": "/etc/x.yaml",
              "spec_text": text, "spec_sha256": hashlib.sha256(text.encode()).hexdigest(),
              "spec_folder": "/", "started_at": "2026-12-01T00:00:00+00:00", "emulated": False}
    (out / "evil.json").write_text(json.dumps(record))
    work = tmp_path / "work"
    work.mkdir()
    with EmulatorHub.start(["kie"]) as hub:
        env = {**os.environ, **hub.environ()}
        env.pop("PREFECT_API_URL", None)
        done = run_nbp("run", "--from", f"{tmp_path / 'out'}@evil", "--spec-dir", str(work),
                       env=env)
        assert hub["kie"].requests == []
    assert done.returncode == 2, done.stderr[-2000:]
    assert "etc/hostname" in done.stderr and str(work) in done.stderr
    assert not list(Path("/").glob(".nbp-from-*")) and not list(work.iterdir())


# -- failures show where users look (issue 20) ----------------------------------------------


def flow_run_state(spec: Path) -> tuple[str, str, str]:
    """The newest flow run of `spec`: its state's type, name and message."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    async def newest() -> tuple[str, str, str]:
        async with get_client() as client:
            runs = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=50)
        run = next(r for r in runs if r.parameters.get("spec") == str(spec))
        assert run.state is not None
        return run.state.type.value, run.state.name, run.state.message or ""

    return asyncio.run(newest())


@pytest.mark.prefect
def test_a_run_with_failed_cells_ends_failed_in_prefect_and_says_why(
    prefect_api_url: str, tmp_path: Path
) -> None:
    spec = small_spec(tmp_path, matrix={"prompt": ["a lamp", "a statue [emulate:content]"]})
    failed = run_nbp("run", str(spec), "--emulate", "--emulator-latency", "0.2",
                     env=child_env(prefect_api_url))
    assert failed.returncode == 1, failed.stderr[-3000:]
    kind, _, message = flow_run_state(spec)
    assert kind == "FAILED" and "1 of 2 cell(s) did not succeed" in message
    assert "not succeeded:" in failed.stdout and "content" in failed.stdout.lower()
    accepted = run_nbp("run", str(spec), "--emulate", "--emulator-latency", "0.2", "--force",
                       "--succeed-with-failures", env=child_env(prefect_api_url))
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    assert flow_run_state(spec)[0] == "COMPLETED"


def test_missing_api_keys_are_named_before_anything_starts(tmp_path: Path) -> None:
    spec = small_spec(tmp_path, provider=["kie", "runware"], routing="spread",
                      accounts={"kie": ["KIE_API_KEY", "KIE_API_KEY_2"]})
    env = {k: v for k, v in os.environ.items()
           if k not in ("KIE_API_KEY", "KIE_API_KEY_2", "RUNWARE_API_KEY", "PREFECT_API_URL")}
    with EmulatorHub.start(["kie", "runware"]) as hub:
        env.update({k: v for k, v in hub.environ().items() if k.startswith("NBP_")})
        env["KIE_API_KEY"] = hub["kie"].api_key
        started = time.monotonic()
        done = run_nbp("run", str(spec), env=env)
        assert time.monotonic() - started < 10
        assert hub["kie"].requests == [] and hub["runware"].requests == []
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("KIE_API_KEY_2") == 1 and done.stderr.count("RUNWARE_API_KEY") == 1
    assert "nothing was sent" in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.prefect
@pytest.mark.parametrize(("name", "content", "says"), [
    pytest.param(".nbp/budget.json", '{"total_usd": "0"}', "budget.json is not a spend ledger",
                 id="ledger-of-the-wrong-shape"),
    pytest.param("manifest.parquet", "not parquet", "manifest.parquet is not a manifest",
                 id="manifest-that-does-not-parse"),
])
def test_what_a_target_holds_is_read_as_input(
    prefect_api_url: str, tmp_path: Path, name: str, content: str, says: str
) -> None:
    """A damaged ledger or manifest is one clear error before anything is paid (exit 2),
    saying how to repair it; `nbp status` says the same of a damaged manifest."""
    spec = small_spec(tmp_path, budget={"max_total_usd": 5})
    (tmp_path / "out" / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "out" / name).write_text(content)
    done = run_nbp("run", str(spec), "--emulate", env=child_env(prefect_api_url))
    assert done.returncode == 2, done.stderr[-3000:]
    assert says in done.stderr and "delete it" in done.stderr
    assert not list((tmp_path / "out").glob("*/*.png"))
    if name == "manifest.parquet":
        status = run_nbp("status", str(tmp_path / "out"))
        assert status.returncode == 2 and says in status.stderr
