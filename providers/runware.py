"""Runware adapter for `google:4@2` (Nano Banana Pro), through Runware's task-array API.

Wire format: every call is `POST {base}` with a JSON array of tasks: `imageInference` (the
create; `deliveryMethod` async answers an ack item), `getResponse` (status items: processing |
success | error) and `imageUpload` (a data URI -> a reusable imageUUID). Bearer auth; every
answer is `{"data": [...]}` and/or `{"errors": [...]}` with the HTTP status of the failure
category. The client names each task (`taskUUID`): nbp sends the request's idempotency key,
a random UUID v4 per create intent, as the taskUUID (a key of an older journal,
`nbp-{cell}-{channel}-{n}`, is turned into a UUID v4 derived from it, as those versions did).
So a create whose answer was lost is found again with `getResponse` (`recover`), and a create
re-sent for the same intent is answered as the task it already is (refused as a reused
taskUUID, or acknowledged again: protocols.md §11), never billed twice; a new intent is a new
key and a new task. References over `INLINE_MAX_BYTES` are uploaded by `prepare`.

Sources: seeds/runware.txt (S2), protocols.md §3 and §7, runware.ai/docs (RD).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import httpx

from nbp.providers import http
from nbp.providers.adapter import HttpAdapter, looks_like_content_rejection
from nbp.providers.base import (
    Capabilities,
    Finished,
    ImageRequest,
    Pending,
    ProviderSettings,
    Reference,
    ResultImage,
    Submitted,
    sent_seed,
)
from nbp.providers.errors import (
    AuthError,
    ContentRejected,
    InsufficientBalance,
    LimitExceeded,
    RateLimited,
    TaskFailed,
    TaskNotFound,
    TransientError,
)
from nbp.providers.model import PIXEL_SIZES
from nbp.providers.runware_facts import API_KEY_ENV, FACTS, MAX_SEED, MODEL_ID

# -- documented constants --------------------------------------------------------------------
# seeds/runware.txt (S2), protocols.md §3 and §7, runware.ai/docs (RD).
WIRE_FORMATS: dict[str, str] = {"png": "PNG", "jpg": "JPG", "webp": "WEBP"}  # S2 outputFormat
# Runware's supported width x height pairs (RD model page, "Compatibility & Validation"). They
# are Google's sizes (protocols.md §7) except 1K 21:9, which Runware lists as 1548x672 while
# the model returns 1584x672. Runware validates against its own list, so nbp sends 1548x672
# and expects a 1584x672 image. Runware lists 4K 3:2 / 2:3 twice (5096 and 5056); nbp sends
# Google's 5056, which is listed too.
WIRE_DIMENSIONS: dict[tuple[str, str], tuple[int, int]] = {
    **PIXEL_SIZES, ("21:9", "1K"): (1548, 672),
}
DEFAULT_DELIVERY = "async"
SYNC_TIMEOUT_S = 300.0        # RP: the SDK waits up to 300 s for an image inference
INLINE_MAX_BYTES = 1_000_000  # local references up to ~1 MB go inline as data URIs
PROCESSING, SUCCESS, ERROR = "processing", "success", "error"  # getResponse `status` (§3.3)

# Error `code`s (RD platform/errors; others seen in public clients, marked [I]).
AUTH_CODES = frozenset({"invalidApiKey"})
BALANCE_CODES = frozenset({"insufficientCredits"})                      # [I]
RATE_CODES = frozenset({"providerRateLimitExceeded", "queueCapacityExceeded"})  # RD google / [I]
TRANSIENT_CODES = frozenset({"timeoutProvider", "serviceUnavailable", "timeoutQueue"})
NOT_FOUND_CODES = frozenset({"taskNotFound"})                           # [I]
# Runware documents no moderation code; public clients handling Runware's Google models
# match `invalidProviderContent` ("Invalid content detected") and `contentModerated` [I];
# any other code or message is read with `looks_like_content_rejection`.
CONTENT_CODES = frozenset({"invalidProviderContent", "invalidContent", "contentModerated"})
# A create whose taskUUID the account used before (protocols.md §11 [I]): refused as
# `duplicateTaskUUID` or as `invalidTaskUUID` ("already used"), or acknowledged again.
DUPLICATE_CODE = "duplicateTaskUUID"
INVALID_UUID_CODE = "invalidTaskUUID"
REUSED_UUID_CODES = frozenset({DUPLICATE_CODE, INVALID_UUID_CODE})
# What refuses a getResponse task itself (its taskUUID is not a UUID v4, a field it does not
# take): about our question, not the task's fate.
GET_RESPONSE_REFUSALS = frozenset({INVALID_UUID_CODE, "unsupportedParameter"})
UUID_V4 = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.IGNORECASE
)

# -- adapter ---------------------------------------------------------------------------------


class RunwareProvider(HttpAdapter):
    """Nano Banana Pro via Runware (`runware`). Local references go inline as data URIs, or,
    when larger than `INLINE_MAX_BYTES`, through `imageUpload` in `prepare` (once per
    content) and then by their imageUUID."""

    name: ClassVar[str] = FACTS.name
    model: ClassVar[str] = FACTS.model
    default_base_url: ClassVar[str] = FACTS.base_url
    capabilities: ClassVar[Capabilities] = FACTS.capabilities

    def __init__(self, settings: ProviderSettings) -> None:
        super().__init__(settings)
        self._uploads: dict[str, str] = {}  # sha256 of content -> imageUUID
        self._upload_locks: dict[str, asyncio.Lock] = {}

    async def prepare(self, request: ImageRequest) -> ImageRequest:
        """Local references over `INLINE_MAX_BYTES` go through `imageUpload` (once per
        content) and come back as their imageUUID; the rest stay as they are (small ones
        travel inline in the create). Limits are checked first: nothing is uploaded for a
        request Runware would refuse."""
        self.check_limits(request)
        self.checked_options(request)
        request_seed(request)
        if not _needs_upload(request):
            return request
        references = [await self._prepared(ref) for ref in request.references]
        return replace(request, references=tuple(references))

    async def submit(self, request: ImageRequest) -> Submitted:
        if _needs_upload(request):  # a direct caller's unprepared request (the engine prepares)
            request = await self.prepare(request)
        self.check_limits(request)
        self.checked_options(request)
        seed = request_seed(request)
        headers = self._auth_headers()
        task_uuid = task_uuid_for(request.idempotency_key)
        references = [self._reference(ref) for ref in request.references]
        task = wire_task(request, task_uuid, references, seed)
        sync = task["deliveryMethod"] == "sync"
        response = await http.send(
            self.client, "POST", self.base_url, creates_task=True, json=[task],
            headers=headers, timeout=_sync_timeout() if sync else httpx.USE_CLIENT_DEFAULT,
        )
        body = http.json_body(response)
        if reused_task_uuid(body, task_uuid):
            # Our earlier create of this intent got through: it is the same task.
            return Submitted(self.name, task_uuid, {"resent": "true"})
        items = self._task_items(response, body, task_uuid)
        if not sync or not items or all(_is_ack(item) for item in items):
            return Submitted(self.name, task_uuid)  # an ack (also of a re-sent create)
        outcome = outcome_of(items)
        if isinstance(outcome, Pending):
            return Submitted(self.name, task_uuid)
        return Submitted(self.name, task_uuid, finished=outcome)

    async def poll(self, submitted: Submitted) -> Pending | Finished:
        items = await self._get_response(submitted.task_id)
        if not items:
            raise TaskNotFound(f"runware: no task {submitted.task_id} on this account")
        return outcome_of(items)

    async def recover(self, request: ImageRequest) -> Submitted | None:
        """The task an earlier submit of `request` created, found by its derived taskUUID."""
        if not request.idempotency_key:
            return None
        task_uuid = task_uuid_for(request.idempotency_key)
        try:
            items = await self._get_response(task_uuid)
        except TaskNotFound:
            return None
        return Submitted(self.name, task_uuid) if items else None

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.require_credential(API_KEY_ENV)}"}

    async def _get_response(self, task_uuid: str) -> list[Mapping[str, Any]]:
        task = {"taskType": "getResponse", "taskUUID": task_uuid}
        response = await http.send(
            self.client, "POST", self.base_url, json=[task], headers=self._auth_headers()
        )
        return self._task_items(response, http.json_body(response), task_uuid, polling=True)

    def _task_items(
        self, response: httpx.Response, body: Any, task_uuid: str, *, polling: bool = False
    ) -> list[Mapping[str, Any]]:
        """This task's items (data and failed generations), after request-level errors.
        `polling`: a getResponse answer, where an error item naming the task is the
        provider's word on it whatever the HTTP status (see `raise_for_error`)."""
        raise_for_error(response, body, task_uuid, polling=polling)
        data = body.get("data") if isinstance(body, Mapping) else None
        if isinstance(data, Mapping):  # some pages show `data` as one object, not an array
            data = [data]
        return [
            item for item in [*(data or []), *_errors_of(body)]
            if isinstance(item, Mapping) and item.get("taskUUID") == task_uuid
        ]

    def _reference(self, ref: Reference) -> str:
        """The string Runware takes for a reference: URL, data URI, or an imageUUID (what
        `prepare` made of a large local file)."""
        if ref.data is None:
            if ref.is_url or ref.uri.startswith("data:") or UUID_V4.match(ref.uri):
                return ref.uri
            raise LimitExceeded(
                f"runware: reference {ref.uri!r} is neither a URL nor local content"
            )
        return data_uri(ref.data, ref.mime_type)

    async def _prepared(self, ref: Reference) -> Reference:
        """`ref`, or for local content over `INLINE_MAX_BYTES` its upload's imageUUID."""
        if ref.data is None or len(ref.data) <= INLINE_MAX_BYTES:
            return ref
        digest = hashlib.sha256(ref.data).hexdigest()
        lock = self._upload_locks.setdefault(digest, asyncio.Lock())
        async with lock:  # cells sharing a product photo wait for one upload
            if digest not in self._uploads:
                self._uploads[digest] = await self._upload(ref)
        return Reference(uri=self._uploads[digest], mime_type=ref.mime_type)

    async def _upload(self, ref: Reference) -> str:
        """`imageUpload` (§3.4): the imageUUID to use in referenceImages."""
        assert ref.data is not None
        task_uuid = str(uuid.uuid4())
        task = {
            "taskType": "imageUpload", "taskUUID": task_uuid,
            "image": data_uri(ref.data, ref.mime_type),
        }
        response = await http.send(
            self.client, "POST", self.base_url, json=[task], headers=self._auth_headers()
        )
        items = self._task_items(response, http.json_body(response), task_uuid)
        for item in items:
            if item.get("status") == ERROR:
                raise task_failure(item)
            image_uuid = item.get("imageUUID")
            if isinstance(image_uuid, str) and image_uuid:
                return image_uuid
        raise TransientError(f"runware: imageUpload of {ref.filename!r} returned no imageUUID")


