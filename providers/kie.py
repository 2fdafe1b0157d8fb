"""Kie.ai adapter for `nano-banana-pro`.

Wire format: `POST {base}/api/v1/jobs/createTask` with `{"model", "callBackUrl"?, "input":
{prompt, image_input, aspect_ratio, resolution, output_format}}` answers `data.taskId`;
`GET {base}/api/v1/jobs/recordInfo?taskId=` answers `data.state` (waiting -> queuing ->
generating -> success | fail) with `param` and `resultJson` as JSON strings; an unknown or
expired taskId answers `code: 422` "recordInfo is null" or a `code: 200` envelope with `data:
null` (protocols.md §11), both `TaskNotFound`. Local reference files go first (`prepare`) to
`POST {upload}/api/file-stream-upload` and are sent as its `data.downloadUrl`. Kie answers
HTTP 200 with the real status in the body's `code`. There is no idempotency and no cancel:
a lost create answer is `SubmitUncertain` and cannot be recovered. `ApikleyProvider` reuses
all of this.

Sources: seeds/kie.txt (S3), protocols.md §4.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

import httpx

from nbp.providers import http
from nbp.providers.adapter import HttpAdapter, looks_like_content_rejection, status_message
from nbp.providers.base import (
    Capabilities,
    Finished,
    ImageRequest,
    Pending,
    ProviderSettings,
    Reference,
    ResultImage,
    Submitted,
)
from nbp.providers.errors import (
    ContentRejected,
    LimitExceeded,
    ProviderError,
    Rejected,
    SubmitUncertain,
    TaskFailed,
    TaskNotFound,
    TransientError,
)
from nbp.providers.kie_facts import FACTS, MODEL_ID
from nbp.providers.model import MIME_TYPE
from nbp.providers.times import between, epoch_s, number_of

# -- documented constants --------------------------------------------------------------------
# seeds/kie.txt (S3), protocols.md §4.

CREATE_PATH = "/api/v1/jobs/createTask"
RECORD_PATH = "/api/v1/jobs/recordInfo"
STREAM_UPLOAD_PATH = "/api/file-stream-upload"  # §4.6
UPLOAD_FOLDER = "nbp/references"

# S3 image_input: at most 30 MB each, jpeg/png/webp.
MAX_REFERENCE_BYTES = 30 * 1024 * 1024
REFERENCE_TYPES = ("image/jpeg", "image/png", "image/webp")
# Uploaded files expire after 24 h to 3 days (§4.6, docs disagree): reuse one for half a day.
UPLOAD_REUSE_S = 12 * 3600.0
PENDING_STATES = ("waiting", "queuing", "generating")  # §4.3
SUCCESS_STATE, FAIL_STATE = "success", "fail"
USD_PER_CREDIT = 0.005  # §4.8

# S3's body codes are HTTP statuses and mean what the shared ladder says (`http`), except
# where a message or the operation tells otherwise (see `raise_for_error`). A Kie-compatible
# provider adds its own codes here (Apikley: 455, 501, 505).
KIE_OWN_CODES: Mapping[int, type[ProviderError]] = {}

# -- adapter ---------------------------------------------------------------------------------


class KieProvider(HttpAdapter):
    """Kie.ai's market API. Local reference files are uploaded by `prepare`, once per
    adapter (by content hash), to the upload host and passed as `image_input` URLs."""

    name: ClassVar[str] = FACTS.name
    model: ClassVar[str] = FACTS.model
    default_base_url: ClassVar[str] = FACTS.base_url
    extra_url_defaults: ClassVar[Mapping[str, str]] = FACTS.extra_urls
    capabilities: ClassVar[Capabilities] = FACTS.capabilities
    own_codes: ClassVar[Mapping[int, type[ProviderError]]] = KIE_OWN_CODES
    usd_per_credit: ClassVar[float | None] = USD_PER_CREDIT  # None where credits are unpriced

    def __init__(self, settings: ProviderSettings) -> None:
        super().__init__(settings)
        self._uploads: dict[str, tuple[str, float]] = {}  # sha256 -> (downloadUrl, when)
        self._upload_locks: dict[str, asyncio.Lock] = {}

    async def prepare(self, request: ImageRequest) -> ImageRequest:
        """Upload the local reference files (after the limits are checked, so nothing goes
        up for a request Kie would refuse) and return the request with each replaced by its
        `downloadUrl`; URL references stay as they are."""
        self.check_limits(request)
        self.checked_options(request)
        if all(ref.data is None for ref in request.references):
            return request
        for ref in request.references:  # refused before anything goes up
            if ref.data is None:
                self._reference_url(ref)
        key = self.require_credential(self.capabilities.env_vars[0])
        references = await asyncio.gather(
            *(self._prepared(ref, key) for ref in request.references)
        )
        return replace(request, references=tuple(references))

    async def submit(self, request: ImageRequest) -> Submitted:
        if any(ref.data is not None for ref in request.references):
            request = await self.prepare(request)  # a direct caller's (the engine prepares)
        self.check_limits(request)
        options = self.checked_options(request)
        key = self.require_credential(self.capabilities.env_vars[0])
        image_input = [self._reference_url(ref) for ref in request.references]
        response = await http.send(
            self.client, "POST", self.url(CREATE_PATH), creates_task=True,
            json=create_body(request, options, image_input), headers=self._auth(key),
        )
        data = self._checked(response, "create")
        task_id = data.get("taskId") if isinstance(data, Mapping) else None
        if not task_id:
            raise SubmitUncertain(f"{self.name} create: answered success without a taskId")
        return Submitted(self.name, str(task_id))

    async def poll(self, submitted: Submitted) -> Pending | Finished:
        key = self.require_credential(self.capabilities.env_vars[0])
        response = await http.send(
            self.client, "GET", self.url(RECORD_PATH),
            params={"taskId": submitted.task_id}, headers=self._auth(key),
        )
        data = self._checked(response, "poll")
        if data is None:  # a code-200 envelope with `data: null` (protocols.md §11)
            raise TaskNotFound(f"{self.name} poll: recordInfo has no task {submitted.task_id}",
                               code="data_null")
        if not isinstance(data, Mapping):
            raise TransientError(f"{self.name} poll: recordInfo answered without a record")
        state = str(data.get("state") or "")
        if state == SUCCESS_STATE:
            return finished_from(self.name, data, self.usd_per_credit)
        if state == FAIL_STATE:
            raise task_failure(self.name, data)
        return Pending(state=state or "unknown")

    def check_limits(self, request: ImageRequest) -> None:
        """The shared limits, plus S3's size and type limits of local reference files."""
        super().check_limits(request)
        for ref in request.references:
            if ref.data is None:
                continue
            if len(ref.data) > MAX_REFERENCE_BYTES:
                raise LimitExceeded(
                    f"{self.name} takes reference images of at most 30 MB; "
                    f"{ref.uri!r} has {len(ref.data)} bytes"
                )
            if ref.mime_type not in REFERENCE_TYPES:
                raise LimitExceeded(
                    f"{self.name} takes jpeg, png or webp references; {ref.uri!r} is "
                    f"{ref.mime_type}"
                )

    def upload_url(self, path: str) -> str:
        """Where the upload API lives: Kie's separate host."""
        base = self.settings.extra_urls.get("upload") or self.extra_url_defaults["upload"]
        return f"{base.rstrip('/')}{path}"

    def _checked(self, response: httpx.Response, op: str) -> Any:
        """The envelope's `data` when `code` is 200; otherwise the matching error."""
        body = http.json_body(response)
        raise_for_error(self.name, response, body, op, self.own_codes)
        return body.get("data")

    def _auth(self, key: str) -> dict[str, str]:
        # Per request, not on the client: result downloads go to other hosts.
        return {"Authorization": f"Bearer {key}"}

    def _reference_url(self, ref: Reference) -> str:
        """The URL Kie fetches a reference from (a prepared request holds only URLs)."""
        if not ref.is_url:
            raise LimitExceeded(f"{self.name}: reference {ref.uri!r} has no content")
        return ref.uri

    async def _prepared(self, ref: Reference, key: str) -> Reference:
        """`ref`, or for local content the `downloadUrl` of its upload (once per content)."""
        if ref.data is None:
            return ref
        digest = hashlib.sha256(ref.data).hexdigest()
        lock = self._upload_locks.setdefault(digest, asyncio.Lock())
        async with lock:  # concurrent cells with the same product photo wait for one upload
            cached = self._uploads.get(digest)
            if cached is None or time.monotonic() - cached[1] >= UPLOAD_REUSE_S:
                cached = (await self._upload(ref, digest, key), time.monotonic())
                self._uploads[digest] = cached
        return Reference(uri=cached[0], mime_type=ref.mime_type)

    async def _upload(self, ref: Reference, digest: str, key: str) -> str:
        # Named by content: the same name overwrites (§4.6), which is then harmless.
        extension = {"image/jpeg": "jpg", "image/webp": "webp"}.get(ref.mime_type, "png")
        file_name = f"{digest[:32]}.{extension}"
        response = await http.send(
            self.client, "POST", self.upload_url(STREAM_UPLOAD_PATH),
            headers=self._auth(key),
            data={"uploadPath": UPLOAD_FOLDER, "fileName": file_name},
            files={"file": (file_name, ref.data or b"", ref.mime_type)},
        )
        data = self._checked(response, "upload")
        url = data.get("downloadUrl") if isinstance(data, Mapping) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise TransientError(f"{self.name} upload: answer has no downloadUrl")
        return url


