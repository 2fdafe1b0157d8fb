"""The manifest a run writes is analysable by axis: each variable a typed `var_` column,
typed again when runs of other types meet in one target; `seed_sent` says where the seed went
out (on the wire, as the emulators received it); `queue_s` and `generation_s` are the
provider's own times, where it reports them, and `latency_s` holds nbp's share besides.
Engine runs without Prefect here; one run through the command line on a Prefect server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from nbp.providers.conformance import values_named
from nbp.providers.emulator.hub import EmulatorHub
from tests.conftest import run_nbp
from tests.flows.engine.emulated import manifest, run, serving

LATENCY_S = 0.4  # a quarter of it queued (the emulators' default), the rest generating
PROVIDERS = ("kie", "runware", "gemini")


@pytest.fixture(scope="module")
def hub() -> Iterator[EmulatorHub]:
    with serving(list(PROVIDERS), LATENCY_S) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(hub: EmulatorHub) -> None:
    hub.reset()
    for emulator in hub.emulators.values():
        emulator.configure(latency_s=LATENCY_S, queue_s=None, rate_limit=None, fail_prob=0.0)


def write_spec(tmp_path: Path, matrix: dict[str, Any], **top: Any) -> Path:
    spec: dict[str, Any] = {
        "version": 1,
        "name": "columns",
        "provider": "kie",
        "matrix": {"prompt": ["a {style} lemon, {steps} steps"], **matrix},
        "output": {"target": str(tmp_path / "out")},
        "limits": {name: {"poll_interval": 0.05} for name in PROVIDERS},
        **top,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def check_columns(frame: pl.DataFrame, hub: EmulatorHub, seed: int) -> None:
    """Typed variable columns, the seed where each provider documents one, its times."""
    assert frame.schema["var_style"] == pl.String and frame.schema["var_steps"] == pl.Int64
    assert not [name for name in frame.columns if name in (
        "var_prompt", "var_provider", "var_aspect_ratio", "var_resolution")]
    assert set(frame["status"]) == {"succeeded"} and set(frame["seed"]) == {seed}
    by_provider = {p: frame.filter(pl.col("provider") == p) for p in PROVIDERS}
    assert by_provider["kie"]["seed_sent"].to_list() == [False] * 4
    assert set(by_provider["runware"]["seed_sent"]) == set(by_provider["gemini"]["seed_sent"]) \
        == {True}
    for name in PROVIDERS:  # on the wire, as the emulator received each create
        sent = [values_named("seed", create.body) for create in hub[name].creates]
        assert sent == [[] if name == "kie" else [seed]] * 4, name
    kie = by_provider["kie"]
    assert kie["queue_s"].to_list() == pytest.approx([LATENCY_S / 4] * 4, abs=0.01)
    assert kie["generation_s"].to_list() == pytest.approx([LATENCY_S * 3 / 4] * 4, abs=0.01)
    assert (kie["latency_s"] > kie["queue_s"] + kie["generation_s"]).all()  # and nbp's share
    for name in ("runware", "gemini"):  # they report no times
        assert by_provider[name].select("queue_s", "generation_s").null_count().row(0) == (4, 4)
    mean = frame.group_by("var_style").agg(pl.col("cost_usd").mean()).sort("var_style")
    assert mean["var_style"].to_list() == ["ink", "photo"]  # one expression by axis


MATRIX = {"provider": list(PROVIDERS), "style": ["photo", "ink"], "steps": [1, 2]}


def test_a_run_writes_typed_variables_seed_sent_and_provider_times(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    result = run(write_spec(tmp_path, MATRIX, seed=40))
    assert result.exit_code == 0, result.failures
    check_columns(manifest(tmp_path), hub, 40)


def test_runs_of_other_types_meet_in_one_target(hub: EmulatorHub, tmp_path: Path) -> None:
    """A variable of ints, then a run that gives it a text value: text in every row (the
    values kept); a later run without it holds null there, and its own variable is typed."""
    first = run(write_spec(tmp_path, {"style": ["photo"], "steps": [1, 2]}))
    assert first.exit_code == 0
    assert manifest(tmp_path).schema["var_steps"] == pl.Int64
    second = run(write_spec(tmp_path, {"style": ["photo"], "steps": [2, "many"]}))
    assert second.exit_code == 0
    frame = manifest(tmp_path)
    assert frame.schema["var_steps"] == pl.String
    assert sorted(frame["var_steps"].to_list()) == ["1", "2", "many"]
    spec = write_spec(tmp_path, {"shade": ["0.5", "1.5"]})
    spec.write_text(spec.read_text().replace("{style} lemon, {steps} steps", "{shade} lime"))
    third = run(spec)
    assert third.exit_code == 0
    frame = manifest(tmp_path)
    assert frame.schema["var_shade"] == pl.Float64 and frame.schema["var_steps"] == pl.String
    limes = frame.filter(pl.col("prompt").str.ends_with("lime"))
    assert limes["var_steps"].null_count() == 2 and sorted(limes["var_shade"]) == [0.5, 1.5]


def test_a_variable_is_typed_again_over_the_whole_manifest(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    """A dataset column the prompt does not use changes from text to numbers: a forced rerun
    of the same cells writes numbers, and the merged column is int64 again."""
    data = tmp_path / "shoes.csv"
    data.write_text("sku,price\nA-1,n/a\nB-2,3\n")
    spec = write_spec(tmp_path, {}, dataset={"path": str(data)})
    spec.write_text(spec.read_text().replace("{style} lemon, {steps} steps", "shoe {sku}"))
    assert run(spec).exit_code == 0
    assert manifest(tmp_path).schema["var_price"] == pl.String
    data.write_text("sku,price\nA-1,5\nB-2,3\n")
    assert run(spec, force=True).exit_code == 0
    frame = manifest(tmp_path)
    assert frame.height == 2 and frame.schema["var_price"] == pl.Int64
    assert frame.select("var_sku", "var_price").rows() == [("A-1", 5), ("B-2", 3)]


@pytest.mark.prefect
def test_the_command_line_writes_the_columns(prefect_api_url: str, tmp_path: Path) -> None:
    """`nbp run --emulate`: the emulators the run starts itself, the same columns."""
    spec = write_spec(tmp_path, MATRIX, seed=7)
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url}
    env.pop("PYTEST_CURRENT_TEST", None)
    done = run_nbp("run", str(spec), "--emulate", "--emulator-latency", str(LATENCY_S),
                   env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    frame = manifest(tmp_path)
    assert frame.height == 12 and set(frame["emulated"]) == {True}
    assert frame.filter(pl.col("provider") == "kie")["generation_s"].to_list() == \
        pytest.approx([LATENCY_S * 3 / 4] * 4, abs=0.01)
    assert dict(zip(frame["provider"], frame["seed_sent"], strict=True)) == {
        "kie": False, "runware": True, "gemini": True}
