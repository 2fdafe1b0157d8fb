"""Session-wide test settings: Prefect never phones home and never touches ~/.prefect."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="nbp-test-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)  # one per worker
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# A temporary server a test's `nbp` starts may take longer than the default 20 s on two busy
# cores (the session's own server gets 60 s too, `prefect_api_url`).
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "60"
# A test's `nbp run` without PREFECT_API_URL leaves nbp's kept Prefect server in this home:
# stopped at exit (before the home is removed, which would also make it leave), and gone
# by itself a minute after the last run should the tests be killed.
os.environ["NBP_SERVER_IDLE_TIMEOUT"] = "60"

ROOT = Path(__file__).resolve().parent.parent


def _stop_kept_server() -> None:
    if (Path(_PREFECT_HOME) / "nbp-server" / "server.json").exists():
        subprocess.run([sys.executable, "-m", "nbp.flows.cli", "server", "stop", "--force"],
                       cwd=ROOT, capture_output=True, timeout=60)


atexit.register(_stop_kept_server)  # atexit runs last-registered first: before the rmtree


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    """One real Prefect server for the whole session (it takes seconds to start)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        url = PREFECT_API_URL.value()
        assert url, "the Prefect test harness did not set an API URL"
        yield str(url)


def run_nbp(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """The real `nbp` command line in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "nbp.flows.cli", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