# -- wire format -----------------------------------------------------------------------------


def create_body(
    request: ImageRequest, options: Mapping[str, Any], image_input: list[str]
) -> dict[str, Any]:
    """The createTask body. Every field is sent: documented defaults are not always applied
    (§4.2)."""
    return {
        "model": MODEL_ID,
        **options,
        "input": {
            "prompt": request.prompt,
            "image_input": image_input,
            "aspect_ratio": request.aspect_ratio,
            "resolution": request.resolution,
            "output_format": request.output_format,
        },
    }


def finished_from(name: str, data: Mapping[str, Any], usd_per_credit: float | None) -> Finished:
    """Images (and cost, where credits are priced) of a `success` record."""
    result = _json_field(data.get("resultJson"))
    urls = result.get("resultUrls") if isinstance(result, Mapping) else None
    if not urls:
        raise TaskFailed(f"{name}: task succeeded without an image", code="no_image")
    params = _json_field(data.get("param"))
    inp = params.get("input") if isinstance(params, Mapping) else None
    fmt = inp.get("output_format") if isinstance(inp, Mapping) else None
    credits = data.get("creditsConsumed", data.get("consumeCredits"))
    cost = None
    if usd_per_credit is not None and isinstance(credits, int | float) and credits > 0:
        cost = round(float(credits) * usd_per_credit, 6)
    images = tuple(ResultImage(url=str(u), mime_type=MIME_TYPE.get(str(fmt))) for u in urls)
    queue_s, generation_s = task_times(data)
    return Finished(images=images, cost_usd=cost, state=SUCCESS_STATE, queue_s=queue_s,
                    generation_s=generation_s)


