"""The Prefect API of a run: the user's `PREFECT_API_URL`, nbp's kept server, or a temporary
local server; none of nbp's own is reached by the terminal's signals.

    with prefect_api() as url:      # PREFECT_API_URL if set, else nbp's kept server
        asyncio.run(nbp_run(...))   # every Prefect client of this process uses `url`

Without `PREFECT_API_URL`, a run uses nbp's kept server (`local_server.LocalServer`: one per
`PREFECT_HOME`, started by the first run that needs it, left for the next until it idles
out), which `ApiStart` finds or starts in a thread while the run loads its spec and Prefect.
With `NBP_SERVER_IDLE_TIMEOUT=0`, each run has a `TemporaryServer` of its own, as before.

Prefect's own ephemeral server (`SubprocessASGIServer`) is a child in nbp's process group, so
the terminal's Ctrl-C kills it together with nbp, while nbp still needs it to finish the run
gracefully (issue 19). `TemporaryServer` runs the same app with the same command, but in a
session (and process group) of its own; nbp stops it.

To keep one server across several runs, start and stop it yourself and point each run at it:

    server = TemporaryServer()
    server.start()
    try:
        with use_api(server.api_url):
            ...                     # one run; its logs and events are flushed at the end
    finally:
        server.stop()

The server never outlives nbp: its stdin is a pipe whose only writer is nbp, and a watchdog
thread in the server exits the server when that pipe reaches end of file, which the kernel
makes happen however nbp ends (SIGKILL included; no pid polling, no pid reuse).

Start-up is Prefect's own: on the shared 2-core dev box (Prefect 3.8.8, 5 alternating runs
each, database already migrated) `start()` took 4.35-5.07 s, median 4.60 s, and
`SubprocessASGIServer.start()` 4.50-4.80 s, median 4.61 s; both about 12 s on a new
`PREFECT_HOME` (the migrations). The kept server saves it every run but the first
(BENCHMARKS.md, "Issue 24: start-up").
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nbp.flows.orchestration.local_server import LocalServer, ServerRecord

HOST = "127.0.0.1"
STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL (Prefect's own server gets 5 s too)
WATCHDOG_GRACE_S = 5.0  # after its parent is gone, the server's own deadline to exit
DRAIN_TIMEOUT_S = 10.0  # flushing Prefect's log and event workers before the server stops
LOG_TAIL_CHARS = 3000
# Prefect's ephemeral server environment (`SubprocessASGIServer._run_uvicorn_command`),
# without telemetry.
SERVER_ENV = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
# `python -m uvicorn ARGS` plus a watchdog: stdin is a pipe only the parent writes to, so end
# of file means the parent died (a parent that stops the server closes it only afterwards).
# The orphan removes its own folder (its log stays open) and lets uvicorn shut down.
_WORKDIR_ENV = "NBP_PREFECT_SERVER_DIR"


def uvicorn_with_watchdog(program: str, *, wait: str, thread: str, grace_s: float) -> str:
    """A `python -c` program that runs `program` (which imports os, runpy, signal, sys,
    threading and time, and defines `wait`), then `python -m uvicorn ARGS` beside a daemon
    thread calling `wait()`: whatever ends the wait, an error included, the server is told to
    stop (SIGTERM) and leaves within `grace_s` (exit 70). Both of nbp's servers run so."""
    return f"""{program}
def watch():
    try:
        {wait}()
    finally:  # whatever ended the wait: a server nobody watches must not stay
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep({grace_s})
        os._exit(70)

threading.Thread(target=watch, name="{thread}", daemon=True).start()
sys.argv[0] = "uvicorn"
runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
"""


_SUPERVISED_UVICORN = uvicorn_with_watchdog(f"""\
import os, runpy, shutil, signal, sys, threading, time

def parent_gone():
    try:
        while os.read(0, 512):
            pass
    except OSError:
        pass
    shutil.rmtree(os.environ["{_WORKDIR_ENV}"], ignore_errors=True)
""", wait="parent_gone", thread="nbp-parent-watchdog", grace_s=WATCHDOG_GRACE_S)


