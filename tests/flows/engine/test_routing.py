"""Routing over channels (provider x account) against the emulators, no Prefect. The
evidence is what each emulator account recorded: its creates, their times, its refusals."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from nbp.flows.engine.job import RunOptions, run_job
from nbp.providers.emulator.core import CONTENT_MARKER, CreateRecord
from nbp.providers.emulator.hub import EmulatorHub
from tests.flows.engine.emulated import manifest, run, serving

LATENCY_S = 0.2
KIE_2 = "emulated-kie-second-account"
# The documented 20 creates / 10 s, ten times faster: the same shape in a tenth of the time.
WINDOW = (20, 1.0)


@pytest.fixture(scope="module")
def hub() -> Iterator[EmulatorHub]:
    with serving(["kie", "apikley", "runware"], LATENCY_S) as running:
        running["kie"].add_account(KIE_2)
        os.environ["KIE_API_KEY_2"] = KIE_2  # restored with the rest when serving ends
        yield running


@pytest.fixture(autouse=True)
def fresh(hub: EmulatorHub) -> None:
    hub.reset()
    for emulator in hub.emulators.values():
        emulator.configure(latency_s=LATENCY_S, rate_limit=None, fail_prob=0.0)


def write_spec(tmp_path: Path, cells: int, **top: Any) -> Path:
    spec: dict[str, Any] = {
        "version": 1, "name": "routing-test", "provider": "kie",
        "matrix": {"prompt": ["a brass key on linen"]}, "repeat": cells,
        "output": {"target": str(tmp_path / "out"), "format": "jpg"},
        "limits": {name: {"poll_interval": 0.05} for name in ("kie", "apikley", "runware")},
        **top,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def creates_by_account(hub: EmulatorHub) -> dict[str, list[CreateRecord]]:
    found: dict[str, list[CreateRecord]] = {}
    for name in ("kie", "apikley", "runware"):
        for record in hub[name].creates:
            found.setdefault(f"{name}/{record.account}", []).append(record)
    return found


def most_in_one_window(records: list[CreateRecord], window_s: float) -> int:
    times = sorted(r.at for r in records)
    return max((sum(1 for t in times[i:] if t - start < window_s)
                for i, start in enumerate(times)), default=0)


def span_s(frame: pl.DataFrame, records: list[CreateRecord]) -> float:
    """First create the emulators received -> last cell completed."""
    last = frame["completed_at"].max()
    assert last is not None
    return float(last.timestamp()) - min(r.at for r in records)  # type: ignore[union-attr]


def test_spread_over_three_channels_takes_at_most_040_of_one_account(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    limits = {name: {"rate": "20/1s", "poll_interval": 0.05} for name in ("kie", "apikley")}
    for name in ("kie", "apikley"):
        hub[name].configure(rate_limit=WINDOW)

    alone = tmp_path / "alone"
    alone.mkdir()
    single = run(write_spec(alone, 120, limits=limits))
    assert single.counts["succeeded"] == 120
    one_account = span_s(manifest(alone), hub["kie"].creates)
    hub.reset()

    pooled = tmp_path / "pooled"
    pooled.mkdir()
    result = run(write_spec(pooled, 120, provider=["kie", "apikley"], routing="spread",
                            accounts={"kie": ["KIE_API_KEY", "KIE_API_KEY_2"]},
                            limits=limits))
    frame = manifest(pooled)
    assert result.counts["succeeded"] == 120 and frame["cell_id"].n_unique() == 120
    by_account = creates_by_account(hub)
    assert sum(len(v) for v in by_account.values()) == 120  # one create per cell
    assert len(by_account) == 3 and all(len(v) >= 20 for v in by_account.values()), {
        k: len(v) for k, v in by_account.items()}
    assert hub["kie"].rejected_for_rate == hub["apikley"].rejected_for_rate == 0
    for records in by_account.values():
        assert most_in_one_window(records, WINDOW[1]) <= WINDOW[0]
    everything = [r for records in by_account.values() for r in records]
    assert span_s(frame, everything) <= 0.40 * one_account, (span_s(frame, everything),
                                                             one_account)
    assert set(frame["account"]) == {"KIE_API_KEY", "KIE_API_KEY_2", "APIKLEY_API_KEY"}
    counts = frame.group_by("provider", "account").len()
    assert counts["len"].sum() == 120


def test_an_account_that_is_refused_hands_its_cells_to_the_other_channels(
    hub: EmulatorHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIE_API_KEY_2", "a-key-kie-does-not-know")
    result = run(write_spec(tmp_path, 12, provider=["kie"], routing="spread",
                            accounts={"kie": ["KIE_API_KEY_2", "KIE_API_KEY"]}))
    frame = manifest(tmp_path)
    assert result.counts["succeeded"] == 12
    assert set(frame["account"]) == {"KIE_API_KEY"}
    assert len(hub["kie"].creates) == 12  # a refused create creates nothing


def test_a_content_rejection_stays_final_across_channels(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, 1, provider=["kie", "apikley"], routing="spread",
                      matrix={"prompt": [f"a statue {CONTENT_MARKER}"]})
    result = run(spec)
    assert result.counts["failed"] == 1
    assert len(hub["kie"].creates) + len(hub["apikley"].creates) == 1


def test_fallback_is_the_default_and_names_the_account(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    run(write_spec(tmp_path, 4, provider=["apikley", "kie"]))
    frame = manifest(tmp_path)
    assert set(frame["provider"]) == {"apikley"} and set(frame["account"]) == {"APIKLEY_API_KEY"}
    assert not hub["kie"].creates


def test_cheapest_without_a_deadline_uses_the_cheapest_channel_only(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    run(write_spec(tmp_path, 6, provider=["runware", "apikley", "kie"], routing="cheapest"))
    assert set(manifest(tmp_path)["provider"]) == {"kie"}  # $0.09 against $0.134 and $0.138
    assert not hub["runware"].creates and not hub["apikley"].creates


def test_cheapest_by_a_deadline_adds_dearer_channels_only_when_needed(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    limits = {"kie": {"rate": "5/1s", "poll_interval": 0.05},
              "runware": {"poll_interval": 0.05}}
    hub["kie"].configure(rate_limit=(5, 1.0))
    roomy = tmp_path / "roomy"
    roomy.mkdir()
    run(write_spec(roomy, 10, provider=["runware", "kie"], routing="cheapest",
                   deadline="1h", limits=limits))
    assert set(manifest(roomy)["provider"]) == {"kie"}
    hub.reset()
    tight = tmp_path / "tight"
    tight.mkdir()
    run(write_spec(tight, 40, provider=["runware", "kie"], routing="cheapest",
                   deadline="2s", limits=limits))
    frame = manifest(tight)
    assert frame.height == 40 and set(frame["status"]) == {"succeeded"}
    by_provider = dict(frame.group_by("provider").len().iter_rows())
    # kie alone needs ~8 s for 40 cells at 5/s: runware takes the rest, kie stays busy
    assert by_provider.get("runware", 0) > 0 and by_provider.get("kie", 0) >= 5, by_provider
    assert hub["kie"].rejected_for_rate == 0


def test_a_task_is_collected_with_the_account_that_created_it(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, 8, provider=["kie"], routing="spread",
                      accounts={"kie": ["KIE_API_KEY", "KIE_API_KEY_2"]})
    hub["kie"].configure(latency_s=30.0)

    async def interrupted() -> None:
        task = asyncio.create_task(run_job(RunOptions(spec=str(spec))))
        while len(hub["kie"].creates) < 8:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # the task ids are journalled
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupted())
    accounts = {r.account for r in hub["kie"].creates}
    assert accounts == {hub["kie"].api_key, KIE_2}
    for task in hub["kie"].tasks.values():
        task.latency_s = 0.0  # they all finish now
    result = run(spec)
    frame = manifest(tmp_path)
    assert result.counts["succeeded"] == 8 and len(hub["kie"].creates) == 8
    by_task = {r.task_id: r.account for r in hub["kie"].creates}
    for row in frame.iter_rows(named=True):
        expected = "KIE_API_KEY_2" if by_task[row["remote_task_id"]] == KIE_2 else "KIE_API_KEY"
        assert row["account"] == expected


def test_shards_that_own_their_accounts_share_none(hub: EmulatorHub, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, 12, provider=["kie", "apikley"], routing="spread",
                      accounts={"kie": ["KIE_API_KEY", "KIE_API_KEY_2"]})
    first = run(spec, shard="0/2", own_accounts=True)     # kie, apikley
    assert {r.account for r in hub["kie"].creates} == {hub["kie"].api_key}
    second = run(spec, shard="1/2", own_accounts=True)    # kie:KIE_API_KEY_2
    assert first.counts["succeeded"] + second.counts["succeeded"] == 12
    frame = manifest(tmp_path)
    assert frame.height == 12 and frame["cell_id"].n_unique() == 12
    second_shard = frame.filter(pl.col("run_id") == second.run_id)
    assert set(second_shard["account"]) == {"KIE_API_KEY_2"}
    assert len(hub["kie"].creates) + len(hub["apikley"].creates) == 12
    with pytest.raises(ValueError, match="owns no channel"):
        run(spec, shard="3/4", own_accounts=True)
