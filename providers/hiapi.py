"""HiAPI adapter for `Nano-Banana-Pro`, through HiAPI's unified async task API.

Wire format: `POST /v1/tasks {"model", "input": {...}, "callback"?}` answers `data.taskId`;
`GET /v1/tasks/{taskId}` answers `data.status`: queued -> handling -> archiving -> success |
fail. Bearer auth; errors are the HTTP status mirrored in `{"code", "message", "data": null,
"error_code"}`. Every create carries the request's `Idempotency-Key`, so a create whose answer
was lost can be sent again: HiAPI replays the original task instead of billing twice.

Sources: seeds/hiapi.txt (S1), protocols.md §2, HJ = github HiAPIAI/hiapi-java.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx

from nbp.providers import http
from nbp.providers.adapter import HttpAdapter, looks_like_content_rejection, status_message
from nbp.providers.base import (
    Capabilities,
    Finished,
    ImageRequest,
    Pending,
    ResultImage,
    Submitted,
)
from nbp.providers.errors import (
    ContentRejected,
    InsufficientBalance,
    RateLimited,
    Rejected,
    TaskFailed,
    TransientError,
)
from nbp.providers.hiapi_facts import API_KEY_ENV, FACTS, MODEL_ID

# -- documented constants --------------------------------------------------------------------
# seeds/hiapi.txt (S1), protocols.md §2; HJ = github HiAPIAI/hiapi-java.
TASKS_PATH = "/v1/tasks"
# S1 also accepts "auto"; nbp always asks for a concrete ratio so outputs can be verified.
WIRE_ASPECT_RATIOS: tuple[str, ...] = (
    "auto", "1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "5:4", "4:5", "21:9",
)
IDEMPOTENCY_HEADER = "Idempotency-Key"        # §2.2, HJ Transport.java
REPLAY_HEADER = "Idempotent-Replay"
MAX_IDEMPOTENCY_KEY_BYTES = 255               # §2.2
RUNNING_STATES = ("queued", "handling", "archiving")  # §2.3
SUCCESS_STATE, FAIL_STATE = "success", "fail"

# error_code values (§2.4, HJ Transport.java) and what they mean for a caller.
RETRYABLE_CODES = frozenset({"MODEL_UNAVAILABLE", "STORAGE_UNAVAILABLE", "TASK_TIMEOUT"})
PROCESSING_CODE = "IDEMPOTENCY_KEY_PROCESSING"  # 409: first create with this key in flight
MISMATCH_CODE = "IDEMPOTENCY_KEY_MISMATCH"      # 422: same key, different body
# HiAPI documents no content-moderation code: a task or create error is taken as a content
# rejection when `looks_like_content_rejection` recognises its code or message.

# -- adapter ---------------------------------------------------------------------------------


class HiapiProvider(HttpAdapter):
    """Nano Banana Pro via HiAPI (`hiapi`). References must be http(s) URLs."""

    name: ClassVar[str] = FACTS.name
    model: ClassVar[str] = FACTS.model
    default_base_url: ClassVar[str] = FACTS.base_url
    capabilities: ClassVar[Capabilities] = FACTS.capabilities

    async def submit(self, request: ImageRequest) -> Submitted:
        self.check_limits(request)
        self.checked_options(request)
        headers = self._auth_headers()
        if request.idempotency_key:
            headers[IDEMPOTENCY_HEADER] = idempotency_header_value(request.idempotency_key)
        response = await http.send(
            self.client, "POST", self.url(TASKS_PATH),
            creates_task=True, json=wire_body(request), headers=headers,
        )
        data = self._data(response)
        task_id = data.get("taskId") if isinstance(data, Mapping) else None
        if not isinstance(task_id, str) or not task_id:
            raise TransientError(f"hiapi: create answered without a taskId ({data!r:.120})")
        replay = response.headers.get(REPLAY_HEADER, "").lower() == "true"
        return Submitted(self.name, task_id, {"replay": "true"} if replay else {})

    async def poll(self, submitted: Submitted) -> Pending | Finished:
        response = await http.send(
            self.client, "GET", self.url(f"{TASKS_PATH}/{submitted.task_id}"),
            headers=self._auth_headers(),
        )
        data = self._data(response)
        if not isinstance(data, Mapping) or not isinstance(data.get("status"), str):
            raise TransientError(f"hiapi: task detail without a status ({data!r:.120})")
        status: str = data["status"]
        if status == SUCCESS_STATE:
            return finished_from(data)
        if status == FAIL_STATE:
            raise task_failure(data.get("error"))
        # queued | handling | archiving, or a state word added later: keep polling.
        return Pending(state=status)

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.require_credential(API_KEY_ENV)}"}

    def _data(self, response: httpx.Response) -> Any:
        """The envelope's `data`, after translating any error the response carries."""
        body = http.json_body(response)
        raise_for_error(response, body)
        if not isinstance(body, Mapping):
            raise TransientError(f"hiapi: HTTP {response.status_code}: not an envelope")
        return body.get("data")


