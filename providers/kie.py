"""Kie.ai adapter for `nano-banana-pro` (seeds/kie.txt, protocols.md §4).

    POST {base}/api/v1/jobs/createTask      {"model", "callBackUrl"?, "input": {...}}
    GET  {base}/api/v1/jobs/recordInfo?taskId=...
    POST {upload}/api/file-stream-upload    local reference files -> data.downloadUrl

Kie answers HTTP 200 with the real status in the body's `code`; `_checked` is the one place
that turns codes into `providers.errors`. There is no idempotency and no cancel: a lost create
answer is `SubmitUncertain` and cannot be recovered. `ApikleyProvider` reuses all of this.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx
import jsonschema

from providers import http
from providers.adapter import HttpAdapter, looks_like_content_rejection, status_message
from providers.base import (
    Capabilities,
    Finished,
    ImageRequest,
    Pending,
    ProviderSettings,
    Reference,
    ResultImage,
    Submitted,
)
from providers.errors import (
    AuthError,
    ContentRejected,
    InsufficientBalance,
    LimitExceeded,
    ProviderError,
    RateLimited,
    Rejected,
    SubmitUncertain,
    TaskFailed,
    TaskNotFound,
    TransientError,
)
from providers.model import ASPECT_RATIOS, MIME_TYPE, RESOLUTIONS

MODEL_ID = "nano-banana-pro"
CREATE_PATH = "/api/v1/jobs/createTask"
RECORD_PATH = "/api/v1/jobs/recordInfo"
STREAM_UPLOAD_PATH = "/api/file-stream-upload"  # protocols.md §4.6
UPLOAD_FOLDER = "nbp/references"

# S3 "image_input": at most 8 files of 30 MB, jpeg/png/webp.
MAX_REFERENCE_BYTES = 30 * 1024 * 1024
REFERENCE_TYPES = ("image/jpeg", "image/png", "image/webp")
# Uploaded files expire after 24 h to 3 days (§4.6, docs disagree): reuse one for half a day.
UPLOAD_REUSE_S = 12 * 3600.0

# S3 error table; anything else: >= 500 transient, else rejected.
KIE_BODY_CODES: Mapping[int, type[ProviderError]] = {
    400: Rejected,
    401: AuthError,
    402: InsufficientBalance,
    404: TaskNotFound,
    422: Rejected,
    429: RateLimited,
    500: TransientError,
}

# Only `callBackUrl` is documented beside `model` and `input` (S3 "Request Parameters").
OPTION_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "callBackUrl": {"type": "string", "format": "uri", "pattern": "^https?://\\S+$"},
    },
    "additionalProperties": False,
}

PENDING_STATES = ("waiting", "queuing", "generating")  # protocols.md §4.3


class KieProvider(HttpAdapter):
    """Kie.ai's market API. Local reference files are uploaded once per adapter (by
    content hash) to the upload host and passed as `image_input` URLs."""

    name = "kie"
    model = MODEL_ID
    default_base_url = "https://api.kie.ai"
    extra_url_defaults: ClassVar[Mapping[str, str]] = {
        "upload": "https://kieai.redpandaai.co"  # NBP_KIE_UPLOAD_BASE_URL replaces it
    }
    capabilities = Capabilities(
        aspect_ratios=ASPECT_RATIOS,   # "auto" too upstream, but its pixel size is unknown
        resolutions=RESOLUTIONS,
        output_formats=("png", "jpg"),
        max_prompt_chars=20000,
        max_references=8,
        reference_delivery="upload",
        prices_usd={"1K": 0.09, "2K": 0.09, "4K": 0.12},  # protocols.md §4.8
        default_rate="20/10s",                            # §4.5
        default_max_in_flight=100,                        # "typically 100+ running" (§4.5)
        poll_interval_s=3.0,                              # "2-3 s for 30 s" (§4.3)
        option_schema=OPTION_SCHEMA,
        env_vars=("KIE_API_KEY",),
    )
    body_codes: ClassVar[Mapping[int, type[ProviderError]]] = KIE_BODY_CODES
    usd_per_credit: ClassVar[float | None] = 0.005  # §4.8; None where credits are unpriced

    def __init__(self, settings: ProviderSettings) -> None:
        super().__init__(settings)
        self._uploads: dict[str, tuple[str, float]] = {}  # sha256 -> (downloadUrl, when)
        self._upload_locks: dict[str, asyncio.Lock] = {}

    # -- contract ---------------------------------------------------------------------

    async def submit(self, request: ImageRequest) -> Submitted:
        self.check_limits(request)
        options = self._checked_options(request.options)
        key = self.require_credential(self.capabilities.env_vars[0])
        image_input = await asyncio.gather(
            *(self._reference_url(ref, key) for ref in request.references)
        )
        # Every field is sent: documented defaults are not always applied (§4.2).
        body = {
            "model": MODEL_ID,
            **options,
            "input": {
                "prompt": request.prompt,
                "image_input": list(image_input),
                "aspect_ratio": request.aspect_ratio,
                "resolution": request.resolution,
                "output_format": request.output_format,
            },
        }
        response = await http.send(
            self.client, "POST", self.url(CREATE_PATH), creates_task=True,
            json=body, headers=self._auth(key),
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
        if not isinstance(data, Mapping):
            raise TransientError(f"{self.name} poll: recordInfo answered without data")
        state = str(data.get("state") or "")
        if state == "success":
            return self._finished(data)
        if state == "fail":
            raise self._failure(data)
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

    # -- the one error boundary -------------------------------------------------------

    def _checked(self, response: httpx.Response, op: str) -> Any:
        """The envelope's `data` when `code` is 200; otherwise the matching error.

        Kie signals errors in the body with HTTP 200; proxies and CDNs in front of it may
        still answer real HTTP statuses, handled last.
        """
        body = http.json_body(response)
        message = status_message(response, body, "msg", "message")
        code = _int(body.get("code")) if isinstance(body, Mapping) else None
        if code is None:
            http.raise_for_http_status(response, f"{self.name} {op}: {message}")
            raise TransientError(f"{self.name} {op}: answer without a status code")
        if code == 200:
            return body.get("data")
        text = f"{self.name} {op}: {message} (code {code})"
        if code == 422 and op == "poll" and "recordinfo is null" in message.lower():
            raise TaskNotFound(text, code=code)  # unknown taskId (§4.3)
        if code == 404 and op != "poll":
            raise Rejected(text, code=code)  # an endpoint, not a task, is missing
        if code == 500 and "required" in message.lower():
            raise Rejected(text, code=code)  # validation dressed as 500 (§4.3)
        cls = self.body_codes.get(code) or (TransientError if code >= 500 else Rejected)
        if cls is RateLimited:
            retry_after = http.parse_retry_after(response.headers.get("Retry-After"))
            raise RateLimited(text, code=code, retry_after=retry_after)
        raise cls(text, code=code)

    # -- pieces -----------------------------------------------------------------------

    def _auth(self, key: str) -> dict[str, str]:
        # Per request, not on the client: result downloads go to other hosts.
        return {"Authorization": f"Bearer {key}"}

    def _checked_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        validator = jsonschema.Draft202012Validator(
            dict(self.capabilities.option_schema),
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
        )
        for error in validator.iter_errors(dict(options)):
            where = ".".join(str(p) for p in error.absolute_path)
            raise LimitExceeded(
                f"options.{self.name}{'.' + where if where else ''}: {error.message}"
            )
        return dict(options)

    def _finished(self, data: Mapping[str, Any]) -> Finished:
        result = _json_field(data.get("resultJson"))
        urls = result.get("resultUrls") if isinstance(result, Mapping) else None
        if not urls:
            raise TaskFailed(f"{self.name}: task succeeded without an image", code="no_image")
        params = _json_field(data.get("param"))
        inp = params.get("input") if isinstance(params, Mapping) else None
        fmt = inp.get("output_format") if isinstance(inp, Mapping) else None
        credits = data.get("creditsConsumed", data.get("consumeCredits"))
        cost = None
        if self.usd_per_credit is not None and isinstance(credits, int | float) and credits > 0:
            cost = round(float(credits) * self.usd_per_credit, 6)
        images = tuple(ResultImage(url=str(u), mime_type=MIME_TYPE.get(str(fmt))) for u in urls)
        return Finished(images=images, cost_usd=cost, state="success")

    def _failure(self, data: Mapping[str, Any]) -> TaskFailed:
        code = str(data.get("failCode") or "") or None
        message = str(data.get("failMsg") or "") or "the task failed"
        text = f"{self.name}: {message}"
        if looks_like_content_rejection(message):  # Kie documents no failCode for it
            return ContentRejected(text, code=code or "content")
        return TaskFailed(text, code=code or "fail")

    def upload_url(self, path: str) -> str:
        """Where the upload API lives: Kie's separate host."""
        base = self.settings.extra_urls.get("upload") or self.extra_url_defaults["upload"]
        return f"{base.rstrip('/')}{path}"

    async def _reference_url(self, ref: Reference, key: str) -> str:
        """The URL Kie fetches a reference from; local files are uploaded once per content."""
        if ref.data is None:
            if not ref.is_url:
                raise LimitExceeded(f"{self.name}: reference {ref.uri!r} has no content")
            return ref.uri
        digest = hashlib.sha256(ref.data).hexdigest()
        lock = self._upload_locks.setdefault(digest, asyncio.Lock())
        async with lock:  # concurrent cells with the same product photo wait for one upload
            cached = self._uploads.get(digest)
            if cached is not None and time.monotonic() - cached[1] < UPLOAD_REUSE_S:
                return cached[0]
            url = await self._upload(ref, digest, key)
            self._uploads[digest] = (url, time.monotonic())
            return url

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


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _json_field(value: Any) -> Any:
    """`resultJson` and `param` are JSON strings (§4.3); tolerate objects and blanks."""
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else None
        except ValueError:
            return None
    return value
