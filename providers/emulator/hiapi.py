"""HiAPI emulator: the unified async task API for `Nano-Banana-Pro` (seeds/hiapi.txt,
protocols.md §2), strict about what the real API rejects.

    POST /v1/tasks               create; `Idempotency-Key` replays the original task
    GET  /v1/tasks/{taskId}      detail: queued -> handling -> archiving -> success | fail
    GET  /v1/tasks?page=&size=   list, newest first (HJ TasksTest)

Errors: the HTTP status mirrored in `{"code", "message", "data": null, "error_code"}`.

A reused `Idempotency-Key` (protocols.md §2.2, §11), with switches set through `configure`
(`HiapiReadings`): within `replay_window_s` (default ~24 h) of the first create the same key
and body answer the original task with `Idempotent-Replay: true`; after it, a new task; with
another body 422 `IDEMPOTENCY_KEY_MISMATCH`; for `processing_s` after the first create (the
first still in flight) 409 `IDEMPOTENCY_KEY_PROCESSING` with Retry-After.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from nbp.providers.emulator.core import (
    RESENT_CREATE,
    FaultConfig,
    ProviderEmulator,
    Readings,
    RemoteTask,
    proxy_error,
)
from nbp.providers.emulator.hub import TEST_CREDENTIALS

# -- HiAPI's documented facts (S1 = seeds/hiapi.txt, protocols.md §2; HJ = hiapi-java) -------

MODEL_ID = "Nano-Banana-Pro"            # S1 "Fixed value"
MAX_PROMPT_CHARS = 10_000               # S1 input.prompt "up to 10000 characters"
MAX_IMAGE_INPUTS = 8                    # S1 input.image_input "up to 8 images"
INPUT_ASPECT_RATIOS: tuple[str, ...] = (  # S1 input.aspect_ratio, default auto
    "auto", "1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "5:4", "4:5", "21:9",
)
INPUT_RESOLUTIONS: tuple[str, ...] = ("1K", "2K", "4K")  # S1 input.resolution, default 1K
INPUT_OUTPUT_FORMATS: tuple[str, ...] = ("png", "jpg")   # S1 input.output_format, default png
IDEMPOTENCY_HEADER = "Idempotency-Key"  # §2.2 [C HJ README]
REPLAY_HEADER = "Idempotent-Replay"     # §2.2: "true" on a replayed create
MAX_IDEMPOTENCY_KEY_BYTES = 255         # §2.2
PROCESSING_CODE = "IDEMPOTENCY_KEY_PROCESSING"  # §2.2: 409, first create still in flight
MISMATCH_CODE = "IDEMPOTENCY_KEY_MISMATCH"      # §2.2: 422, same key, different body
IDEMPOTENCY_TTL_S = 24 * 3600          # §2.2: "same key + body within ~24 h"
OUTPUT_TTL_S = 7 * 24 * 3600           # §2.3: output URLs expire after ~7 days (HJ README)
ARCHIVING_FROM = 0.85                  # share of the run spent before "archiving"
TOP_LEVEL_KEYS = frozenset({"model", "input", "callback", "route"})
INPUT_KEYS = frozenset({"prompt", "image_input", "aspect_ratio", "resolution", "output_format"})
# Undocumented: HiAPI names no moderation code, so a content rejection is a `fail` task with
# this error code and a message naming the policy (what the adapter classifies by keyword).
CONTENT_ERROR = {
    "code": "CONTENT_POLICY_VIOLATION",
    "message": "The request was blocked by the content safety policy.",
}
FAIL_ERROR = {"code": "TASK_FAILED", "message": "Image generation failed."}
ULID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32


@dataclass
class HiapiReadings:
    """How a reused Idempotency-Key is answered (see the module docstring)."""

    replay_window_s: float = IDEMPOTENCY_TTL_S  # the original task comes back within this
    processing_s: float = 0.0  # after a keyed create, a re-send answers 409 this long


@dataclass
class _KeyRecord:
    fingerprint: str
    task_id: str
    at: float


class HiapiEmulator(ProviderEmulator):
    """HiAPI on loopback; `readings` (`HiapiReadings`) shape how a reused key is answered."""

    name = "hiapi"
    READINGS: ClassVar[Readings] = {RESENT_CREATE: {
        "replayed": {},
        "first-still-processing": {"processing_s": 0.5},
    }}

    def __init__(
        self, config: FaultConfig | None = None, *, api_key: str = TEST_CREDENTIALS["HIAPI_API_KEY"]
    ) -> None:
        super().__init__(config, api_key=api_key)
        self.idempotency: dict[str, _KeyRecord] = {}
        self.replays = 0
        self.readings = HiapiReadings()

    def switches(self) -> Sequence[Any]:
        return (self.readings,)

    def reset(self) -> None:
        super().reset()
        self.idempotency.clear()
        self.replays = 0
        self.readings = HiapiReadings()

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/v1/tasks", self.create, methods=["POST"]),
            Route("/v1/tasks", self.list_tasks, methods=["GET"]),
            Route("/v1/tasks/{task_id}", self.detail, methods=["GET"]),
        ]

    # -- handlers ---------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        self.log_request(request)
        if not self._authorized(request):
            return error(401, "Invalid or missing API key")
        if self.chance(self.config.submit_5xx_prob):
            return error(503, "Platform busy, please retry later")
        if not self.admit_create() or self.over_concurrency():
            wait = self.rate.retry_after() if self.rate is not None else 1.0
            return error(
                429, "Rate limit exceeded", "RATE_LIMITED",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(400, "Request body must be valid JSON", "INVALID_REQUEST")
        problem = validate_create(body)
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if problem is None and key is not None and not 0 < len(key.encode()) <= (
            MAX_IDEMPOTENCY_KEY_BYTES
        ):
            problem = f"{IDEMPOTENCY_HEADER} must be 1-{MAX_IDEMPOTENCY_KEY_BYTES} bytes"
        if problem is not None:
            return error(400, problem, "INVALID_REQUEST")
        if key is not None:
            replay = self._replay(key, body)
            if replay is not None:
                return replay
        task = self._create_task(body, key)
        if (fault := self.created_fault()) is not None:
            return fault
        payload = success({"taskId": task.task_id})
        if self.chance(self.config.drop_after_create_prob):
            return self.dropped_connection(json.dumps(payload).encode())
        return JSONResponse(payload)

    async def detail(self, request: Request) -> Response:
        self.log_request(request)
        if (fault := self.status_fault()) is not None:
            return fault
        if not self._authorized(request):
            return error(401, "Invalid or missing API key")
        if self.chance(self.config.poll_5xx_prob):
            return error(503, "Platform busy, please retry later")
        task = self.tasks.get(request.path_params["task_id"])
        if task is None:  # unknown, expired or another account's id alike (§2.1)
            return error(404, "Task not found")
        return JSONResponse(success(self.task_data(task)))

    async def list_tasks(self, request: Request) -> Response:
        self.log_request(request)
        if not self._authorized(request):
            return error(401, "Invalid or missing API key")
        try:
            page = int(request.query_params.get("page", "1"))
            size = int(request.query_params.get("size", "20"))
        except ValueError:
            return error(400, "page and size must be integers", "INVALID_REQUEST")
        if page < 1 or not 1 <= size <= 100:
            return error(400, "page must be >= 1 and size 1-100", "INVALID_REQUEST")
        newest = sorted(self.tasks.values(), key=lambda t: t.created, reverse=True)
        chosen = newest[(page - 1) * size : page * size]
        data = {
            "tasks": [self.task_data(t) for t in chosen],
            "page": page, "size": size, "total": len(newest),
        }
        return JSONResponse(success(data))

    # -- state ------------------------------------------------------------------------

    def task_data(self, task: RemoteTask) -> dict[str, Any]:
        """The `data` object of GET /v1/tasks/{id} for where the clock puts `task`."""
        phase = task.phase()
        data: dict[str, Any] = {
            "taskId": task.task_id,
            "model": MODEL_ID,
            "status": "queued",
            "created": int(task.created),
            "completed": 0,
            "storage": "temp",
        }
        if phase == "running":
            data["status"] = "archiving" if task.progress() >= ARCHIVING_FROM else "handling"
        elif phase in ("done", "cancelled"):
            completed = int(task.created + task.latency_s)
            data["completed"] = completed
            if phase == "done" and task.outcome == "success":
                data["status"] = "success"
                data["output"] = [{
                    "url": self.result_url(task), "type": "image",
                    "expireAt": completed + OUTPUT_TTL_S,
                }]
            elif phase == "done" and task.outcome == "noimage":
                data["status"] = "success"
                data["output"] = []
            else:  # no cancel API exists, so "cancelled" cannot happen; treat as a failure
                data["status"] = "fail"
                data["error"] = dict(CONTENT_ERROR if task.outcome == "content" else FAIL_ERROR)
        return data

    def fault_response(self, status: int) -> Response:
        """HiAPI's own envelope for 500 and 503 ("platform busy", §2.4); 403, 502 and 504
        from the proxy in front of it."""
        if status == 503:
            return error(503, "Platform busy, please retry later")
        if status == 500:
            return error(500, "Internal server error")
        return proxy_error(status)

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme == "Bearer" and self.accepts(token)

    def _replay(self, key: str, body: Any) -> Response | None:
        """The answer for a key seen before (replay, mismatch, processing), else None."""
        now = time.time()
        with self._lock:
            record = self.idempotency.get(key)
            if record is not None and now - record.at >= self.readings.replay_window_s:
                del self.idempotency[key]
                record = None
        if record is None:
            return None
        if record.fingerprint != fingerprint(body):
            return error(422, "Idempotency-Key was used with a different request body",
                         MISMATCH_CODE)
        if now - record.at < self.readings.processing_s:
            wait = self.readings.processing_s - (now - record.at)
            return error(409, "A request with this Idempotency-Key is still being processed",
                         PROCESSING_CODE, headers={"Retry-After": str(max(1, math.ceil(wait)))})
        self.replays += 1
        return JSONResponse(success({"taskId": record.task_id}), headers={REPLAY_HEADER: "true"})

    def _create_task(self, body: Mapping[str, Any], key: str | None) -> RemoteTask:
        given = body["input"]
        ratio = given.get("aspect_ratio", "auto")
        task = self.new_task(
            new_task_id(),
            prompt=given["prompt"],
            # "auto" lets the model choose; the emulator picks a square image.
            aspect_ratio="1:1" if ratio == "auto" else ratio,
            resolution=given.get("resolution", "1K"),
            output_format=given.get("output_format", "png"),
            body=body,
            references=list(given.get("image_input") or []),
            idempotency_key=key,
        )
        if key is not None:
            with self._lock:
                self.idempotency[key] = _KeyRecord(fingerprint(body), task.task_id, task.created)
        return task


def validate_create(body: Any) -> str | None:
    """What the real API would reject in a create body (S1 request parameters), or None."""
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    unknown = sorted(set(body) - TOP_LEVEL_KEYS)
    if unknown:
        return f"Unknown field(s): {', '.join(unknown)}"
    if body.get("model") != MODEL_ID:
        return f"Unsupported model: {body.get('model')!r}"
    given = body.get("input")
    if not isinstance(given, dict):
        return "input is required and must be an object"
    if "callback" in given:
        return "callback must be passed at the top level of the body, not inside input"
    unknown = sorted(set(given) - INPUT_KEYS)
    if unknown:
        return f"Unknown input field(s): {', '.join(unknown)}"
    prompt = given.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "input.prompt is required"
    if len(prompt) > MAX_PROMPT_CHARS:
        return f"input.prompt must be at most {MAX_PROMPT_CHARS} characters"
    refs = given.get("image_input", [])
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        return "input.image_input must be an array of URLs"
    if len(refs) > MAX_IMAGE_INPUTS:
        return f"input.image_input accepts at most {MAX_IMAGE_INPUTS} images"
    if any(not r.startswith(("http://", "https://")) for r in refs):
        return "input.image_input items must be http(s) URLs"
    for field, allowed in (
        ("aspect_ratio", INPUT_ASPECT_RATIOS),
        ("resolution", INPUT_RESOLUTIONS),
        ("output_format", INPUT_OUTPUT_FORMATS),
    ):
        if field in given and given[field] not in allowed:
            return f"input.{field} must be one of: {', '.join(allowed)}"
    return validate_callback(body.get("callback"), "callback" in body)


def validate_callback(callback: Any, present: bool) -> str | None:
    if not present:
        return None
    if not isinstance(callback, dict):
        return "callback must be an object"
    unknown = sorted(set(callback) - {"url", "when"})
    if unknown:
        return f"Unknown callback field(s): {', '.join(unknown)}"
    url = callback.get("url")
    if not isinstance(url, str) or not url.startswith("https://"):
        return "callback.url must be an HTTPS URL"
    if callback.get("when", "final") != "final":
        return "callback.when must be final"
    return None


def fingerprint(body: Any) -> str:
    """Same body, same fingerprint, whatever the key order or whitespace."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def new_task_id() -> str:
    """`tk-hiapi-` + a ULID: 48-bit millisecond time + 80 random bits, Crockford base32."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = [ULID_ALPHABET[(value >> shift) & 31] for shift in range(125, -1, -5)]
    return "tk-hiapi-" + "".join(chars)


def success(data: Any) -> dict[str, Any]:
    return {"code": 200, "message": "success", "data": data}


def error(
    status: int, message: str, error_code: str | None = None,
    *, headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """HiAPI's error envelope; `code` mirrors the HTTP status. The SDK's own fixtures show
    401/404/503 without an `error_code`, so those carry none here either."""
    body: dict[str, Any] = {"code": status, "message": message, "data": None}
    if error_code is not None:
        body["error_code"] = error_code
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))
