"""The engine against the emulators with fault injection, no Prefect: every assertion that
matters is on what the emulator recorded (creates per cell), not only on what nbp believes."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from PIL import Image

from nbp.flows.engine.interrupt import Interrupt
from nbp.flows.engine.job import RunHooks, RunOptions, RunResult, run_job
from nbp.flows.engine.ledger import LedgerInvalid
from nbp.flows.engine.policy import RetryPolicy, RunConfigurationError
from nbp.flows.engine.progress import Progress
from nbp.flows.orchestration.emulation import serve_emulators
from nbp.flows.spec.inputs import InputPolicy
from nbp.providers.emulator.core import CONTENT_MARKER, FAIL_MARKER
from nbp.providers.emulator.hub import EmulatorHub
from nbp.providers.model import pixel_size
from tests.flows.engine.emulated import manifest, run, serving

LATENCY_S = 0.15


@pytest.fixture(scope="module")
def hub() -> Iterator[EmulatorHub]:
    with serving(["kie", "hiapi", "runware", "wiro"], LATENCY_S) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(hub: EmulatorHub) -> None:
    hub.reset()
    for emulator in hub.emulators.values():
        emulator.configure(
            latency_s=LATENCY_S, rate_limit=None, submit_5xx_prob=0.0, poll_5xx_prob=0.0,
            drop_after_create_prob=0.0, fail_prob=0.0, truncate_download_prob=0.0,
            max_concurrency=None,
        )


def write_spec(tmp_path: Path, prompts: list[str], **top: Any) -> Path:
    spec: dict[str, Any] = {
        "version": 1,
        "name": "engine-test",
        "provider": "kie",
        "matrix": {"prompt": prompts, "aspect_ratio": ["1:1", "16:9"]},
        "output": {"target": str(tmp_path / "out")},
        "limits": {name: {"poll_interval": 0.05} for name in ("kie", "hiapi", "runware", "wiro")},
    }
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_job_writes_verified_images_and_one_manifest_row_per_cell(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    result = run(write_spec(tmp_path, ["a lemon", "a lime"]))
    assert result.exit_code == 0 and result.counts["succeeded"] == 4
    frame = manifest(tmp_path)
    assert frame.height == 4 and frame["cell_id"].n_unique() == 4
    assert set(frame["status"]) == {"succeeded"}
    for row in frame.iter_rows(named=True):
        path = tmp_path / "out" / row["output_path"]
        with Image.open(path) as image:
            assert image.size == pixel_size(row["aspect_ratio"], row["resolution"])
            assert image.format == "PNG"
        assert row["remote_task_id"] in hub["kie"].tasks
        assert row["task_group"] is None  # a task of its own
        assert row["cost_usd"] > 0 and row["attempts"] == 1
        assert row["model"] == "nano-banana-pro" and row["provider"] == "kie"
    assert len(hub["kie"].creates) == 4


def test_a_rerun_pays_nothing_and_force_pays_again(hub: EmulatorHub, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, ["a pear"])
    run(spec)
    second = run(spec)
    assert second.exit_code == 0 and len(hub["kie"].creates) == 2
    assert manifest(tmp_path).height == 2
    run(spec, force=True)
    assert len(hub["kie"].creates) == 4
    assert manifest(tmp_path).height == 2  # rows updated, never duplicated


def test_a_429_storm_slows_down_but_pays_once_per_cell(hub: EmulatorHub, tmp_path: Path) -> None:
    hub["kie"].configure(rate_limit=(3, 1.0))
    prompts = [f"storm {i}" for i in range(6)]
    result = run(write_spec(tmp_path, prompts, limits={"kie": {"rate": "50/1s",
                                                                  "poll_interval": 0.05}}))
    assert result.exit_code == 0
    assert hub["kie"].rejected_for_rate > 0
    for prompt in prompts:
        assert hub["kie"].creates_for(prompt) == 2  # two ratios, once each


def test_server_errors_and_broken_downloads_are_ridden_out(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    hub["kie"].configure(poll_5xx_prob=0.3, truncate_download_prob=0.3)
    prompts = [f"flaky {i}" for i in range(5)]
    result = run(write_spec(tmp_path, prompts))
    assert result.exit_code == 0
    assert all(hub["kie"].creates_for(p) == 2 for p in prompts)


@pytest.mark.parametrize(
    ("provider", "status"),
    [
        pytest.param("kie", "uncertain", id="kie-cannot-be-asked"),
        pytest.param("hiapi", "succeeded", id="hiapi-same-idempotency-key"),
        pytest.param("runware", "succeeded", id="runware-task-uuid-looked-up"),
    ],
)
def test_a_create_answered_with_a_server_error_is_resent_only_where_safe(
    hub: EmulatorHub, tmp_path: Path, provider: str, status: str
) -> None:
    """A 5xx answer to a create does not say whether the task exists: Kie's cell is uncertain
    (not re-sent, in this run or the next) until the user asks; the others recover."""
    hub[provider].configure(submit_5xx_prob=1.0)
    spec = write_spec(tmp_path, ["server error"], provider=provider,
                      matrix={"prompt": ["server error"], "aspect_ratio": ["1:1"]})

    async def heal() -> None:  # the provider recovers after the first refused create
        while not hub[provider].requests:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        hub[provider].configure(submit_5xx_prob=0.0)

    async def go() -> RunResult:
        healer = asyncio.create_task(heal())
        try:
            return await run_job(RunOptions(spec=str(spec)))
        finally:
            healer.cancel()

    asyncio.run(go())
    row = manifest(tmp_path).row(0, named=True)
    assert row["status"] == status, row["error_message"]
    assert len(hub[provider].creates) <= 1
    if status == "uncertain":
        assert "never pay twice" in row["error_message"]
        assert row["cost_usd"] == pytest.approx(0.09)  # it may be billed: counted
        hub[provider].configure(submit_5xx_prob=0.0)
        run(spec)  # the next run does not send it again either, healthy provider or not
        again = manifest(tmp_path).row(0, named=True)
        assert again["status"] == "uncertain"
        assert again["cost_usd"] == pytest.approx(0.09)  # and it still counts what it may cost
        assert hub[provider].creates == []
        again = run(spec, retry_uncertain=True)
        assert again.exit_code == 0 and len(hub[provider].creates) == 1


@pytest.mark.parametrize(
    ("provider", "status", "creates"),
    [
        pytest.param("kie", "uncertain", 1, id="kie-no-idempotency-uncertain-never-paid-twice"),
        pytest.param("hiapi", "succeeded", 1, id="hiapi-idempotency-key"),
        pytest.param("runware", "succeeded", 1, id="runware-task-uuid-recovered"),
    ],
)
def test_a_dropped_create_never_pays_twice(
    hub: EmulatorHub, tmp_path: Path, provider: str, status: str, creates: int
) -> None:
    hub[provider].configure(drop_after_create_prob=1.0)
    spec = write_spec(tmp_path, ["dropped"], provider=provider,
                      matrix={"prompt": ["dropped"], "aspect_ratio": ["1:1"]})

    async def heal() -> None:  # the network heals after the first create
        while not hub[provider].creates:
            await asyncio.sleep(0.01)
        hub[provider].configure(drop_after_create_prob=0.0)

    async def go() -> RunResult:
        healer = asyncio.create_task(heal())
        result = await run_job(RunOptions(spec=str(spec)))
        healer.cancel()
        return result

    result = asyncio.run(go())
    row = manifest(tmp_path).row(0, named=True)
    assert row["status"] == status, row["error_message"]
    assert len(hub[provider].creates) == creates
    if status == "uncertain":
        assert "never pay twice" in row["error_message"]
        assert result.exit_code == 1
        assert run(spec).counts["uncertain"] == 1 and len(hub[provider].creates) == 1


def test_failed_tasks_are_retried_and_content_rejections_are_not(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, [f"fails {FAIL_MARKER}", f"blocked {CONTENT_MARKER}"],
                      matrix={"aspect_ratio": ["1:1"]}, retries=2)
    result = run(spec)
    assert result.exit_code == 1
    rows = {r["prompt"].split()[0]: r for r in manifest(tmp_path).iter_rows(named=True)}
    assert rows["fails"]["status"] == "failed" and rows["fails"]["attempts"] == 3
    assert rows["blocked"]["status"] == "failed" and rows["blocked"]["attempts"] == 1
    assert hub["kie"].creates_for("fails") == 3
    assert hub["kie"].creates_for("blocked") == 1
    assert rows["fails"]["cost_usd"] == 0  # failed tasks are not billed


def test_fallback_takes_over_when_the_first_provider_fails_for_good(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    hub["kie"].configure(fail_prob=1.0)
    spec = write_spec(tmp_path, ["fallback"], provider=["kie", "runware"], retries=1,
                      matrix={"aspect_ratio": ["4:5"]})
    result = run(spec)
    row = manifest(tmp_path).row(0, named=True)
    assert result.exit_code == 0, row["error_message"]
    assert row["provider"] == "runware" and row["aspect_ratio"] == "4:5"
    assert len(hub["kie"].creates) == 2 and len(hub["runware"].creates) == 1
    assert hub["runware"].creates[0].prompt == "fallback"


def test_the_budget_is_a_hard_cap(hub: EmulatorHub, tmp_path: Path) -> None:
    prompts = [f"budget {i}" for i in range(5)]
    spec = write_spec(tmp_path, prompts, budget={"max_usd": 0.2},
                      matrix={"aspect_ratio": ["1:1"]})
    result = run(spec)
    assert result.exit_code == 1 and result.stop_reason and "budget" in result.stop_reason
    frame = manifest(tmp_path)
    assert frame.filter(pl.col("status") == "succeeded").height == 2  # 2 x $0.09 <= $0.20
    assert frame.filter(pl.col("status") == "skipped").height == 3
    assert len(hub["kie"].creates) == 2
    assert frame["cost_usd"].sum() <= 0.2


def test_a_refused_account_stops_early(hub: EmulatorHub, tmp_path: Path) -> None:
    os.environ["KIE_API_KEY"] = "revoked"
    try:
        result = run(write_spec(tmp_path, [f"auth {i}" for i in range(4)]))
    finally:
        os.environ["KIE_API_KEY"] = hub.environ()["KIE_API_KEY"]
    frame = manifest(tmp_path)
    assert result.exit_code == 1 and set(frame["status"]) == {"failed"}
    assert hub["kie"].creates == []
    create_calls = [r for r in hub["kie"].requests if r[1].endswith("createTask")]
    assert len(create_calls) < frame.height + 2  # not every cell tried once it was refused
    assert "revoked" not in json.dumps(frame["error_message"].to_list())


def test_fail_fast_stops_submitting_after_the_first_permanent_failure(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    prompts = [f"first {CONTENT_MARKER}"] + [f"later {i}" for i in range(6)]
    spec = write_spec(tmp_path, prompts, fail_fast=True, matrix={"aspect_ratio": ["1:1"]},
                      limits={"kie": {"max_in_flight": 1, "poll_interval": 0.05}})
    run(spec)
    frame = manifest(tmp_path)
    assert frame.filter(pl.col("status") == "skipped").height >= 4


def test_wiro_concurrency_limit_slows_the_run_instead_of_failing_cells(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    hub["wiro"].configure(max_concurrency=2)
    prompts = [f"concurrency {i}" for i in range(4)]
    spec = write_spec(tmp_path, prompts, provider="wiro",
                      limits={"wiro": {"max_in_flight": 8, "poll_interval": 0.05}})
    result = run(spec)
    assert result.exit_code == 0
    assert all(hub["wiro"].creates_for(p) == 2 for p in prompts)


def test_a_cancelled_run_resumes_by_polling_what_it_paid_for(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    hub["kie"].configure(latency_s=1.0)
    prompts = [f"resume {i}" for i in range(4)]
    spec = write_spec(tmp_path, prompts)

    async def interrupted() -> None:
        job = asyncio.create_task(run_job(RunOptions(spec=str(spec))))
        while len(hub["kie"].creates) < 8:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # journal writes follow the create answers
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job

    asyncio.run(interrupted())
    journal = list((tmp_path / "out" / ".nbp" / "cells").glob("*.json"))
    assert len(journal) == 8
    assert all(json.loads(p.read_text())["state"] == "created" for p in journal)
    result = run(spec)
    assert result.exit_code == 0
    assert len(hub["kie"].creates) == 8  # resumed by polling: nothing created twice


def image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def test_an_unexpected_error_in_one_cell_ends_neither_the_run_nor_its_paid_task(
    hub: EmulatorHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug while delivering one cell's image: the other cells finish, the manifest is
    written, and the next run collects that cell's task instead of creating another."""
    import nbp.flows.engine.runner as runner_module

    real_verify = runner_module.verify_image

    def broken(data: bytes, fmt: str, size: tuple[int, int]) -> tuple[int, int]:
        if size == pixel_size("16:9", "1K"):
            raise RuntimeError("a bug")
        return real_verify(data, fmt, size)

    monkeypatch.setattr(runner_module, "verify_image", broken)
    spec = write_spec(tmp_path, ["a fig"])
    result = run(spec)
    assert result.exit_code == 1
    frame = manifest(tmp_path)
    assert dict(zip(frame["aspect_ratio"], frame["status"], strict=True)) == {
        "1:1": "succeeded", "16:9": "failed"}
    assert frame.filter(pl.col("status") == "failed")["error_code"][0] == "internal_error"
    monkeypatch.setattr(runner_module, "verify_image", real_verify)
    assert run(spec).exit_code == 0
    assert len(hub["kie"].creates) == 2  # the 16:9 task was collected, not created again


