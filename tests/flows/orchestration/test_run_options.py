"""Each run option is declared once (flows.orchestration.run_options): the `nbp-run` flow's
parameters are exactly the declarations (name, default, type), `engine_options` is the one
mapping onto the engine's `RunOptions`, and `input_policy` the one builder of the spec's
`InputPolicy`."""

from __future__ import annotations

import dataclasses
import inspect
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from nbp.flows.engine.job import RunOptions
from nbp.flows.engine.policy import DEFAULT_RETRY, RunConfigurationError
from nbp.flows.orchestration.flow import build_flow, nbp_run
from nbp.flows.orchestration.run_options import (
    INPUT_OPTIONS,
    OPTIONS,
    REQUIRED,
    RUN_OPTIONS,
    engine_options,
    flow_parameters,
    input_policy,
)
from nbp.flows.spec.inputs import MAX_CELLS_ENV, InputPolicy
from nbp.flows.spec.shard import Shard

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("flow", [nbp_run, build_flow()], ids=["deployed", "built"])
def test_the_flow_takes_exactly_the_declared_options(flow: typing.Any) -> None:
    parameters = inspect.signature(flow.fn).parameters
    hints = typing.get_type_hints(flow.fn)
    assert list(parameters) == [p for p in parameters if p in OPTIONS]  # nothing undeclared
    assert set(parameters) == set(OPTIONS)
    for name, parameter in parameters.items():
        option = OPTIONS[name]
        assert parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, name
        assert parameter.default == option.default, name
        assert hints[name] == option.type, name


def test_the_engine_defaults_agree_with_the_declarations() -> None:
    """Options whose engine field has the same name start from the same default; one
    declared None (the engine's own) names the engine's in its help."""
    engine = {f.name: f.default for f in dataclasses.fields(RunOptions)
              if f.default is not dataclasses.MISSING}
    engine["patience_s"] = DEFAULT_RETRY.patience_s  # the field is the whole retry policy
    shared = [o for o in RUN_OPTIONS if o.name in engine]
    assert {o.name for o in shared} >= {"chunk_size", "emulate", "force", "batch_wait_s"}
    for option in shared:
        if option.default is None and engine[option.name] is not None:
            assert f"(default {engine[option.name]:g})" in option.help, option.name
        else:
            assert engine[option.name] == option.default, option.name


def test_the_declared_defaults_make_the_engines_defaults() -> None:
    options = engine_options({"spec": "job.yaml"})
    plain = RunOptions(spec="job.yaml")
    mapped = {f.name: getattr(options, f.name) for f in dataclasses.fields(RunOptions)}
    expected = {f.name: getattr(plain, f.name) for f in dataclasses.fields(RunOptions)}
    for random_id in ("run_id", "holder"):
        del mapped[random_id], expected[random_id]
    assert mapped.pop("inputs") == InputPolicy.from_environ()
    assert expected.pop("inputs") is None  # the engine reads the environment itself
    assert mapped == expected


def test_the_one_mapping_onto_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    options = engine_options({
        "spec": "job.yaml", "target": "memory://out", "shard": "1/4", "own_accounts": True,
        "patience_s": 30.0, "batch_wait_s": 5.0, "succeed_with_failures": True,
        "allow_paths": ["photos"], "dataset": "week.csv", "max_cells": 10,
        "allow_private_hosts": True, "spec_source": "s3://b/job.yaml (from x@y)",
        "redo_rejected": True, "archive_stale": True, "retry_uncertain": True,
        "emulate": True, "emulator_latency_s": 0.5, "chunk_size": 7, "max_usd": 2.5,
        "force": True,
    }, holder="0123456789abcdef", flow_run_id="flow-run")
    assert options.shard == Shard(1, 4) and options.own_accounts
    assert options.retry.patience_s == 30.0 and options.batch_wait_s == 5.0
    assert options.failures_ok and options.redo_rejected and options.archive_stale
    assert options.retry_uncertain and options.emulate and options.force
    assert (options.emulator_latency_s, options.chunk_size, options.max_usd) == (0.5, 7, 2.5)
    assert options.inputs == InputPolicy.from_environ(
        allow_paths=(str(tmp_path / "photos"),), dataset=str(tmp_path / "week.csv"),
        max_cells=10, allow_private_hosts=True)
    assert (options.run_id, options.holder, options.flow_run_id) == (
        "0123456789ab", "0123456789abcdef", "flow-run")  # the run id: the holder's start
    assert options.target == "memory://out"
    assert options.spec_source == "s3://b/job.yaml (from x@y)"
    assert engine_options({"spec": "j", "run_id": "weekly"}, holder="abc").run_id == "weekly"
    assert engine_options({"spec": "j", "patience_s": None}).retry == DEFAULT_RETRY


@pytest.mark.parametrize(("values", "says"), [
    pytest.param({"shard": "4/4"}, "'4/4' is not of the form i/n", id="shard"),
    pytest.param({"max_cells": 0}, "--max-cells 0: give a positive number", id="max-cells"),
])
def test_a_value_that_cannot_be_used_is_a_configuration_error(
    values: dict[str, typing.Any], says: str,
) -> None:
    with pytest.raises(RunConfigurationError, match=says):
        engine_options({"spec": "job.yaml", **values})


def test_the_environment_variable_of_an_option_gives_its_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert [(o.name, o.env) for o in RUN_OPTIONS if o.env] == [("max_cells", MAX_CELLS_ENV)]
    assert all(o.env in o.help for o in RUN_OPTIONS if o.env)
    monkeypatch.setenv(MAX_CELLS_ENV, "5")
    assert input_policy({}).max_cells == 5
    assert input_policy({"max_cells": 9}).max_cells == 9  # the flag wins


def test_input_options_are_the_ones_that_bound_what_a_spec_reads() -> None:
    assert [o.name for o in INPUT_OPTIONS] == [
        "allow_paths", "allow_private_hosts", "dataset", "max_cells"]
    fields = {f.name for f in dataclasses.fields(InputPolicy)}
    assert {o.name for o in INPUT_OPTIONS} <= fields


def test_a_url_dataset_stays_a_url() -> None:
    assert input_policy({"dataset": "s3://bucket/week.csv"}).dataset == "s3://bucket/week.csv"


def test_flow_parameters_name_every_option() -> None:
    found = flow_parameters({"spec": "job.yaml", "allow_paths": [], "shard": "0/2",
                             "handler": print})
    assert set(found) == set(OPTIONS)
    assert found["allow_paths"] is None and found["shard"] == "0/2"
    assert found["chunk_size"] == OPTIONS["chunk_size"].default
    assert flow_parameters({"spec": "j", "allow_paths": ["a"]})["allow_paths"] == ["a"]


def test_the_declarations_import_neither_prefect_nor_the_engine() -> None:
    """`nbp validate` builds its parser from them: they stay light."""
    code = ("import sys, flows.orchestration.run_options; "
            "print(sorted(m for m in ('prefect', 'nbp.flows.engine.job', 'polars') "
            "if m in sys.modules))")
    found = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, text=True,
                           capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert found.stdout.strip() == "[]"


def test_required_is_the_signatures_own_marker() -> None:
    assert OPTIONS["spec"].default is REQUIRED is inspect.Parameter.empty
