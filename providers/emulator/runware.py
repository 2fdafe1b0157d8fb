"""Runware emulator: the task-array REST API for `google:4@2` (seeds/runware.txt = S2,
protocols.md §3 and §7, runware.ai/docs = RD), strict about what the real API rejects.

    POST /v1   [task, ...]   each task one of: authentication (first element only),
                             imageInference (sync | async), getResponse, imageUpload

Answers are `{"data": [...], "errors": [...]}`; each error is scoped to its task (`taskUUID`),
so a request's other tasks still answer (RD errors). HTTP status: 200 when any task produced
data or a generation failed; otherwise the status of the first refused task (400, 401, 404,
429, 503). Choices where the docs are silent, marked [I]:

- a create with a taskUUID the account already used never becomes a second billed task
  (RD: "must be unique per task"); how it is answered is a reading of protocols.md §11,
  switch `reused_uuid`: "duplicate" (400 `duplicateTaskUUID`, the default), "invalid" (400
  `invalidTaskUUID`, "already used") or "ack" (HTTP 200, the original task's ack again);
- a failed or refused generation, in getResponse (and a sync create's answer), is a reading
  of §11 too, switch `failure`: "status" (the default; HTTP 200, an `errors[]` item with
  `status: "error"`, RD task-responses) or "code" (HTTP 400, an `errors[]` item with the
  taskUUID and a code, no `status`). Its code is `fail_code` (default `providerError`) for a
  failure and `content_code` (default `invalidProviderContent`, the code public clients
  match for Runware's Google models; `contentModerated` seen too) for a content rejection;
  any string may stand for a code never seen before;
- rate-limit excess and `max_concurrency` are 429 `queueCapacityExceeded` (RD rate-limits:
  429 = queue capacity), without Retry-After (none documented);
- getResponse for an unknown taskUUID is 404 `taskNotFound`; it also answers for sync tasks.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import random
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from nbp.providers.emulator.core import (
    PIXEL_SIZES,
    POLL_FAILURE,
    RESENT_CREATE,
    FaultConfig,
    ProviderEmulator,
    Readings,
    RemoteTask,
    choice,
    proxy_error,
)
from nbp.providers.emulator.hub import TEST_CREDENTIALS

# -- Runware's documented facts (S2 = seeds/runware.txt, protocols.md §3, RD = runware.ai/docs) --

MODEL_ID = "google:4@2"                        # S2 model
MIN_PROMPT_CHARS, MAX_PROMPT_CHARS = 3, 45_000  # S2 positivePrompt min 3 max 45000
MAX_REFERENCES = 14                            # S2 inputs.referenceImages max items 14
DELIVERY_METHODS: tuple[str, ...] = ("sync", "async")  # S2 deliveryMethod, default sync
# S2 outputFormat (default JPG) -> the file extension written.
OUTPUT_FORMATS: dict[str, str] = {"JPG": "jpg", "PNG": "png", "WEBP": "webp"}
# S2 providerSettings.google.safetyTolerance: "5 values", default "none", "off" = Google's
# defaults. The other three are not named anywhere stored [I]: Google's HarmBlockThreshold
# levels (BLOCK_LOW_AND_ABOVE / MEDIUM_AND_ABOVE / ONLY_HIGH) read as low / medium / high.
SAFETY_TOLERANCES: tuple[str, ...] = ("none", "low", "medium", "high", "off")
UUID_V4 = re.compile(  # S2 taskUUID "UUID v4"; anything else is 400 invalidTaskUUID (§3.2)
    r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.IGNORECASE
)
PRICES_USD: dict[str, float] = {"1K": 0.138, "2K": 0.138, "4K": 0.244}  # §3.8 [C RD]
PRICE_PER_REFERENCE_USD = 0.0011  # §3.8 [I]: S2 shows 0.1424 for 2K with 4 references
# Runware validates width x height against its own list (RD model page, protocols.md §7): the
# model's table except that it lists 1K 21:9 as 1548x672, and 4K 3:2 as 5096x3392 besides
# 5056x3392 (typos of Google's sizes, but what Runware accepts). The image is Google's size.
SIZE_BY_DIMENSIONS: dict[tuple[int, int], tuple[str, str]] = {
    **{dims: key for key, dims in PIXEL_SIZES.items() if key != ("21:9", "1K")},
    (1548, 672): ("21:9", "1K"),
    (5096, 3392): ("3:2", "4K"),
}

DOCS = "https://runware.ai/docs/models/google-nano-banana-pro"
INFERENCE_KEYS = frozenset({
    "taskType", "taskUUID", "model", "positivePrompt", "width", "height", "resolution",
    "inputs", "outputType", "outputFormat", "outputQuality", "numberResults", "seed",
    "includeCost", "deliveryMethod", "ttl", "webhookURL", "uploadEndpoint", "safety",
    "settings", "providerSettings",
})  # S2; anything else (steps, CFGScale, top-level referenceImages) -> unsupportedParameter
OUTPUT_TYPES = ("URL", "base64Data", "dataURI")       # RP types.py IOutputType
# Resolution casing is an open question (§3.2: older docs show 1k|2k|4k): accept both.
RESOLUTION_VALUES = {"1K": "1K", "2K": "2K", "4K": "4K", "1k": "1K", "2k": "2K", "4k": "4K"}
REFERENCE_MIMES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}  # RD upload
FAIL_MESSAGE = "The external provider returned an error while generating."
CONTENT_MESSAGE = (
    "Invalid content detected. The provider refused the request under its content policy."
)
FAILURE_READINGS: tuple[str, ...] = ("status", "code")          # protocols.md §11
REUSED_UUID_READINGS: tuple[str, ...] = ("duplicate", "invalid", "ack")  # protocols.md §11
UNSEEN_CODE = "generationInterrupted"  # stands for a code no client has seen before


@dataclass
class RunwareReadings:
    """Which reading of protocols.md §11 the emulator serves (see the module docstring)."""

    failure: str = choice("status", FAILURE_READINGS)
    fail_code: str = "providerError"
    content_code: str = "invalidProviderContent"
    reused_uuid: str = choice("duplicate", REUSED_UUID_READINGS)


@dataclass
class Refusal(Exception):
    """One task refused: an `errors[]` item and the HTTP status of its category."""

    status: int
    code: str
    message: str
    parameter: str | None = None

    def item(self, task: Mapping[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.parameter:
            body["parameter"] = self.parameter
        if isinstance(task.get("taskType"), str):
            body["taskType"] = task["taskType"]
        if isinstance(task.get("taskUUID"), str):
            body["taskUUID"] = task["taskUUID"]
        body["documentation"] = DOCS
        return body


@dataclass
class _Answer:
    """What one task of the array contributes to the answer."""

    data: list[dict[str, Any]]
    failures: list[dict[str, Any]] = field(default_factory=list)  # failed generations
    drop: bool = False              # the task exists; the connection is cut before the answer
    fault: Response | None = None   # the task exists; the request is answered with this


def invalid(parameter: str, message: str, status: int = 400) -> Refusal:
    """Runware's naming: `invalid` + the parameter (`invalidWidth`, `invalidTaskUUID`)."""
    return Refusal(status, f"invalid{parameter[0].upper()}{parameter[1:]}", message, parameter)


