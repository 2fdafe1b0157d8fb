"""`EmulatorHub`: the provider emulators behind one loopback HTTP server.

Each emulator is mounted under its own prefix, so one port serves every documented base URL:

    with EmulatorHub.start() as hub:          # real HTTP on 127.0.0.1, a free port
        os.environ.update(hub.environ())      # NBP_<PROVIDER>_BASE_URL + test API keys
        hub["kie"].configure(rate_limit=(20, 10.0))
        ...
        assert hub["kie"].creates_for("lemon") == 1

Result images and uploaded files are served under `/files/{key}` (fault knobs of the owning
provider apply: slow, truncated, chunked and failing downloads; see `providers.emulator.core`).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from nbp.providers.emulator.core import FaultConfig, FileBody, FileStore, ProviderEmulator

EMULATORS: dict[str, str] = {
    "wiro": "nbp.providers.emulator.wiro:WiroEmulator",
    "hiapi": "nbp.providers.emulator.hiapi:HiapiEmulator",
    "runware": "nbp.providers.emulator.runware:RunwareEmulator",
    "kie": "nbp.providers.emulator.kie:KieEmulator",
    "apikley": "nbp.providers.emulator.apikley:ApikleyEmulator",
    "gemini": "nbp.providers.emulator.gemini:GeminiEmulator",
}
# Providers served by another provider's emulator (same host): gemini-batch is Google's
# Batch API on the gemini host, so one emulator and one NBP_GEMINI_BASE_URL serve both.
ALIASES: dict[str, str] = {"gemini-batch": "gemini"}

# Credentials the emulators accept; `environ()` hands them to the real clients.
TEST_CREDENTIALS: dict[str, str] = {
    "WIRO_API_KEY": "emulated-wiro-key",
    "WIRO_API_SECRET": "emulated-wiro-secret",
    "HIAPI_API_KEY": "emulated-hiapi-key",
    "RUNWARE_API_KEY": "emulated-runware-key",
    "KIE_API_KEY": "emulated-kie-key",
    "APIKLEY_API_KEY": "emulated-apikley-key",
    "GEMINI_API_KEY": "emulated-gemini-key",
}

# Under `--emulate` a task takes this long unless a test or the CLI says otherwise.
DEFAULT_LATENCY_S = 1.0


class _QuietEmulatedDrops(logging.Filter):
    """Emulated connection drops are faults we asked for, not server errors to print."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, ConnectionAbortedError) and "emulated" in str(exc))


logging.getLogger("uvicorn.error").addFilter(_QuietEmulatedDrops())


def emulator_class(name: str) -> type[ProviderEmulator]:
    """The emulator class serving provider `name` (an alias: its host's emulator)."""
    module_name, _, attr = EMULATORS[ALIASES.get(name, name)].partition(":")
    cls: type[ProviderEmulator] = getattr(importlib.import_module(module_name), attr)
    return cls


