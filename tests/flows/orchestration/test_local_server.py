"""nbp's kept Prefect server: the second run reuses what the first started, runs started at
once share one, a stale record is replaced, an idle server leaves by itself, `nbp server
stop` stops it (and never a server nbp did not start), and a run on it is a Prefect flow run
there. Real server processes on loopback, in a private PREFECT_HOME (the database is
migrated once for the module); every test leaves no server of its own behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from nbp.flows.orchestration.local_server import (
    MARKER,
    LocalServer,
    ServerInUse,
    ServerRecord,
)
from tests.conftest import ROOT, run_nbp

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

# A run's use of the server, in a process of its own: lease, print the server, hold it.
LEASES = """\
import json, sys, time
from nbp.flows.orchestration.local_server import LocalServer
server = LocalServer(sys.argv[1])
with server.lease() as record:
    print(json.dumps({"pid": record.pid, "port": record.port, "started": server.started_here}),
          flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A PREFECT_HOME of the module's own; its server is stopped at the end."""
    path = tmp_path_factory.mktemp("prefect-home")
    try:
        yield path
    finally:
        LocalServer(path).stop(force=True)
        assert kept_servers(path) == []


@pytest.fixture
def stopped(home: Path) -> Path:
    """The module's home with no server running."""
    LocalServer(home).stop(force=True)
    return home


def test_a_second_lease_reuses_the_server_the_first_started(stopped: Path) -> None:
    first = LocalServer(stopped)
    with first.lease() as record:
        assert first.started_here
        assert health(record) == 200
    second = LocalServer(stopped)
    with second.lease() as again:
        assert not second.started_here
        assert (again.pid, again.port) == (record.pid, record.port)
    assert LocalServer(stopped).running() == record  # kept after the lease
    assert listening_on(record.port) == ["127.0.0.1"]
    assert kept_servers(stopped) == [record.pid]
    assert os.getpgid(record.pid) == os.getsid(record.pid) == record.pid  # its own session


def test_leases_taken_at_once_share_one_server(stopped: Path) -> None:
    children = [subprocess.Popen([sys.executable, "-c", LEASES, str(stopped), "1"], cwd=ROOT,
                                 stdout=subprocess.PIPE, text=True) for _ in range(3)]
    seen = [json.loads(child.communicate(timeout=120)[0]) for child in children]
    assert all(child.returncode == 0 for child in children)
    assert len({(s["pid"], s["port"]) for s in seen}) == 1
    assert sorted(s["started"] for s in seen) == [False, False, True]
    assert kept_servers(stopped) == [seen[0]["pid"]]


def test_a_stale_record_is_replaced_and_a_foreign_pid_is_left_alone(stopped: Path) -> None:
    bystander = subprocess.Popen(["sleep", "60"])  # a live process that is not our server
    try:
        stale = ServerRecord(pid=bystander.pid, port=free_port(), started_at="2026-01-01T00:00:00",
                             idle_timeout_s=600, prefect_version="0", ui=True)
        (stopped / "nbp-server").mkdir(exist_ok=True)
        (stopped / "nbp-server" / "server.json").write_text(json.dumps(vars(stale)))
        assert LocalServer(stopped).running() is None
        assert LocalServer(stopped).stop() is None  # nothing of nbp's to stop
        assert bystander.poll() is None
        (stopped / "nbp-server" / "server.json").write_text(json.dumps(vars(stale)))
        server = LocalServer(stopped)
        with server.lease() as record:
            assert server.started_here and record.pid != bystander.pid
            assert health(record) == 200
        assert bystander.poll() is None  # never signalled
        assert read_record(stopped)["pid"] == record.pid
    finally:
        bystander.kill()
        bystander.wait()
    (stopped / "nbp-server" / "server.json").write_text("{not json")  # a torn file: stale too
    with LocalServer(stopped).lease() as fresh:
        assert fresh.pid != record.pid
    assert wait_until(lambda: kept_servers(stopped) == [fresh.pid], timeout_s=20)  # no orphan
    os.kill(fresh.pid, signal.SIGKILL)  # a crashed server: its record stays behind
    assert wait_until(lambda: kept_servers(stopped) == [], timeout_s=10)
    with LocalServer(stopped).lease() as after_crash:
        assert after_crash.pid != fresh.pid and health(after_crash) == 200
    assert read_record(stopped)["pid"] == after_crash.pid


def test_an_idle_server_leaves_by_itself_but_not_while_a_run_holds_it(stopped: Path) -> None:
    server = LocalServer(stopped, idle_timeout_s=1.0)
    with server.lease() as record:
        time.sleep(3)  # three idle timeouts, but leased
        assert health(record) == 200
    assert wait_until(lambda: kept_servers(stopped) == [], timeout_s=30), "idle server stays"
    assert not (stopped / "nbp-server" / "server.json").exists()
    assert LocalServer(stopped).running() is None


def test_a_server_whose_record_is_gone_leaves(stopped: Path) -> None:
    with LocalServer(stopped).lease() as record:
        pass
    (stopped / "nbp-server" / "server.json").unlink()  # its home removed, or replaced
    assert wait_until(lambda: kept_servers(stopped) == [], timeout_s=60), \
        (kept_servers(stopped), (stopped / "nbp-server" / "server.log").read_text()[-2000:])
    # An exiting process's cmdline is empty before its state says so: give it the moment.
    assert wait_until(lambda: not running(record.pid), timeout_s=10)


def test_nbp_server_status_start_and_stop(stopped: Path) -> None:
    env = environ(stopped)
    none = run_nbp("server", "status", env=env, timeout=60)
    assert none.returncode == 1 and none.stdout.startswith("no nbp Prefect server runs")
    started = run_nbp("server", "start", env=env, timeout=120)
    assert started.returncode == 0, started.stderr
    record = LocalServer(stopped).running()
    assert record is not None
    status = run_nbp("server", "status", "--json", env=env, timeout=60)
    facts = json.loads(status.stdout)
    assert (facts["pid"], facts["api_url"]) == (record.pid, record.api_url)
    assert facts["database"] == str(stopped.resolve() / "prefect.db")
    text = run_nbp("server", "status", env=env, timeout=60).stdout
    assert f"nbp's Prefect server: {record.url} (its UI; the API at /api)" in text
    assert "stops after 10 min without a run (NBP_SERVER_IDLE_TIMEOUT" in text
    holder = subprocess.Popen([sys.executable, "-c", LEASES, str(stopped), "30"], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and json.loads(holder.stdout.readline())
        refused = run_nbp("server", "stop", env=env, timeout=60)
        assert refused.returncode == 1
        assert "a run is using nbp's Prefect server" in refused.stderr
        assert "--force" in refused.stderr and health(record) == 200
        with pytest.raises(ServerInUse):
            LocalServer(stopped).stop()
    finally:
        holder.kill()
        holder.wait()
    stop = run_nbp("server", "stop", env=env, timeout=60)
    assert stop.returncode == 0
    assert stop.stdout.strip() == f"stopped nbp's Prefect server at {record.url} " \
                                  f"(pid {record.pid})"
    assert not running(record.pid) and kept_servers(stopped) == []
    again = run_nbp("server", "stop", env=env, timeout=60)
    assert again.returncode == 0 and again.stdout.startswith("no nbp Prefect server was running")


def test_runs_share_and_reuse_the_server_and_are_flow_runs_on_it(
    stopped: Path, tmp_path: Path
) -> None:
    env, spec = environ(stopped), one_cell_spec(tmp_path)

    def start(name: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "nbp.flows.cli", "run", spec, "--emulate",
             "--emulator-latency", "0.05", "--target", str(tmp_path / name)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    together = [start("a"), start("b")]  # two runs at once, no server yet
    said = [child.communicate(timeout=300)[1] for child in together]
    assert [child.returncode for child in together] == [0, 0], said
    record = LocalServer(stopped).running()
    assert record is not None
    started = f"nbp: started a Prefect server for this and later runs: {record.url}"
    assert sorted(started in stderr for stderr in said) == [False, True]
    later = start("c")
    assert later.communicate(timeout=300)[1].count("started a Prefect server") == 0
    assert later.returncode == 0
    assert LocalServer(stopped).running() == record  # the same server, still up
    assert kept_servers(stopped) == [record.pid]
    runs = httpx.post(f"{record.api_url}/flow_runs/filter", trust_env=False,
                      json={"flows": {"name": {"any_": ["nbp-run"]}}}).json()
    assert [run["state"]["type"] for run in runs] == ["COMPLETED"] * 3


def test_a_bad_idle_timeout_is_one_line(tmp_path: Path) -> None:
    done = run_nbp("run", "specs/demo.yaml", "--emulate", "--target", str(tmp_path / "out"),
                   env={**environ(tmp_path), "NBP_SERVER_IDLE_TIMEOUT": "ten minutes"},
                   timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("nbp run: NBP_SERVER_IDLE_TIMEOUT='ten minutes' is not a "
                                  "number of seconds")
    assert kept_servers(tmp_path) == []


# -- helpers ----------------------------------------------------------------------------------


def environ(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "NBP_SERVER_IDLE_TIMEOUT")}
    return {**env, "PREFECT_HOME": str(home)}


def one_cell_spec(folder: Path) -> str:
    path = folder / "one.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "name": "kept-server", "provider": "kie",
        "matrix": {"prompt": ["One lemon on a blue plate"], "aspect_ratio": ["1:1"],
                   "resolution": ["1K"]},
        "output": {"target": str(folder / "out"), "format": "jpg"}}))
    return str(path)