class RunwareEmulator(ProviderEmulator):
    """Runware on loopback. `uploads` maps imageUUID -> served URL; `duplicates` counts
    creates refused for a reused taskUUID (tests prove nothing was paid twice)."""

    name = "runware"
    base_path = "/v1"  # documented base https://api.runware.ai/v1
    READINGS: ClassVar[Readings] = {
        POLL_FAILURE: {
            "status-error-200": {"failure": "status"},
            "status-error-200-unseen-code": {"failure": "status", "fail_code": UNSEEN_CODE},
            "code-400": {"failure": "code"},
            "code-400-content-moderated": {"failure": "code",
                                           "content_code": "contentModerated"},
            "code-400-unseen-code": {"failure": "code", "fail_code": UNSEEN_CODE},
        },
        RESENT_CREATE: {reading: {"reused_uuid": reading} for reading in REUSED_UUID_READINGS},
    }

    def __init__(
        self,
        config: FaultConfig | None = None,
        *,
        api_key: str = TEST_CREDENTIALS["RUNWARE_API_KEY"],
    ) -> None:
        super().__init__(config, api_key=api_key)
        self.uploads: dict[str, str] = {}
        self.used_task_uuids: set[str] = set()
        self.duplicates = 0
        self.readings = RunwareReadings()

    def switches(self) -> Sequence[Any]:
        return (self.readings,)

    def reset(self) -> None:
        super().reset()
        self.uploads.clear()
        self.used_task_uuids.clear()
        self.duplicates = 0
        self.readings = RunwareReadings()

    def routes(self) -> Sequence[BaseRoute]:
        return [Route("/v1", self.handle, methods=["POST"])]

    # -- the one endpoint -------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        self.log_request(request)
        try:
            tasks = json.loads(await request.body())
        except ValueError:
            return reply(400, [], [invalid("requestBody", "Body must be valid JSON").item({})])
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
            refusal = invalid("requestBody", "Body must be a non-empty JSON array of tasks")
            return reply(400, [], [refusal.item({})])
        data: list[dict[str, Any]] = []
        if tasks[0].get("taskType") == "authentication":
            first, tasks = tasks[0], tasks[1:]
            authorized = self.accepts(first.get("apiKey"))
            session = {"taskType": "authentication", "connectionSessionUUID": str(uuid.uuid4())}
        else:
            authorized = self.accepts(_bearer(request))
            session = None
        if not authorized:
            refusal = Refusal(401, "invalidApiKey", "Invalid API key. Get one at "
                              "https://my.runware.ai/signup", "apiKey")
            return reply(401, [], [refusal.item({"taskType": "authentication"})])
        kinds = {t.get("taskType") for t in tasks}
        if "getResponse" in kinds and (fault := self.status_fault()) is not None:
            return fault
        if ("imageInference" in kinds and self.chance(self.config.submit_5xx_prob)) or (
            "getResponse" in kinds and self.chance(self.config.poll_5xx_prob)
        ):
            refusal = Refusal(503, "serviceUnavailable", "Service temporarily unavailable.")
            return reply(503, [], [refusal.item({})])
        return await self._run_all(tasks, session, data)

    async def _run_all(
        self, tasks: list[dict[str, Any]], session: dict[str, Any] | None,
        data: list[dict[str, Any]],
    ) -> Response:
        errors: list[dict[str, Any]] = []
        refused: list[int] = []
        drop = False
        fault: Response | None = None
        for task in tasks:
            try:
                answer = await self._run(task)
            except Refusal as refusal:
                errors.append(refusal.item(task))
                refused.append(refusal.status)
                continue
            data.extend(answer.data)
            errors.extend(answer.failures)
            drop = drop or answer.drop
            fault = fault or answer.fault
        if fault is not None:  # the tasks exist (and are billed); the answer is an error
            return fault
        answered = bool(data) or len(errors) > len(refused)
        status = 200 if answered or not refused else refused[0]
        if session is not None:
            data.insert(0, session)
        if drop:  # the task exists (and is billed); the answer never arrives
            return self.dropped_connection(json.dumps(envelope(data, errors)).encode())
        return reply(status, data, errors)

    async def _run(self, task: dict[str, Any]) -> _Answer:
        """What one task of the array answers."""
        kind = task.get("taskType")
        if kind == "imageInference":
            return await self._inference(task)
        if kind == "getResponse":
            return _Answer(*self._get_response(task))
        if kind == "imageUpload":
            return _Answer([self._upload(task)])
        if kind == "authentication":
            raise invalid("taskType", "authentication must be the first task of the array")
        raise invalid("taskType", f"Unsupported taskType {kind!r}")

    # -- imageInference ---------------------------------------------------------------

    async def _inference(self, task: dict[str, Any]) -> _Answer:
        reused = task.get("taskUUID")
        if self.readings.reused_uuid == "ack" and reused in self.used_task_uuids:
            self.duplicates += 1  # answered as the task it already is: nothing new is made
            return _Answer([{"taskType": "imageInference", "taskUUID": reused}])
        task_uuid = self._claim_uuid(task, validate=lambda: validate_inference(task))
        try:
            ratio, resolution = size_of(task)
            given = (task.get("inputs") or {}).get("referenceImages", [])
            references = [self._reference(value) for value in given]
            if self.over_concurrency() or not self.admit_create():
                raise Refusal(429, "queueCapacityExceeded",
                              "Queue capacity exceeded. Retry with exponential backoff.")
        except Refusal:
            self.used_task_uuids.discard(task_uuid)  # a refused task does not use its UUID
            raise
        remote = self.new_task(
            task_uuid,
            prompt=task["positivePrompt"],
            aspect_ratio=ratio,
            resolution=resolution,
            output_format=OUTPUT_FORMATS[task.get("outputFormat", "JPG").upper()],
            body=task,
            references=references,
            idempotency_key=task_uuid,  # Runware's dedupe key is the client's taskUUID
        )
        count = task.get("numberResults", 1)
        remote.extra.update(
            seed=task.get("seed", random.randrange(2**32)),
            image_uuids=[str(uuid.uuid4()) for _ in range(count)],
            include_cost=task.get("includeCost", False) is True,
            output_type=task.get("outputType", "URL"),
        )
        # The task exists (and is billed) from here on; a drop or a 5xx loses the answer,
        # not the task.
        fault = self.created_fault()
        drop = fault is None and self.chance(self.config.drop_after_create_prob)
        ack = {"taskType": "imageInference", "taskUUID": task_uuid}
        if fault is not None or drop or task.get("deliveryMethod", "sync") == "async":
            return _Answer([ack], drop=drop, fault=fault)
        await asyncio.sleep(max(0.0, remote.created + remote.latency_s - time.time()))
        return _Answer(*self.answered_items(remote, sync=True))

    def fault_response(self, status: int) -> Response:
        """Runware's own answers for 503 and 500 (`errors[]`, RD platform/errors: 503 is
        "temporarily unavailable"; 500's code is not documented [I]); 403, 502 and 504 from
        the proxy in front of it."""
        if status == 503:
            refusal = Refusal(503, "serviceUnavailable", "Service temporarily unavailable.")
            return reply(503, [], [refusal.item({})])
        if status == 500:
            refusal = Refusal(500, "internalServerError", "Internal server error.")
            return reply(500, [], [refusal.item({})])
        return proxy_error(status)

    def _claim_uuid(self, task: Mapping[str, Any], validate: Any) -> str:
        task_uuid = task.get("taskUUID")
        if not isinstance(task_uuid, str) or not UUID_V4.match(task_uuid):
            raise invalid("taskUUID", "Invalid value for taskUUID: it must be a UUID v4.")
        if task_uuid in self.used_task_uuids:
            self.duplicates += 1
            if self.readings.reused_uuid == "invalid":
                raise invalid("taskUUID", "Invalid value for taskUUID: this taskUUID was "
                              "already used; it must be unique per task.")
            raise Refusal(400, "duplicateTaskUUID",
                          "A task with this taskUUID was already sent; taskUUID must be "
                          "unique per task.", "taskUUID")
        validate()
        self.used_task_uuids.add(task_uuid)
        return task_uuid

    def answered_items(
        self, task: RemoteTask, *, sync: bool = False
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """`task_items`, as the `failure` reading answers a failed generation: under "code"
        the whole answer is HTTP 400 with an item of code and taskUUID (a `Refusal`)."""
        if self.readings.failure == "code" and task.phase() not in ("queued", "running") \
                and task.outcome in ("fail", "content"):
            code, message = self._failure(task)
            raise Refusal(400, code, message)
        return self.task_items(task, sync=sync)

    def _failure(self, task: RemoteTask) -> tuple[str, str]:
        if task.outcome == "content":
            return self.readings.content_code, CONTENT_MESSAGE
        return self.readings.fail_code, FAIL_MESSAGE

    def task_items(
        self, task: RemoteTask, *, sync: bool = False
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The items for where the clock puts `task` (RD task-responses): data items while
        processing or after success, a `status: error` item in errors after a failure."""
        base = {"taskType": "imageInference", "taskUUID": task.task_id}
        if task.phase() in ("queued", "running"):
            return [{**base, "status": "processing"}], []
        if task.outcome in ("fail", "content"):
            code, message = self._failure(task)
            return [], [{**base, "status": "error", "code": code, "message": message,
                         "documentation": DOCS}]
        items = []
        for index, image_uuid in enumerate(task.extra["image_uuids"]):
            item: dict[str, Any] = {**base, "imageUUID": image_uuid, "seed": task.extra["seed"]}
            if not sync:
                item["status"] = "success"
            if task.outcome == "success":
                item.update(self._output(task, index))
            if task.extra["include_cost"]:
                refs = len(task.references) * PRICE_PER_REFERENCE_USD
                item["cost"] = round(PRICES_USD[task.resolution] + refs, 4)
            items.append(item)
        return items, []

    def _output(self, task: RemoteTask, index: int) -> dict[str, str]:
        url = self.result_url(task, index)
        kind = task.extra["output_type"]
        if kind == "URL":
            return {"imageURL": url}
        data, mime = self.hub.files.get(url.rsplit("/files/", 1)[1])
        encoded = base64.b64encode(data).decode("ascii")
        if kind == "base64Data":
            return {"imageBase64Data": encoded}
        return {"imageDataURI": f"data:{mime};base64,{encoded}"}

    # -- getResponse and imageUpload ----------------------------------------------------

    def _get_response(
        self, task: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        unknown = sorted(set(task) - {"taskType", "taskUUID", "numberResults"})
        if unknown:
            raise Refusal(400, "unsupportedParameter",
                          f"Unsupported parameter(s): {', '.join(unknown)}", unknown[0])
        task_uuid = task.get("taskUUID")
        if not isinstance(task_uuid, str) or not UUID_V4.match(task_uuid):
            raise invalid("taskUUID", "Invalid value for taskUUID: it must be a UUID v4.")
        remote = self.tasks.get(task_uuid)
        if remote is None:
            raise Refusal(404, "taskNotFound", f"No task found with taskUUID {task_uuid}.",
                          "taskUUID")
        return self.answered_items(remote)

    def _upload(self, task: dict[str, Any]) -> dict[str, Any]:
        """imageUpload (§3.4): store the image, answer its reusable imageUUID."""
        def validate() -> None:
            unknown = sorted(set(task) - {"taskType", "taskUUID", "image"})
            if unknown:
                raise Refusal(400, "unsupportedParameter",
                              f"Unsupported parameter(s): {', '.join(unknown)}", unknown[0])
            if not isinstance(task.get("image"), str) or not task["image"]:
                raise invalid("image", "image is required: a data URI, base64 or URL")

        task_uuid = self._claim_uuid(task, validate)
        try:
            url = self._stored_image(task["image"], "image")
        except Refusal:
            self.used_task_uuids.discard(task_uuid)
            raise
        image_uuid = str(uuid.uuid4())
        self.uploads[image_uuid] = url
        return {"taskType": "imageUpload", "taskUUID": task_uuid,
                "imageUUID": image_uuid, "imageURL": url}

    def _reference(self, value: str) -> str:
        """A served URL for one referenceImages entry (as received, or as stored)."""
        if UUID_V4.match(value):
            if value not in self.uploads:
                raise invalid("referenceImages", f"Unknown imageUUID {value}")
            return self.uploads[value]
        return self._stored_image(value, "referenceImages")

    def _stored_image(self, value: str, parameter: str) -> str:
        """URLs pass as they are; data URIs and base64 are decoded, checked, stored."""
        if value.startswith(("http://", "https://")):
            return value
        payload = value.split(",", 1)[1] if value.startswith("data:") else value
        if value.startswith("data:") and ";base64," not in value[:100]:
            raise invalid(parameter, "Data URIs must be data:<mediaType>;base64,<data>")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise invalid(parameter, "Image is not a URL, data URI, base64 or imageUUID") from exc
        ext = sniff(data)
        if ext is None:
            raise invalid(parameter, "Supported image formats are PNG, JPG and WEBP")
        key = f"{self.name}-input-{hashlib.sha256(data).hexdigest()[:24]}.{ext}"
        self.hub.files.put(key, data, REFERENCE_MIMES[ext])
        return f"{self.hub.url}/files/{key}"


def validate_inference(task: Mapping[str, Any]) -> None:
    """What the real API refuses in an imageInference task for google:4@2 (S2, §3.2)."""
    unknown = sorted(set(task) - INFERENCE_KEYS)
    if unknown:
        raise Refusal(400, "unsupportedParameter",
                      f"Unsupported parameter(s) for {MODEL_ID}: {', '.join(unknown)}",
                      unknown[0])
    if task.get("model") != MODEL_ID:
        raise invalid("model", f"Invalid model {task.get('model')!r}")
    prompt = task.get("positivePrompt")
    if not isinstance(prompt, str) or not MIN_PROMPT_CHARS <= len(prompt) <= MAX_PROMPT_CHARS:
        raise invalid("positivePrompt", f"positivePrompt must be a string of "
                      f"{MIN_PROMPT_CHARS}-{MAX_PROMPT_CHARS} characters")
    _check_inputs(task.get("inputs"), "inputs" in task)
    size_of(task)
    checks: list[tuple[str, Any]] = [
        ("outputType", lambda v: v in OUTPUT_TYPES),
        ("outputFormat", lambda v: isinstance(v, str) and v.upper() in OUTPUT_FORMATS),
        ("outputQuality", lambda v: _int_in(v, 20, 99)),
        ("numberResults", lambda v: _int_in(v, 1, 20)),
        ("seed", lambda v: _int_in(v, 0, 2**63 - 1)),
        ("includeCost", lambda v: isinstance(v, bool)),
        ("deliveryMethod", lambda v: v in DELIVERY_METHODS),
        ("ttl", lambda v: _int_in(v, 60, 2**31)),
        ("webhookURL", lambda v: isinstance(v, str) and v.startswith(("http://", "https://"))),
        ("uploadEndpoint", lambda v: isinstance(v, str) and v.startswith(("http://", "https://"))),
    ]
    for key, ok in checks:
        if key in task and not ok(task[key]):
            raise invalid(key, f"Invalid value for {key}: {task[key]!r}")
    _check_object(task, "settings", {
        "systemPrompt": lambda v: isinstance(v, str) and 1 <= len(v) <= 50_000,
        "temperature": lambda v: _number_in(v, 0, 1),
        "topP": lambda v: _number_in(v, 0, 1),
    })
    _check_object(task, "safety", {
        "checkContent": lambda v: isinstance(v, bool), "mode": lambda v: v in ("none", "fast"),
    })
    settings = task.get("providerSettings", {})
    if not isinstance(settings, dict) or set(settings) - {"google"}:
        raise invalid("providerSettings", f"{MODEL_ID} takes providerSettings.google only")
    _check_object(settings, "google", {
        "safetyTolerance": lambda v: v in SAFETY_TOLERANCES,
        "webSearch": lambda v: isinstance(v, bool),
    }, prefix="providerSettings.")


def size_of(task: Mapping[str, Any]) -> tuple[str, str]:
    """(aspect ratio, resolution) a task asks for. width+height must be a listed pair,
    `resolution` excludes them; with only references the emulator draws 1:1."""
    has_dims = "width" in task or "height" in task
    if has_dims and "resolution" in task:
        raise Refusal(400, "conflictingParameters",
                      "resolution cannot be used with width/height", "resolution")
    if has_dims:
        if "width" not in task or "height" not in task:
            raise invalid("width" if "width" not in task else "height",
                          "width and height must be used together")
        found = SIZE_BY_DIMENSIONS.get((task["width"], task["height"]))
        if found is None or not all(_int_in(task[k], 1, 10**5) for k in ("width", "height")):
            raise Refusal(400, "unsupportedDimensions",
                          f"{task['width']}x{task['height']} is not a supported dimension "
                          f"combination for {MODEL_ID}", "width")
        return found
    if "resolution" in task:
        resolution = RESOLUTION_VALUES.get(task["resolution"])
        if resolution is None:
            raise invalid("resolution", "resolution must be one of 1K, 2K, 4K")
        return "1:1", resolution
    if not (task.get("inputs") or {}).get("referenceImages"):
        raise Refusal(400, "missingParameter", "Either provide inputs.referenceImages, or "
                      "specify width/height or resolution", "width")
    return "1:1", "1K"


def _check_inputs(inputs: Any, present: bool) -> None:
    if not present:
        return
    if not isinstance(inputs, dict) or set(inputs) - {"referenceImages"}:
        raise invalid("inputs", "inputs takes referenceImages only")
    refs = inputs.get("referenceImages")
    if not isinstance(refs, list) or not 1 <= len(refs) <= MAX_REFERENCES or not all(
        isinstance(r, str) and r for r in refs
    ):
        raise invalid("referenceImages",
                      f"inputs.referenceImages must be 1-{MAX_REFERENCES} strings")


def _check_object(
    parent: Mapping[str, Any], key: str, fields: Mapping[str, Any], *, prefix: str = ""
) -> None:
    if key not in parent:
        return
    value = parent[key]
    if not isinstance(value, dict):
        raise invalid(key, f"{prefix}{key} must be an object")
    for name, item in value.items():
        check = fields.get(name)
        if check is None:
            raise Refusal(400, "unsupportedParameter",
                          f"Unsupported parameter {prefix}{key}.{name}", f"{prefix}{key}.{name}")
        if not check(item):
            raise invalid(name, f"Invalid value for {prefix}{key}.{name}: {item!r}")


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _number_in(value: Any, low: float, high: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high


def sniff(data: bytes) -> str | None:
    """The image format from magic bytes: png | jpg | webp, else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def envelope(data: list[dict[str, Any]], errors: list[dict[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {"data": data}
    if errors:
        body["errors"] = errors
    return body


def reply(status: int, data: list[dict[str, Any]], errors: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse(envelope(data, errors), status_code=status)


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token if scheme == "Bearer" else None
