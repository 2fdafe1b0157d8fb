"""Batch channels (`gemini-batch`) through the engine against the Gemini emulator, no
Prefect: the evidence is the batches the emulator received and each cell's journal."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from nbp.flows.engine.job import RunOptions, RunResult, run_job
from nbp.providers.emulator.core import CONTENT_MARKER
from nbp.providers.emulator.hub import EmulatorHub
from nbp.providers.gemini_facts import DEFAULT_MODEL
from tests.flows.engine.emulated import manifest, run, serving

TURNAROUND_S = 0.5


@pytest.fixture(scope="module")
def hub() -> Iterator[EmulatorHub]:
    with serving(["gemini"], TURNAROUND_S) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(hub: EmulatorHub) -> None:
    hub.reset()
    hub["gemini"].configure(latency_s=TURNAROUND_S, fail_prob=0.0, drop_after_create_prob=0.0,
                            create_5xx_after_create_prob=0.0, submit_5xx_prob=0.0)


def write_spec(tmp_path: Path, prompts: list[str], **top: Any) -> Path:
    spec: dict[str, Any] = {
        "version": 1, "name": "batch-test", "provider": "gemini-batch",
        "matrix": {"prompt": prompts}, "retries": 0,
        "output": {"target": str(tmp_path / "out")},
        "limits": {"gemini-batch": {"poll_interval": 0.1}},
        **top,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def batches(hub: EmulatorHub) -> int:
    return len(hub["gemini"].creates)


PROMPTS = ["a plum on slate", "a pear on slate", "a fig on slate"]


def test_a_batch_runs_end_to_end_at_half_price_with_a_refused_line(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    result = run(write_spec(tmp_path, [*PROMPTS, f"a statue {CONTENT_MARKER}"]))
    frame = manifest(tmp_path)
    assert batches(hub) == 1  # four cells, one batch
    assert dict(frame.group_by("status").len().iter_rows()) == {"succeeded": 3, "failed": 1}
    refused = frame.filter(pl.col("status") == "failed").row(0, named=True)
    assert "ContentRejected" in refused["error_message"]
    done = frame.filter(pl.col("status") == "succeeded")
    assert set(done["provider"]) == {"gemini-batch"}
    assert all(0.05 < cost <= 0.0675 + 0.01 for cost in done["cost_usd"])  # half of 0.134
    assert done["image_tokens"].to_list() == [1120] * 3
    assert result.spent_usd == pytest.approx(float(frame["cost_usd"].sum()))
    assert all(task.startswith("batches/") for task in done["remote_task_id"])


def test_a_run_that_leaves_a_pending_batch_is_collected_by_the_next_without_a_new_one(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    hub["gemini"].configure(latency_s=3.0)
    spec = write_spec(tmp_path, PROMPTS)
    first = run(spec, batch_wait_s=0.3)
    assert first.counts.get("pending") == 3 and batches(hub) == 1
    assert set(manifest(tmp_path)["status"]) == {"pending"}
    second = run(spec)
    assert second.counts["succeeded"] == 3 and batches(hub) == 1


def test_a_lost_create_answer_is_found_by_listing_not_sent_again(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    hub["gemini"].configure(drop_after_create_prob=1.0)

    async def heal() -> None:
        while batches(hub) < 1:
            await asyncio.sleep(0.01)
        hub["gemini"].configure(drop_after_create_prob=0.0)

    async def go() -> RunResult:
        healer = asyncio.create_task(heal())
        result = await run_job(RunOptions(spec=str(write_spec(tmp_path, PROMPTS))))
        await healer
        return result

    result = asyncio.run(go())
    assert result.counts["succeeded"] == 3 and batches(hub) == 1


def test_a_create_that_made_no_batch_is_sent_again_once_for_the_whole_group(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    """A 5xx answer to the create: uncertain, so the runner asks by the group's name; the
    listing shows none, so the members send again and the group becomes one batch."""
    hub["gemini"].configure(submit_5xx_prob=1.0)
    create = f"/gemini/v1beta/models/{DEFAULT_MODEL}:batchGenerateContent"

    async def heal() -> None:
        while ("POST", create) not in hub["gemini"].requests:
            await asyncio.sleep(0.01)
        hub["gemini"].configure(submit_5xx_prob=0.0)

    async def go() -> RunResult:
        healer = asyncio.create_task(heal())
        result = await run_job(RunOptions(spec=str(write_spec(tmp_path, PROMPTS))))
        await healer
        return result

    result = asyncio.run(go())
    assert result.counts["succeeded"] == 3 and batches(hub) == 1
    sent = [path for method, path in hub["gemini"].requests if path == create]
    assert len(sent) == 2  # the refused create, then the group's one batch
    (batch,) = hub["gemini"].batches.values()
    assert len(batch.lines) == 3
    listed = [path for _, path in hub["gemini"].requests if path == "/gemini/v1beta/batches"]
    assert len(listed) == 1  # one listing answered every member
    assert set(manifest(tmp_path)["task_group"]) == {batch.name}


@pytest.mark.parametrize("made", [True, False], ids=["batch-made", "nothing-made"])
def test_after_a_lost_answer_the_group_is_sent_again_only_once_a_listing_spoke(
    hub: EmulatorHub, made: bool
) -> None:
    """The channel's side of a lost create: its members hear `SubmitUncertain`, and hear it
    again on a re-send until `recover` has listed the group's name; then the batch it found
    is every member's task, or, when there was none, one new create carries them all."""
    from dataclasses import replace

    from nbp.flows.engine.batching import BatchChannel
    from nbp.providers.base import ImageRequest, Submitted
    from nbp.providers.errors import SubmitUncertain
    from nbp.providers.gemini_batch import GeminiBatchProvider

    gemini = hub["gemini"]
    gemini.configure(**{"drop_after_create_prob" if made else "submit_5xx_prob": 1.0})

    async def go() -> list[Submitted | None]:
        provider = GeminiBatchProvider(GeminiBatchProvider.settings_from_env(os.environ))
        channel = BatchChannel(provider, label="nbp-lost")
        try:
            members = [await channel.prepare(replace(ImageRequest(p), cell_id=f"c{i}"))
                       for i, p in enumerate(PROMPTS[:2])]
            for outcome in await asyncio.gather(*(channel.submit(m) for m in members),
                                                return_exceptions=True):
                assert isinstance(outcome, SubmitUncertain), outcome
            gemini.configure(drop_after_create_prob=0.0, submit_5xx_prob=0.0)
            with pytest.raises(SubmitUncertain):  # no listing yet: nothing may be sent
                await channel.submit(members[0])
            assert len(gemini.creates) == int(made)
            found = [await channel.recover(m) for m in members]
            if made:
                return found
            assert found == [None, None]
            return list(await asyncio.gather(*(channel.submit(m) for m in members)))
        finally:
            await channel.aclose()

    tasks = asyncio.run(go())
    assert len(gemini.creates) == 1
    (batch,) = gemini.batches.values()
    assert [line.key for line in batch.lines] == ["c0", "c1"]
    assert [t.group if t else None for t in tasks] == [batch.name, batch.name]
    listed = [path for _, path in gemini.requests if path == "/gemini/v1beta/batches"]
    assert len(listed) == 1  # one listing answered both members


