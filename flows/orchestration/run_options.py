"""The settings of a run, each declared once: name, type, default, help and environment
variable. `nbp run`'s flags are generated from them (`add_flags`), the `nbp-run` flow's
parameters are held to them by a test (a deployment passes `-p name=value`), and
`engine_options` is the one mapping onto the engine's `RunOptions`.

    OPTIONS["max_usd"].flag            # "--max-usd"
    engine_options({"spec": "specs/demo.yaml", "shard": "0/2"}).shard   # Shard(0, 2)

Light to import (no Prefect, no engine): `nbp validate` builds its parser from it.
"""

from __future__ import annotations

import argparse
import inspect
import os
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_args, get_origin

from nbp.flows.spec.inputs import MAX_CELLS_ENV, InputPolicy
from nbp.flows.spec.shard import Shard

if TYPE_CHECKING:
    from nbp.flows.engine.job import RunOptions

REQUIRED: Any = inspect.Parameter.empty  # an option without a default


@dataclass(frozen=True)
class RunOption:
    """One setting of a run. `name` is the flow's parameter and the parsed flag's dest;
    `type` the parameter's annotation; `flag` the `nbp run` option (None: a flow parameter
    the CLI sets itself); `env` the variable that gives the default when it is not set;
    `inputs`: it bounds what a spec may read, so `nbp validate` and `nbp plan` take it too."""

    name: str
    type: Any
    default: Any
    help: str
    flag: str | None = None
    metavar: str | None = None
    env: str | None = None
    inputs: bool = False

    @property
    def kind(self) -> Any:
        """The type a value has when given: `float | None` -> float."""
        if isinstance(self.type, types.UnionType):
            return next(t for t in get_args(self.type) if t is not type(None))
        return self.type

    @property
    def repeatable(self) -> bool:
        """A list: the flag is given once per value."""
        return get_origin(self.kind) is list

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """This option's flag on `parser`: a switch for a bool, repeatable for a list."""
        assert self.flag is not None
        kwargs: dict[str, Any] = {"dest": self.name, "help": self.help}
        if self.metavar:
            kwargs["metavar"] = self.metavar
        if self.kind is bool:
            kwargs["action"] = "store_true"
        elif self.repeatable:
            kwargs.update(action="append", default=[])
        else:
            if self.kind is not str:
                kwargs["type"] = self.kind
            kwargs["default"] = self.default
        parser.add_argument(self.flag, **kwargs)


# In `nbp run --help` order; `spec` is the command's argument and `spec_source` is set by
# `--from`, so neither has a flag.
RUN_OPTIONS: tuple[RunOption, ...] = (
    RunOption("spec", str, REQUIRED, "the job spec: a path or fsspec URL"),
    RunOption("target", str | None, None, "write here instead of the spec's output.target",
              "--target"),
    RunOption("emulate", bool, False, "serve the provider emulators in-process and use them "
              "(offline)", "--emulate"),
    RunOption("force", bool, False, "redo cells that already succeeded", "--force"),
    RunOption("max_usd", float | None, None, "hard spending cap for this run", "--max-usd"),
    RunOption("shard", str | None, None, "i/n: run only this shard of the cells (several "
              "workers)", "--shard"),
    RunOption("shared_limits", bool, False, "share provider create rates through the Prefect "
              "server (several workers on one account)", "--shared-limits"),
    RunOption("own_accounts", bool, False, "with --shard i/n: use only the channels (provider "
              "accounts) this shard owns, every n-th from the i-th, so shards share no "
              "account", "--own-accounts"),
    RunOption("retry_uncertain", bool, False, "create again cells whose create may have "
              "reached a provider that cannot be asked (they may be paid twice)",
              "--retry-uncertain"),
    RunOption("run_id", str | None, None, "this run's id; shards started as one run pass the "
              "same one and share budget.max_usd", "--run-id"),
    RunOption("patience_s", float | None, None, "how long a poll or download of a created "
              "task keeps retrying before the cell is left pending for the next run (default "
              "600)", "--patience", "SECONDS"),
    RunOption("batch_wait_s", float | None, None, "how long to wait for batch jobs "
              "(gemini-batch) before leaving their cells pending for the next run (default "
              "600)", "--batch-wait", "SECONDS"),
    RunOption("redo_rejected", bool, False, "make again, with a new seed and into the same "
              "paths, the images rejected in review (nbp review); the old ones are kept as "
              "history", "--redo-rejected"),
    RunOption("archive_stale", bool, False, "move the images of cells the spec no longer "
              "produces (stale) to history, freeing their paths; without it they stay where "
              "they are", "--archive-stale"),
    RunOption("succeed_with_failures", bool, False, "end the flow run Completed and exit 0 "
              "even when cells failed (default: Failed and exit 1, so Prefect automations "
              "see it)", "--succeed-with-failures"),
    RunOption("chunk_size", int, 200, "cells per Prefect task", "--chunk-size"),
    RunOption("allow_paths", list[str] | None, None, "also read local references and "
              "datasets under DIR (besides the spec's folder); repeatable", "--allow-path",
              "DIR", inputs=True),
    RunOption("allow_private_hosts", bool, False, "let nbp fetch http(s) datasets and "
              "references from loopback, private and link-local hosts too (default: public "
              "hosts only)", "--allow-private-hosts", inputs=True),
    RunOption("dataset", str | None, None, "read this dataset (a path or URL) in place of the "
              "spec's dataset.path: this week's export", "--dataset", "PATH", inputs=True),
    RunOption("max_cells", int | None, None, "refuse specs with more than N cells (default "
              f"1,000,000, or {MAX_CELLS_ENV})", "--max-cells", "N", env=MAX_CELLS_ENV,
              inputs=True),
    RunOption("emulator_latency_s", float | None, None, "seconds an emulated task takes (with "
              "--emulate)", "--emulator-latency", "EMULATOR_LATENCY"),
    RunOption("spec_source", str | None, None, "what the run's record names as the spec's "
              "source when `spec` is a copy (nbp run --from)"),
    RunOption("command", list[str] | None, None, "the command line that started the run "
              "(`nbp run ...`), kept in its record"),
)
OPTIONS: Mapping[str, RunOption] = {option.name: option for option in RUN_OPTIONS}
INPUT_OPTIONS: tuple[RunOption, ...] = tuple(o for o in RUN_OPTIONS if o.inputs)