# -- wire format -----------------------------------------------------------------------------


def wire_task(
    request: ImageRequest, task_uuid: str, references: Sequence[str], seed: int | None
) -> dict[str, Any]:
    """The imageInference task for `request` (S2 request parameters, field by field).

    Size goes as width+height from Runware's list (never `resolution` too: they exclude each
    other); the request's resolution is what that pair encodes.
    """
    options = request.options
    width, height = WIRE_DIMENSIONS[(request.aspect_ratio, request.resolution)]
    task: dict[str, Any] = {
        "taskType": "imageInference",
        "taskUUID": task_uuid,
        "model": MODEL_ID,
        "positivePrompt": request.prompt,
        "width": width,
        "height": height,
        "outputType": "URL",
        "outputFormat": WIRE_FORMATS[request.output_format],
        "numberResults": 1,
        "includeCost": options.get("includeCost", True),
        "deliveryMethod": options.get("deliveryMethod", DEFAULT_DELIVERY),
    }
    if references:
        task["inputs"] = {"referenceImages": list(references)}
    if seed is not None:
        task["seed"] = seed
    for key in ("outputQuality", "ttl", "safety", "settings", "providerSettings"):
        if key in options:
            task[key] = options[key]
    return task


def request_seed(request: ImageRequest) -> int | None:
    """The seed to send (`sent_seed`: Runware documents one): the neutral one, or
    `options.runware.seed`; both must agree, and fit `MAX_SEED`."""
    option = request.options.get("seed")
    if request.seed is not None and option is not None and option != request.seed:
        raise LimitExceeded(
            f"runware: seed {request.seed} and options.runware.seed {option} disagree"
        )
    seed = sent_seed(FACTS.capabilities, request)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise LimitExceeded(f"runware: seed must be in 0..2^63-1, got {seed}")
    return seed