class ApiUnreachable(RuntimeError):
    """`PREFECT_API_URL` names a server that does not answer (stopped, or another machine's):
    found before the run starts. `url` is the setting's value, `source` where it was set."""

    def __init__(self, url: str, source: str, reason: str) -> None:
        super().__init__(f"cannot reach the Prefect API at {url} ({source}): {reason}")
        self.url, self.source, self.reason = url, source, reason


class ServerDidNotStart(RuntimeError):
    """The server exited or did not answer `/health` in time; the message ends with the
    tail of its log."""


class TemporaryServer:
    """A Prefect API server on a free loopback port, in its own session and process group.

    `start()` returns once `GET {api_url}/health` answers; `stop()` (safe to repeat) sends
    SIGTERM to its process group, then SIGKILL after `STOP_GRACE_S`. As a context manager it
    starts on entry and stops on exit, exceptions included. `extra_env` adds to the server's
    environment (a test's broken setting, say). The database is Prefect's default, as for
    its ephemeral server: `$PREFECT_HOME/prefect.db` unless the settings say otherwise.
    """

    def __init__(
        self,
        *,
        startup_timeout_s: float | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.startup_timeout_s = startup_timeout_s
        self.extra_env = dict(extra_env or {})
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    @property
    def api_url(self) -> str:
        """`http://127.0.0.1:PORT/api` (the value for `PREFECT_API_URL`)."""
        if self.port is None:
            raise RuntimeError("the server has not been started")
        return f"http://{HOST}:{self.port}/api"

    @property
    def pid(self) -> int | None:
        """The server's process id (also its process group and session id) while it runs."""
        return None if self.process is None else self.process.pid

    @property
    def log_path(self) -> Path | None:
        """The server's stdout and stderr, while it runs (removed by `stop()`)."""
        return None if self._workdir is None else self._workdir / "server.log"

    def start(self) -> None:
        """Start the server and wait until it answers; `ServerDidNotStart` otherwise (the
        server is stopped first). A port taken between choosing and binding it is retried."""
        if self.process is not None:
            return
        self._workdir = Path(tempfile.mkdtemp(prefix="nbp-prefect-server-"))
        try:
            for _ in range(3):
                self.port = _free_port()
                self.process = self._spawn(self.port)
                if self._wait_until_healthy(self.process):
                    return
                code = self._reap()
                if "address already in use" not in self._log_tail().lower():
                    break
            raise ServerDidNotStart(
                f"the Prefect server exited with code {code} before answering "
                f"{self.api_url}/health. Its log ends with:\n{self._log_tail()}"
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after `STOP_GRACE_S`; then remove
        its log. Does nothing when it is not running."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                if self.process.poll() is None:  # not reaped, so its group id is still ours
                    os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            self._reap()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> TemporaryServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        import prefect
        from prefect.settings import get_current_settings

        # The command and environment of Prefect's own ephemeral server.
        uvicorn_args = [
            "--app-dir", str(prefect.__module_path__.parent),
            "--factory", "prefect.server.api.server:create_app",
            "--host", HOST, "--port", str(port),
            "--log-level", "error", "--lifespan", "on",
        ]
        env = {
            **os.environ,
            **get_current_settings().to_environment_variables(exclude_unset=True),
            **SERVER_ENV,
            **self.extra_env,
            _WORKDIR_ENV: str(self._workdir),
        }
        env.pop("PREFECT_API_URL", None)  # a server has no use for a client's setting
        assert self.log_path is not None
        with open(self.log_path, "wb") as log:  # one attempt's log
            return subprocess.Popen(
                [sys.executable, "-c", _SUPERVISED_UVICORN, *uvicorn_args],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # out of reach of the terminal's signals
            )

    def _wait_until_healthy(self, process: subprocess.Popen[bytes]) -> bool:
        """True once `/health` answers 200; False if the process exits first; raises
        `ServerDidNotStart` after the start-up timeout."""
        import httpx

        timeout, source = self.startup_timeout_s, ""
        if timeout is None:
            from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

            timeout = float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
            source = " (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)"
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=2.0) as client:  # loopback: no proxy
            while process.poll() is None:
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return True
                if time.monotonic() > deadline:
                    raise ServerDidNotStart(
                        f"the Prefect server did not answer {self.api_url}/health within "
                        f"{timeout:g} s{source}. "
                        f"Its log ends with:\n{self._log_tail()}"
                    )
                time.sleep(0.05)
        return False

    def _reap(self) -> int | None:
        """Wait for an exited server, close its pipe, forget it; its exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        code = process.wait()
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        return code

    def _log_tail(self) -> str:
        return log_tail(self.log_path)


def log_tail(path: Path | None) -> str:
    """The end of a server's log (`LOG_TAIL_CHARS`, from a line's start), for a message."""
    try:
        data = path.read_bytes() if path is not None else None
    except OSError:
        data = None
    if data is None:
        return "(no log)"
    tail = data[-LOG_TAIL_CHARS:]
    if len(tail) < len(data):
        tail = tail.partition(b"\n")[2]  # from a line's start
    return tail.decode("utf-8", "replace").strip() or "(empty)"


@contextlib.contextmanager
def use_api(
    url: str, env: MutableMapping[str, str] | None = None, *, ui_url: str | None = None
) -> Iterator[str]:
    """Point this process's Prefect clients at `url` for the block, then flush Prefect's
    log and event workers so nothing is left to send once the block ends.

    Sets `PREFECT_API_URL` in `env` (`os.environ` by default, which child processes
    inherit) and in Prefect's settings: the current context, and the process-global one that
    Prefect's background threads fall back on (Prefect reads the environment only at
    import; `prefect_test_harness` sets both the same way). `ui_url=""` drops the "View at"
    links Prefect logs (a server without a UI); None keeps Prefect's default."""
    import prefect.context
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    environ = os.environ if env is None else env
    before = environ.get("PREFECT_API_URL")
    environ["PREFECT_API_URL"] = url
    updates = {PREFECT_API_URL: url}
    if ui_url is not None:
        updates[PREFECT_UI_URL] = ui_url
    try:
        # The global context becomes the one temporary_settings has just entered.
        with (
            temporary_settings(updates=updates),
            prefect.context._temporary_global_settings_context(
                prefect.context.get_settings_context()
            ),
        ):
            try:
                yield url
            finally:
                _drain_prefect_workers()
    finally:
        if before is None:
            environ.pop("PREFECT_API_URL", None)
        else:
            environ["PREFECT_API_URL"] = before


