"""Expected failures of the real command line (issue 24, item 3): each is one line and a
hint on stderr, exit 2, never a traceback — a stale `PREFECT_API_URL`, a missing Secret
block, a target whose fsspec package is missing, a target that cannot be read; a usage error
shows the subcommand's own usage; `nbp --version` names the version and the commit."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from nbp.providers.emulator.hub import EmulatorHub
from tests.conftest import ROOT, run_nbp

# Every command, with the arguments it needs.
COMMANDS = {"validate": ["x"], "plan": ["x"], "run": ["x"], "emulate": [], "status": ["x"],
            "compare": ["x", "y"], "export": ["x"], "review": ["x"]}


def told(done: subprocess.CompletedProcess[str], line: str) -> str:
    """The hint after `line`, once the failure is told as it should be: exit 2, `line` and
    a hint as the whole of stderr, no traceback."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and lines[1].startswith("hint: "), done.stderr
    assert re.fullmatch(line, lines[0]), lines[0]
    return lines[1]


def environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return {**env, **extra}


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_version_names_nbps_version_and_commit() -> None:
    done = run_nbp("--version", timeout=60)
    assert done.returncode == 0, done.stderr
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert done.stdout.startswith(
        f"nbp {metadata.version('nbp')} (commit {head}"), done.stdout
    assert f"prefect {metadata.version('prefect')}, Python 3." in done.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_a_misspelt_flag_shows_the_subcommands_usage(name: str) -> None:
    done = run_nbp(name, *COMMANDS[name], "--dry", timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith(f"usage: nbp {name} ")
    assert done.stderr.endswith(f"nbp {name}: error: unrecognized arguments: --dry\n")
    assert "Traceback" not in done.stderr


def test_a_stale_prefect_api_url_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/api"
    done = run_nbp("run", "specs/demo.yaml", "--emulate", "--target", str(tmp_path / "out"),
                   env=environ(PREFECT_API_URL=url), timeout=120)
    hint = told(done, rf"nbp run: cannot reach the Prefect API at {re.escape(url)} "
                      r"\(PREFECT_API_URL\): Connection refused")
    assert "unset PREFECT_API_URL" in hint
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def hub() -> Iterator[EmulatorHub]:
    with EmulatorHub.start(["kie"], latency_s=0.05) as running:
        yield running


@pytest.mark.prefect
def test_a_missing_secret_block_is_one_line_before_anything_is_sent(
    tmp_path: Path, hub: EmulatorHub, prefect_api_url: str,
) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("version: 1\nname: blocks\nprovider: kie\nmatrix: {prompt: [a fig]}\n"
                    "credentials: {KIE_API_KEY: kie-api-key}\n"
                    f"output: {{target: '{tmp_path / 'out'}'}}\n")
    env = environ(**hub.environ(), PREFECT_API_URL=prefect_api_url)
    del env["KIE_API_KEY"]  # the block is to provide it, and there is none
    done = run_nbp("run", str(spec), env=env, timeout=120)
    hint = told(done, r"nbp run: no Prefect Secret block 'kie-api-key' \(for KIE_API_KEY\) "
                      r"on this Prefect API, and the environment does not set KIE_API_KEY; "
                      r"nothing was sent")
    assert "export KIE_API_KEY" in hint and "Secret(value=...).save('kie-api-key')" in hint
    assert hub["kie"].requests == []
    assert not (tmp_path / "out").exists()


def missing_package() -> tuple[str, str]:
    """A protocol fsspec knows whose package is not installed here, and the package."""
    for protocol, package in (("gs", "gcsfs"), ("abfs", "adlfs"), ("oci", "ocifs")):
        try:
            __import__(package)
        except ImportError:
            return protocol, package
    pytest.skip("gcsfs, adlfs and ocifs are all installed")


def test_a_target_whose_fsspec_package_is_missing_is_one_line() -> None:
    protocol, package = missing_package()
    target = f"{protocol}://bucket/x"
    done = run_nbp("status", target, timeout=60)
    hint = told(done, rf"nbp status: {target}: {protocol}:// needs the Python package "
                      rf"{package}, which is not installed")
    assert hint.startswith(f"hint: pip install {package}")


@pytest.mark.parametrize(("target", "reason"), [
    pytest.param("{file}", "Not a directory: {file}/manifest.parquet", id="a-file"),
    pytest.param("zip://x::{tmp}/none.zip", "No such file or directory: {tmp}/none.zip",
                 id="an-archive-that-is-not-there"),
    pytest.param("http://127.0.0.1:{port}/x", "Cannot connect to host 127.0.0.1:{port} .*",
                 id="a-server-that-does-not-answer"),
])
def test_a_target_that_cannot_be_read_is_one_line(
    tmp_path: Path, target: str, reason: str,
) -> None:
    (tmp_path / "notes.txt").write_text("not a target")
    values = {"file": str(tmp_path / "notes.txt"), "tmp": str(tmp_path),
              "port": str(closed_port())}
    target = target.format(**values)
    pattern = re.escape(reason.format(**values)).replace(r"\.\*", ".*")
    done = run_nbp("status", target, timeout=60)
    hint = told(done, rf"nbp status: cannot read {re.escape(target)}: {pattern}")
    assert "a run wrote" in hint