def health(record: ServerRecord) -> int:
    return httpx.get(f"{record.api_url}/health", trust_env=False, timeout=5).status_code


def read_record(home: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((home / "nbp-server" / "server.json").read_text())
    return data


def kept_servers(home: Path) -> list[int]:
    """Live processes that are nbp's kept server of `home`."""
    folder = str(home.resolve() / "nbp-server")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 3 and argv[2].decode(errors="replace").startswith(MARKER) \
                and argv[3].decode(errors="replace") == folder and running(int(entry.name)):
            found.append(int(entry.name))
    return found


def listening_on(port: int) -> list[str]:
    """The IPv4 and IPv6 addresses a TCP socket listens on at `port`."""
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                addresses.append(".".join(str(int(address[i:i + 2], 16))
                                          for i in (6, 4, 2, 0)) if len(address) == 8
                                 else address)
    return addresses


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.mark.parametrize(("files", "env", "settled"), [
    pytest.param({}, {}, True, id="nothing-set"),
    pytest.param({}, {"PREFECT_API_URL": "http://127.0.0.1:4200/api"}, False, id="api-url"),
    pytest.param({"cwd/.env": "PREFECT_HOME=/elsewhere\n"}, {}, False, id="dotenv"),
    pytest.param({"cwd/prefect.toml": "[api]\n"}, {}, False, id="prefect-toml"),
    pytest.param({"cwd/pyproject.toml": "[tool.prefect]\nhome = '/x'\n"}, {}, False,
                 id="pyproject-tool-prefect"),
    pytest.param({"cwd/pyproject.toml": "[project]\nname = 'x'\n"}, {}, True,
                 id="pyproject-without-prefect"),
    pytest.param({"home/profiles.toml": 'active = "team"\n[profiles.team]\n'
                  'PREFECT_API_URL = "http://10.0.0.5:4200/api"\n'}, {}, False,
                 id="profile-api-url"),
    pytest.param({"home/profiles.toml": 'active = "team"\n[profiles.team]\n'
                  'PREFECT_API_URL = "http://10.0.0.5:4200/api"\n'},
                 {"PREFECT_PROFILE": "local"}, True, id="another-profile"),
])
def test_the_environment_alone_settles_the_home_only_when_prefect_would_agree(
    tmp_path: Path, files: dict[str, str], env: dict[str, str], settled: bool
) -> None:
    """What lets nbp start its server before Prefect is imported; else it asks Prefect."""
    from nbp.flows.orchestration.local_server import environment_home

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "cwd").mkdir(exist_ok=True)
    found = environment_home({"PREFECT_HOME": str(tmp_path / "home"), **env},
                             cwd=tmp_path / "cwd")
    assert found == ((tmp_path / "home").resolve() if settled else None)