class ApiStart:
    """The Prefect API of one run, settled before the run needs it; nbp's own server is
    found or started in a thread meanwhile: at once when the environment alone says the run
    will use it (`local_server.environment_home`: in parallel with loading the spec and
    Prefect's imports), else once `settle()` has read Prefect's settings:

        api = ApiStart()                # nbp's server: a thread begins (no Prefect import)
        ...                             # the spec, checks, imports
        with prefect_api(started=api) as url:   # settles, waits for the server
            ...                         # the run
        api.close()                     # (prefect_api closes it; so may an early exit)

    After `settle()`, `configured` is the user's `PREFECT_API_URL` (environment or profile),
    used as it is; else `lease` holds nbp's kept server (`LocalServer`) until `close()`; with
    `NBP_SERVER_IDLE_TIMEOUT=0` both are empty and `prefect_api` starts a temporary server.
    `ServerSettingInvalid` for a bad timeout.
    """

    def __init__(self, env: MutableMapping[str, str] | None = None) -> None:
        from nbp.flows.orchestration.local_server import (
            BackgroundLease,
            LocalServer,
            environment_home,
            idle_timeout_setting,
        )

        self.environ = os.environ if env is None else env
        self.configured = ""
        self._settled = False
        self._idle = 0.0 if self.environ.get("PREFECT_API_URL") \
            else idle_timeout_setting(self.environ)
        self.lease: BackgroundLease | None = None
        early = environment_home(self.environ) if self._idle > 0 else None
        if early is not None:
            self.lease = BackgroundLease(LocalServer(early, idle_timeout_s=self._idle))

    def settle(self) -> None:
        """Read Prefect's settings (this imports Prefect): the user's `PREFECT_API_URL`, or
        the home of nbp's server (an early lease they contradict is let go). Once."""
        if self._settled:
            return
        self._settled = True
        from prefect.settings import PREFECT_API_URL, PREFECT_HOME

        from nbp.flows.orchestration.local_server import BackgroundLease, LocalServer

        self.configured = str(self.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
                              or "")
        home = Path(PREFECT_HOME.value()).expanduser().resolve()
        if self.lease is not None and (self.configured or self.lease.server.home != home):
            self.lease.close()  # Prefect's settings say otherwise after all
            self.lease = None
        if self.lease is None and self._idle > 0 and not self.configured:
            self.lease = BackgroundLease(LocalServer.of_settings(idle_timeout_s=self._idle))

    @property
    def server(self) -> LocalServer | None:
        """nbp's kept server, when the run uses it."""
        return None if self.lease is None else self.lease.server

    @property
    def source(self) -> str:
        """Where `configured` was set."""
        return ("PREFECT_API_URL" if self.environ.get("PREFECT_API_URL")
                else "PREFECT_API_URL in Prefect's profile")

    def result(self) -> ServerRecord | None:
        """nbp's server, once found or started (raises why it could not be); None when
        the run does not use it."""
        return None if self.lease is None else self.lease.result()

    def close(self) -> None:
        """Release nbp's server: now, or as soon as it is found (a run that ends before it
        needs the server does not wait for it)."""
        if self.lease is not None:
            self.lease.close()