def test_a_kill_during_the_batch_create_is_resumed_by_listing_never_by_a_new_batch(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    """What kill -9 during the create leaves: every member journalled create_sent with the
    batch's display name, the batch at Google. The rerun finds it by listing."""
    spec = write_spec(tmp_path, PROMPTS)
    assert run(spec).exit_code == 0 and batches(hub) == 1
    for path in (tmp_path / "out" / ".nbp" / "cells").glob("*.json"):
        entry = json.loads(path.read_text())
        key = f"{entry['task']['extra']['display_name']}|{entry['cell_id']}"
        entry.update(state="create_sent", task=None, row=None, intent=key, idempotency_key=key,
                     reserved_usd=0.0675, spent_usd=0.0)
        path.write_text(json.dumps(entry))
    (tmp_path / "out" / "manifest.parquet").unlink()
    for image in (tmp_path / "out").glob("*.png"):
        image.unlink()
    again = run(spec)
    assert again.counts.get("succeeded") == 3, manifest(tmp_path)["error_message"].to_list()
    assert batches(hub) == 1


def test_a_failed_batch_fails_its_cells_with_the_reason(hub: EmulatorHub, tmp_path: Path) -> None:
    hub["gemini"].configure(fail_prob=1.0)
    run(write_spec(tmp_path, PROMPTS))
    frame = manifest(tmp_path)
    assert set(frame["status"]) == {"failed"} and batches(hub) == 1
    assert set(frame["error_code"]) == {"batch_failed"}


def test_groups_close_by_count_result_bytes_and_input_bytes(hub: EmulatorHub) -> None:
    """The provider's `BatchLimits` decide (its input bytes shrunk to see them bite)."""
    from dataclasses import replace
    from typing import ClassVar

    from nbp.flows.engine import batching
    from nbp.providers.base import Capabilities, ImageRequest, Reference
    from nbp.providers.gemini_batch import GeminiBatchProvider

    documented = GeminiBatchProvider.capabilities.batch
    assert documented is not None
    limits = replace(documented, max_input_bytes=3 * 2**20)  # 1.5 GiB in miniature

    class Small(GeminiBatchProvider):
        capabilities: ClassVar[Capabilities] = replace(GeminiBatchProvider.capabilities,
                                                       batch=limits)

    async def go() -> list[str]:
        provider = Small(Small.settings_from_env(os.environ))
        channel = batching.BatchChannel(provider, label="nbp-t")

        async def group_of(cell_id: str, request: ImageRequest) -> str:
            placed = await channel.prepare(replace(request, cell_id=cell_id))
            return (placed.idempotency_key or "").split("|")[0]

        small = ImageRequest("a fig", resolution="1K")
        big_refs = ImageRequest("a fig", resolution="1K", references=(
            Reference("ref.png", data=b"x" * (limits.max_input_bytes // 2)),))
        displays = [await group_of(f"c{i}", small) for i in range(limits.max_requests + 1)]
        displays += [await group_of(f"r{i}", big_refs) for i in range(2)]
        displays += [await group_of(f"k{i}", ImageRequest("a fig", resolution="4K"))
                     for i in range(40)]
        await channel.aclose()  # cancels the groups' creators: nothing is sent in this test
        return displays

    displays = asyncio.run(go())
    n = limits.max_requests
    first = min(n, limits.max_result_bytes // limits.expected_result_bytes["1K"])
    assert displays[:n].count(displays[0]) == first  # full by count or by result bytes
    assert displays[n + 1] != displays[n + 2]  # two large inputs never share a file
    fours = displays[n + 3:]
    per_group = max(fours.count(d) for d in set(fours))
    assert per_group * limits.expected_result_bytes["4K"] <= limits.max_result_bytes
    assert len(set(fours)) > 1


def test_cancelling_the_run_cancels_its_batch(hub: EmulatorHub, tmp_path: Path) -> None:
    hub["gemini"].configure(latency_s=30.0)
    spec = write_spec(tmp_path, PROMPTS)

    async def interrupted() -> None:
        task = asyncio.create_task(run_job(RunOptions(spec=str(spec))))
        journal = tmp_path / "out" / ".nbp" / "cells"
        while sum('"state":"created"' in p.read_text() for p in journal.glob("*.json")) < 3:
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupted())
    (batch,) = hub["gemini"].batches.values()
    assert batch.cancelled_at is not None and batches(hub) == 1


def test_an_old_batch_is_looked_at_less_often(hub: EmulatorHub) -> None:
    import time

    from nbp.flows.engine.batching import MAX_CHECK_INTERVAL_S, BatchChannel
    from nbp.providers.base import BatchJob
    from nbp.providers.gemini_batch import GeminiBatchProvider

    provider = GeminiBatchProvider(GeminiBatchProvider.settings_from_env(os.environ))
    channel = BatchChannel(provider, label="nbp-t", poll_interval_s=60.0)
    now = time.time()
    young, hours = (BatchJob("batches/a", "d", "running", created_at=now - age)
                    for age in (30.0, 5 * 3600.0))
    assert channel.check_interval_s(young) == 60.0
    assert channel.check_interval_s(hours) == pytest.approx(MAX_CHECK_INTERVAL_S)
    asyncio.run(channel.aclose())


def test_a_batch_channel_is_built_with_the_jobs_poll_interval(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    """The job's rules (here the spec's `limits`) reach the channel as it is built."""
    from nbp.flows.engine.batching import BatchChannel
    from nbp.flows.engine.job import open_providers
    from nbp.flows.spec.loader import load_job

    path = write_spec(tmp_path, PROMPTS, limits={"gemini-batch": {"poll_interval": 7}})
    options = RunOptions(spec=str(path))

    async def go() -> float:
        async with open_providers(load_job(str(path)).spec, options) as (providers, _):
            (channel,) = providers.values()
            assert isinstance(channel, BatchChannel)
            return channel.poll_interval_s

    assert asyncio.run(go()) == 7.0


def test_cells_asking_for_two_models_travel_in_two_batches(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    from nbp.providers.gemini import MODELS

    result = run(write_spec(tmp_path, PROMPTS[:2], matrix={"prompt": PROMPTS[:2],
                                                           "model": list(MODELS)}))
    assert result.counts["succeeded"] == 4
    models = sorted(batch.model for batch in hub["gemini"].batches.values())
    assert models == sorted(MODELS)  # a batch runs one model
    assert sorted(manifest(tmp_path)["model"]) == sorted([*MODELS, *MODELS])


@pytest.mark.parametrize("poll_interval", [
    pytest.param(None, id="documented-60s"), pytest.param(0.1, id="spec-0.1s"),
])
def test_batch_wait_ends_on_time_whatever_the_poll_interval(
    hub: EmulatorHub, tmp_path: Path, poll_interval: float | None
) -> None:
    """`--batch-wait 2` leaves the batch pending after about 2 s: the runner's first poll
    used to come at its 30 s cap (Gemini documents 60 s between looks), and a poll just
    before the end was followed by one up to 30 s later."""
    hub["gemini"].configure(latency_s=60.0)
    limits = {"gemini-batch": {"poll_interval": poll_interval}} if poll_interval else {}
    spec = write_spec(tmp_path, PROMPTS, limits=limits)
    started = time.monotonic()
    result = run(spec, batch_wait_s=2.0)
    took = time.monotonic() - started
    assert result.counts.get("pending") == 3 and result.waiting == 3
    assert 2.0 <= took < 6.0, took