def test_every_run_leaves_a_record_its_manifest_rows_name(hub: EmulatorHub, tmp_path: Path) -> None:
    from nbp.outputs.runs import read_records
    from nbp.outputs.sink import Sink

    spec = write_spec(tmp_path, ["a lemon"])
    first, second = run(spec), run(spec, force=True)
    records = read_records(Sink(str(tmp_path / "out")))
    assert [r.run_id for r in records] == [first.run_id, second.run_id]
    assert records[0].spec_text == spec.read_text()
    assert records[1].counts.get("succeeded") == 2 and records[1].channels[0]["key"] == "kie"
    assert set(manifest(tmp_path)["run_id"]) == {second.run_id}


# -- issue 19: keys per intent, resume of a journalled create, the provider's word ---------


@pytest.mark.parametrize("provider", ["hiapi", "runware"])
def test_the_same_spec_into_a_second_target_creates_new_tasks(
    hub: EmulatorHub, tmp_path: Path, provider: str
) -> None:
    """Keys belong to a create intent, not to the cell: a second target is a new intent
    (HiAPI would hand back the first target's task for a reused key, Runware refuse it)."""
    spec = write_spec(tmp_path, ["twice"], provider=provider,
                      matrix={"prompt": ["twice"], "aspect_ratio": ["1:1"]})
    assert run(spec).exit_code == 0
    assert run(spec, target=str(tmp_path / "second")).exit_code == 0
    first = manifest(tmp_path)["remote_task_id"].to_list()
    second = pl.read_parquet(tmp_path / "second" / "manifest.parquet")["remote_task_id"]
    assert hub[provider].creates_for("twice") == 2 and first != second.to_list()
    keys = [c.idempotency_key for c in hub[provider].creates]
    assert len(set(keys)) == 2 and all(k and not k.startswith("nbp-") for k in keys)


