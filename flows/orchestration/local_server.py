"""nbp's own Prefect server, kept between runs: one per `PREFECT_HOME`, started by the first
`nbp run` that needs one, reused by the next, gone after an idle timeout or `nbp server stop`.

    server = LocalServer.of_settings()      # this PREFECT_HOME's; NBP_SERVER_IDLE_TIMEOUT
    with server.lease() as record:          # found, or started; held for the block
        run_against(record.api_url)         # http://127.0.0.1:PORT/api (the UI at /)

Its files live in `$PREFECT_HOME/nbp-server/`; the database is Prefect's own
(`$PREFECT_HOME/prefect.db` unless the settings say otherwise), so `prefect server start`
on the same home shows every run too:

    server.json   the server: pid, port, start, idle timeout, Prefect's version
    start.lock    held (flock) while anyone reads, starts or stops the server: never two
    runs.lock     held shared by every run on the server; the server itself takes it
                  exclusively, without waiting, to know that no run is using it
    last-run      touched when a run starts and ends: idle time counts from its mtime
    server.log    the server's output (from its last start)

The server is Prefect's app as `prefect server start --background` runs it (uvicorn, the
UI, the services runs use; not those only deployments use: `DEPLOYMENT_SERVICES`), on
127.0.0.1 only, in a session of its own (a terminal's Ctrl-C never
reaches it), plus a watchdog thread: once no run has held the lease for the idle timeout it
takes `runs.lock` for good (a run arriving then waits until the server is gone, and starts
another) and shuts down; it leaves at once when `server.json` no longer names it (the home
was removed, or `nbp server stop`). A `server.json` whose process is gone, or is not an nbp
server of this home (a reused pid), is stale and replaced; nbp only ever signals a process
whose command line is its own server's for this home, so a server nbp did not start (the
user's own on 4200, say) is never stopped by nbp.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import http.client
import importlib.metadata
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nbp.flows.orchestration.server import ServerDidNotStart, log_tail, uvicorn_with_watchdog

HOST = "127.0.0.1"
IDLE_TIMEOUT_ENV = "NBP_SERVER_IDLE_TIMEOUT"
DEFAULT_IDLE_TIMEOUT_S = 600.0
# The start-up wait: at least this, or Prefect's setting for its own ephemeral server when
# higher. A new PREFECT_HOME's migrations took 19-25 s on the shared 2-core box; a server
# killed while it migrates would be started again by the next run, from the beginning.
MIN_STARTUP_TIMEOUT_S = 60.0
STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL: the services stop one by one
WATCHDOG_GRACE_S = 10.0  # after the watchdog's own SIGTERM, its deadline to exit
LOCK_POLL_S = 0.05
# Prefect's services that only deployments and workers use (schedules, late runs, work pool
# health, paused runs), off on the kept server: with them it took ~1 s more CPU to start and
# 2.2-2.9 % of a core idle, against 1.2-1.6 % (4 alternating starts each, load 4.4-6.6). Runs
# keep what they use: task-run recording, events, automations, logs, cancellation clean-up,
# and the repossessor that frees the concurrency slots of `--shared-limits`.
DEPLOYMENT_SERVICES = ("SCHEDULER", "LATE_RUNS", "FOREMAN", "PAUSE_EXPIRATIONS")
# A server whose starter died before writing `server.json` (it does so right after the
# spawn) leaves after this long.
REGISTER_DEADLINE_S = 60
FOLDER = "nbp-server"
# The first line of the server's `-c` program: how nbp knows its own server's command line.
MARKER = "# nbp-kept-prefect-server"

# `python -c PROGRAM FOLDER IDLE_S UVICORN_ARGS...`: uvicorn, plus the idle watchdog.
_PROGRAM = uvicorn_with_watchdog(f"""{MARKER}
import fcntl, json, os, runpy, signal, sys, threading, time

folder, idle = sys.argv[1], float(sys.argv[2])
del sys.argv[1:3]

def names_me(started):
    try:
        with open(os.path.join(folder, "server.json")) as handle:
            return json.load(handle).get("pid") == os.getpid()
    except (OSError, ValueError):
        return False

def last_run(started):
    try:
        return max(started, os.stat(os.path.join(folder, "last-run")).st_mtime)
    except OSError:
        return started

