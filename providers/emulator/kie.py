"""Kie.ai emulator: `POST /api/v1/jobs/createTask`, `GET /api/v1/jobs/recordInfo` and the
file upload API on its separate host (mounted by the hub under `/kie-upload`).

Built from seeds/kie.txt (S3) and protocols.md §4. Kie answers HTTP 200 for almost everything
and puts the real status in the body's `code` (401 bad key, 422 validation, 429 rate limit,
...); the emulator does the same. `ApikleyEmulator` subclasses this with other constants.

A recordInfo for an unknown or expired task is a reading of protocols.md §11 (`KieReadings`,
set through `configure`): `unknown_task="code_422"` (the default, `{"code": 422, "msg":
"recordInfo is null", "data": null}`) or "data_null" (a `code: 200` envelope with `data:
null`). `record_ttl_s` makes a task unknown that long after its create (an expired record).

A record's times (S3 "Response Parameters"): `createTime` when the task was created,
`completeTime` when it ended, `costTime` (milliseconds, S3) how long it ran: the task's
`latency_s` less the `queue_s` it waited. S3 gives no unit for the timestamps; its example
(`1757584164490`) is in milliseconds, the default here; `timestamps="s"` serves whole
seconds instead (`TASK_TIMES` reading "seconds").
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, ClassVar

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from nbp.providers.emulator.core import (
    TASK_TIMES,
    UNKNOWN_TASK,
    FaultConfig,
    ProviderEmulator,
    Readings,
    RemoteTask,
    choice,
    proxy_error,
)
from nbp.providers.emulator.hub import TEST_CREDENTIALS

# -- Kie's documented facts (S3 = seeds/kie.txt "input Object Parameters", protocols.md §4) --

MODEL_ID = "nano-banana-pro"
KIE_ASPECT_RATIOS: tuple[str, ...] = (  # S3 aspect_ratio options, default 1:1
    "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9", "auto",
)
KIE_RESOLUTIONS: tuple[str, ...] = ("1K", "2K", "4K")  # S3 resolution options, default 1K
KIE_OUTPUT_FORMATS: tuple[str, ...] = ("png", "jpg")  # S3 output_format options, default png
MAX_IMAGE_INPUTS = 8  # S3 image_input "supports up to 8 images"
# S3 error table (protocols.md §4.4): the codes the body may carry.
KIE_BODY_CODES: frozenset[int] = frozenset({200, 400, 401, 402, 404, 422, 429, 500})
# Credits per image (protocols.md §4.8, 1 credit = $0.005).
KIE_CREDITS: dict[str, int] = {"1K": 18, "2K": 18, "4K": 24}

AUTH_MESSAGE = "You do not have access permissions"  # protocols.md §4.1, answered with HTTP 200
# Both hosts sit behind Cloudflare, whose refusal is a bare 403 "error code: 1010" (§4.1 [I]).
CLOUDFLARE_403 = "error code: 1010"
RATE_MESSAGE = "The frequency of your requests is too high; this request was not queued"
UPLOAD_OK_MESSAGE = "File uploaded successfully"
NO_RECORD_MESSAGE = "recordInfo is null"  # protocols.md §4.3 [I KS live]
UNKNOWN_TASK_READINGS: tuple[str, ...] = ("code_422", "data_null")  # protocols.md §11
TIMESTAMP_UNITS: tuple[str, ...] = ("ms", "s")  # S3 states none; its example is in ms


@dataclass
class KieReadings:
    """Which reading of protocols.md §11 the emulator serves (see the module docstring)."""

    unknown_task: str = choice("code_422", UNKNOWN_TASK_READINGS)
    record_ttl_s: float | None = None  # None: records never expire
    timestamps: str = choice("ms", TIMESTAMP_UNITS)  # createTime, completeTime, updateTime


@dataclass(frozen=True)
class Upload:
    """One file received by the upload API (tests count these)."""

    file_name: str
    file_path: str
    size: int
    download_url: str


class KieEmulator(ProviderEmulator):
    """Kie's market API for `nano-banana-pro`, strict about what the real API rejects.

    Test knob beyond `FaultConfig`: `force_code(code, msg)` makes every create answer that
    body code (HTTP 200) without creating anything, e.g. 402 for an empty account.
    """

    name = "kie"
    max_prompt_chars: ClassVar[int] = 20000          # S3: prompt Max Length 20000
    body_codes: ClassVar[frozenset[int]] = KIE_BODY_CODES
    bad_json_code: ClassVar[int] = 400               # S3: 400 "Invalid request parameters"
    record_message_key: ClassVar[str] = "msg"        # S3's recordInfo example uses `msg`
    credits: ClassVar[Mapping[str, int] | None] = KIE_CREDITS
    upload_mount: ClassVar[str] = "/kie-upload"      # where the hub serves the upload host
    READINGS: ClassVar[Readings] = {
        UNKNOWN_TASK: {reading.replace("_", "-"): {"unknown_task": reading}
                       for reading in UNKNOWN_TASK_READINGS},
        TASK_TIMES: {"milliseconds": {"timestamps": "ms"}, "seconds": {"timestamps": "s"}},
    }

    def __init__(self, config: FaultConfig | None = None, *, api_key: str | None = None) -> None:
        default_key = TEST_CREDENTIALS[f"{self.name.upper()}_API_KEY"]
        super().__init__(config, api_key=api_key or default_key)
        self.uploads: list[Upload] = []
        self.forced: tuple[int, str] | None = None
        self._last_id_ms = 0
        self.readings = KieReadings()

    def switches(self) -> Sequence[Any]:
        return (self.readings,)

    def reset(self) -> None:
        super().reset()
        self.uploads.clear()
        self.forced = None
        self.readings = KieReadings()

    def force_code(self, code: int | None, msg: str = "forced by test") -> None:
        """Answer every create with body `code` (None restores normal service)."""
        if code is not None and code not in self.body_codes:
            raise ValueError(f"{self.name} does not document body code {code}")
        self.forced = None if code is None else (code, msg)

    # -- routing ----------------------------------------------------------------------

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/api/v1/jobs/createTask", self.create_task, methods=["POST"]),
            Route("/api/v1/jobs/recordInfo", self.record_info, methods=["GET"]),
        ]

    def upload_routes(self) -> list[BaseRoute]:
        """The file upload API (protocols.md §4.6), relative to the upload host."""
        return [
            Route("/api/file-stream-upload", self.stream_upload, methods=["POST"]),
            Route("/api/file-base64-upload", self.base64_upload, methods=["POST"]),
            Route("/api/file-url-upload", self.url_upload, methods=["POST"]),
        ]

    def extra_mounts(self) -> dict[str, Sequence[BaseRoute]]:
        return {self.upload_mount: self.upload_routes()}

    def upload_base_url(self) -> str:
        """Public URL of the upload host (tests)."""
        return f"{self.hub.url}{self.upload_mount}"

    # -- envelope helpers -------------------------------------------------------------

    def envelope(
        self, code: int, msg: str, data: Any = None, *, key: str = "msg", **extra: Any
    ) -> JSONResponse:
        """Kie's answer shape: always HTTP 200, the status in the body."""
        return JSONResponse({"code": code, key: msg, "data": data, **extra})

    def denied(self, request: Request) -> Response | None:
        """The 401 envelope when the Bearer key is missing or wrong, else None."""
        return None if self.accepts(self.bearer(request)) else self.envelope(401, AUTH_MESSAGE)

    @staticmethod
    def bearer(request: Request) -> str | None:
        """The account of a request: its Bearer key."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    def server_error(self) -> Response:
        """A 5xx in one of the shapes seen in front of Kie: a JSON 500, the 200 envelope
        with code 500, or a bare 503 page from the CDN."""
        if self.chance(1 / 3):
            return JSONResponse({"code": 500, "msg": "Server Error", "data": None}, 500)
        if self.chance(0.5):
            return self.envelope(500, "Internal server error")
        return Response("<html><body>503 Service Unavailable</body></html>", 503,
                        media_type="text/html")

    def fault_response(self, status: int) -> Response:
        """Cloudflare's answers in front of Kie (§4.1): the bare 403 "error code: 1010" and
        its 502/503/504 pages; a 500 from Kie itself is its JSON with HTTP 500."""
        if status == 403:
            return Response(CLOUDFLARE_403, 403, media_type="text/plain")
        if status == 500:
            return JSONResponse({"code": 500, "msg": "Server Error", "data": None}, 500)
        return proxy_error(status, server="cloudflare")

    # -- createTask -------------------------------------------------------------------

    async def create_task(self, request: Request) -> Response:
        self.log_request(request)
        if (answer := self.denied(request)) is not None:
            return answer
        if self.chance(self.config.submit_5xx_prob):
            return self.server_error()
        if self.forced is not None:
            return self.envelope(*self.forced)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self.envelope(self.bad_json_code, "Request body is not valid JSON")
        problem = self.create_problem(body)
        if problem is not None:
            return self.envelope(422, problem)
        # Kie documents 20 creates / 10 s; excess is rejected, not queued (§4.5). Kie
        # documents no concurrency rejection, so `max_concurrency` is not emulated.
        account = self.bearer(request)
        if not self.admit_create(account):
            return self.envelope(429, RATE_MESSAGE)
        task = self.start_task(body, account)
        if (fault := self.created_fault()) is not None:
            return fault
        created = {"code": 200, "msg": "success", "data": {"taskId": task.task_id}}
        if self.chance(self.config.drop_after_create_prob):
            return self.dropped_connection(json.dumps(created).encode())
        return JSONResponse(created)

    def create_problem(self, body: Any) -> str | None:
        """What the API's validation would say about a create body (None when valid)."""
        if not isinstance(body, dict):
            return "Request body must be a JSON object"
        if body.get("model") != MODEL_ID:
            return f"model must be {MODEL_ID!r}"
        callback = body.get("callBackUrl")
        if callback is not None and not _is_http_url(callback):
            return "callBackUrl must be an http(s) URL"
        inp = body.get("input")
        if not isinstance(inp, dict):
            return "input is required and must be an object"
        prompt = inp.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return "input.prompt is required"
        if len(prompt) > self.max_prompt_chars:
            return f"input.prompt must be at most {self.max_prompt_chars} characters"
        images = inp.get("image_input", [])
        if not isinstance(images, list):
            return "input.image_input must be an array of URLs"
        if len(images) > MAX_IMAGE_INPUTS:
            return f"input.image_input supports at most {MAX_IMAGE_INPUTS} images"
        if not all(_is_http_url(url) for url in images):
            return "input.image_input items must be http(s) URLs of uploaded files"
        for field, allowed in (
            ("aspect_ratio", KIE_ASPECT_RATIOS),
            ("resolution", KIE_RESOLUTIONS),
            ("output_format", KIE_OUTPUT_FORMATS),
        ):
            if field in inp and inp[field] not in allowed:
                return f"input.{field} must be one of: {', '.join(allowed)}"
        return None

    def start_task(self, body: dict[str, Any], account: str | None = None) -> RemoteTask:
        inp = body["input"]
        ratio = inp.get("aspect_ratio", "1:1")  # S3 defaults
        return self.new_task(
            self.make_task_id(),
            prompt=inp["prompt"],
            # "auto" follows the reference image upstream; the emulator cannot look, so 1:1.
            aspect_ratio="1:1" if ratio == "auto" else ratio,
            resolution=inp.get("resolution", "1K"),
            output_format=inp.get("output_format", "png"),
            body=body,
            references=list(inp.get("image_input", [])),
            account=account,
        )

    def make_task_id(self) -> str:
        """32 hex characters, like S3's (masked) example and Kie callbacks."""
        return uuid.uuid4().hex

    def unique_ms(self) -> int:
        """A millisecond timestamp that never repeats within this emulator."""
        with self._lock:
            self._last_id_ms = max(int(time.time() * 1000), self._last_id_ms + 1)
            return self._last_id_ms

    # -- recordInfo -------------------------------------------------------------------

    async def record_info(self, request: Request) -> Response:
        self.log_request(request)
        if (fault := self.status_fault()) is not None:
            return fault
        if (answer := self.denied(request)) is not None:
            return answer
        if self.chance(self.config.poll_5xx_prob):
            return self.server_error()
        task_id = request.query_params.get("taskId", "")
        task = self.task_of(task_id, self.bearer(request)) if task_id else None
        ttl = self.readings.record_ttl_s
        if task is None or (ttl is not None and time.time() - task.created >= ttl):
            return self.no_record()
        return self.envelope(200, "success", self.record(task), key=self.record_message_key)

    def no_record(self) -> Response:
        """An unknown or expired task, as the `unknown_task` reading answers it: never 404."""
        if self.readings.unknown_task == "data_null":
            return self.envelope(200, "success", None, key=self.record_message_key)
        return self.envelope(422, NO_RECORD_MESSAGE, key=self.record_message_key)

    def record(self, task: RemoteTask) -> dict[str, Any]:
        """The `data` object of recordInfo: `param` and `resultJson` are JSON strings."""
        now = time.time()
        record: dict[str, Any] = {
            "taskId": task.task_id,
            "model": MODEL_ID,
            "state": self.state(task, now),
            "param": json.dumps(task.body, ensure_ascii=False),
            "resultJson": "",
            "failCode": "",
            "failMsg": "",
            "costTime": None,
            "completeTime": None,
            "createTime": self.timestamp(task.created),
            "updateTime": self.timestamp(now),
        }
        if task.phase(now) != "done":
            return record
        record.update(costTime=int((task.ended - task.started) * 1000),
                      completeTime=self.timestamp(task.ended),
                      updateTime=self.timestamp(task.ended))
        if task.outcome == "success":
            urls = [self.result_url(task)]
            record["resultJson"] = json.dumps({"resultUrls": urls})
            if self.credits is not None:
                record["creditsConsumed"] = self.credits[task.resolution]
        elif task.outcome == "noimage":
            record["resultJson"] = json.dumps({"resultUrls": []})
        elif task.outcome == "content":
            # Kie documents no moderation code; rejections surface as state "fail" with
            # failCode/failMsg (protocols.md §4.3). We use a 400-style failCode and a
            # content-policy message: the message is what identifies the kind.
            record.update(
                failCode="400",
                failMsg="Your request was flagged by content moderation as violating "
                "the content policy. Please modify the prompt or images and try again.",
            )
        else:
            # The generic failure of Kie's callback examples.
            record.update(failCode="500", failMsg="Internal server error")
        return record

    def timestamp(self, when: float) -> int:
        """An epoch time as the `timestamps` reading writes it: milliseconds or seconds."""
        return int(when * 1000) if self.readings.timestamps == "ms" else int(when)

    def state(self, task: RemoteTask, now: float) -> str:
        """waiting -> queuing -> generating -> success | fail (protocols.md §4.3)."""
        phase = task.phase(now)
        if phase == "queued":
            return "waiting" if now - task.created < task.queued_s / 2 else "queuing"
        if phase == "running":
            return "generating"
        return "fail" if task.outcome in ("fail", "content") else "success"

    # -- uploads ----------------------------------------------------------------------

    async def stream_upload(self, request: Request) -> Response:
        """multipart/form-data: `file`, optional `uploadPath`, `fileName`."""
        self.log_request(request)
        if (answer := self.denied(request)) is not None:
            return answer
        try:
            parts = parse_multipart(request.headers.get("Content-Type", ""), await request.body())
        except ValueError as exc:
            return self.upload_error(400, str(exc))
        if "file" not in parts:
            return self.upload_error(400, "file is required")
        filename, data, mime = parts["file"]
        return self.store_upload(
            data, mime, _text(parts.get("uploadPath")), _text(parts.get("fileName")) or filename
        )

    async def base64_upload(self, request: Request) -> Response:
        """JSON `{base64Data (raw or data URL), uploadPath?, fileName?}`."""
        self.log_request(request)
        if (answer := self.denied(request)) is not None:
            return answer
        body = await _json_object(request)
        raw = body.get("base64Data") if body is not None else None
        if body is None or not isinstance(raw, str) or not raw:
            return self.upload_error(400, "base64Data is required")
        mime = ""
        if raw.startswith("data:"):
            header, _, raw = raw.partition(",")
            mime = header[5:].split(";", 1)[0]
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            return self.upload_error(400, "base64Data is not valid base64")
        return self.store_upload(data, mime, body.get("uploadPath"), body.get("fileName"))

    async def url_upload(self, request: Request) -> Response:
        """JSON `{fileUrl, uploadPath?, fileName?}`: the server fetches the file (30 s)."""
        self.log_request(request)
        if (answer := self.denied(request)) is not None:
            return answer
        body = await _json_object(request)
        url = body.get("fileUrl") if body is not None else None
        if body is None or not _is_http_url(url):
            return self.upload_error(400, "fileUrl must be an http(s) URL")
        try:
            async with httpx.AsyncClient(timeout=30.0) as client:
                fetched = await client.get(str(url))
            fetched.raise_for_status()
        except httpx.HTTPError:
            return self.upload_error(500, "Failed to download file from fileUrl")
        name = body.get("fileName") or str(url).rstrip("/").rsplit("/", 1)[-1]
        mime = fetched.headers.get("Content-Type", "").split(";", 1)[0]
        return self.store_upload(fetched.content, mime, body.get("uploadPath"), name)

    def store_upload(
        self, data: bytes, mime: str, upload_path: Any, file_name: Any
    ) -> Response:
        """Keep the file in the hub's store; the same path and name overwrite (§4.6)."""
        if not data:
            return self.upload_error(400, "file is empty")
        name = str(file_name) if file_name else f"{uuid.uuid4().hex}{_extension(data)}"
        folder = str(upload_path).strip("/") if upload_path else "uploads"
        key = f"{self.name}-upload-{_safe(folder)}-{_safe(name)}"
        mime = mime or _sniff_mime(data)
        self.hub.files.put(key, data, mime)
        url = f"{self.hub.url}/files/{key}"
        self.uploads.append(Upload(name, f"{folder}/{name}", len(data), url))
        data_out = {
            "success": True,
            "fileName": name,
            "filePath": f"{folder}/{name}",
            "downloadUrl": url,
            "fileSize": len(data),
            "mimeType": mime,
            "uploadedAt": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        return self.envelope(200, UPLOAD_OK_MESSAGE, data_out, success=True)

    def upload_error(self, code: int, msg: str) -> Response:
        return self.envelope(code, msg, success=False)


# -- helpers ------------------------------------------------------------------------------


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes, str]]:
    """Form fields by name -> (filename, bytes, mime). Uses the stdlib parser, so the
    emulator needs no python-multipart."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise ValueError("Content-Type must be multipart/form-data")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise ValueError("malformed multipart body")
    fields: dict[str, tuple[str | None, bytes, str]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = (part.get_filename(), payload, part.get_content_type())
    return fields


async def _json_object(request: Request) -> dict[str, Any] | None:
    try:
        body = json.loads(await request.body())
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _text(field: tuple[str | None, bytes, str] | None) -> str | None:
    return field[1].decode("utf-8", "replace") if field is not None else None


def _is_http_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://")) and len(value) > 8


def _sniff_mime(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _extension(data: bytes) -> str:
    return {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}.get(
        _sniff_mime(data), ""
    )


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
