"""`nbp run`'s flags are generated from the run options' declarations, and keep the spelling
and defaults users and scripts rely on (design.md "CLI"); a bad shard or input limit exits 2
before anything starts."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from nbp.flows.cli import EXIT_INVALID, _parser, main
from nbp.flows.orchestration.run_options import INPUT_OPTIONS, OPTIONS, RUN_OPTIONS

# The flags as they are spelled and what they default to: a contract, written out.
RUN_FLAGS = {
    "--target": None, "--emulate": False, "--force": False, "--max-usd": None,
    "--shard": None, "--shared-limits": False, "--own-accounts": False,
    "--retry-uncertain": False, "--run-id": None, "--patience": None, "--batch-wait": None,
    "--redo-rejected": False, "--archive-stale": False, "--succeed-with-failures": False,
    "--chunk-size": 200, "--allow-path": [], "--allow-private-hosts": False,
    "--dataset": None, "--max-cells": None, "--emulator-latency": None,
}
RUN_ONLY_FLAGS = ("--from", "--spec-dir", "--live")  # the CLI's own: which spec to run
INPUT_FLAGS = ("--allow-path", "--allow-private-hosts", "--dataset", "--max-cells")


def command(name: str) -> argparse.ArgumentParser:
    commands = next(a for a in _parser()._actions
                    if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = commands.choices[name]
    return found


def flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.option_strings[-1]: a for a in parser._actions
            if a.option_strings and a.option_strings[-1] != "--help"}


def test_run_keeps_every_flag_its_spelling_and_default() -> None:
    found = flags(command("run"))
    assert list(found) == [*RUN_ONLY_FLAGS, *RUN_FLAGS]  # `nbp run --help`'s order too
    parsed = vars(command("run").parse_args(["job.yaml"]))
    assert {flag: parsed[found[flag].dest] for flag in RUN_FLAGS} == RUN_FLAGS


def test_run_flags_are_generated_from_the_declarations() -> None:
    found = flags(command("run"))
    declared = [o for o in RUN_OPTIONS if o.flag]
    assert [o.flag for o in declared] == list(RUN_FLAGS)
    for option in declared:
        action = found[option.flag]
        assert (action.dest, action.help) == (option.name, option.help)
        assert action.metavar == option.metavar


@pytest.mark.parametrize("name", ["validate", "plan", "run"])
def test_every_command_that_reads_a_spec_takes_the_input_flags(name: str) -> None:
    found = flags(command(name))
    assert all(flag in found for flag in INPUT_FLAGS)
    assert [o.flag for o in INPUT_OPTIONS] == list(INPUT_FLAGS)


def test_a_parsed_command_line_names_the_flows_parameters() -> None:
    parsed = vars(command("run").parse_args([
        "job.yaml", "--patience", "30", "--batch-wait", "5", "--allow-path", "a",
        "--allow-path", "b", "--emulator-latency", "0.2", "--max-usd", "3",
    ]))
    assert (parsed["patience_s"], parsed["batch_wait_s"], parsed["emulator_latency_s"]) == (
        30.0, 5.0, 0.2)
    assert parsed["allow_paths"] == ["a", "b"] and parsed["max_usd"] == 3.0
    assert set(OPTIONS) - {"spec_source", "command"} <= set(parsed)  # both set by nbp itself


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "name": "cli", "provider": "kie", "matrix": {"prompt": ["a fig"]},
        "output": {"target": str(tmp_path / "out")},
    }))
    return path


@pytest.mark.parametrize(("args", "says"), [
    pytest.param(["--shard", "4/4"],
                 "nbp run: --shard: '4/4' is not of the form i/n with 0 <= i < n, e.g. 0/4",
                 id="shard-past-the-end"),
    pytest.param(["--shard", "x"], "nbp run: --shard: 'x' is not of the form i/n",
                 id="shard-not-a-shard"),
    pytest.param(["--max-cells", "0"], "nbp run: --max-cells 0: give a positive number",
                 id="no-cells"),
])
def test_a_value_that_cannot_be_used_exits_2_before_anything_starts(
    spec: Path, args: list[str], says: str, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", str(spec), "--emulate", *args]) == EXIT_INVALID
    assert says in capsys.readouterr().err
    assert not (spec.parent / "out").exists()


def test_validate_and_plan_show_an_include_that_overwrites_an_earlier_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "name": "cli", "output": {"target": str(tmp_path / "out")},
        "matrix": {"prompt": ["a {style} fig"], "style": ["ink", "oil"],
                   "provider": ["kie", "gemini"],
                   "include": [{"provider": "gemini", "model": "gemini-3-pro-image-preview"},
                               {"provider": "gemini", "model": "gemini-3-pro-image"}]},
    }, sort_keys=False))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: valid\n{path}:" in out
    assert ("matrix.include[1].model: note: this include entry overwrites model "
            "'gemini-3-pro-image-preview', which include[0] set, with 'gemini-3-pro-image' in "
            "2 combinations") in out
    assert main(["plan", str(path), "--offline"]) == 0
    plan = capsys.readouterr()
    assert "  gemini    gemini-3-pro-image " in plan.out  # the plan's row per model id
    assert "matrix.include[1].model: note: this include entry overwrites" in plan.err
