"""What every provider emulator shares: the model's pixel table, fault configuration, a
clock-driven remote task, a create log for tests to assert on, a create-rate window, and
generated result images. Emulators state their provider's facts themselves, from the seeds
and protocols.md, and never import the adapters they emulate.

Fault injection works by configuration, like dlt's `dummy` destination (`FaultConfig`):
probabilities drawn from a seeded RNG, counts and timed outages, plus deterministic prompt
markers for tests that need one exact outcome:

    "[emulate:fail]"       the task runs and fails (provider's generic failure)
    "[emulate:content]"    the task fails as a content/policy rejection
    "[emulate:noimage]"    the task "succeeds" with no image
    "[emulate:bomb]"       the result is a ~110 KB PNG whose header says 30000x30000 pixels
                           (1-bit, all black: 112 MB of scanlines, a decompression bomb)
    "[emulate:oversize]"   the result is a valid image padded (PNG: a private ancillary chunk
                           `nbPd`; JPEG/WebP: trailing bytes) to `FaultConfig.oversize_bytes`,
                           which by default is more than nbp's download cap
    "[emulate:wrongsize]"  the result is half the documented width and height

Faults where a request meets the provider, each answered in that provider's own shape where
its documentation shows one, else as the reverse proxy / CDN in front of it would
(`proxy_error`; `ProviderEmulator.fault_response` is the per-provider hook):

    create     `submit_5xx_prob` (5xx, nothing created), `create_5xx_after_create_prob` (the
               task is created and runs, the answer is HTTP 500/502/504),
               `drop_after_create_prob` (created, then the connection is cut)
    status     `poll_5xx_prob`, `poll_outage_s` (every query answers 503 for that long),
               `poll_403_count` (the next N queries answer a proxy's 403)
    download   `truncate_download_prob`, `download_delay_s`, `download_fail_count` (the next
               N result downloads answer 503), `download_outage_s`, `download_chunked`

Where a provider's documentation allows more than one reading (protocols.md §11), its
emulator serves each one, chosen by a switch: a field of the emulator's own small dataclass
(`ProviderEmulator.switches`), set through `configure` like a fault knob and put back to its
default by `reset`. `ProviderEmulator.READINGS` names, per point of §11 (`POLL_FAILURE`,
`RESENT_CREATE`, `CANCEL`, `UNKNOWN_TASK`, `OVERLOAD`; and `TASK_TIMES`, a unit the docs
leave open, noted in the provider's facts), each reading and the switch values that select
it, so the conformance suite runs its behaviours under every one.

A task waits `FaultConfig.queue_s` of its `latency_s` queued (a quarter by default), then
runs for the rest: an emulator whose provider reports task times reports these
(`RemoteTask.started`, `ended`), so a test can tell the provider's times from nbp's.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import random
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute

# -- the model's own facts, the same behind every reseller -------------------------------------

# Output pixel sizes of gemini-3-pro-image-preview (protocols.md §7 [C GD]): Google's table,
# identical to the aspectRatio labels of the Wiro seed S0 and confirmed by observed outputs.
# Every reseller returns the model's image, so every emulator renders at these sizes.
ASPECT_RATIOS: tuple[str, ...] = (
    "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9",
)
RESOLUTIONS: tuple[str, ...] = ("1K", "2K", "4K")  # uppercase K (§6.1)
_TABLE: dict[str, tuple[str, str, str]] = {  # ratio: 1K, 2K, 4K as in §7
    "1:1": ("1024x1024", "2048x2048", "4096x4096"),
    "2:3": ("848x1264", "1696x2528", "3392x5056"),
    "3:2": ("1264x848", "2528x1696", "5056x3392"),
    "3:4": ("896x1200", "1792x2400", "3584x4800"),
    "4:3": ("1200x896", "2400x1792", "4800x3584"),
    "4:5": ("928x1152", "1856x2304", "3712x4608"),
    "5:4": ("1152x928", "2304x1856", "4608x3712"),
    "9:16": ("768x1376", "1536x2752", "3072x5504"),
    "16:9": ("1376x768", "2752x1536", "5504x3072"),
    "21:9": ("1584x672", "3168x1344", "6336x2688"),
}
PIXEL_SIZES: dict[tuple[str, str], tuple[int, int]] = {
    (ratio, resolution): (int(size.split("x")[0]), int(size.split("x")[1]))
    for ratio, sizes in _TABLE.items()
    for resolution, size in zip(RESOLUTIONS, sizes, strict=True)
}
# How the emulators encode what they render: file extension -> Pillow format, MIME type.
IMAGE_ENCODINGS: dict[str, tuple[str, str]] = {
    "png": ("PNG", "image/png"), "jpg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp"),
}


def pixel_size(aspect_ratio: str, resolution: str) -> tuple[int, int]:
    """Width and height the model returns for a ratio and resolution preset (§7)."""
    return PIXEL_SIZES[(aspect_ratio, resolution)]


# -- fault injection ---------------------------------------------------------------------------

FAIL_MARKER = "[emulate:fail]"
CONTENT_MARKER = "[emulate:content]"
NO_IMAGE_MARKER = "[emulate:noimage]"
BOMB_MARKER = "[emulate:bomb]"
OVERSIZE_MARKER = "[emulate:oversize]"
WRONG_SIZE_MARKER = "[emulate:wrongsize]"
# What a successful task's result image is (`RemoteTask.image`), by marker.
IMAGE_MARKERS: dict[str, str] = {
    BOMB_MARKER: "bomb", OVERSIZE_MARKER: "oversize", WRONG_SIZE_MARKER: "wrongsize",
}
BOMB_SIZE = (30000, 30000)  # 9e8 pixels: 5x what Pillow refuses to open (2 x MAX_IMAGE_PIXELS)
# Above nbp's default download cap (providers.base.MAX_IMAGE_BYTES, 64 MiB): a fact of the
# client, not of any provider, restated here because emulators import no adapter code.
DEFAULT_OVERSIZE_BYTES = 65 * 1024 * 1024
# Statuses of `create_5xx_after_create_prob`: the origin failing after the write (500), or the
# gateway in front of it giving up on the origin's answer (502, 504).
AFTER_CREATE_STATUSES: tuple[int, ...] = (500, 502, 504)


@dataclass
class FaultConfig:
    """Knobs of one provider emulator. Probabilities are per request, in [0, 1]; counts are
    used up one request at a time; an outage lasts `*_outage_s` seconds from `*_outage_from`
    (a `time.monotonic()` value), which is set to the moment the outage is configured
    (`ProviderEmulator.configure` or construction) unless given."""

    latency_s: float = 1.0             # create -> terminal state
    # of it queued before the task runs (None: a quarter); a longer queue makes it longer
    queue_s: float | None = None
    fail_prob: float = 0.0             # task ends in the provider's failure state
    submit_5xx_prob: float = 0.0       # create answers 500/503 and creates nothing
    # the task is created (and runs), then the create answers 500/502/504
    create_5xx_after_create_prob: float = 0.0
    poll_5xx_prob: float = 0.0         # status query answers 500/503
    poll_outage_s: float = 0.0         # every status query answers 503 for this long ...
    poll_outage_from: float | None = None  # ... from this monotonic time (None: configured)
    poll_403_count: int = 0            # the next N status queries answer a proxy's 403
    drop_after_create_prob: float = 0.0  # task is created, then the connection is cut
    truncate_download_prob: float = 0.0  # image download stops half-way
    download_delay_s: float = 0.0      # extra seconds before an image download answers
    download_fail_count: int = 0       # the next N result image downloads answer 503
    download_outage_s: float = 0.0     # every result image download answers 503 for this long
    download_outage_from: float | None = None  # ... from this monotonic time (None: configured)
    download_chunked: bool = False     # images are sent chunked, without Content-Length
    oversize_bytes: int = DEFAULT_OVERSIZE_BYTES  # size of an `[emulate:oversize]` result
    rate_limit: tuple[int, float] | None = None  # at most N creates per window seconds
    max_concurrency: int | None = None  # tasks not yet terminal, per account
    seed: int = 0


_OUTAGES = (("poll_outage_s", "poll_outage_from"), ("download_outage_s", "download_outage_from"))

# The points of protocols.md §11 where the documentation allows more than one reading; an
# emulator's `READINGS` maps each it serves to {reading id: switch values for `configure`}.
POLL_FAILURE = "poll_failure"    # how a status query reports a failed or refused task
RESENT_CREATE = "resent_create"  # how a create re-sent for the same intent is answered
CANCEL = "cancel"                # how a stop of a running task is answered
UNKNOWN_TASK = "unknown_task"    # how a status query for an unknown or expired task is answered
OVERLOAD = "overload"            # how an overloaded model refuses a create
TASK_TIMES = "task_times"        # in which unit a status answer gives the task's times
READING_POINTS: tuple[str, ...] = (POLL_FAILURE, RESENT_CREATE, CANCEL, UNKNOWN_TASK, OVERLOAD,
                                   TASK_TIMES)
Readings = Mapping[str, Mapping[str, Mapping[str, Any]]]


def choice(default: str, choices: Sequence[str], doc: str = "") -> Any:
    """A dataclass field holding one of `choices`: `configure` refuses any other value."""
    return field(default=default, metadata={"choices": tuple(choices), "doc": doc})


def proxy_error(status: int, *, server: str = "nginx") -> Response:
    """The HTML error page a reverse proxy or CDN answers in front of an API (not the API's
    own JSON): what a client meets when something between it and the provider fails."""
    reason = _REASONS.get(status, "Error")
    page = (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>{server}</center>\r\n"
        "</body>\r\n</html>\r\n"
    )
    return Response(page, status, media_type="text/html")


_REASONS: dict[int, str] = {
    403: "Forbidden", 500: "Internal Server Error", 502: "Bad Gateway",
    503: "Service Temporarily Unavailable", 504: "Gateway Time-out",
}


@dataclass
class CreateRecord:
    """One accepted create request, as the emulator saw it (for tests: count creates)."""

    task_id: str
    body: Any
    at: float
    prompt: str
    idempotency_key: str | None = None
    account: str | None = None  # the API key it was created with (tests group by it)


@dataclass
class RemoteTask:
    """A task whose state follows the clock: queued, then running, then terminal."""

    task_id: str
    prompt: str
    aspect_ratio: str
    resolution: str
    output_format: str
    created: float
    latency_s: float
    outcome: str  # "success" | "fail" | "content" | "noimage"
    body: Any = None
    references: list[str] = field(default_factory=list)  # as the provider received them
    cancelled_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    image: str = "normal"  # what a success delivers: "normal" | "bomb" | "oversize" | "wrongsize"
    account: str | None = None  # the API key that created it: only that account sees it
    # Seconds of `latency_s` the task waits queued before it runs (None: a quarter of it):
    # what a provider that reports task times reports as the wait, the rest as the run.
    queue_s: float | None = None

    def phase(self, now: float | None = None) -> str:
        """"queued" | "running" | "done" | "cancelled": where the clock puts the task.
        `cancelled_at` may lie ahead (a stop the provider accepted but has not carried out
        yet): until then the task runs on."""
        now = time.time() if now is None else now
        if self.cancelled_at is not None and now >= self.cancelled_at:
            return "cancelled"
        elapsed = now - self.created
        if elapsed >= self.latency_s:
            return "done"
        return "queued" if elapsed < self.queued_s else "running"

    @property
    def queued_s(self) -> float:
        """Seconds from the create until the task runs (at most its whole latency)."""
        queued = 0.25 * self.latency_s if self.queue_s is None else self.queue_s
        return max(0.0, min(queued, self.latency_s))

    @property
    def started(self) -> float:
        """When the task began to run (epoch seconds)."""
        return self.created + self.queued_s

    @property
    def ended(self) -> float:
        """When the task ends (epoch seconds), unless cancelled before."""
        return self.created + self.latency_s

    def progress(self, now: float | None = None) -> float:
        elapsed = (time.time() if now is None else now) - self.created
        return max(0.0, min(1.0, elapsed / self.latency_s)) if self.latency_s else 1.0

    @property
    def terminal(self) -> bool:
        return self.phase() in ("done", "cancelled")


TASK_MEMORY_S = 7 * 86400.0     # how long an emulator remembers a task across runs
MAX_REMEMBERED_TASKS = 100_000


def _light(value: Any) -> Any:
    """`value` with long strings (inline references in a request body) cut short."""
    if isinstance(value, str) and len(value) > 4096:
        return value[:64] + "..."
    if isinstance(value, dict):
        return {k: _light(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_light(v) for v in value]
    return value


def _remote_task(data: Any) -> RemoteTask | None:
    """A RemoteTask from its exported JSON, or None when it is not one."""
    if not isinstance(data, dict):
        return None
    fields = {f.name: f for f in dataclasses.fields(RemoteTask)}
    if set(data) - set(fields):
        return None
    strings = ("task_id", "prompt", "aspect_ratio", "resolution", "output_format", "outcome",
               "image")
    numbers = ("created", "latency_s")
    if not all(isinstance(data.get(k), str) for k in strings):
        return None
    if not all(isinstance(data.get(k), int | float) for k in numbers):
        return None
    if not isinstance(data.get("extra", {}), dict) or not isinstance(
            data.get("references", []), list):
        return None
    for name in ("cancelled_at", "queue_s"):
        if data.get(name) is not None and not isinstance(data[name], int | float):
            return None
    if data.get("account") is not None and not isinstance(data["account"], str):
        return None
    try:
        return RemoteTask(**data)
    except TypeError:
        return None


class RateWindow:
    """Sliding-window counter of creates: `admit()` is False when the window is full."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit, self.window_s = limit, window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()
        self.rejected = 0
        self.admitted = 0

    def admit(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._times and now - self._times[0] >= self.window_s:
                self._times.popleft()
            if len(self._times) >= self.limit:
                self.rejected += 1
                return False
            self._times.append(now)
            self.admitted += 1
            return True

    def retry_after(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            return max(0.0, self.window_s - (now - self._times[0])) if self._times else 0.0


class ProviderEmulator:
    """Base of the emulators (the five built-in ones and outside ones alike). Subclasses set
    `name` (and `base_path` when the documented base URL has a path, e.g. Wiro's `/v1`) and
    build `routes()`; the hub mounts them under `/{name}` and serves result files under
    `/files/`."""

    name: str = ""
    base_path: str = ""  # under the mount: `{hub}/{name}{base_path}` replaces the documented base
    # Per point of protocols.md §11 this emulator serves: {reading id: switch values}.
    READINGS: ClassVar[Readings] = {}

    def __init__(self, config: FaultConfig | None = None, *, api_key: str = "test-key") -> None:
        self.config = config or FaultConfig()
        self.api_key = api_key
        self.tasks: dict[str, RemoteTask] = {}
        self.creates: list[CreateRecord] = []
        self.rejected_for_rate = 0
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.hub: Any = None  # set by EmulatorHub: file store and public URL
        self._rng = random.Random(self.config.seed)
        self._lock = threading.Lock()
        self.rate = self._make_rate_window()
        # Every account (API key) the provider knows, each with its own create window: a
        # documented limit is per account (e.g. Kie: "20 ... per 10 s per account", §4.5).
        self.accounts: dict[str, RateWindow | None] = {api_key: self.rate}
        for length, start in _OUTAGES:
            if getattr(self.config, length) > 0 and getattr(self.config, start) is None:
                setattr(self.config, start, time.monotonic())

    def _make_rate_window(self) -> RateWindow | None:
        if self.config.rate_limit is None:
            return None
        return RateWindow(*self.config.rate_limit)

    def configure(self, **changes: Any) -> None:
        """Change fault knobs and reading switches at run time (tests); resets the rate
        window when it changes, and starts an outage now when its length is set without a
        start. A switch takes only its documented choices."""
        for key, value in changes.items():
            if hasattr(self.config, key):
                setattr(self.config, key, value)
            else:
                _set_switch(self.switches(), key, value)
        for length, start in _OUTAGES:
            if length in changes and changes.get(start) is None:
                setattr(self.config, start, time.monotonic())
        if "rate_limit" in changes:
            self._reset_windows()
        if "seed" in changes:
            self._rng = random.Random(self.config.seed)

    def switches(self) -> Sequence[Any]:
        """The dataclass instances whose fields `configure` sets besides `FaultConfig`'s: this
        emulator's choices among documented readings. A subclass that has some returns them
        here and makes fresh ones (the defaults) in `reset`."""
        return ()

    def reset(self) -> None:
        """Forget tasks and records (between tests)."""
        with self._lock:
            self.tasks.clear()
            self.creates.clear()
            self.requests.clear()
            self.rejected_for_rate = 0
        self._reset_windows()

    # -- remembering tasks across runs (`nbp run --emulate`) ------------------------------

    def export_tasks(self, younger_than_s: float = TASK_MEMORY_S) -> list[dict[str, Any]]:
        """The tasks a later emulator should still know, as JSON (a real provider keeps its
        tasks when a client stops; an emulator started afresh would not)."""
        now = time.time()
        with self._lock:
            tasks = [t for t in self.tasks.values() if now - t.created < younger_than_s]
        return [_light(dataclasses.asdict(task)) for task in tasks[-MAX_REMEMBERED_TASKS:]]

    def import_tasks(self, exported: Any) -> int:
        """Tasks an earlier emulator exported; entries of another shape are skipped (the file
        lives in a target: input, never trusted). Returns how many were taken."""
        taken = 0
        for data in exported if isinstance(exported, list) else []:
            task = _remote_task(data)
            if task is not None:
                with self._lock:
                    self.tasks.setdefault(task.task_id, task)
                self.restored(task)
                taken += 1
        return taken

    def restored(self, task: RemoteTask) -> None:
        """A task came back from an earlier emulator: index it where the subclass looks."""

    def _reset_windows(self) -> None:
        self.rate = self._make_rate_window()
        self.accounts = {key: (self.rate if key == self.api_key else self._make_rate_window())
                         for key in self.accounts}

    def add_account(self, api_key: str) -> None:
        """Another account of this provider: its own key, create window and tasks."""
        self.accounts.setdefault(api_key, self._make_rate_window())

    def accepts(self, api_key: str | None) -> bool:
        return api_key is not None and api_key in self.accounts

    def task_of(self, task_id: str, account: str | None) -> RemoteTask | None:
        """The task, if `account` may see it (tasks belong to the account that created them)."""
        task = self.tasks.get(task_id)
        if task is None or (task.account is not None and account != task.account):
            return None
        return task

    def routes(self) -> Sequence[BaseRoute]:
        """The documented API, mounted by the hub under `/{name}`."""
        raise NotImplementedError

    def extra_mounts(self) -> dict[str, Sequence[BaseRoute]]:
        """Other hosts of the provider (e.g. Kie's upload host) by hub prefix."""
        return {}

    # -- helpers for subclasses -------------------------------------------------------

    def chance(self, probability: float) -> bool:
        with self._lock:
            return probability > 0 and self._rng.random() < probability

    def admit_create(self, account: str | None = None) -> bool:
        """False (and counted) when the create-rate window (of `account`, else of the
        first key) is full."""
        window = self.accounts.get(account, self.rate) if account else self.rate
        if window is None or window.admit():
            return True
        self.rejected_for_rate += 1
        return False

    def created_fault(self) -> Response | None:
        """For a create handler, after its task was created: the 5xx answer
        `create_5xx_after_create_prob` calls for (in the provider's shape), else None."""
        if not self.chance(self.config.create_5xx_after_create_prob):
            return None
        with self._lock:
            status = self._rng.choice(AFTER_CREATE_STATUSES)
        return self.fault_response(status)

    def status_fault(self) -> Response | None:
        """For a status query handler, before anything else (a proxy answers before the
        provider sees the request): a 403 while `poll_403_count` lasts, a 503 during a
        `poll_outage_s`, else None. (`poll_5xx_prob` stays the handler's own.)"""
        with self._lock:
            refuse = self.config.poll_403_count > 0
            if refuse:
                self.config.poll_403_count -= 1
        if refuse:
            return self.fault_response(403)
        if _in_outage(self.config.poll_outage_s, self.config.poll_outage_from):
            return self.fault_response(503)
        return None

    def download_fault(self) -> Response | None:
        """For a result image download: a CDN's 503 while `download_fail_count` lasts or
        during a `download_outage_s`, else None."""
        with self._lock:
            fail = self.config.download_fail_count > 0
            if fail:
                self.config.download_fail_count -= 1
        if fail or _in_outage(self.config.download_outage_s, self.config.download_outage_from):
            return proxy_error(503)
        return None

    def fault_response(self, status: int) -> Response:
        """How this provider's side answers an injected fault of `status` (403 from a proxy,
        500, 502, 503, 504). Default: the proxy's HTML page (`proxy_error`); an emulator
        answers in its provider's documented shape where there is one."""
        return proxy_error(status)

    def in_flight(self) -> int:
        return sum(1 for t in list(self.tasks.values()) if not t.terminal)

    def over_concurrency(self) -> bool:
        limit = self.config.max_concurrency
        return limit is not None and self.in_flight() >= limit

    def new_task(
        self,
        task_id: str,
        *,
        prompt: str,
        aspect_ratio: str,
        resolution: str,
        output_format: str,
        body: Any,
        references: Sequence[str] = (),
        idempotency_key: str | None = None,
        account: str | None = None,
    ) -> RemoteTask:
        """Create and log a task; its outcome is decided now from markers and fault odds."""
        if CONTENT_MARKER in prompt:
            outcome = "content"
        elif FAIL_MARKER in prompt or self.chance(self.config.fail_prob):
            outcome = "fail"
        elif NO_IMAGE_MARKER in prompt:
            outcome = "noimage"
        else:
            outcome = "success"
        image = next((kind for marker, kind in IMAGE_MARKERS.items() if marker in prompt),
                     "normal")
        now = time.time()
        queue_s = self.config.queue_s
        task = RemoteTask(
            task_id, prompt, aspect_ratio, resolution, output_format, now,
            max(self.config.latency_s, queue_s or 0.0), outcome, body, list(references),
            image=image, account=account, queue_s=queue_s,
        )
        with self._lock:
            self.tasks[task_id] = task
            self.creates.append(
                CreateRecord(task_id, body, now, prompt, idempotency_key, account)
            )
        return task

    def creates_for(self, prompt_contains: str) -> int:
        """How many tasks were created whose prompt contains the text (tests)."""
        return sum(1 for c in self.creates if prompt_contains in c.prompt)

    def result_url(self, task: RemoteTask, index: int = 0) -> str:
        """Public URL of a task's result image, served by the hub's file store."""
        if self.hub is None:
            raise RuntimeError("emulator is not mounted on a hub")
        width, height = pixel_size(task.aspect_ratio, task.resolution)
        fmt = task.output_format
        if task.image == "wrongsize":
            width, height = max(1, width // 2), max(1, height // 2)
        elif task.image == "bomb":
            (width, height), fmt = BOMB_SIZE, "png"
        key = f"{self.name}-{_safe(task.task_id)}-{index}.{fmt}"
        pad_to = self.config.oversize_bytes if task.image == "oversize" else 0
        self.hub.files.register_generated(
            key, width, height, fmt, seed_text=picture_seed(task), bomb=task.image == "bomb",
            pad_to=pad_to,
        )
        url: str = f"{self.hub.url}/files/{key}"
        return url

    def dropped_connection(self, body: bytes) -> Response:
        """A response that sends its status and then cuts the connection mid-body."""

        async def stream() -> AsyncIterator[bytes]:
            yield body[: max(1, len(body) // 3)]
            raise ConnectionAbortedError("emulated connection drop")

        return StreamingResponse(
            stream(), media_type="application/json", headers={"Content-Length": str(len(body))}
        )

    def log_request(self, request: Request) -> None:
        self.requests.append((request.method, request.url.path))


def _set_switch(switches: Sequence[Any], key: str, value: Any) -> None:
    """Set field `key` on the first of `switches` that has it, held to its `choices`."""
    for switch in switches:
        if not is_dataclass(switch):
            continue
        for spec in fields(switch):
            if spec.name != key:
                continue
            allowed = spec.metadata.get("choices")
            if allowed is not None and value not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(map(repr, allowed))}, "
                                 f"not {value!r}")
            setattr(switch, key, value)
            return
    raise AttributeError(f"neither FaultConfig nor a reading switch has a field {key!r}")


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _in_outage(length_s: float, start: float | None) -> bool:
    return length_s > 0 and start is not None and 0 <= time.monotonic() - start < length_s


@dataclass
class _FileEntry:
    width: int = 0
    height: int = 0
    fmt: str = "png"
    seed_text: str = ""
    data: bytes | None = None
    mime: str = "image/png"
    result: bool = False  # a task's result image (download faults apply), not an upload
    bomb: bool = False
    pad_to: int = 0       # an oversize image: its total size in bytes


@dataclass(frozen=True)
class FileBody:
    """A file as the hub sends it: `head`, then `padding` zero bytes, then `tail` (an
    oversize image is mostly padding, streamed without ever being held in memory)."""

    head: bytes
    mime: str
    padding: int = 0
    tail: bytes = b""
    result: bool = False

    @property
    def size(self) -> int:
        return len(self.head) + self.padding + len(self.tail)

    def chunks(self, chunk_bytes: int = 1024 * 1024) -> Iterator[bytes]:
        yield self.head
        zeros = bytes(min(chunk_bytes, self.padding))
        left = self.padding
        while left > 0:
            yield zeros if left >= len(zeros) else zeros[:left]
            left -= len(zeros)
        if self.tail:
            yield self.tail

    def read(self) -> bytes:
        return b"".join(self.chunks())


class FileStore:
    """Result images and uploaded files served by the hub under `/files/{key}`.

    Generated images are rendered lazily on first download (a smooth colour field seeded by
    the prompt, at the exact pixel size), then cached.
    """

    def __init__(self) -> None:
        self._files: dict[str, _FileEntry] = {}
        self._lock = threading.Lock()
        self.downloads = 0

    def register_generated(
        self, key: str, width: int, height: int, fmt: str, *, seed_text: str,
        bomb: bool = False, pad_to: int = 0,
    ) -> None:
        """A result image to render on first download: `bomb` makes it the decompression
        bomb (`bomb_png`), `pad_to` pads it to that many bytes (`oversize_body`)."""
        entry = _FileEntry(width, height, fmt, seed_text, result=True, bomb=bomb, pad_to=pad_to)
        with self._lock:
            self._files.setdefault(key, entry)

    def put(self, key: str, data: bytes, mime: str) -> None:
        with self._lock:
            self._files[key] = _FileEntry(data=data, mime=mime)

    def open(self, key: str) -> FileBody | None:
        """The body to send for `key`, or None when there is no such file."""
        with self._lock:
            entry = self._files.get(key)
        if entry is None:
            return None
        if entry.data is None:
            if entry.bomb:
                entry.data = bomb_png(entry.width, entry.height)
            else:
                entry.data = render_image(entry.width, entry.height, entry.fmt, entry.seed_text)
            entry.mime = IMAGE_ENCODINGS[entry.fmt][1]
        if entry.pad_to > len(entry.data):
            return oversize_body(entry.data, entry.mime, entry.pad_to)
        return FileBody(entry.data, entry.mime, result=entry.result)

    def get(self, key: str) -> tuple[bytes, str] | None:
        """The whole file and its MIME type (an oversize one is built in memory)."""
        body = self.open(key)
        return None if body is None else (body.read(), body.mime)


PAD_CHUNK_TYPE = b"nbPd"  # PNG chunk type: ancillary, private, safe to copy (PNG spec §5.4)
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def oversize_body(image: bytes, mime: str, size: int) -> FileBody:
    """`image` grown to `size` bytes and still valid: a PNG gets a `nbPd` chunk of zeros
    before IEND; other formats get zeros after their end (decoders ignore trailing bytes)."""
    if image.endswith(_IEND) and size >= len(image) + 12:
        padding = size - len(image) - 12  # chunk length, type, CRC
        head = image[: -len(_IEND)] + struct.pack(">I", padding) + PAD_CHUNK_TYPE
        tail = struct.pack(">I", _pad_crc(padding)) + _IEND
        return FileBody(head, mime, padding, tail, result=True)
    return FileBody(image, mime, max(0, size - len(image)), result=True)


@functools.lru_cache(maxsize=8)
def _pad_crc(length: int) -> int:
    crc = zlib.crc32(PAD_CHUNK_TYPE)
    block = bytes(min(length, 1024 * 1024))
    left = length
    while left > 0:
        crc = zlib.crc32(block if left >= len(block) else block[:left], crc)
        left -= len(block)
    return crc


@functools.lru_cache(maxsize=2)
def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of `width` x `height` black pixels: the scanlines (112 MB
    at 30000x30000) compress ~1000:1, so the file is ~110 KB and decodes to 900 megapixels."""
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    compressor = zlib.compressobj(9)
    rows_per_block = max(1, (4 * 1024 * 1024) // len(row))
    parts = []
    for first in range(0, height, rows_per_block):
        parts.append(compressor.compress(row * min(rows_per_block, height - first)))
    parts.append(compressor.flush())

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data)
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


def picture_seed(task: RemoteTask) -> str:
    """What a task's picture is drawn from: its prompt and the model id it asked for (a
    `model` in its create body, or one the emulator noted: Gemini's is in the URL), so two
    model ids of one prompt draw two pictures, as real models would, and `nbp compare` sees
    a model change as a change. Not the seed: replicates of a prompt share one picture, which
    `render_image` draws once."""
    model = task.extra.get("model") or _model_in(task.body)
    return task.prompt if not model else f"{task.prompt}\x1f{model}"


def _model_in(body: Any, depth: int = 0) -> str | None:
    """The first `model` text in a create body (Runware's is a list of tasks)."""
    if depth > 3:
        return None
    if isinstance(body, dict):
        if isinstance(body.get("model"), str):
            return str(body["model"])
        values: Any = body.values()
    elif isinstance(body, list):
        values = body
    else:
        return None
    return next((found for v in values if (found := _model_in(v, depth + 1))), None)


@functools.lru_cache(maxsize=32)
def render_image(width: int, height: int, fmt: str, seed_text: str) -> bytes:
    """A pleasant, deterministic picture of the exact size: a smooth colour field seeded by
    the prompt (an 8x8 random grid scaled up bicubically) with a soft vignette.

    Cached: a 1K PNG takes ~150 ms of CPU, so a job of many cells with one prompt (`repeat`)
    would otherwise make the emulator, not the client, the bottleneck; equal arguments give
    equal bytes either way, and cached bytes are shared instead of held once per task."""
    from PIL import Image, ImageDraw, ImageFilter

    digest = hashlib.sha256(seed_text.encode()).digest()
    rng = random.Random(digest)
    base = [rng.randrange(256) for _ in range(3)]
    small = Image.new("RGB", (8, 8))
    small.putdata([
        tuple(max(0, min(255, c + rng.randrange(-90, 90))) for c in base)
        for _ in range(64)
    ])
    image = small.resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    radius = min(width, height) // 5
    cx, cy = rng.randrange(radius, width - radius), rng.randrange(radius, height - radius)
    light = tuple(min(255, c + 70) for c in base)
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=light)
    image = image.filter(ImageFilter.GaussianBlur(radius=max(2, radius // 6)))
    buffer = io.BytesIO()
    save_format = IMAGE_ENCODINGS[fmt][0]
    options: dict[str, Any] = {"quality": 90} if save_format in ("JPEG", "WEBP") else {}
    if save_format == "PNG":
        options["compress_level"] = 1
    image.save(buffer, format=save_format, **options)
    return buffer.getvalue()

