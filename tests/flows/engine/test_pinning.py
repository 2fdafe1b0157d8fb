"""Cells pinned by a `provider` or `model` matrix axis, run through the engine against the
emulators (no Prefect). The evidence is where the emulators received creates: a pinned cell
is created on its provider only, whatever routing or fallback would do with it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from nbp.outputs.runs import read_records
from nbp.outputs.sink import Sink
from nbp.providers.emulator.hub import EmulatorHub
from nbp.providers.gemini import MODELS
from tests.flows.engine.emulated import manifest, run, serving

LATENCY_S = 0.2
PROVIDERS = ("kie", "runware", "gemini")


@pytest.fixture(scope="module")
def hub() -> Iterator[EmulatorHub]:
    with serving(list(PROVIDERS), LATENCY_S) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(hub: EmulatorHub) -> None:
    hub.reset()
    for name in PROVIDERS:
        hub[name].configure(latency_s=LATENCY_S, fail_prob=0.0)


def write_spec(tmp_path: Path, matrix: dict[str, Any], **top: Any) -> Path:
    spec: dict[str, Any] = {
        "version": 1, "name": "pinning-test",
        "matrix": {"prompt": ["a {style} teapot"], "style": ["glass", "clay"], **matrix},
        "retries": 1,
        "output": {"target": str(tmp_path / "out")},
        "limits": {name: {"poll_interval": 0.05} for name in PROVIDERS},
        **top,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def variables(row: dict[str, Any]) -> dict[str, str]:
    found: dict[str, str] = json.loads(row["vars"])  # the manifest keeps them as JSON text
    return found


def creates(hub: EmulatorHub) -> dict[str, int]:
    return {name: len(hub[name].creates) for name in PROVIDERS}


def test_a_provider_axis_runs_every_cell_on_its_own_provider(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    result = run(write_spec(tmp_path, {"provider": list(PROVIDERS)}, routing="spread"))
    frame = manifest(tmp_path)
    assert result.counts["succeeded"] == 6
    assert creates(hub) == {"kie": 2, "runware": 2, "gemini": 2}
    assert frame["cell_id"].n_unique() == 6  # three providers, three cells per style
    for row in frame.iter_rows(named=True):
        assert row["provider"] == variables(row)["provider"]


@pytest.mark.parametrize("pinned", [True, False])
def test_fallback_never_moves_a_pinned_cell(
    hub: EmulatorHub, tmp_path: Path, pinned: bool
) -> None:
    """Every kie task fails: unpinned cells fall back to runware (the control), cells
    pinned to kie fail there after their retries and runware receives nothing."""
    hub["kie"].configure(fail_prob=1.0)
    matrix = {"provider": ["kie"]} if pinned else {}
    result = run(write_spec(tmp_path, matrix, provider=["kie", "runware"]))
    frame = manifest(tmp_path)
    if pinned:
        assert creates(hub) == {"kie": 4, "runware": 0, "gemini": 0}  # 2 cells x 2 tasks
        assert result.counts["failed"] == 2
        assert set(frame["provider"]) == {"kie"}
    else:
        assert creates(hub)["runware"] == 2
        assert result.counts["succeeded"] == 2


def test_a_model_axis_asks_for_each_model_id(hub: EmulatorHub, tmp_path: Path) -> None:
    result = run(write_spec(tmp_path, {"model": list(MODELS)}, provider="gemini"))
    frame = manifest(tmp_path)
    assert result.counts["succeeded"] == 4
    asked = sorted(task.extra["model"] for task in hub["gemini"].tasks.values())
    assert asked == sorted([*MODELS, *MODELS])
    assert sorted(frame["model"]) == sorted([*MODELS, *MODELS])
    for row in frame.iter_rows(named=True):
        assert row["model"] == variables(row)["model"]
    [record] = read_records(Sink(str(tmp_path / "out")))
    assert [c["model"] for c in record.channels] == [", ".join(sorted(MODELS))]


def test_an_include_entry_pins_only_the_cells_it_adds(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, {"include": [{"style": "paper", "provider": "runware"}]},
                      provider="kie")
    run(spec)
    frame = manifest(tmp_path).sort("provider")
    assert creates(hub) == {"kie": 2, "runware": 1, "gemini": 0}
    paper = frame.filter(pl.col("provider") == "runware").row(0, named=True)
    assert variables(paper)["style"] == "paper"


def test_shards_that_own_their_accounts_run_the_cells_pinned_to_them(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, {"provider": ["kie", "runware"]}, routing="spread")
    first = run(spec, shard="0/2", own_accounts=True)    # owns kie
    assert creates(hub) == {"kie": 2, "runware": 0, "gemini": 0}
    second = run(spec, shard="1/2", own_accounts=True)   # owns runware
    assert creates(hub) == {"kie": 2, "runware": 2, "gemini": 0}
    assert first.counts["succeeded"] == second.counts["succeeded"] == 2


def test_a_pinned_cell_that_was_never_sent_names_its_own_provider(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    run(write_spec(tmp_path, {"provider": ["runware", "gemini"]},
                   budget={"max_usd": 0.01}))  # less than any image: nothing is sent
    frame = manifest(tmp_path)
    assert creates(hub) == {"kie": 0, "runware": 0, "gemini": 0}
    assert set(frame["status"]) == {"skipped"}
    for row in frame.iter_rows(named=True):
        assert row["provider"] == variables(row)["provider"]