# -- wire format -----------------------------------------------------------------------------


def wire_body(request: ImageRequest) -> dict[str, Any]:
    """The POST /v1/tasks body for `request` (S1 request parameters).

    HiAPI has no seed parameter, so `request.seed` has nothing to map to.
    """
    body: dict[str, Any] = {
        "model": MODEL_ID,
        "input": {
            "prompt": request.prompt,
            "image_input": [ref.uri for ref in request.references],
            "aspect_ratio": request.aspect_ratio,
            "resolution": request.resolution,
            "output_format": request.output_format,
        },
    }
    callback = request.options.get("callback")
    if callback is not None:
        body["callback"] = {"when": "final", **callback}
    return body


def idempotency_header_value(key: str) -> str:
    """The key as sent: HiAPI caps it at 255 bytes, so a longer one is sent as its SHA-256
    (still stable for the same cell and attempt)."""
    if len(key.encode()) <= MAX_IDEMPOTENCY_KEY_BYTES:
        return key
    return hashlib.sha256(key.encode()).hexdigest()


def finished_from(data: Mapping[str, Any]) -> Finished:
    """Images of a `success` task; an empty output is the `no_image` failure."""
    output = data.get("output") or []
    images = tuple(
        ResultImage(url=item["url"])
        for item in output
        if isinstance(item, Mapping) and item.get("type", "image") == "image"
        and isinstance(item.get("url"), str)
    )
    if not images:
        raise TaskFailed("hiapi: task succeeded but returned no image", code="no_image")
    return Finished(images=images, cost_usd=None, state=SUCCESS_STATE)


# -- errors ----------------------------------------------------------------------------------


def raise_for_error(response: httpx.Response, body: Any) -> None:
    """Translate HiAPI's error signals (HTTP status + envelope) into `providers.errors`.

    The one place where HiAPI's `error_code`s are interpreted; statuses go to the shared
    ladder. Returns quietly for a success envelope.
    """
    envelope: Mapping[str, Any] = body if isinstance(body, Mapping) else {}
    status = response.status_code
    body_code = envelope.get("code")
    if status < 300 and body_code in (None, 200, "200"):
        return
    if status < 300 and isinstance(body_code, int):
        status = body_code  # `code` mirrors the HTTP status (§2.2); trust it if they differ
    error_code = envelope.get("error_code")
    message = f"hiapi: {status_message(response, envelope, 'message')}"
    if error_code:
        message = f"{message} ({error_code})"
    code: str | int = error_code or status
    if error_code == PROCESSING_CODE:
        # The first create with this key is still in flight: wait and send again, and the
        # re-send replays the task (HJ Transport.java). RateLimited carries the wait.
        retry_after = http.parse_retry_after(response.headers.get("Retry-After"))
        raise RateLimited(message, code=code, retry_after=retry_after)
    if error_code == MISMATCH_CODE:
        raise Rejected(message, code=code)
    if error_code in RETRYABLE_CODES:
        raise TransientError(message, code=code)
    if error_code == "TASK_FAILED" or looks_like_content_rejection(
        error_code, envelope.get("message")
    ):
        raise task_failure({"code": error_code, "message": envelope.get("message")})
    if isinstance(error_code, str) and "INSUFFICIENT" in error_code:  # undocumented code
        raise InsufficientBalance(message, code=code)
    raise http.status_error(response, message, status=status, code=code)


def task_failure(error: Any) -> TaskFailed:
    """The exception for a `fail` task from its `error: {code, message}`. HiAPI documents
    no content-moderation code: `looks_like_content_rejection` reads the code and message."""
    code = message = None
    if isinstance(error, Mapping):
        code, message = error.get("code"), error.get("message")
    text = f"hiapi: {message or 'task failed'}"
    if looks_like_content_rejection(code, message):
        return ContentRejected(text, code=code or "content")
    return TaskFailed(text, code=code or FAIL_STATE)


__all__ = ["HiapiProvider", "raise_for_error", "task_failure", "wire_body"]
