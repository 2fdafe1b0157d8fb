"""`nbp emulate` for someone trying the product: it prints every base URL and test key the
design's contract names as `export` lines a shell takes as they are, and `nbp run` without
`--emulate` works in a shell that ran them. A real key in the environment is never printed."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import ROOT, run_nbp

# design.md, "Environment": each provider's base URL and credential variables.
CONTRACT = {
    "NBP_WIRO_BASE_URL", "NBP_HIAPI_BASE_URL", "NBP_RUNWARE_BASE_URL", "NBP_KIE_BASE_URL",
    "NBP_KIE_UPLOAD_BASE_URL", "NBP_APIKLEY_BASE_URL", "NBP_GEMINI_BASE_URL",
    "WIRO_API_KEY", "WIRO_API_SECRET", "HIAPI_API_KEY", "RUNWARE_API_KEY", "KIE_API_KEY",
    "APIKLEY_API_KEY", "GEMINI_API_KEY",
}
REAL = "sk-live-do-not-print-1234567890"
EXPORT = re.compile(r"^export ([A-Z][A-Z0-9_]*)=(.*)$")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def exported(lines: list[str]) -> dict[str, str]:
    """What a shell would have after running the `export` lines (values unquoted)."""
    found: dict[str, str] = {}
    for line in lines:
        if match := EXPORT.match(line):
            (value,) = shlex.split(match.group(2))
            found[match.group(1)] = value
    return found


@pytest.mark.prefect
def test_emulate_prints_the_exports_a_run_needs_and_no_real_key(
    prefect_api_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url,
           **{name: REAL for name in CONTRACT if not name.startswith("NBP_")}}
    env.pop("PYTEST_CURRENT_TEST", None)
    serving = subprocess.Popen(
        [sys.executable, "-m", "nbp.flows.cli", "emulate", "--port", str(free_port()),
         "--latency", "0.1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        lines: list[str] = []
        stdout = serving.stdout
        assert stdout is not None
        threading.Thread(target=lambda: lines.extend(line.rstrip("\n") for line in stdout),
                         daemon=True).start()
        deadline = time.monotonic() + 60
        while not set(exported(lines)) >= CONTRACT:
            assert time.monotonic() < deadline and serving.poll() is None, lines
            time.sleep(0.1)
        exports = exported(lines)
        assert REAL not in "\n".join(lines)
        assert all(exports[name].startswith("http://127.0.0.1:")
                   for name in CONTRACT if name.startswith("NBP_"))

        spec = tmp_path / "try.yaml"
        spec.write_text(yaml.safe_dump({
            "version": 1, "name": "try", "provider": "kie",
            "matrix": {"prompt": ["a pear", "a fig"]},
            "output": {"target": str(tmp_path / "out")},
        }))
        done = run_nbp("run", str(spec), env={**env, **exports})  # the shell, after pasting
        assert done.returncode == 0, done.stderr[-3000:]
        assert REAL not in done.stdout + done.stderr
        frame = pl.read_parquet(tmp_path / "out" / "manifest.parquet")
        assert frame["status"].to_list() == ["succeeded", "succeeded"]
    finally:
        os.killpg(serving.pid, signal.SIGINT)
        serving.communicate(timeout=30)