def add_flags(parser: argparse.ArgumentParser, options: Iterable[RunOption]) -> None:
    """The flags of `options` (those that have one) on `parser`, in order."""
    for option in options:
        if option.flag is not None:
            option.add_to(parser)


def flow_parameters(values: Mapping[str, Any]) -> dict[str, Any]:
    """The `nbp-run` flow's parameters of parsed `nbp run` flags (by option name): every
    option, at its default when absent; an empty repeatable one as None."""
    found = {}
    for option in RUN_OPTIONS:
        value = values.get(option.name, option.default)
        found[option.name] = (value or None) if option.repeatable else value
    return found


def input_policy(values: Mapping[str, Any]) -> InputPolicy:
    """What a spec may read and how large it may be: the input options among `values` over
    the environment's defaults (`InputPolicy.from_environ`); local paths made absolute.
    `ValueError` for a bad value."""
    changes: dict[str, Any] = {}
    if allow := values.get("allow_paths"):
        changes["allow_paths"] = tuple(os.path.abspath(path) for path in allow)
    if dataset := values.get("dataset"):
        changes["dataset"] = dataset if "://" in dataset else os.path.abspath(dataset)
    if (max_cells := values.get("max_cells")) is not None:
        if max_cells < 1:
            raise ValueError(f"{OPTIONS['max_cells'].flag} {max_cells}: give a positive "
                             "number of cells")
        changes["max_cells"] = max_cells
    if values.get("allow_private_hosts"):
        changes["allow_private_hosts"] = True
    return InputPolicy.from_environ(**changes)


def engine_options(
    values: Mapping[str, Any], *, holder: str | None = None, flow_run_id: str | None = None,
) -> RunOptions:
    """The engine's `RunOptions` of a run's settings (`values` by option name; absent ones at
    their defaults). `holder`: this process on the target (the flow run id under Prefect),
    whose first 12 characters are the run id unless one is given. Raises
    `RunConfigurationError` for a shard or input limit that cannot be used."""
    from nbp.flows.engine.job import RunOptions
    from nbp.flows.engine.policy import DEFAULT_RETRY, RetryPolicy, RunConfigurationError

    given = {**{o.name: o.default for o in RUN_OPTIONS}, **values}
    try:
        shard = Shard.parse(given["shard"]) if given["shard"] else None
    except ValueError as exc:
        raise RunConfigurationError(f"{OPTIONS['shard'].flag}: {exc}") from exc
    try:
        inputs = input_policy(given)
    except ValueError as exc:
        raise RunConfigurationError(str(exc)) from exc
    own: dict[str, Any] = {}
    if holder is not None:
        own["holder"] = holder
    if run_id := given["run_id"] or (holder and holder[:12]):
        own["run_id"] = run_id
    if given["batch_wait_s"] is not None:
        own["batch_wait_s"] = given["batch_wait_s"]
    patience = given["patience_s"]
    return RunOptions(
        spec=given["spec"], target=given["target"], emulate=given["emulate"],
        force=given["force"], max_usd=given["max_usd"], shard=shard,
        chunk_size=given["chunk_size"], emulator_latency_s=given["emulator_latency_s"],
        retry_uncertain=given["retry_uncertain"], inputs=inputs,
        retry=RetryPolicy(patience_s=patience) if patience else DEFAULT_RETRY,
        own_accounts=given["own_accounts"], flow_run_id=flow_run_id,
        spec_source=given["spec_source"], failures_ok=given["succeed_with_failures"],
        command=tuple(given["command"]) if given["command"] else None,
        redo_rejected=given["redo_rejected"], archive_stale=given["archive_stale"], **own,
    )