@contextlib.contextmanager
def prefect_api(
    env: MutableMapping[str, str] | None = None, *, started: ApiStart | None = None
) -> Iterator[str]:
    """The Prefect API for a run: the user's own (`PREFECT_API_URL` in `env`, default
    `os.environ`, or in Prefect's profile), untouched once it answers (`ApiUnreachable`
    otherwise); else nbp's kept server (`local_server.LocalServer`, started if none runs,
    held for the block) or, with `NBP_SERVER_IDLE_TIMEOUT=0`, a `TemporaryServer` for the
    block; `use_api` points this process at either. `started`: an `ApiStart` begun earlier
    (it is closed at the end)."""
    api = ApiStart(env) if started is None else started
    try:
        api.settle()
        if api.configured:
            check_reachable(api.configured, api.source)
            yield api.configured
            return
        record = api.result()
        if record is None:  # NBP_SERVER_IDLE_TIMEOUT=0
            with TemporaryServer() as server, \
                    use_api(server.api_url, api.environ, ui_url="") as url:
                yield url
            return
        with use_api(record.api_url, api.environ, ui_url=record.url if record.ui else "") \
                as url:
            yield url
    finally:
        api.close()


def check_reachable(url: str, source: str = "PREFECT_API_URL") -> None:
    """`ApiUnreachable` unless something answers at `url` (one `GET /health` through
    Prefect's own client: its TLS, proxy and auth settings). Any HTTP answer will do, an
    error status included: this tells a stopped server from a running one, and Prefect
    reports the rest itself. Without it a stale URL ends the run in Prefect's 119-line
    traceback."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}), \
            get_client(sync_client=True) as client:
        failure = client.api_healthcheck()
    if isinstance(failure, httpx.TransportError):
        raise ApiUnreachable(url, source, _transport_reason(failure))


def _transport_reason(exc: BaseException) -> str:
    """The innermost cause's words ("Connection refused", not httpx's "All connection
    attempts failed")."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _drain_prefect_workers() -> None:
    """Send what Prefect's log and event workers still hold (as `prefect_test_harness` does
    before it stops its server); the next client call starts fresh workers."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        # Both share one registry of instances today; each call drains every worker.
        for service in (APILogWorker, EventsWorker):
            pending = service.drain_all(timeout=DRAIN_TIMEOUT_S)
            if inspect.isawaitable(pending):
                await pending

    run_coro_as_sync(drain())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port