def wait_for_the_end():
    started, seen, check = time.time(), False, max(0.1, min(1.0, idle / 4))
    runs = os.open(os.path.join(folder, "runs.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    while True:
        time.sleep(check)
        if names_me(started):
            seen = True
        elif seen or time.time() - started > {REGISTER_DEADLINE_S}:
            return  # stopped, replaced, its home removed; or never registered
        else:
            continue
        try:
            fcntl.flock(runs, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a run holds the lease
        if time.time() - last_run(started) >= idle:
            if names_me(started):
                os.unlink(os.path.join(folder, "server.json"))
            return  # runs.lock stays taken until this process is gone
        fcntl.flock(runs, fcntl.LOCK_UN)
""", wait="wait_for_the_end", thread="nbp-idle-watchdog", grace_s=WATCHDOG_GRACE_S)


class ServerSettingInvalid(ValueError):
    """`NBP_SERVER_IDLE_TIMEOUT` is not a number of seconds."""


class ServerInUse(RuntimeError):
    """`stop()` without `force` while a run holds the lease."""


@dataclass(frozen=True)
class ServerRecord:
    """What `server.json` says of a running server."""

    pid: int
    port: int
    started_at: str  # ISO 8601, UTC
    idle_timeout_s: float
    prefect_version: str
    ui: bool

    @property
    def url(self) -> str:
        """The UI (when it serves one) and the API below it at `/api`."""
        return f"http://{HOST}:{self.port}"

    @property
    def api_url(self) -> str:
        """The value for `PREFECT_API_URL`."""
        return f"{self.url}/api"


def idle_timeout_setting(env: Mapping[str, str] | None = None) -> float:
    """`NBP_SERVER_IDLE_TIMEOUT` in seconds (600 when unset); 0 means no kept server, a
    temporary one per run. `ServerSettingInvalid` when it is not a number >= 0."""
    raw = (os.environ if env is None else env).get(IDLE_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_IDLE_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ServerSettingInvalid(
            f"{IDLE_TIMEOUT_ENV}={raw!r} is not a number of seconds (600 keeps nbp's Prefect "
            "server 10 minutes after a run; 0 starts a temporary one for each run)")
    return value


class LocalServer:
    """nbp's kept Prefect server of the `PREFECT_HOME` `home` (`LocalServer.of_settings()`:
    Prefect's setting).

    `lease()` finds it (or starts it) and holds it for a block; `running()` says whether it
    runs; `ensure()` starts it without holding it; `stop()` stops it. None of them imports
    Prefect, so a thread can run them while the main thread does (two threads importing one
    package can deadlock). `idle_timeout_s` (default `NBP_SERVER_IDLE_TIMEOUT`) applies to a
    server this object starts; `startup_timeout_s` defaults to `MIN_STARTUP_TIMEOUT_S`, or
    `PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS` (environment) when higher;
    `settings_env`: Prefect's settings as variables, for the server (`of_settings` passes
    them; without, the server reads them where nbp would: the environment and the home's
    profile); `extra_env` adds to the server's environment.
    """

    def __init__(
        self,
        home: str | Path,
        *,
        idle_timeout_s: float | None = None,
        startup_timeout_s: float | None = None,
        settings_env: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.home = Path(home).expanduser().resolve()
        self.folder = self.home / FOLDER
        self.idle_timeout_s = (idle_timeout_setting() if idle_timeout_s is None
                               else idle_timeout_s)
        self.settings_env = dict(settings_env or {})
        self.extra_env = dict(extra_env or {})
        self.startup_timeout_s, self._timeout_source = startup_timeout_s or 0.0, ""
        if startup_timeout_s is None:  # a first start migrates a new database: give it time
            given = {**os.environ, **self.settings_env}.get(STARTUP_TIMEOUT_ENV)
            self.startup_timeout_s = max(MIN_STARTUP_TIMEOUT_S, float(given or 0))
            self._timeout_source = f" ({STARTUP_TIMEOUT_ENV}, at least {MIN_STARTUP_TIMEOUT_S:g})"
        # Read here, in the caller's thread: the thread of a BackgroundLease imports nothing.
        self._prefect_dir, self._prefect_version = _prefect_dir(), _prefect_version()
        self.started_here = False  # the last lease() or ensure() started the server

    @classmethod
    def of_settings(cls, **options: Any) -> LocalServer:
        """The server of Prefect's `PREFECT_HOME` (this imports Prefect)."""
        from prefect.settings import PREFECT_HOME, get_current_settings

        settings_env = get_current_settings().to_environment_variables(exclude_unset=True)
        return cls(PREFECT_HOME.value(), settings_env=settings_env, **options)

    @property
    def log_path(self) -> Path:
        return self.folder / "server.log"

    @property
    def database(self) -> str:
        """Where the server keeps its runs (a URL's password hidden)."""
        from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL
        from sqlalchemy.engine import make_url

        url = make_url(PREFECT_API_DATABASE_CONNECTION_URL.value())
        if url.drivername.startswith("sqlite"):
            return str(url.database)
        return url.render_as_string(hide_password=True)

    # -- running it --------------------------------------------------------------------------

    @contextlib.contextmanager
    def lease(self) -> Iterator[ServerRecord]:
        """The server for the block: the running one, else one started now. It does not
        idle out while the block runs; its idle time starts when the block ends."""
        self.folder.mkdir(parents=True, exist_ok=True)
        runs = os.open(self.folder / "runs.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # A server that is stopping for idleness holds it exclusively until it is gone.
            _flock(runs, fcntl.LOCK_SH, self._lock_timeout_s(), self.folder / "runs.lock")
            self._touch_last_run()
            record = self.ensure()
            try:
                yield record
            finally:
                self._touch_last_run()
        finally:
            os.close(runs)  # releases the lease

    def ensure(self) -> ServerRecord:
        """The running server, else one started now (never two: under `start.lock`)."""
        with self._start_lock():
            record = self._read()
            if record is not None:
                found = self._answering(record, wait=True)
                if found:
                    self.started_here = False
                    return record
                self._forget(record)
            record = self._start()
            self.started_here = True
            return record

    def running(self) -> ServerRecord | None:
        """The server, if it runs and answers (one `/health` request)."""
        record = self._read()
        if record is None or not self._ours(record.pid):
            return None
        return record if _healthy(record.port) else None

    def stop(self, *, force: bool = False) -> ServerRecord | None:
        """Stop the server (SIGTERM to its process group, SIGKILL after `STOP_GRACE_S`);
        the record of what was stopped, None when none ran. `ServerInUse` while a run uses
        it, unless `force`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._start_lock():
            record = self._read()
            if record is None:
                return None
            if not self._ours(record.pid):  # stale: nothing of ours to stop
                self._forget(record)
                return None
            runs = os.open(self.folder / "runs.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                try:
                    fcntl.flock(runs, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not force:
                        raise ServerInUse(
                            f"a run is using nbp's Prefect server at {record.url} (pid "
                            f"{record.pid})") from None
                _terminate(record.pid)
                self._forget(record)
            finally:
                os.close(runs)
            return record

    # -- the files --------------------------------------------------------------------------

    def _read(self) -> ServerRecord | None:
        try:
            data = json.loads((self.folder / "server.json").read_text())
            return ServerRecord(**{k: data[k] for k in ServerRecord.__dataclass_fields__})
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write(self, record: ServerRecord) -> None:
        path = self.folder / "server.json"
        partial = path.with_name(f".server.json.{os.getpid()}.{threading.get_ident()}")
        partial.write_text(json.dumps(asdict(record), indent=2) + "\n")
        os.replace(partial, path)

    def _forget(self, record: ServerRecord) -> None:
        """Remove `server.json` if it still names `record`'s process."""
        current = self._read()
        if current is not None and current.pid == record.pid:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / "server.json").unlink()

    def _touch_last_run(self) -> None:
        (self.folder / "last-run").touch()  # its mtime: when a run last started or ended

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "start.lock"
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _flock(handle, fcntl.LOCK_EX, self._lock_timeout_s(), path)
            yield
        finally:
            os.close(handle)

    # -- the process ------------------------------------------------------------------------

    def _ours(self, pid: int) -> bool:
        """A live process whose command line is nbp's kept server of this home."""
        return _is_kept_server(_command_line(pid), self.folder)

    def _answering(self, record: ServerRecord, *, wait: bool) -> bool:
        """True when `record`'s server is ours and answers; with `wait`, a server of ours
        that is still starting gets until its start-up timeout (then it is stopped)."""
        if not self._ours(record.pid):
            return False
        if _healthy(record.port):
            return True
        if not wait:
            return False
        started = datetime.datetime.fromisoformat(record.started_at).timestamp()
        deadline = started + self.startup_timeout_s
        while time.time() < deadline and self._ours(record.pid):
            if _healthy(record.port):
                return True
            time.sleep(LOCK_POLL_S)
        _terminate(record.pid)  # hung: ours, and it never answered
        return False

    def _start(self) -> ServerRecord:
        timeout, source, idle = self.startup_timeout_s, self._timeout_source, self.idle_timeout_s
        for _ in range(3):
            port = _free_port()
            process = self._spawn(port, idle)
            record = ServerRecord(
                pid=process.pid, port=port,
                started_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                idle_timeout_s=idle, prefect_version=self._prefect_version, ui=False)
            self._write(record)  # at once: a run that dies now leaves a server to find
            deadline = time.monotonic() + timeout
            while process.poll() is None:
                if _healthy(record.port):
                    record = dataclasses.replace(record, ui=_get(port, "/") == 200)
                    self._write(record)
                    return record
                if time.monotonic() > deadline:
                    _terminate(process.pid)
                    self._forget(record)
                    raise ServerDidNotStart(
                        f"nbp's Prefect server did not answer {record.api_url}/health within "
                        f"{timeout:g} s{source}. Its log ({self.log_path}) ends with:\n"
                        f"{self._log_tail()}")
                time.sleep(LOCK_POLL_S)
            self._forget(record)
            if "address already in use" not in self._log_tail().lower():
                raise ServerDidNotStart(
                    f"nbp's Prefect server exited with code {process.returncode} before "
                    f"answering {record.api_url}/health. Its log ({self.log_path}) ends "
                    f"with:\n{self._log_tail()}")
        raise ServerDidNotStart(f"no free port for nbp's Prefect server: {self._log_tail()}")

    def _spawn(self, port: int, idle_s: float) -> subprocess.Popen[bytes]:
        # `prefect server start --background`'s command, on loopback only.
        uvicorn_args = [
            "--app-dir", self._prefect_dir,
            "--factory", "prefect.server.api.server:create_app",
            "--host", HOST, "--port", str(port), "--log-level", "warning",
        ]
        url = f"http://{HOST}:{port}"
        env = {
            **os.environ,
            **self.settings_env,
            "PREFECT__SERVER_FINAL": "1",
            "PREFECT_SERVER_API_HOST": HOST,
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_UI_API_URL": f"{url}/api",  # what the UI in a browser calls
            "PREFECT_HOME": str(self.home),
            **self.extra_env,
        }
        for name in DEPLOYMENT_SERVICES:  # unless the settings turn them on
            env.setdefault(f"PREFECT_SERVER_SERVICES_{name}_ENABLED", "false")
        env.pop("PREFECT_API_URL", None)  # a server has no use for a client's setting
        for name in ("PREFECT__SERVER_EPHEMERAL", "PREFECT__SERVER_WEBSERVER_ONLY"):
            env.pop(name, None)
        with open(self.log_path, "wb") as log:
            return subprocess.Popen(
                [sys.executable, "-c", _PROGRAM, str(self.folder), repr(idle_s),
                 *uvicorn_args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=self.folder,
                start_new_session=True,  # out of reach of the terminal's signals
            )

    def _lock_timeout_s(self) -> float:
        """How long to wait for another nbp starting or stopping the server."""
        return self.startup_timeout_s + STOP_GRACE_S + WATCHDOG_GRACE_S

    def _log_tail(self) -> str:
        return log_tail(self.log_path)


class BackgroundLease:
    """`server.lease()` taken in a thread, held from now until `close()`:

        lease = BackgroundLease(server)     # the thread finds or starts the server
        ...                                 # the main thread goes on meanwhile
        record = lease.result()             # waits; raises the thread's error
        lease.close()                       # now, or as soon as the thread is done
    """

    def __init__(self, server: LocalServer) -> None:
        self.server = server
        self._stack = contextlib.ExitStack()
        self._record: ServerRecord | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._done = self._closed = False
        self._thread = threading.Thread(target=self._take, name="nbp-prefect-server",
                                        daemon=True)
        self._thread.start()

    def result(self) -> ServerRecord:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._record is not None
        return self._record

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._done:
                self._stack.close()

    def _take(self) -> None:
        try:
            self._record = self._stack.enter_context(self.server.lease())
        except BaseException as exc:  # raised in the caller's thread by result()
            self._error = exc
        with self._lock:
            self._done = True
            if self._closed:
                self._stack.close()


def environment_home(env: Mapping[str, str], cwd: Path | None = None) -> Path | None:
    """The `PREFECT_HOME` of the kept server a run will use, when the environment alone
    settles it, read without importing Prefect: no `PREFECT_API_URL` in `env` nor in the
    active profile, and no settings file in the current folder that Prefect would read
    (`.env`, `prefect.toml`, a `pyproject.toml` with `[tool.prefect]`). None: ask Prefect."""
    if env.get("PREFECT_API_URL"):
        return None
    folder = Path.cwd() if cwd is None else cwd
    if (folder / ".env").exists() or (folder / "prefect.toml").exists():
        return None
    with contextlib.suppress(OSError):
        if "[tool.prefect" in (folder / "pyproject.toml").read_text(errors="replace"):
            return None
    home = Path(env.get("PREFECT_HOME") or "~/.prefect").expanduser()
    profiles = Path(env.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        data = tomllib.loads(profiles.read_text())
    except FileNotFoundError:
        data = {}
    except (OSError, ValueError):
        return None
    active = env.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    profile = data.get("profiles", {}).get(active, {})
    if not isinstance(profile, dict) or profile.get("PREFECT_API_URL"):
        return None
    return home.resolve()


def _flock(handle: int, mode: int, timeout_s: float, path: Path) -> None:
    """flock, waiting at most `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise ServerDidNotStart(
                    f"another nbp has held {path} for {timeout_s:g} s; if no nbp runs, "
                    "remove the file") from None
            time.sleep(LOCK_POLL_S)


def _healthy(port: int) -> bool:
    """`GET /api/health` answers 200 (loopback, no proxy)."""
    return _get(port, "/api/health") == 200


def _get(port: int, path: str) -> int | None:
    """The status of `GET path` on loopback, None when nothing answers."""
    connection = http.client.HTTPConnection(HOST, port, timeout=2.0)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def _command_line(pid: int) -> list[str] | None:
    """A live process's argv (None for a gone or zombie process); where there is no /proc
    (macOS), `ps`'s command as one string."""
    _reap(pid)
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        done = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True,
                              text=True)
        return [done.stdout.strip()] if done.returncode == 0 and done.stdout.strip() else None
    if not raw:  # a zombie's is empty
        return None
    return raw.rstrip(b"\0").decode("utf-8", "replace").split("\0")


def _is_kept_server(argv: list[str] | None, folder: Path) -> bool:
    """`argv` is nbp's kept server for `folder`: `python -c PROGRAM FOLDER ...`."""
    if argv is None:
        return False
    if len(argv) == 1:  # `ps`'s one string
        return MARKER in argv[0] and f" {folder} " in argv[0]
    return len(argv) > 3 and argv[1] == "-c" and argv[2].startswith(MARKER) \
        and argv[3] == str(folder)


def _reap(pid: int) -> None:
    """Collect an exited child of this process (a server started here that has exited)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _terminate(pid: int) -> None:
    """SIGTERM to the server's process group, SIGKILL after `STOP_GRACE_S`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline:
        if _command_line(pid) is None:
            return
        time.sleep(LOCK_POLL_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    while _command_line(pid) is not None and time.monotonic() < deadline + STOP_GRACE_S:
        time.sleep(LOCK_POLL_S)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def _prefect_dir() -> str:
    """The folder holding the `prefect` package (uvicorn's --app-dir), without importing it."""
    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.origin is not None, "Prefect is not installed"
    return str(Path(spec.origin).parent.parent)


def _prefect_version() -> str:
    return importlib.metadata.version("prefect")
