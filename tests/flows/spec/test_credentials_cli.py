"""A hostile spec's credentials through the real command line (issue 20, item 1): `nbp
validate` and `nbp run` end with exit 2 and a located problem, from validation, before
Prefect starts, and the emulator's request log shows that nothing was sent."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbp.providers.emulator.hub import EmulatorHub
from tests.conftest import run_nbp

SECRET_VALUE = "aws-secret-value-never-sent"
# Validation, not Prefect: a run that got past it would start a Prefect server first (~10 s).
FEW_SECONDS = 8.0

# name -> (the spec's hostile part, where the problem is: line:column: path)
HOSTILE = {
    "list-form": ("accounts: {kie: [KIE_API_KEY, AWS_SECRET_ACCESS_KEY]}\n",
                  "5:31: accounts.kie[1]: AWS_SECRET_ACCESS_KEY is not a credential of kie"),
    "mapping-form": ("accounts: {kie: [{KIE_API_KEY: AWS_SECRET_ACCESS_KEY}]}\n",
                     "5:32: accounts.kie[0].KIE_API_KEY: AWS_SECRET_ACCESS_KEY does not "
                     "extend KIE_API_KEY"),
    "block-name": ("credentials: {KIE_API_KEY: aws-secret-access-key}\n",
                   "5:28: credentials.KIE_API_KEY: the Secret block for KIE_API_KEY is "
                   "named 'kie-api-key'"),
    "base-url-other-port": ("base_urls: {kie: 'http://api.kie.ai:8080'}\n",
                            "5:18: base_urls.kie: http://api.kie.ai:8080 is not where kie's "
                            "API key may go"),
}


@pytest.fixture(scope="module")
def hub() -> Iterator[EmulatorHub]:
    with EmulatorHub.start(["kie"], latency_s=0.05) as running:
        yield running


def write_spec(folder: Path, name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(
        "version: 1\n"
        "name: hostile\n"
        f"provider: kie\nmatrix: {{prompt: [a fig]}}\n{HOSTILE[name][0]}"
        f"output: {{target: '{folder / 'out'}'}}\n"
    )
    return path


def environ(hub: EmulatorHub) -> dict[str, str]:
    """The user's environment: Kie pointed at the emulator with a key it takes, another
    secret beside it, and no Prefect server (a run that got that far would start one)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return {**env, **hub.environ(), "AWS_SECRET_ACCESS_KEY": SECRET_VALUE}


def test_validate_locates_every_hostile_credential(tmp_path: Path, hub: EmulatorHub) -> None:
    specs = {name: write_spec(tmp_path, name) for name in HOSTILE}
    done = run_nbp("validate", *map(str, specs.values()), env=environ(hub), timeout=60)
    assert done.returncode == 2, done.stderr
    for name, spec in specs.items():
        assert f"{spec}:{HOSTILE[name][1]}" in done.stderr, done.stderr
        assert f"{spec}: 1 problem(s)" in done.stderr
    assert SECRET_VALUE not in done.stdout + done.stderr


@pytest.mark.parametrize("name", list(HOSTILE))
def test_run_refuses_before_anything_is_sent(
    tmp_path: Path, hub: EmulatorHub, name: str
) -> None:
    hub.reset()
    spec = write_spec(tmp_path, name)
    started = time.monotonic()
    done = run_nbp("run", str(spec), env=environ(hub), timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert f"{spec}:{HOSTILE[name][1]}" in done.stderr
    assert "nothing was submitted" in done.stderr
    assert elapsed < FEW_SECONDS
    assert hub["kie"].requests == []
    assert not (tmp_path / "out").exists()
    assert SECRET_VALUE not in done.stdout + done.stderr


@pytest.mark.parametrize("name", ["list-form", "mapping-form"])
def test_an_emulated_run_refuses_too(tmp_path: Path, hub: EmulatorHub, name: str) -> None:
    spec = write_spec(tmp_path, name)
    started = time.monotonic()
    done = run_nbp("run", str(spec), "--emulate", env=environ(hub), timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"{spec}:{HOSTILE[name][1]}" in done.stderr
    assert time.monotonic() - started < FEW_SECONDS
    assert not (tmp_path / "out").exists()