def task_times(data: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(queue_s, generation_s) of a `success` record (`kie_facts.TASK_TIMES`): `costTime`
    (milliseconds) is the time the task ran; the rest of `completeTime` - `createTime`
    (milliseconds, or seconds: read by magnitude) the wait before it, never below 0."""
    cost = number_of(data.get("costTime"))
    generation = round(cost / 1000, 3) if cost is not None and cost >= 0 else None
    span = between(epoch_s(data.get("createTime")), epoch_s(data.get("completeTime")))
    if span is None or generation is None:
        return None, generation
    return round(max(0.0, span - generation), 3), generation


def _json_field(value: Any) -> Any:
    """`resultJson` and `param` are JSON strings (§4.3); tolerate objects and blanks."""
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else None
        except ValueError:
            return None
    return value


# -- errors ----------------------------------------------------------------------------------


def raise_for_error(
    name: str,
    response: httpx.Response,
    body: Any,
    op: str,
    own_codes: Mapping[int, type[ProviderError]] = KIE_OWN_CODES,
) -> None:
    """Kie's body `code` (HTTP 200 around it) -> `providers.errors`; quiet for code 200.

    The provider's `own_codes` first, then what a message or the operation says better,
    then the shared status ladder with the body code as the status. Proxies and CDNs in
    front of Kie may still answer real HTTP statuses: without a body code, those.
    """
    message = status_message(response, body, "msg", "message")
    code = _int(body.get("code")) if isinstance(body, Mapping) else None
    if code is None:
        http.raise_for_http_status(response, f"{name} {op}: {message}")
        raise TransientError(f"{name} {op}: answer without a status code")
    if code == 200:
        return
    text = f"{name} {op}: {message} (code {code})"
    own = own_codes.get(code)
    if own is not None:
        raise own(text, code=code)
    if code == 422 and op == "poll" and "recordinfo is null" in message.lower():
        raise TaskNotFound(text, code=code)  # unknown taskId (§4.3)
    if code == 404 and op != "poll":
        raise Rejected(text, code=code)  # an endpoint, not a task, is missing
    if code == 500 and "required" in message.lower():
        raise Rejected(text, code=code)  # validation dressed as 500 (§4.3)
    raise http.status_error(response, text, status=code)


def task_failure(name: str, data: Mapping[str, Any]) -> TaskFailed:
    """A `fail` record's failCode/failMsg. Kie documents no moderation failCode: the message
    is read with `looks_like_content_rejection` (§4.3)."""
    code = str(data.get("failCode") or "") or None
    message = str(data.get("failMsg") or "") or "the task failed"
    text = f"{name}: {message}"
    if looks_like_content_rejection(message):
        return ContentRejected(text, code=code or "content")
    return TaskFailed(text, code=code or FAIL_STATE)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


__all__ = ["KieProvider", "create_body", "raise_for_error", "task_failure"]