@pytest.mark.parametrize(
    ("provider", "status", "creates"),
    [
        pytest.param("kie", "uncertain", 1, id="kie-cannot-be-asked-no-new-create"),
        pytest.param("hiapi", "succeeded", 1, id="hiapi-resent-with-the-journalled-key"),
        pytest.param("runware", "succeeded", 1, id="runware-found-by-its-task-uuid"),
    ],
)
def test_a_journalled_create_sent_is_resumed_by_the_resend_rule_never_as_fresh(
    hub: EmulatorHub, tmp_path: Path, provider: str, status: str, creates: int
) -> None:
    """What kill -9 between journalling the intent and recording its answer leaves: the
    entry says create_sent with the intent's key, the provider has the task."""
    spec = write_spec(tmp_path, ["journalled"], provider=provider,
                      matrix={"prompt": ["journalled"], "aspect_ratio": ["1:1"]})
    assert run(spec).exit_code == 0
    key = hub[provider].creates[0].idempotency_key
    entry_path = next((tmp_path / "out" / ".nbp" / "cells").glob("*.json"))
    entry = json.loads(entry_path.read_text())
    entry.update(state="create_sent", task=None, row=None, intent=key, idempotency_key=key,
                 reserved_usd=0.09, spent_usd=0.0)
    entry_path.write_text(json.dumps(entry))
    (tmp_path / "out" / "manifest.parquet").unlink()
    for image in (tmp_path / "out").glob("*.png"):
        image.unlink()
    result = run(spec)
    row = manifest(tmp_path).row(0, named=True)
    assert row["status"] == status, row["error_message"]
    assert hub[provider].creates_for("journalled") == creates
    if provider == "kie":
        assert row["cost_usd"] == pytest.approx(0.09)  # it may have been billed: counted
    if provider == "hiapi":  # sent again with the journalled key: the original came back
        assert hub[provider].requests.count(("POST", "/hiapi/v1/tasks")) == 2
    if status == "uncertain":
        assert result.exit_code == 1 and run(spec).counts["uncertain"] == 1
        assert hub[provider].creates_for("journalled") == 1