class EmulatorHub:
    """One Starlette app + uvicorn server on a background thread, serving every emulator."""

    def __init__(
        self,
        providers: list[str] | None = None,
        *,
        config: Mapping[str, FaultConfig] | None = None,
        latency_s: float = DEFAULT_LATENCY_S,
        emulators: Sequence[ProviderEmulator] = (),
    ) -> None:
        """`providers` names built-in emulators (default: all five); `emulators` adds
        instances of outside ones (an outside adapter's own emulator, built on
        `ProviderEmulator`), mounted the same way under `/{emulator.name}`. An alias
        (`ALIASES`: gemini-batch) mounts the emulator of its host once."""
        self.files = FileStore()
        self.url = ""
        self.emulators: dict[str, ProviderEmulator] = {}
        for name in list(EMULATORS) if providers is None else providers:
            host = ALIASES.get(name, name)
            if host in self.emulators:
                continue
            fault_config = ((config or {}).get(host) or (config or {}).get(name)
                            or FaultConfig(latency_s=latency_s))
            self._add(emulator_class(host)(fault_config))
        for emulator in emulators:
            self._add(emulator)
        self.app = self._build_app()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def _add(self, emulator: ProviderEmulator) -> None:
        if emulator.name in self.emulators:
            raise ValueError(f"an emulator named {emulator.name!r} is already mounted")
        emulator.hub = self
        self.emulators[emulator.name] = emulator

    def __getitem__(self, name: str) -> ProviderEmulator:
        return self.emulators[ALIASES.get(name, name)]

    def _build_app(self) -> Starlette:
        routes: list[Any] = [Route("/files/{key:path}", self._serve_file, methods=["GET"])]
        for name, emulator in self.emulators.items():
            routes.append(Mount(f"/{name}", routes=list(emulator.routes())))
            for prefix, extra in emulator.extra_mounts().items():
                routes.append(Mount(prefix, routes=list(extra)))
        return Starlette(routes=routes)

    async def _serve_file(self, request: Request) -> Response:
        key = request.path_params["key"]
        body = self.files.open(key)
        if body is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        self.files.downloads += 1
        owner = self.emulators.get(key.split("-", 1)[0])
        chunked = False
        if owner is not None:
            if body.result and (fault := owner.download_fault()) is not None:
                return fault
            if owner.config.download_delay_s:
                await asyncio.sleep(owner.config.download_delay_s)
            if owner.chance(owner.config.truncate_download_prob):
                return _streamed(body, stop_at=body.size // 2)
            chunked = owner.config.download_chunked
        if chunked or body.padding:
            return _streamed(body, chunked=chunked)
        return Response(body.head, media_type=body.mime)

    def base_url(self, provider: str) -> str:
        """The URL that replaces `provider`'s documented base."""
        provider = ALIASES.get(provider, provider)
        emulator = self.emulators.get(provider)
        cls = type(emulator) if emulator is not None else emulator_class(provider)
        return f"{self.url}/{provider}{cls.base_path}"

    def environ(self) -> dict[str, str]:
        """Env vars that point the real clients at this hub, with credentials it accepts."""
        env = {f"NBP_{name.upper()}_BASE_URL": self.base_url(name) for name in self.emulators}
        if "kie" in self.emulators:
            env["NBP_KIE_UPLOAD_BASE_URL"] = f"{self.url}/kie-upload"  # mounted by KieEmulator
        env.update(TEST_CREDENTIALS)
        return env

    def accounts_environ(
        self, accounts: Sequence[tuple[str, Mapping[str, str]]]
    ) -> dict[str, str]:
        """Env vars for extra accounts (provider, documented variable -> the account's): each
        account's key becomes a key of its own at the provider's emulator (its own create
        window and tasks); other credentials (Wiro's secret) are the emulator's own."""
        env: dict[str, str] = {}
        for provider, variables in accounts:
            emulator = self.emulators.get(ALIASES.get(provider, provider))
            for documented, own in variables.items():
                value = TEST_CREDENTIALS.get(documented, "")
                if emulator is not None and value == emulator.api_key:
                    value = f"emulated-{own.lower().replace('_', '-')}"
                    emulator.add_account(value)
                env[own] = value
        return env

    def reset(self) -> None:
        for emulator in self.emulators.values():
            emulator.reset()

    def export_tasks(self) -> dict[str, list[dict[str, Any]]]:
        """Every emulator's tasks as JSON, by emulator (`ProviderEmulator.export_tasks`)."""
        return {name: emulator.export_tasks() for name, emulator in self.emulators.items()}

    def import_tasks(self, exported: Any) -> int:
        """Tasks an earlier hub exported (anything else is skipped); how many were taken."""
        if not isinstance(exported, dict):
            return 0
        return sum(emulator.import_tasks(exported.get(name))
                   for name, emulator in self.emulators.items())

    # -- serving ----------------------------------------------------------------------

    def serve_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # log_config=None: uvicorn's default dictConfig would replace the host process's
        # logging handlers (under a Prefect flow run: flushing its API log handler blocks ~5 s).
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off",
            timeout_keep_alive=30, backlog=2048, log_config=None,
        )
        self._server = uvicorn.Server(config)
        self.url = f"http://{host}:{sock.getsockname()[1]}"
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="nbp-emulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("emulator server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None:  # at once: no waiting for requests still open
            self._server.should_exit = self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    @classmethod
    @contextmanager
    def start(
        cls, providers: list[str] | None = None, *, port: int = 0, **kwargs: Any
    ) -> Iterator[EmulatorHub]:
        hub = cls(providers, **kwargs)
        hub.serve_in_thread(port=port)
        try:
            yield hub
        finally:
            hub.stop()


def _streamed(body: FileBody, *, chunked: bool = False, stop_at: int | None = None) -> Response:
    """`body` streamed: with its Content-Length unless `chunked`; cut after `stop_at` bytes
    (a truncated download: the connection drops mid-body)."""

    async def stream() -> AsyncIterator[bytes]:
        sent = 0
        for chunk in body.chunks():
            if stop_at is not None and sent + len(chunk) >= stop_at:
                yield chunk[: stop_at - sent]
                raise ConnectionAbortedError("emulated truncated download")
            sent += len(chunk)
            yield chunk

    headers = {} if chunked else {"Content-Length": str(body.size)}
    return StreamingResponse(stream(), media_type=body.mime, headers=headers)