def task_uuid_for(idempotency_key: str | None) -> str:
    """The taskUUID of a create intent: its key itself when that is a UUID v4 (the engine's
    keys are random per intent); for any other key (journals of older versions hold
    `nbp-{cell}-{channel}-{n}`) the UUID v4 those versions derived from it, so their lost
    creates are still found; random without a key."""
    if not idempotency_key:
        return str(uuid.uuid4())
    if UUID_V4.match(idempotency_key):
        return idempotency_key
    digest = hashlib.sha256(f"nbp-runware:{idempotency_key}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def data_uri(data: bytes, mime_type: str) -> str:
    return f"data:{mime_type};base64,{base64.b64encode(data).decode('ascii')}"


def outcome_of(items: Sequence[Mapping[str, Any]]) -> Pending | Finished:
    """Where one task is, from its items: a failed generation raises, any success finishes,
    otherwise it is still processing. Sync items carry no `status`: they are results."""
    for item in items:
        if item.get("status") == ERROR or "code" in item:
            raise task_failure(item)
    done = [item for item in items if item.get("status", SUCCESS) == SUCCESS]
    if not done:
        return Pending(state=str(items[0].get("status") or PROCESSING))
    images = tuple(image for item in done if (image := _image_of(item)) is not None)
    if not images:
        raise TaskFailed("runware: task succeeded but returned no image", code="no_image")
    costs = [float(c) for item in done if isinstance(c := item.get("cost"), int | float)]
    return Finished(images=images, cost_usd=round(sum(costs), 6) if costs else None)


def _image_of(item: Mapping[str, Any]) -> ResultImage | None:
    """The image of a result item. Inline outputs (other outputTypes, RP types.py) stay a
    `data:` URL until `download`, which sizes them before decoding."""
    url = item.get("imageURL")
    if isinstance(url, str) and url:
        return ResultImage(url=url)
    value = item.get("imageDataURI")
    if isinstance(value, str) and value.startswith("data:"):
        return ResultImage(url=value)
    value = item.get("imageBase64Data") or value
    if isinstance(value, str) and value:
        return ResultImage(url=f"data:application/octet-stream;base64,{value.split(',')[-1]}")
    return None


def _needs_upload(request: ImageRequest) -> bool:
    """Whether a reference is local content too large to go inline (`prepare` uploads it)."""
    return any(ref.data is not None and len(ref.data) > INLINE_MAX_BYTES
               for ref in request.references)


def _is_ack(item: Mapping[str, Any]) -> bool:
    """An acknowledgement (`{taskType, taskUUID}`): no status, no result, no error code."""
    keys = {"status", "code", "imageUUID", "imageURL", "imageDataURI", "imageBase64Data"}
    return not keys & set(item)


def _sync_timeout() -> httpx.Timeout:
    return httpx.Timeout(SYNC_TIMEOUT_S, connect=10.0)


# -- errors ----------------------------------------------------------------------------------


def raise_for_error(
    response: httpx.Response, body: Any, task_uuid: str, *, polling: bool = False
) -> None:
    """Translate Runware's request-level error signals into `providers.errors`.

    The one place where Runware's `errors[].code`s are read; statuses go to the shared ladder.
    Failed generations are task outcomes, left to `task_failure`: a `status: "error"` item of
    this task, and, in a getResponse answer (`polling`), any item naming this task with a
    code that is not about the request itself, at HTTP 200 or 400 (`task_word`: the two
    readings of protocols.md §11). Errors of other tasks in the same array are not ours (RD
    errors: per task). Runware documents no account concurrency limit: 429 is queue
    capacity (§3.5), a rate signal like any other.
    """
    if polling and task_word(response, body, task_uuid) is not None:
        return
    status = response.status_code
    mine = [
        e for e in _errors_of(body)
        if e.get("status") != ERROR and e.get("taskUUID") in (None, task_uuid)
    ]
    if not mine and status < 400:
        return
    error = mine[0] if mine else {}
    code = str(error.get("code") or "") or None
    message = f"runware: {error.get('message') or f'HTTP {status}'}"
    if code:
        message = f"{message} ({code})"
    key: str | int = code or status
    if code in AUTH_CODES:
        raise AuthError(message, code=key)
    if code in BALANCE_CODES:
        raise InsufficientBalance(message, code=key)
    if code in RATE_CODES:
        retry_after = http.parse_retry_after(response.headers.get("Retry-After"))
        raise RateLimited(message, code=key, retry_after=retry_after)
    if code in CONTENT_CODES:
        raise ContentRejected(message, code=key)
    if code in NOT_FOUND_CODES:
        raise TaskNotFound(message, code=key)
    if code in TRANSIENT_CODES:
        raise TransientError(message, code=key)
    raise http.status_error(response, message, code=key)


# Codes that speak of the request or the account, never of one task's generation.
REQUEST_CODES = (AUTH_CODES | BALANCE_CODES | RATE_CODES | TRANSIENT_CODES | NOT_FOUND_CODES
                 | GET_RESPONSE_REFUSALS)


def task_word(response: httpx.Response, body: Any, task_uuid: str) -> Mapping[str, Any] | None:
    """In a getResponse answer, the error item that is Runware's word on this task: it names
    the taskUUID and either says `status: "error"` (reading (a), HTTP 200) or carries a code
    that is not about the request (reading (b), HTTP 400 without `status`: a content code,
    `providerError`, or one never seen before). None when there is none, or when the status
    says the answer is no word on the task (auth, balance, 404, 429, 5xx)."""
    if response.status_code not in (200, 400):
        return None
    for item in _errors_of(body):
        if item.get("taskUUID") != task_uuid:
            continue
        code = str(item.get("code") or "")
        if item.get("status") == ERROR or (code and code not in REQUEST_CODES):
            return item
    return None


def reused_task_uuid(body: Any, task_uuid: str) -> bool:
    """Whether a create was refused because its taskUUID was used before (`duplicateTaskUUID`,
    or `invalidTaskUUID` for a UUID v4 we sent, which can only mean "already used":
    protocols.md §11): our earlier create of this same intent got through."""
    return UUID_V4.match(task_uuid) is not None and any(
        e.get("code") in REUSED_UUID_CODES and e.get("taskUUID") in (None, task_uuid)
        for e in _errors_of(body)
    )


def task_failure(item: Mapping[str, Any]) -> TaskFailed:
    """The exception for a failed or refused generation (an item of `task_word`): a content
    code, or a code or message that reads as one, is `ContentRejected`; anything else,
    including a code never seen before, `TaskFailed` (never retried as a request)."""
    code = str(item.get("code") or ERROR)
    text = f"runware: {item.get('message') or 'the task failed'} ({code})"
    if code in CONTENT_CODES or looks_like_content_rejection(code, item.get("message")):
        return ContentRejected(text, code=code)
    return TaskFailed(text, code=code)


def _errors_of(body: Any) -> list[Mapping[str, Any]]:
    errors = body.get("errors") if isinstance(body, Mapping) else None
    return [e for e in errors or [] if isinstance(e, Mapping)]


__all__ = [
    "RunwareProvider", "raise_for_error", "reused_task_uuid", "task_failure", "task_uuid_for",
    "task_word", "wire_task",
]