def test_a_task_the_provider_no_longer_knows_is_uncertain_never_created_again(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, ["forgotten"], matrix={"prompt": ["forgotten"],
                                                       "aspect_ratio": ["1:1"]})
    hub["kie"].configure(latency_s=2.0)

    async def forget() -> None:  # the task disappears at the provider while we poll it
        while not hub["kie"].creates:
            await asyncio.sleep(0.01)
        hub["kie"].tasks.clear()

    async def go() -> RunResult:
        forgetting = asyncio.create_task(forget())
        try:
            return await run_job(RunOptions(spec=str(spec)))
        finally:
            forgetting.cancel()

    assert asyncio.run(go()).exit_code == 1
    row = manifest(tmp_path).row(0, named=True)
    assert row["status"] == "uncertain" and row["cost_usd"] == pytest.approx(0.09)
    assert run(spec).counts["uncertain"] == 1
    assert hub["kie"].creates_for("forgotten") == 1


def test_an_image_is_never_written_over_another_cells_file(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    """Another job's cell owns the path (the manifest says so) and its file comes back while
    this cell's task runs: this cell fails without overwriting it."""
    alpha = write_spec(tmp_path, ["alpha"], matrix={"prompt": ["alpha"],
                                                    "aspect_ratio": ["1:1"]},
                       output={"target": str(tmp_path / "out"), "path": "same.{ext}"},
                       name="alpha")
    assert run(alpha).exit_code == 0
    image = tmp_path / "out" / "same.png"
    theirs = image.read_bytes()
    image.unlink()
    beta = write_spec(tmp_path, ["beta"], matrix={"prompt": ["beta"], "aspect_ratio": ["1:1"]},
                      output={"target": str(tmp_path / "out"), "path": "same.{ext}"},
                      name="beta")
    hub["kie"].configure(latency_s=1.0)

    async def restore() -> None:
        while not hub["kie"].creates_for("beta"):
            await asyncio.sleep(0.01)
        image.write_bytes(theirs)

    async def go() -> RunResult:
        restoring = asyncio.create_task(restore())
        try:
            return await run_job(RunOptions(spec=str(beta)))
        finally:
            restoring.cancel()

    assert asyncio.run(go()).exit_code == 1
    assert image.read_bytes() == theirs
    row = manifest(tmp_path).filter(pl.col("job") == "beta").row(0, named=True)
    assert row["status"] == "failed" and "not overwritten" in row["error_message"]


@pytest.mark.parametrize(("marker", "switches", "code"), [
    pytest.param(CONTENT_MARKER, {"failure": "code", "content_code": "contentModerated"},
                 "contentModerated", id="http-400-content-moderated"),
    pytest.param(FAIL_MARKER, {"failure": "code", "fail_code": "neverSeenBefore"},
                 "neverSeenBefore", id="http-400-unknown-code"),
    pytest.param(CONTENT_MARKER, {"failure": "status"}, "invalidProviderContent",
                 id="http-200-status-error"),
])
def test_the_providers_word_in_a_poll_answer_ends_the_cell_at_once(
    hub: EmulatorHub, tmp_path: Path, marker: str, switches: dict[str, str], code: str
) -> None:
    """Runware may answer getResponse for a refused task with HTTP 400 and an error item
    naming our task, in a code nbp has never seen: the provider's word, not a fault to retry
    for `patience_s` (ten minutes)."""
    hub["runware"].configure(**switches)
    spec = write_spec(tmp_path, [f"refused {marker}"], provider="runware", retries=0,
                      matrix={"prompt": [f"refused {marker}"], "aspect_ratio": ["1:1"]})
    started = time.monotonic()
    result = run(spec)
    assert time.monotonic() - started < 15 and result.exit_code == 1
    row = manifest(tmp_path).row(0, named=True)
    assert (row["status"], row["error_code"]) == ("failed", code), row["error_message"]
    assert hub["runware"].creates_for("refused") == 1


def test_an_emulated_run_stopped_midway_is_finished_by_the_next_emulated_run(
    tmp_path: Path,
) -> None:
    """`--emulate` starts its emulators afresh each run; they remember the tasks of earlier
    emulated runs on the target, as a provider would, so the next run collects the tasks
    the stopped one left instead of finding them unknown (uncertain)."""
    spec = write_spec(tmp_path, [f"emulated {i}" for i in range(6)],
                      matrix={"aspect_ratio": ["1:1"]})
    interrupt = Interrupt()
    progress = Progress()

    async def stop_after_three() -> RunResult:
        async def watch() -> None:
            while progress.submitted < 3:
                await asyncio.sleep(0.01)
            interrupt.request(signal.SIGINT)

        watcher = asyncio.create_task(watch())
        try:
            return await run_job(RunOptions(spec=str(spec), emulate=True,
                                            emulator_latency_s=2.0),
                                 hooks=RunHooks(interrupt=interrupt, emulation=serve_emulators),
                                 progress=progress)
        finally:
            watcher.cancel()

    first = asyncio.run(stop_after_three())
    assert first.exit_code == 130 and first.counts.get("pending", 0) >= 3
    left = manifest(tmp_path).filter(pl.col("status") == "pending")
    second = run(spec, emulate=True, emulator_latency_s=2.0)
    assert second.exit_code == 0, manifest(tmp_path)["error_message"].to_list()
    again = manifest(tmp_path).join(left.select("cell_id", "remote_task_id"), on="cell_id")
    assert again["remote_task_id"].to_list() == again["remote_task_id_right"].to_list()


def test_a_journal_of_version_1_is_upgraded_and_its_cancelled_task_collected(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    """Version 1 wrote `cancelled` whether or not the provider confirmed: an entry that still
    holds a task id is a task to collect, never a cell to create again."""
    spec = write_spec(tmp_path, ["old journal"], matrix={"prompt": ["old journal"],
                                                         "aspect_ratio": ["1:1"]})
    hub["kie"].configure(poll_5xx_prob=1.0)
    assert run(spec, retry=RetryPolicy(patience_s=0.2)).counts["pending"] == 1
    hub["kie"].configure(poll_5xx_prob=0.0)
    entry_path = next((tmp_path / "out" / ".nbp" / "cells").glob("*.json"))
    entry = json.loads(entry_path.read_text())
    for added in ("version", "intent"):
        entry.pop(added)
    entry.update(state="cancelled", idempotency_key="nbp-old-kie-1", reserved_by=entry["run_id"])
    entry_path.write_text(json.dumps(entry))
    assert run(spec).exit_code == 0
    assert hub["kie"].creates_for("old journal") == 1
    upgraded = json.loads(entry_path.read_text())
    assert (upgraded["state"], upgraded["version"]) == ("succeeded", 2)


# -- one ledger per target (issue 20) ---------------------------------------------------------


def test_max_total_usd_counts_what_runs_without_a_cap_spent(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    """An uncapped job spent $0.45 on the target; a job capped at $0.50 may add one image
    at most ($0.09), not $0.45 more."""
    free = write_spec(tmp_path, [f"free {i}" for i in range(5)], name="free",
                      matrix={"aspect_ratio": ["1:1"]})
    assert run(free).exit_code == 0
    ledger = json.loads((tmp_path / "out" / ".nbp" / "budget.json").read_text())
    assert ledger["total_usd"] == pytest.approx(0.45)
    assert not list((tmp_path / "out" / ".nbp" / "spend").glob("*.json"))  # folded
    capped = write_spec(tmp_path, [f"capped {i}" for i in range(5)], name="capped",
                        matrix={"aspect_ratio": ["1:1"]}, budget={"max_total_usd": 0.5})
    assert run(capped).counts["skipped"] == 5
    assert hub["kie"].creates_for("capped") == 0


def test_a_capped_run_sees_an_uncapped_run_beside_it(hub: EmulatorHub, tmp_path: Path) -> None:
    """Both at once on one target: the uncapped run's spend file (flushed every 2 s) is what
    the capped run counts, under the lease, before each of its creates."""
    hub["kie"].configure(latency_s=4.0)
    target = {"target": str(tmp_path / "out")}
    (tmp_path / "free").mkdir()
    (tmp_path / "capped").mkdir()
    free = write_spec(tmp_path / "free", [f"beside {i}" for i in range(4)], name="free",
                      matrix={"aspect_ratio": ["1:1"]}, output=target)
    capped = write_spec(tmp_path / "capped", [f"capped {i}" for i in range(4)], name="capped",
                        matrix={"aspect_ratio": ["1:1"]}, budget={"max_total_usd": 0.40},
                        output=target)
    spend = tmp_path / "out" / ".nbp" / "spend"

    async def both() -> tuple[RunResult, RunResult]:
        first = asyncio.create_task(run_job(RunOptions(spec=str(free))))
        while not any(spend.glob("*.json")):  # its four holds are on the target
            await asyncio.sleep(0.05)
        second = await run_job(RunOptions(spec=str(capped)))
        return await first, second

    _, second = asyncio.run(both())
    assert hub["kie"].creates_for("capped") == 0 and second.counts["skipped"] == 4
    ledger = json.loads((tmp_path / "out" / ".nbp" / "budget.json").read_text())
    assert ledger["total_usd"] == pytest.approx(0.36) and ledger["open"] == {}


@pytest.mark.parametrize("ledger", [
    pytest.param("{not json", id="does-not-parse"),
    pytest.param("[1, 2]", id="an-array"),
    pytest.param('{"total_usd": "lots", "runs": {}}', id="a-string-total"),
    pytest.param('{"total_usd": -5, "runs": {}}', id="negative"),
    pytest.param('{"total_usd": 1, "runs": {"r": 1}, "open": {"i": 3}}', id="a-bare-hold"),
])
def test_a_ledger_that_cannot_be_read_stops_the_run_before_anything_is_paid(
    hub: EmulatorHub, tmp_path: Path, ledger: str
) -> None:
    spec = write_spec(tmp_path, ["guarded"], budget={"max_total_usd": 1.0})
    (tmp_path / "out" / ".nbp").mkdir(parents=True)
    (tmp_path / "out" / ".nbp" / "budget.json").write_text(ledger)
    with pytest.raises(LedgerInvalid, match=r"budget\.json is not a spend ledger.*delete it"):
        run(spec)
    assert hub["kie"].requests == []


def test_a_target_holds_emulated_or_live_cells_never_both(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    """Placeholder images never end up in a real catalog: a live run into a target an
    emulated run wrote is refused before anything is sent, and the reverse too."""
    spec = write_spec(tmp_path, ["marked"],
                      matrix={"prompt": ["marked"], "aspect_ratio": ["1:1"]})
    emulated = run(spec, emulate=True, emulator_latency_s=0.1)
    assert emulated.exit_code == 0 and emulated.emulated
    row = manifest(tmp_path).row(0, named=True)
    assert row["emulated"] is True
    with pytest.raises(RunConfigurationError, match="holds emulated cells"):
        run(spec, force=True)  # live, into the emulated target
    assert hub["kie"].requests == []
    (tmp_path / "live").mkdir()
    other = write_spec(tmp_path / "live", ["marked"], matrix={"prompt": ["marked"]},
                       output={"target": str(tmp_path / "live-out")})
    assert run(other).exit_code == 0
    with pytest.raises(RunConfigurationError, match="holds live cells"):
        run(other, emulate=True, force=True)


# -- refresh in place (issue 21) ----------------------------------------------------------


def catalog(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    """A one-ratio catalog spec over `rows` of (sku, title), images at `{sku}.png`."""
    (tmp_path / "products.csv").write_text(
        "sku,title\n" + "".join(f'{sku},"{title}"\n' for sku, title in rows))
    return write_spec(tmp_path, ["Studio photo of the {title}"], name="catalog",
                      dataset={"path": "products.csv"},
                      matrix={"prompt": ["Studio photo of the {title}"],
                              "aspect_ratio": ["1:1"]},
                      output={"target": str(tmp_path / "out"), "path": "{sku}.{ext}"})


def test_a_changed_product_supersedes_its_image_and_keeps_the_old_one(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    week_1 = catalog(tmp_path, [("A1", "red mug"), ("B2", "blue bag"), ("C3", "old hat")])
    assert run(week_1).exit_code == 0
    before = manifest(tmp_path)
    old_a1 = before.filter(pl.col("output_path") == "A1.png").row(0, named=True)
    old_image = (tmp_path / "out" / "A1.png").read_bytes()

    week_2 = catalog(tmp_path, [("A1", "red mug, new glaze"), ("B2", "blue bag")])
    result = run(week_2)
    assert result.exit_code == 0, manifest(tmp_path)["error_message"].to_list()
    assert len(hub["kie"].creates) == 4  # three in week 1, the changed A1 in week 2
    after = manifest(tmp_path)
    new_a1 = after.filter((pl.col("output_path") == "A1.png")
                          & pl.col("superseded_by").is_null()).row(0, named=True)
    assert new_a1["cell_id"] != old_a1["cell_id"] and new_a1["status"] == "succeeded"
    kept = after.filter(pl.col("cell_id") == old_a1["cell_id"]).row(0, named=True)
    assert kept["superseded_by"] == new_a1["cell_id"]
    history = Path(kept["output_uri"])
    assert history.read_bytes() == old_image and ".nbp/history/" in str(history)
    assert (tmp_path / "out" / "A1.png").read_bytes() != old_image
    stale = after.filter(pl.col("stale")).select("cell_id", "output_path").rows()
    assert [path for _, path in stale] in (["A1.png", "C3.png"], ["C3.png", "A1.png"])
    assert (tmp_path / "out" / "C3.png").exists()  # stale, not deleted
    again = run(week_2)
    assert again.exit_code == 0 and len(hub["kie"].creates) == 4  # nothing paid twice
    hat = (tmp_path / "out" / "C3.png").read_bytes()
    assert run(week_2, archive_stale=True).exit_code == 0  # asked: stale images to history
    archived = manifest(tmp_path).filter(pl.col("output_path") == "C3.png").row(0, named=True)
    assert not (tmp_path / "out" / "C3.png").exists() and archived["stale"]
    assert Path(archived["output_uri"]).read_bytes() == hat



def test_a_changed_output_path_moves_images_without_paying(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    spec = catalog(tmp_path, [("A1", "red mug"), ("B2", "blue bag")])
    assert run(spec).exit_code == 0
    images = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("*.png")}
    spec.write_text(spec.read_text().replace("'{sku}.{ext}'", "'shop/{sku}.{ext}'"))
    assert run(spec).exit_code == 0
    assert len(hub["kie"].creates) == 2  # moved, not created again
    moved = {p.name: p.read_bytes() for p in (tmp_path / "out" / "shop").glob("*.png")}
    assert moved == images and not list((tmp_path / "out").glob("*.png"))
    assert sorted(manifest(tmp_path)["output_path"]) == ["shop/A1.png", "shop/B2.png"]


def test_a_missing_image_is_collected_again_from_its_task_not_paid_again(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    spec = catalog(tmp_path, [("A1", "red mug"), ("B2", "blue bag")])
    assert run(spec).exit_code == 0
    image = tmp_path / "out" / "A1.png"
    kept = image.read_bytes()
    image.unlink()  # someone deleted it
    assert run(spec).exit_code == 0
    assert image.read_bytes() == kept and len(hub["kie"].creates) == 2
    image.unlink()
    hub["kie"].tasks.clear()  # ... and the provider no longer serves the task
    again = run(spec)
    assert again.exit_code == 1 and len(hub["kie"].creates) == 2
    row = manifest(tmp_path).filter(pl.col("output_path") == "A1.png").row(0, named=True)
    assert (row["status"], row["error_code"]) == ("failed", "image_missing")
    assert "--force" in row["error_message"]
    assert run(spec).exit_code == 1  # still reported, never silently "succeeded"


def test_this_weeks_export_is_a_run_option_and_is_recorded(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    """A deployment points `dataset` at this week's export instead of overwriting a file in
    the checkout; the run's record says which it read."""
    spec = catalog(tmp_path, [("A1", "red mug")])
    export = tmp_path / "exports" / "2026-12.csv"
    export.parent.mkdir()
    export.write_text('sku,title\nB2,"blue bag"\nC3,"green hat"\n')
    result = run(spec, inputs=InputPolicy.from_environ(dataset=str(export)))
    assert result.exit_code == 0
    assert sorted(manifest(tmp_path)["output_path"]) == ["B2.png", "C3.png"]
    record = json.loads(next((tmp_path / "out" / ".nbp" / "runs").glob("*.json")).read_text())
    assert record["dataset"] == str(export)


def test_a_rejected_image_is_made_again_once_and_the_target_remembers_it(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    from nbp.outputs.review import record
    from nbp.outputs.sink import Sink

    spec = catalog(tmp_path, [("A1", "red mug"), ("B2", "blue bag")])
    assert run(spec).exit_code == 0
    first = manifest(tmp_path).filter(pl.col("output_path") == "A1.png").row(0, named=True)
    old_image = (tmp_path / "out" / "A1.png").read_bytes()
    record(Sink(str(tmp_path / "out")), first["cell_id"], "rejected", by="reviewer")
    assert run(spec).exit_code == 0 and len(hub["kie"].creates) == 2  # a plain run: nothing
    assert run(spec, redo_rejected=True).exit_code == 0
    assert len(hub["kie"].creates) == 3  # only the rejected one, with a new seed
    rows = manifest(tmp_path)
    now = rows.filter((pl.col("output_path") == "A1.png")
                      & pl.col("superseded_by").is_null()).row(0, named=True)
    old = rows.filter(pl.col("cell_id") == first["cell_id"]).row(0, named=True)
    assert old["superseded_by"] == now["cell_id"] and old["review"] == "rejected"
    assert Path(old["output_uri"]).read_bytes() == old_image and now["review"] is None
    assert run(spec).exit_code == 0 and run(spec, redo_rejected=True).exit_code == 0
    assert len(hub["kie"].creates) == 3  # remembered: neither undone nor paid again


def test_a_budget_cap_stops_between_products_never_inside_one(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    """Three products of three images each ($0.27 a product), a cap of $0.50: one product
    is made whole and the others are not started; no product is left half done."""
    (tmp_path / "products.csv").write_text("sku,title\nA1,mug\nB2,bag\nC3,hat\n")
    spec = write_spec(tmp_path, ["{title}"], name="products",
                      dataset={"path": "products.csv", "key": "sku"},
                      matrix={"prompt": ["{title}"], "aspect_ratio": ["1:1", "4:5", "16:9"]},
                      output={"target": str(tmp_path / "out"),
                              "path": "{sku}/{aspect_ratio}.{ext}"},
                      budget={"max_usd": 0.5})
    result = run(spec)
    frame = manifest(tmp_path)
    made = frame.group_by("key_sku").agg((pl.col("status") == "succeeded").sum().alias("n"))
    counts = sorted(made["n"].to_list())
    assert counts == [0, 0, 3], frame.select("key_sku", "status", "error_message").rows()
    assert result.counts["skipped"] == 6 and len(hub["kie"].creates) == 3
    assert result.products is not None and result.products.startswith(
        "products: 1 of 3 complete (not: ")
