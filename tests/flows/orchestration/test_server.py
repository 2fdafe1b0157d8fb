"""The temporary Prefect server answers like Prefect's own, is out of reach of the terminal's
signals, and never outlives nbp: real server processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from nbp.flows.orchestration.server import (
    ApiUnreachable,
    ServerDidNotStart,
    TemporaryServer,
    prefect_api,
    use_api,
)
from tests.conftest import ROOT

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

# A stand-in for `nbp run`: it holds a TemporaryServer, prints the server's pid and log, and on
# Ctrl-C checks that the server still answers, then waits for a line on stdin before it
# leaves the block (so the test can look at the server too).
HOLDS_A_SERVER = """\
import signal, sys, httpx
from nbp.flows.orchestration.server import TemporaryServer
with TemporaryServer() as server:
    try:
        print(server.pid, server.log_path, flush=True)
        signal.pause()
    except KeyboardInterrupt:
        health = httpx.get(f"{server.api_url}/health", trust_env=False).status_code
        print(f"interrupted; health {health}", flush=True)
        sys.stdin.readline()
"""

# A flow run the way `nbp run` does it, with no PREFECT_API_URL and no kept server.
RUNS_A_FLOW = """\
import asyncio, json, os
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.server.api.server import SubprocessASGIServer
from nbp.flows.orchestration.server import prefect_api, use_api

def children():
    return [pid for task in os.listdir("/proc/self/task")
            for pid in open(f"/proc/self/task/{task}/children").read().split()]

@flow
async def greet(name: str) -> str:
    get_run_logger().warning("hello %s", name)
    return name

with prefect_api() as url:
    with use_api(url):
        result = asyncio.run(greet("nbp"))
    with get_client(sync_client=True) as client:
        logs = [log.message for log in client.read_logs()]
    during = {"result": result, "url": url, "env": os.environ["PREFECT_API_URL"],
              "logs": logs, "children": children(),
              "ephemeral": len(SubprocessASGIServer._instances)}
print(json.dumps({**during, "after": children(), "env_after": os.environ.get("PREFECT_API_URL")}))
"""


def test_the_server_answers_health_and_prefect_clients_and_is_gone_after_an_error() -> None:
    from prefect.client.orchestration import get_client

    with pytest.raises(RuntimeError, match="the run failed"), TemporaryServer() as server:
        assert server.pid is not None
        pid, log = server.pid, server.log_path
        assert os.getpgid(pid) == os.getsid(pid) == pid != os.getpgid(0)
        assert httpx.get(f"{server.api_url}/health", trust_env=False).json() is True
        with use_api(server.api_url), get_client(sync_client=True) as client:
            assert client.hello().status_code == 200
            assert isinstance(client.read_flow_runs(limit=1), list)  # the API answers
        assert os.environ.get("PREFECT_API_URL") in (None, "")  # restored after use_api
        raise RuntimeError("the run failed")
    assert not running(pid)
    assert log is not None and not log.exists()


def test_ctrl_c_in_nbps_process_group_does_not_reach_the_server() -> None:
    with holding_a_server() as (child, server_pid, log):
        os.killpg(child.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        assert readline(child) == "interrupted; health 200"
        assert running(server_pid)
        assert child.stdin is not None
        child.stdin.write("done\n")
        child.stdin.flush()
        assert child.wait(timeout=10) == 0
        assert not running(server_pid)
        assert not log.exists()


def test_the_server_exits_by_itself_when_nbp_is_killed() -> None:
    with holding_a_server() as (child, server_pid, log):
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=5)
        assert wait_until(lambda: not running(server_pid), timeout_s=10), "orphan server"
        assert not log.exists()


def test_a_flow_run_uses_the_temporary_server_and_prefect_starts_none_of_its_own() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_LOGGING_LEVEL"] = "INFO"
    env["NBP_SERVER_IDLE_TIMEOUT"] = "0"  # no kept server: a temporary one for the run
    done = subprocess.run([sys.executable, "-c", RUNS_A_FLOW], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["result"] == "nbp"
    assert seen["url"] == seen["env"] and seen["url"].startswith("http://127.0.0.1:")
    assert "hello nbp" in seen["logs"]  # use_api flushed the run's logs to the server
    assert len(seen["children"]) == 1 and seen["ephemeral"] == 0
    assert seen["after"] == [] and seen["env_after"] is None
    assert "Traceback" not in done.stderr
    assert "View at" not in done.stderr  # no links to a UI that is not served


@pytest.fixture
def answering_url() -> Iterator[str]:
    """A loopback URL where something answers (404 to everything): not Prefect, but up."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


def test_a_users_own_api_url_is_used_as_it_is(answering_url: str) -> None:
    from prefect.settings import PREFECT_API_URL

    env = {"PREFECT_API_URL": answering_url}
    before, settings_before = children(), PREFECT_API_URL.value()
    with prefect_api(env) as url:
        assert url == answering_url
        assert children() == before
        assert PREFECT_API_URL.value() == settings_before  # Prefect's settings untouched
    assert env == {"PREFECT_API_URL": answering_url}


def test_a_users_api_url_that_does_not_answer_is_refused_before_the_run() -> None:
    env = {"PREFECT_API_URL": "http://127.0.0.1:9/api"}
    before = children()
    refused = (r"^cannot reach the Prefect API at http://127.0.0.1:9/api \(PREFECT_API_URL\): "
               r"Connection refused$")
    with pytest.raises(ApiUnreachable, match=refused), prefect_api(env):
        raise AssertionError("the block must not run")
    assert children() == before  # no server of nbp's own in its place


@pytest.mark.parametrize(("options", "message"), [
    pytest.param(
        {"extra_env": {"PREFECT_SERVER_DATABASE_CONNECTION_URL":
                       "sqlite+aiosqlite:////nonexistent/prefect.db"}},
        r"(?s)exited with code 3 before answering .*unable to open database file",
        id="exits-at-start-up"),
    pytest.param({"startup_timeout_s": 0.2}, r"did not answer .* within 0.2 s",
                 id="too-slow"),
])
def test_a_server_that_does_not_start_says_why_and_leaves_nothing(
    options: dict[str, object], message: str
) -> None:
    before = children()
    with pytest.raises(ServerDidNotStart, match=message) as failed:
        TemporaryServer(**options).start()  # type: ignore[arg-type]
    assert "Its log ends with" in str(failed.value)
    assert children() == before


@contextmanager
def holding_a_server() -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    """A child in its own process group (so signals to it spare pytest) holding a server."""
    child = subprocess.Popen([sys.executable, "-c", HOLDS_A_SERVER], cwd=ROOT, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             start_new_session=True)
    try:
        pid, log = readline(child).split(maxsplit=1)
        server_pid = int(pid)
        assert running(server_pid) and Path(log).exists()
        assert os.getpgid(server_pid) == server_pid != child.pid == os.getpgid(child.pid)
        yield child, server_pid, Path(log)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.communicate()


def readline(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    return child.stdout.readline().strip()


def running(pid: int) -> bool:
    """A live process (an exited one waiting to be reaped, a zombie, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def children() -> list[str]:
    """This process's child process ids (a thread that ends meanwhile has none)."""
    found = []
    for task in Path("/proc/self/task").iterdir():
        try:
            found += (task / "children").read_text().split()
        except FileNotFoundError:
            continue
    return found


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False
