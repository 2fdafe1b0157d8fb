"""Google Gemini API emulator (`generativelanguage.googleapis.com`): generateContent for Nano
Banana Pro, the Files API's resumable upload and download, and the Batch API. Both adapters,
`gemini` and `gemini-batch`, talk to this one host (the hub mounts it once, under `/gemini`,
and `NBP_GEMINI_BASE_URL` points both at it).

Built from /work/shared/protocols-gemini.md field by field; each fact below carries the
section and the source tag of that file ([C] read in Google's docs or SDK source, [I]
inferred or seen elsewhere). Where the documentation is silent the emulator makes a choice
and says so ("emulator's choice").

Besides `FaultConfig` (latency_s is a generateContent's generation time and a batch's
turnaround; fail_prob fails a whole batch, or a generateContent with IMAGE_OTHER), test knobs:
`state_prefix` ("BATCH_STATE_" as on the wire, or the SDKs' "JOB_STATE_"), `batch_expiry_s`
(a batch whose turnaround is longer expires then), `max_page_size` (list pages), and prompt
markers beyond the shared ones: `[emulate:blocked]` (promptFeedback.blockReason) and
`[emulate:finish:REASON]` (that finishReason, no image). `[emulate:fail]` in a batch's display
name fails the batch; in a prompt it fails that request (generateContent: finishReason
IMAGE_OTHER; inside a batch: an `error` line).

`submit_5xx_prob` answers a generateContent 500 INTERNAL (nothing created). An overloaded
model is a reading of protocols.md §11 (`GeminiReadings`, set through `configure`):
`overload` = "unavailable" (503 UNAVAILABLE "The model is overloaded."), "high_demand" (429
RESOURCE_EXHAUSTED while quota remains) or "spend_cap" (429 RESOURCE_EXHAUSTED past the
billing account's 10-minute spend cap), each with a `google.rpc.RetryInfo` of
`overload_retry_s` seconds or without one (None); "none" (the default) serves normally.
No overload answer carries an image or creates (bills) anything.

The billing account's spend cap (§10 [C RL2]) is a rolling window over every key the
emulator accepts (extra keys share one billing account [I]): `configure(spend_cap_usd=10,
spend_cap_window_s=600)` (`SpendCap`) bills each accepted generateContent at its token cost
(§7) at the price of the tier that serves it (§10 [C OPT]: flex 50 % off, priority 75-100 %
more, `priority_price` "top" (the default, the dearest reading) or "bottom" of that range;
standard for priority served as standard) from its arrival until one window after its
answer, and answers a request that would take the window past the cap 429
RESOURCE_EXHAUSTED with RetryInfo, creating nothing (`billing.refusals` counts them). None
(the default): no cap.

Batch lifetimes (§6, §10; `BatchLifetimes`): `expire_after_s` expires every batch whose
turnaround is longer after that many seconds (default: `batch_expiry_s`, the documented
48 h); `expired_results` is a reading of what an expired batch holds: "none" (documented [C
BAT]: no results) or "partial" (the lines that ran before it expired, the first half, come
as a results file [I]); `results_gone` answers 404 NOT_FOUND for every results file (kept 6
weeks [C BAT2]); `failed_count_skew` misreports `batchStats.failedRequestCount` by that
much. A create's `batch.priority` (int64 [C REF]) is kept on the batch (`Batch.priority`)
and echoed in its metadata.

Model ids and service tiers (`GeminiServing`, switches of the same `configure`):
`retired_models` answers 404 NOT_FOUND for those ids as Google does for a shut-down model;
`serviceTier` is honoured and every answer names the tier that served in the
`x-gemini-service-tier` header; `flex` "shed_429" / "shed_503" sheds flex requests (nothing
made), `priority` "standard" serves priority as standard without a word but the header,
`tier_field` "unknown" refuses the field (400 INVALID_ARGUMENT naming it); `bare_503` makes
the image, then answers 503 with no body (a lost answer, not an overload).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import math
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from nbp.providers.emulator.core import (
    BOMB_SIZE,
    CONTENT_MARKER,
    FAIL_MARKER,
    IMAGE_MARKERS,
    NO_IMAGE_MARKER,
    OVERLOAD,
    CreateRecord,
    FaultConfig,
    FileBody,
    ProviderEmulator,
    Readings,
    RemoteTask,
    bomb_png,
    choice,
    oversize_body,
    picture_seed,
    pixel_size,
    proxy_error,
    render_image,
)
from nbp.providers.emulator.hub import TEST_CREDENTIALS

# -- Google's documented facts (protocols-gemini.md) ---------------------------------------------

MODELS: tuple[str, ...] = ("gemini-3-pro-image-preview", "gemini-3-pro-image")  # head [C IMG]
API_VERSIONS: tuple[str, ...] = ("v1beta", "v1")  # §1 [C IMG, BAT; C PY3 for v1]
KEY_HEADER = "x-goog-api-key"                      # §1 [C API]; `?key=` works too [C CB]
# §2 [C PY _GenerateContentConfig_to_mldev]: the request's top-level fields.
REQUEST_FIELDS = frozenset({
    "contents", "generationConfig", "systemInstruction", "safetySettings", "tools",
    "toolConfig", "cachedContent", "serviceTier", "model",  # `model`: in batch lines [C PY]
})
# GenerationConfig fields (§2 names responseModalities and imageConfig [C IMG]; the rest are
# the API's common generation settings, emulator's choice [I]). `seed` is an int32 (field 8 of
# the v1beta GenerationConfig; "Seed used in decoding. If not set, the request uses a randomly
# generated seed." [C API reference]): proto JSON takes it as a number or its text.
GENERATION_FIELDS = frozenset({
    "responseModalities", "imageConfig", "temperature", "topP", "topK", "candidateCount",
    "maxOutputTokens", "stopSequences", "seed", "thinkingConfig", "responseMimeType",
})
IMAGE_CONFIG_FIELDS = frozenset({"aspectRatio", "imageSize"})  # §2 [C PY _ImageConfig_to_mldev]
INT32_RANGE = (-(2**31), 2**31 - 1)
PART_FIELDS = frozenset({"text", "inlineData", "fileData", "thought", "thoughtSignature"})
ASPECT_RATIOS: tuple[str, ...] = (                  # §2 [C IMG, VTX]; omitted: 1:1 here
    "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9",
)
IMAGE_SIZES: tuple[str, ...] = ("1K", "2K", "4K")   # §2 uppercase K only [C IMG]; default 1K
MODALITIES = frozenset({"TEXT", "IMAGE"})           # §2 case-insensitive [C IMG]
MAX_INPUT_IMAGES = 14                               # §2 [C IMG]
INPUT_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/heic",
                         "image/heif"})             # §2 [C VTX]
IMAGE_TOKENS: Mapping[str, int] = {"1K": 1120, "2K": 1120, "4K": 2000}  # §2 [C PRC]
INPUT_IMAGE_TOKENS = 560                            # §7 [C PRC]
THOUGHT_TOKENS = 240                                # thinking is always on (§2); count: choice
MAX_THOUGHT_IMAGES = 2                              # §2 "up to two interim thought images" [C IMG]
BLOCK_MARKER = "[emulate:blocked]"
FINISH_MARKER = re.compile(r"\[emulate:finish:([A-Z_]+)\]")
# §3 [C ERR] statuses by HTTP code.
STATUSES: Mapping[int, str] = {
    400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}
FAULT_MESSAGES: Mapping[int, str] = {
    500: "An internal error has occurred. Please retry or report in "
         "https://developers.generativeai.google/guide/troubleshooting",  # [C ERR] wording [I]
    503: "The model is overloaded. Please try again later.",             # §3 [I]
    504: "Deadline expired before operation could complete.",            # [I]
    403: "The caller does not have permission",                          # [I]
}
NO_KEY_MESSAGE = ("Method doesn't allow unregistered callers (callers without established "
                  "identity). Please use API Key or other form of API consumer identity to "
                  "call this API.")                                      # §1 [I]
BAD_KEY_MESSAGE = "API key not valid. Please pass a valid API key."      # §1 [C ERR]
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"                 # §3 [I]
QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"           # §3 [I]
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"               # §2 [I]
# Files (§5): names "files/<id>", id <= 40 lowercase letters, digits, dashes [C PY]; kept
# 48 h [C FIL]; uploaded files cannot be downloaded, generated ones can [C FIL, PY].
FILE_TTL_S = 48 * 3600.0
UPLOAD_STATUS_HEADER = "X-Goog-Upload-Status"                           # §5 [C PY]
# Batches (§6): BATCH_STATE_* on the wire [C PY t_job_state]; 100 concurrent [C RL §4];
# EXPIRED after 48 h pending or running [C BAT].
BATCH_STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED")
MAX_CONCURRENT_BATCHES = 100
BATCH_EXPIRY_S = 48 * 3600.0
BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
OUTPUT_TYPE = ("type.googleapis.com/google.ai.generativelanguage.v1main."
               "GenerateContentBatchOutput")                             # §6 [I captured]
# Overload (protocols-gemini.md §3, §10; protocols.md §11 [I]): status and message per kind.
OVERLOADS: Mapping[str, tuple[int, str]] = {
    "unavailable": (503, "The model is overloaded. Please try again later."),         # §3 [I]
    "high_demand": (429, "The model is experiencing high demand. Please try again "
                         "later."),                                                 # §10 [I]
    "spend_cap": (429, "Your billing account has exceeded its spending limit for the last "
                       "10 minutes. Please try again later."),            # §10 [C RL2]; words [I]
}
# §9: the default and maximum pageSize of batches.list are not documented. The emulator's
# are small, so clients must follow nextPageToken.
DEFAULT_PAGE_SIZE = 2
MAX_PAGE_SIZE = 3


def google_error(code: int, message: str, details: Sequence[Mapping[str, Any]] = (),
                 *, status: str | None = None) -> JSONResponse:
    """Google's error body (§3 [C ERR]): `{"error": {code, message, status, details}}`."""
    error: dict[str, Any] = {"code": code, "message": message,
                             "status": status or STATUSES.get(code, "UNKNOWN")}
    if details:
        error["details"] = list(details)
    return JSONResponse({"error": error}, code)


def camel(value: Any) -> Any:
    """Keys in lowerCamel: Google's docs write requests in both casings and the API takes
    both (§2 [C examples; I as a rule]), so the emulator reads one."""
    if isinstance(value, dict):
        return {_camel_key(k): camel(v) for k, v in value.items()}
    if isinstance(value, list):
        return [camel(v) for v in value]
    return value


def _camel_key(key: Any) -> Any:
    if not isinstance(key, str) or "_" not in key or key.startswith("@"):
        return key
    head, *rest = key.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def _now_text(at: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"  # nanoseconds, as Google prints


# -- model ids and service tiers ------------------------------------------------------------
# Switches beside the overload readings (`GeminiServing`, fields of `GeminiReadings`): model
# ids Google no longer serves (§10 [C DEP]), answered 404 NOT_FOUND in Google's shape (§3
# [C ERR]; wording [I]); the service tier (§10 [C OPT]): `serviceTier` (or `service_tier`)
# top-level, flex, standard or priority in any case [C PY types.ServiceTier], the tier that
# served in the `x-gemini-service-tier` header of every answer [C OPT], a flex request shed
# under load with a 429 or 503 [C OPT], priority over its limit served as standard, silently
# [C OPT], or the field refused as unknown (what an API without tiers answers [I]); and a 503
# without a body after the image was made (a front end losing the answer [I]).

# Points beyond protocols.md §11 that this emulator serves in more than one way (the
# conformance suite reads them from `READINGS`; `providers.emulator.core.READING_POINTS` lists
# §11's own).
RETIRED_MODEL = "retired_model"
SERVICE_TIER = "service_tier"
BARE_503 = "bare_503"
TIER_FIELD = "serviceTier"
TIER_HEADER = "x-gemini-service-tier"
TIER_VALUES = frozenset({"unspecified", "standard", "flex", "priority"})


@dataclass
class GeminiServing:
    """Which model ids answer 404, how service tiers are served, whether a made image's answer
    is lost as a bare 503 (see the section comment)."""

    retired_models: tuple[str, ...] = ()
    tier_field: str = choice("known", ("known", "unknown"))
    flex: str = choice("served", ("served", "shed_429", "shed_503"))
    priority: str = choice("served", ("served", "standard"))
    bare_503: bool = False


SERVING_READINGS: Readings = {
    RETIRED_MODEL: {f"{model.removeprefix('gemini-3-pro-image').strip('-') or 'ga'}-retired":
                    {"retired_models": (model,)} for model in MODELS},
    SERVICE_TIER: {"served": {}, "priority-as-standard": {"priority": "standard"},
                   "flex-shed-429": {"flex": "shed_429"}, "flex-shed-503": {"flex": "shed_503"},
                   "field-unknown": {"tier_field": "unknown"}},
    BARE_503: {"bare-503": {"bare_503": True}},
}


def model_gone(model: str, version: str, method: str, retired: Sequence[str]) -> Response | None:
    """404 NOT_FOUND for a model id Google does not serve (unknown, or `retired`), else None."""
    if model in MODELS and model not in retired:
        return None
    return google_error(404, f"models/{model} is not found for API version {version}, or is "
                             f"not supported for {method}. Call ListModels to see the list of "
                             "available models and their supported methods.")


def tier_asked(body: Mapping[str, Any]) -> str:
    """The tier a (lowerCamel) request asks for: flex, priority or standard."""
    tier = str(body.get(TIER_FIELD) or "standard").lower()
    return "standard" if tier == "unspecified" else tier


def tier_refusal(raw: Any, body: Mapping[str, Any], serving: GeminiServing) -> Response | None:
    """400 INVALID_ARGUMENT for a tier field the API does not know (`tier_field` "unknown",
    named as the request wrote it) or a value it has no tier for; None otherwise."""
    if TIER_FIELD not in body:
        return None
    if serving.tier_field == "unknown":
        name = next((k for k in raw if _camel_key(k) == TIER_FIELD), TIER_FIELD)
        message = f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
        return google_error(400, message, [{"@type": BAD_REQUEST, "fieldViolations": [
            {"description": message}]}])
    if str(body[TIER_FIELD]).lower() not in TIER_VALUES:
        return google_error(400, f"Invalid value at 'service_tier' (type.googleapis.com/"
                                 f"google.ai.generativelanguage.v1beta.ServiceTier), "
                                 f"{json.dumps(body[TIER_FIELD])}")
    return None


def tier_shed(body: Mapping[str, Any], serving: GeminiServing) -> Response | None:
    """A flex request shed under load (`flex` "shed_429" / "shed_503"): nothing is made."""
    if tier_asked(body) != "flex" or serving.flex == "served":
        return None
    status, message = OVERLOADS["high_demand" if serving.flex == "shed_429" else "unavailable"]
    return google_error(status, message)


def tier_served(body: Mapping[str, Any], serving: GeminiServing) -> str:
    """The tier that serves a request: the one asked, but priority over its limit
    (`priority` "standard") is served as standard without a word."""
    tier = tier_asked(body)
    return "standard" if tier == "priority" and serving.priority == "standard" else tier


@dataclass
class GeminiReadings(GeminiServing):
    """Which overload answer the emulator serves (see the module docstring), and the model
    and tier switches of `GeminiServing`."""

    overload: str = choice("none", ("none", *OVERLOADS))
    overload_retry_s: float | None = None  # RetryInfo.retryDelay of the answer; None: none


@dataclass
class StoredFile:
    """A file of the Files API (§5): uploaded (its bytes) or generated (a batch's results)."""

    file_id: str
    display_name: str
    mime_type: str
    account: str | None
    created: float
    source: str = "UPLOADED"            # UPLOADED | GENERATED
    data: bytes = b""
    batch: str | None = None            # GENERATED: the batch whose results these are

    def resource(self, base: str, version: str) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "name": f"files/{self.file_id}", "displayName": self.display_name,
            "mimeType": self.mime_type, "sizeBytes": str(len(self.data)),  # int64: string
            "createTime": _now_text(self.created), "updateTime": _now_text(self.created),
            "expirationTime": _now_text(self.created + FILE_TTL_S),
            "uri": f"{base}/{version}/files/{self.file_id}", "state": "ACTIVE",
            "source": self.source,
        }
        if self.source == "UPLOADED":
            resource["sha256Hash"] = base64.b64encode(
                hashlib.sha256(self.data).digest()).decode()
        else:
            resource["downloadUri"] = (f"{base}/download/{version}/files/{self.file_id}"
                                       ":download?alt=media")
        return resource


@dataclass
class UploadSession:
    """A resumable upload between `start` and `finalize` (§5)."""

    upload_id: str
    size: int
    mime_type: str
    display_name: str
    account: str | None
    received: bytearray = field(default_factory=bytearray)


@dataclass
class BatchLine:
    """One request of a batch, as its input file had it."""

    key: str
    request: Any            # the request object (lowerCamel), or None when unreadable
    problem: str | None     # why the line cannot run (its result is an `error` line)


@dataclass
class Batch:
    """A batch job following the clock: PENDING, RUNNING, then its end."""

    batch_id: str
    display_name: str
    model: str
    account: str | None
    created: float
    latency_s: float
    lines: list[BatchLine]
    input_file: str | None
    outcome: str            # "success" | "fail" | "expire"
    expiry_s: float
    cancelled_at: float | None = None
    deleted: bool = False
    results_file: str | None = None
    priority: int = 0       # `batch.priority` as created (§10 [C REF]; default 0)

    @property
    def name(self) -> str:
        return f"batches/{self.batch_id}"

    def ran(self, state: str, reading: str) -> list[BatchLine]:
        """The lines that have a result: all of a succeeded batch's; of an expired one,
        none, or under the "partial" reading the first half (rounded up)."""
        if state == "SUCCEEDED":
            return self.lines
        if state == "EXPIRED" and reading == "partial":
            return self.lines[:math.ceil(len(self.lines) / 2)]
        return []

    def state(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        elapsed = now - self.created
        if self.cancelled_at is not None:
            return "CANCELLED"
        if self.outcome == "expire" and elapsed >= self.expiry_s:
            return "EXPIRED"
        if self.outcome != "expire" and elapsed >= self.latency_s:
            return "FAILED" if self.outcome == "fail" else "SUCCEEDED"
        return "PENDING" if elapsed < min(self.latency_s, self.expiry_s) * 0.25 else "RUNNING"


class GeminiEmulator(ProviderEmulator):
    """The Gemini API for Nano Banana Pro, strict about what Google rejects (see the module
    docstring for its knobs). `tasks` holds each generateContent (by responseId); `batches`
    each batch; `creates` one record per generateContent and per batch create."""

    name = "gemini"
    READINGS: ClassVar[Readings] = {OVERLOAD: {
        f"{kind.replace('_', '-')}{suffix}": {"overload": kind, "overload_retry_s": delay}
        for kind in OVERLOADS for suffix, delay in (("", None), ("-retry-info", 7.0))
    }, **SERVING_READINGS}

    def __init__(self, config: FaultConfig | None = None, *, api_key: str | None = None) -> None:
        super().__init__(config, api_key=api_key or TEST_CREDENTIALS["GEMINI_API_KEY"])
        self.spend_cap = SpendCap()
        self.billing = BillingAccount()
        self.lifetimes = BatchLifetimes()
        self.files: dict[str, StoredFile] = {}
        self.sessions: dict[str, UploadSession] = {}
        self.batches: dict[str, Batch] = {}
        self.state_prefix = "BATCH_STATE_"
        self.batch_expiry_s = BATCH_EXPIRY_S
        self.max_page_size = MAX_PAGE_SIZE
        self.upload_chunks: list[tuple[str, int, int]] = []  # (command, offset, bytes)
        self._ids = threading.Lock()
        self.readings = GeminiReadings()

    def switches(self) -> Sequence[Any]:
        return (self.readings, self.spend_cap, self.lifetimes)

    def reset(self) -> None:
        super().reset()
        self.files.clear()
        self.sessions.clear()
        self.batches.clear()
        self.upload_chunks.clear()
        self.state_prefix = "BATCH_STATE_"
        self.batch_expiry_s = BATCH_EXPIRY_S
        self.max_page_size = MAX_PAGE_SIZE
        self.readings = GeminiReadings()
        self.spend_cap = SpendCap()
        self.billing = BillingAccount()
        self.lifetimes = BatchLifetimes()

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/{version}/models/{target}", self.models_call, methods=["POST"]),
            Route("/{version}/batches", self.list_batches, methods=["GET"]),
            Route("/{version}/batches/{target}", self.batch_call,
                  methods=["GET", "POST", "DELETE"]),
            Route("/upload/{version}/files", self.upload, methods=["POST"]),
            Route("/download/{version}/files/{target}", self.download, methods=["GET"]),
            Route("/{version}/files/{target}", self.file_call, methods=["GET", "DELETE"]),
        ]

    def base(self) -> str:
        return f"{self.hub.url}/{self.name}" if self.hub is not None else ""

    def fault_response(self, status: int) -> Response:
        """Google's JSON for 403, 500, 503, 504 (§3 [C ERR]); a 502 is the front end's page."""
        if status in FAULT_MESSAGES:
            return google_error(status, FAULT_MESSAGES[status])
        return proxy_error(status, server="Google Frontend")

    # -- auth (§1) --------------------------------------------------------------------

    def account_of(self, request: Request) -> tuple[str | None, Response | None]:
        """The request's key (header, else `?key=`) or Google's refusal: none is 403
        PERMISSION_DENIED [I], a wrong one 400 with ErrorInfo API_KEY_INVALID [C ERR]."""
        key = request.headers.get(KEY_HEADER) or request.query_params.get("key")
        if not key:
            return None, google_error(403, NO_KEY_MESSAGE)
        if not self.accepts(key):
            return None, google_error(400, BAD_KEY_MESSAGE, [{
                "@type": ERROR_INFO, "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"}}])
        return key, None

    def caller(self, request: Request) -> tuple[str | None, Response | None]:
        """`account_of`, then the API version of the path: what every versioned call checks
        first."""
        account, refusal = self.account_of(request)
        return account, refusal or self.version_problem(request)

    def version_problem(self, request: Request) -> Response | None:
        version = request.path_params["version"]
        if version not in API_VERSIONS:
            return google_error(404, f"API version {version} is not found.")
        return None

    def rate_limited(self, account: str | None) -> Response | None:
        """429 RESOURCE_EXHAUSTED with QuotaFailure and RetryInfo (§3 [I]) when the account's
        create window is full (`rate_limit`) or too much runs at once (`max_concurrency`)."""
        window = self.accounts.get(account) if account else self.rate
        if self.admit_create(account) and not self.over_concurrency():
            return None
        wait = window.retry_after() if window is not None else 1.0
        return google_error(429, "You exceeded your current quota, please check your plan and "
                            "billing details.", [
                                {"@type": QUOTA_FAILURE, "violations": [{
                                    "quotaMetric": "generativelanguage.googleapis.com/"
                                                   "generate_content_paid_tier_requests",
                                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}]},
                                {"@type": RETRY_INFO, "retryDelay": f"{math.ceil(wait)}s"}])

    def overloaded(self) -> Response | None:
        """The overload answer the `overload` reading serves, else None (nothing created)."""
        kind = self.readings.overload
        if kind not in OVERLOADS:
            return None
        status, message = OVERLOADS[kind]
        delay = self.readings.overload_retry_s
        details = [] if delay is None else [{"@type": RETRY_INFO, "retryDelay": f"{delay:g}s"}]
        return google_error(status, message, details)

    # -- generateContent (§2) ---------------------------------------------------------

    async def models_call(self, request: Request) -> Response:
        self.log_request(request)
        model, _, method = request.path_params["target"].partition(":")
        if method == "generateContent":
            return await self.generate_content(request, model)
        if method == "batchGenerateContent":
            return await self.create_batch(request, model)
        return google_error(404, f"Method {method or '(none)'} is not found.")

    async def generate_content(self, request: Request, model: str) -> Response:
        account, refusal = self.caller(request)
        if refusal is not None:
            return refusal
        if self.chance(self.config.submit_5xx_prob):
            return self.fault_response(500)  # a 503 is the overload: `overloaded`
        if (gone := model_gone(model, request.path_params["version"], "generateContent",
                               self.readings.retired_models)) is not None:
            return gone
        try:
            raw = json.loads(await request.body())
        except ValueError:
            return google_error(400, "Invalid JSON payload received. Unexpected token.")
        body = camel(raw)
        refused = request_problem(body)
        if refused is not None:
            return google_error(400, *refused)
        if (refused_tier := tier_refusal(raw, body, self.readings)) is not None:
            return refused_tier
        if (overloaded := self.overloaded()) is not None:
            return overloaded
        if (shed := tier_shed(body, self.readings)) is not None:
            return shed
        if (limited := self.rate_limited(account)) is not None:
            return limited
        config = body.get("generationConfig") or {}
        image_config = config.get("imageConfig") or {}
        served = tier_served(body, self.readings)
        cost = request_cost(body) * tier_price_factor(served, self.spend_cap)
        if (capped := self.billing.refusal(self.spend_cap, cost)) is not None:
            return capped
        bill = self.billing.bill(self.spend_cap, cost)
        response_id = uuid.uuid4().hex[:22]
        task = self.new_task(
            response_id, prompt=prompt_of(body),
            aspect_ratio=image_config.get("aspectRatio", "1:1"),
            resolution=image_config.get("imageSize", "1K"), output_format="png",
            body=raw, references=references_of(body), account=account,
        )
        task.extra["model"] = model
        task.extra["modalities"] = [str(m).upper() for m in config.get("responseModalities")
                                    or ("TEXT", "IMAGE")]
        task.extra["service_tier"] = served
        try:
            await asyncio.sleep(task.latency_s)  # the answer comes when the image is done
        finally:
            bill.answered()
        if (fault := self.created_fault()) is not None:
            return fault
        if self.readings.bare_503:  # made, then lost on the way: no Google body
            return Response(b"", 503)
        answer = self.answer_body(task)
        if self.chance(self.config.drop_after_create_prob):
            return self.dropped_connection(b"".join(answer.chunks()))
        response = self.stream_answer(answer)
        response.headers[TIER_HEADER] = task.extra["service_tier"]
        return response

    def answer_body(self, task: RemoteTask, *, prefix: bytes = b"") -> AnswerBody:
        """The GenerateContentResponse of a finished task (§2): thought parts, then text and
        the final image with thoughtSignatures; refusals as Google words them."""
        usage = usage_metadata(task)
        answer: dict[str, Any] = {"modelVersion": task.extra.get("model", MODELS[0]),
                                  "responseId": task.task_id}
        finish = FINISH_MARKER.search(task.prompt)
        if BLOCK_MARKER in task.prompt:  # §2: blocked prompts come without candidates [I]
            answer.update(promptFeedback={"blockReason": "PROHIBITED_CONTENT"},
                          usageMetadata=usage_metadata(task, image=False))
            return AnswerBody.of(answer, prefix=prefix)
        if finish or task.outcome != "success" or "IMAGE" not in task.extra.get(
                "modalities", ("IMAGE",)):
            reason = finish.group(1) if finish else {
                "content": "IMAGE_SAFETY", "fail": "IMAGE_OTHER"}.get(task.outcome, "STOP")
            parts: list[dict[str, Any]] = [{"text": "Considering the request.", "thought": True}]
            if reason == "STOP":  # [emulate:noimage]: the model answers in words only
                parts.append({"text": "I can describe this scene, but here is no image of it.",
                              "thoughtSignature": _signature(task)})
            candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts},
                                         "finishReason": reason, "index": 0}
            if reason != "STOP":
                candidate["finishMessage"] = "Unable to show the generated image."
            answer.update(candidates=[candidate], usageMetadata=usage_metadata(task, image=False))
            return AnswerBody.of(answer, prefix=prefix)
        signature = _signature(task)
        thought = thought_image(task)
        parts = [
            {"text": "**Composing the scene**\n\nPlacing the subject first.", "thought": True},
            {"inlineData": {"mimeType": "image/png", "data": thought}, "thought": True},
            {"text": "Here is the image you asked for.", "thoughtSignature": signature},
            {"inlineData": {"mimeType": "image/png", "data": IMAGE_SLOT},
             "thoughtSignature": signature},
        ]
        answer.update(candidates=[{"content": {"role": "model", "parts": parts},
                                   "finishReason": "STOP", "index": 0}], usageMetadata=usage)
        return AnswerBody.of(answer, image=result_image(task, self.config.oversize_bytes),
                             prefix=prefix)

    def stream_answer(self, answer: AnswerBody) -> Response:
        """Whole (with Content-Length) unless `download_chunked` asks for chunks."""
        headers = {} if self.config.download_chunked else {"Content-Length": str(answer.size)}

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in answer.chunks():
                yield chunk

        return StreamingResponse(chunks(), media_type="application/json", headers=headers)

    # -- Files API (§5) ---------------------------------------------------------------

    async def upload(self, request: Request) -> Response:
        self.log_request(request)
        if (problem := self.version_problem(request)) is not None:
            return problem
        upload_id = request.query_params.get("upload_id")
        if upload_id:  # the session URL: the upload id stands for the caller [I]
            return await self.upload_chunk(request, upload_id)
        account, refusal = self.account_of(request)
        if refusal is not None:
            return refusal
        headers = request.headers
        if headers.get("X-Goog-Upload-Protocol", "").lower() != "resumable" or \
                headers.get("X-Goog-Upload-Command", "").lower() != "start":
            return google_error(400, "Uploads need X-Goog-Upload-Protocol: resumable and "
                                     "X-Goog-Upload-Command: start.")
        size_text = headers.get("X-Goog-Upload-Header-Content-Length", "")
        if not size_text.isdigit():
            return google_error(400, "X-Goog-Upload-Header-Content-Length is required.")
        try:
            metadata = camel(json.loads(await request.body() or b"{}"))
        except ValueError:
            return google_error(400, "Invalid JSON payload received.")
        file_meta = metadata.get("file") if isinstance(metadata, dict) else None
        file_meta = file_meta if isinstance(file_meta, dict) else {}
        session = UploadSession(
            uuid.uuid4().hex, int(size_text),
            str(headers.get("X-Goog-Upload-Header-Content-Type") or file_meta.get("mimeType")
                or "application/octet-stream"),
            str(file_meta.get("displayName") or ""), account,
        )
        self.sessions[session.upload_id] = session
        version = request.path_params["version"]
        url = f"{self.base()}/upload/{version}/files?upload_id={session.upload_id}"
        return Response(b"", 200, headers={"X-Goog-Upload-URL": url,
                                           UPLOAD_STATUS_HEADER: "active"})

    async def upload_chunk(self, request: Request, upload_id: str) -> Response:
        session = self.sessions.get(upload_id)
        if session is None:
            return google_error(404, "No such upload session.")
        command = request.headers.get("X-Goog-Upload-Command", "").lower()
        offset_text = request.headers.get("X-Goog-Upload-Offset", "")
        data = await request.body()
        self.upload_chunks.append((command, int(offset_text or -1), len(data)))
        if "upload" not in command or not offset_text.isdigit():
            return google_error(400, "Chunks need X-Goog-Upload-Command: upload and "
                                     "X-Goog-Upload-Offset.")
        if int(offset_text) != len(session.received):
            return google_error(400, f"Offset {offset_text} does not match the "
                                     f"{len(session.received)} bytes received.")
        session.received += data
        if "finalize" not in command:
            return Response(b"", 200, headers={UPLOAD_STATUS_HEADER: "active"})
        del self.sessions[upload_id]
        if len(session.received) != session.size:
            return google_error(400, f"Received {len(session.received)} bytes, "
                                     f"{session.size} were announced.")
        stored = StoredFile(uuid.uuid4().hex[:12], session.display_name, session.mime_type,
                            session.account, time.time(), data=bytes(session.received))
        self.files[stored.file_id] = stored
        resource = stored.resource(self.base(), request.path_params["version"])
        return JSONResponse({"file": resource}, headers={UPLOAD_STATUS_HEADER: "final"})

    async def file_call(self, request: Request) -> Response:
        """`GET …/files/{id}`, `DELETE …/files/{id}`, and the SDK's download path
        `GET /{version}/files/{id}:download?alt=media` (§5 [C PY])."""
        if request.path_params["target"].endswith(":download"):
            return await self.download(request)
        self.log_request(request)
        account, refusal = self.account_of(request)
        if refusal is not None:
            return refusal
        stored = self.file_of(request.path_params["target"], account)
        if stored is None:
            return self.no_file(request.path_params["target"])
        if request.method == "DELETE":
            self.files.pop(stored.file_id, None)
            return JSONResponse({})
        return JSONResponse(stored.resource(self.base(), request.path_params["version"]))

    async def download(self, request: Request) -> Response:
        """A generated file's bytes (§5 [C BAT]); uploaded files cannot be downloaded [C FIL]."""
        self.log_request(request)
        account, refusal = self.account_of(request)
        if refusal is not None:
            return refusal
        file_id = request.path_params["target"].removesuffix(":download")
        stored = self.file_of(file_id, account)
        if stored is None:
            return self.no_file(file_id)
        if stored.source != "GENERATED":
            return google_error(400, "Only generated files can be downloaded.")  # wording [I]
        if stored.batch and self.lifetimes.results_gone:  # past the 6 weeks kept [C BAT2]
            return google_error(404, "Requested entity was not found.")
        if request.query_params.get("alt") != "media":
            return JSONResponse(stored.resource(self.base(), request.path_params["version"]))
        if (fault := self.download_fault()) is not None:
            return fault
        batch = self.batches[stored.batch] if stored.batch else None
        if batch is None:
            return JSONResponse({}, 404)
        return StreamingResponse(self.results_lines(batch), media_type="application/jsonl")

    def file_of(self, file_id: str, account: str | None) -> StoredFile | None:
        stored = self.files.get(file_id.removeprefix("files/"))
        if stored is None or (stored.account is not None and stored.account != account):
            return None
        return stored

    @staticmethod
    def no_file(file_id: str) -> Response:
        """§5 [I]: an unknown file answers 403, not 404."""
        return google_error(403, f"You do not have permission to access the File {file_id} "
                                 "or it may not exist.")

    # -- batches (§6) -----------------------------------------------------------------

    async def create_batch(self, request: Request, model: str) -> Response:
        account, refusal = self.caller(request)
        if refusal is not None:
            return refusal
        if self.chance(self.config.submit_5xx_prob):
            return self.fault_response(503)
        if (gone := model_gone(model, request.path_params["version"], "batchGenerateContent",
                               self.readings.retired_models)) is not None:
            return gone
        try:
            raw = json.loads(await request.body())
        except ValueError:
            return google_error(400, "Invalid JSON payload received. Unexpected token.")
        batch_spec = camel(raw).get("batch") if isinstance(raw, dict) else None
        if not isinstance(batch_spec, dict):
            return google_error(400, "batch is required.")
        display = batch_spec.get("displayName")
        if not isinstance(display, str) or not display:  # required [C REF]
            return google_error(400, "batch.display_name is required.")
        lines, input_file, problem = self.batch_input(batch_spec.get("inputConfig"), account)
        if problem is not None:
            return problem
        priority, refused = batch_priority(batch_spec.get("priority"))
        if refused is not None:
            return refused
        running = sum(1 for b in self.batches.values() if b.account == account
                      and not b.deleted and b.state() in ("PENDING", "RUNNING"))
        if running >= MAX_CONCURRENT_BATCHES:
            return google_error(429, f"At most {MAX_CONCURRENT_BATCHES} batches may run "
                                     "at once.")
        if (limited := self.rate_limited(account)) is not None:
            return limited
        batch = self.start_batch(display, model, lines, input_file, account, raw)
        batch.priority = priority
        if (fault := self.created_fault()) is not None:
            return fault
        body = json.dumps(self.operation(batch, request.path_params["version"])).encode()
        if self.chance(self.config.drop_after_create_prob):
            return self.dropped_connection(body)
        return Response(body, 200, media_type="application/json")

    def batch_input(
        self, config: Any, account: str | None
    ) -> tuple[list[BatchLine], str | None, Response | None]:
        """The batch's requests: from an uploaded JSONL file (`fileName`) or inline
        (`requests.requests[]`, each `{request, metadata.key}`) (§6 [C REF, BAT])."""
        if not isinstance(config, dict):
            return [], None, google_error(400, "batch.input_config is required.")
        if isinstance(config.get("fileName"), str):
            stored = self.file_of(config["fileName"], account)
            if stored is None:
                return [], None, self.no_file(config["fileName"])
            lines = [parse_line(text, index) for index, text in
                     enumerate(stored.data.decode("utf-8", "replace").splitlines())
                     if text.strip()]
            return lines, f"files/{stored.file_id}", None
        inline = (config.get("requests") or {}).get("requests")
        if isinstance(inline, list):
            lines = []
            for index, item in enumerate(inline):
                item = item if isinstance(item, dict) else {}
                key = str((item.get("metadata") or {}).get("key") or index)  # may be omitted
                lines.append(line_of(key, item.get("request")))
            return lines, None, None
        return [], None, google_error(400, "batch.input_config needs file_name or requests.")

    def start_batch(self, display: str, model: str, lines: list[BatchLine],
                    input_file: str | None, account: str | None, raw: Any) -> Batch:
        expiry_s = self.lifetimes.expire_after_s or self.batch_expiry_s
        if FAIL_MARKER in display or self.chance(self.config.fail_prob):
            outcome = "fail"
        elif self.config.latency_s > expiry_s:
            outcome = "expire"
        else:
            outcome = "success"
        now = time.time()
        batch = Batch(uuid.uuid4().hex[:16], display, model, account, now,
                      self.config.latency_s, lines, input_file, outcome, expiry_s)
        prompts = "\n".join(prompt_of(line.request) for line in lines
                            if isinstance(line.request, dict))
        with self._lock:
            self.batches[batch.batch_id] = batch
        self.record_create(batch.name, raw, now, prompts, account)
        return batch

    def record_create(self, task_id: str, body: Any, at: float, prompt: str,
                      account: str | None) -> None:
        with self._lock:
            self.creates.append(CreateRecord(task_id, body, at, prompt, None, account))

    def operation(self, batch: Batch, version: str) -> dict[str, Any]:
        """The batch as a long-running Operation (§6 [I captured; C PY fields])."""
        state = batch.state()
        metadata: dict[str, Any] = {
            "@type": BATCH_TYPE, "model": f"models/{batch.model}",
            "displayName": batch.display_name,
            "createTime": _now_text(batch.created), "updateTime": _now_text(),
            "batchStats": self.batch_stats(batch, state),
            "state": f"{self.state_prefix}{state}", "name": batch.name,
        }
        if batch.input_file:
            metadata["inputConfig"] = {"fileName": batch.input_file}
        if batch.priority:
            metadata["priority"] = str(batch.priority)  # int64: a string
        operation: dict[str, Any] = {"name": batch.name, "metadata": metadata}
        if state in ("PENDING", "RUNNING"):
            return operation
        operation["done"] = True
        metadata["endTime"] = _now_text(batch.created + min(batch.latency_s, batch.expiry_s))
        if batch.ran(state, self.lifetimes.expired_results):
            results = self.results_file(batch, version)
            metadata["output"] = {"responsesFile": results}
            operation["response"] = {"@type": OUTPUT_TYPE, "responsesFile": results}
        elif state == "FAILED":
            operation["error"] = {"code": 13, "message": "The batch failed: internal error."}
        return operation

    def batch_stats(self, batch: Batch, state: str) -> dict[str, str]:
        """int64 counts as strings, zero counts left out (§6 [I])."""
        total = len(batch.lines)
        ran = batch.ran(state, self.lifetimes.expired_results)
        failed = sum(1 for line in ran if line.problem or FAIL_MARKER in prompt_of(line.request))
        counts = {"requestCount": total}
        if state in ("PENDING", "RUNNING"):
            counts["pendingRequestCount"] = total
        elif state in ("SUCCEEDED", "EXPIRED"):
            counts.update(successfulRequestCount=len(ran) - failed,
                          failedRequestCount=max(0, failed + self.lifetimes.failed_count_skew),
                          pendingRequestCount=total - len(ran))
        return {k: str(v) for k, v in counts.items() if v}

    def results_file(self, batch: Batch, version: str) -> str:
        """The generated results file of a succeeded batch, made on first sight."""
        with self._lock:
            if batch.results_file is None:
                stored = StoredFile(f"batch-{batch.batch_id}", f"{batch.display_name} results",
                                    "application/jsonl", batch.account, time.time(),
                                    source="GENERATED", batch=batch.batch_id)
                self.files[stored.file_id] = stored
                batch.results_file = f"files/{stored.file_id}"
            return batch.results_file

    async def results_lines(self, batch: Batch) -> AsyncIterator[bytes]:
        """The results JSONL (§6 [C BAT]): a line per request that ran, in input order, each
        `{"key", "response"}` or `{"key", "error"}`; images rendered as lines are sent."""
        for index, line in enumerate(batch.ran(batch.state(), self.lifetimes.expired_results)):
            for chunk in self.result_line(batch, index, line):
                yield chunk
            await asyncio.sleep(0)

    def result_line(self, batch: Batch, index: int, line: BatchLine) -> Iterator[bytes]:
        key = json.dumps(line.key)
        if line.problem is not None:
            error = {"code": 400, "message": line.problem, "status": "INVALID_ARGUMENT"}
            yield f'{{"key":{key},"error":{json.dumps(error)}}}\n'.encode()
            return
        request = line.request
        prompt = prompt_of(request)
        if FAIL_MARKER in prompt:  # per-line error shape: an open question (§9) [I]
            error = {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}
            yield f'{{"key":{key},"error":{json.dumps(error)}}}\n'.encode()
            return
        config = request.get("generationConfig") or {}
        image_config = config.get("imageConfig") or {}
        task = RemoteTask(
            f"{batch.batch_id}-{index}", prompt, image_config.get("aspectRatio", "1:1"),
            image_config.get("imageSize", "1K"), "png", batch.created, 0.0,
            _outcome(prompt), request, references_of(request),
            image=next((kind for marker, kind in IMAGE_MARKERS.items() if marker in prompt),
                       "normal"),
            extra={"model": batch.model, "modalities": [
                str(m).upper() for m in config.get("responseModalities") or ("TEXT", "IMAGE")]},
        )
        body = self.answer_body(task, prefix=f'{{"key":{key},"response":'.encode())
        yield from body.chunks()
        yield b"}\n"

    async def batch_call(self, request: Request) -> Response:
        """`GET|DELETE …/batches/{id}`, `POST …/batches/{id}:cancel` (§6 [C PY])."""
        self.log_request(request)
        target, _, method = request.path_params["target"].partition(":")
        if request.method == "GET" and (fault := self.status_fault()) is not None:
            return fault
        account, refusal = self.caller(request)
        if refusal is not None:
            return refusal
        if request.method == "GET" and self.chance(self.config.poll_5xx_prob):
            return self.fault_response(503)
        batch = self.batches.get(target)
        if batch is None or batch.deleted or (batch.account is not None
                                              and batch.account != account):
            return google_error(404, "Requested entity was not found.")
        if request.method == "POST" and method == "cancel":
            if batch.state() in ("PENDING", "RUNNING"):  # stops what has not run [C BAT]
                batch.cancelled_at = time.time()
            return JSONResponse({})
        if request.method == "DELETE" and not method:
            batch.deleted = True  # gone from listings [C BAT]
            return JSONResponse({})
        if request.method == "GET" and not method:
            return JSONResponse(self.operation(batch, request.path_params["version"]))
        return google_error(404, f"Method {method or request.method} is not found.")

    async def list_batches(self, request: Request) -> Response:
        """`GET …/batches?pageSize=&pageToken=` → `{"operations", "nextPageToken"}`, newest
        first (order: emulator's choice) (§6 [C PY])."""
        self.log_request(request)
        if (fault := self.status_fault()) is not None:
            return fault
        account, refusal = self.caller(request)
        if refusal is not None:
            return refusal
        if self.chance(self.config.poll_5xx_prob):
            return self.fault_response(503)
        size_text = request.query_params.get("pageSize") or str(DEFAULT_PAGE_SIZE)
        token = request.query_params.get("pageToken") or "0"
        if not size_text.isdigit() or not token.isdigit():
            return google_error(400, "Invalid page size or page token.")
        size = max(1, min(int(size_text), self.max_page_size))
        mine = sorted((b for b in self.batches.values() if not b.deleted
                       and (b.account is None or b.account == account)),
                      key=lambda b: b.created, reverse=True)
        start = int(token)
        page = mine[start:start + size]
        version = request.path_params["version"]
        body: dict[str, Any] = {"operations": [self.operation(b, version) for b in page]}
        if start + size < len(mine):
            body["nextPageToken"] = str(start + size)
        return JSONResponse(body)


# -- the billing account's spend cap (protocols-gemini.md §10) ---------------------------------

USD_PER_INPUT_TOKEN = 2 / 1e6        # §7 [C PRC]
USD_PER_IMAGE_TOKEN = 120 / 1e6      # §7 [C PRC]
USD_PER_TEXT_TOKEN = 12 / 1e6        # §7 [C PRC]: text and thinking output
# §10 [C OPT]: flex "50 % discount"; priority "75-100 % more than Standard" (which end of the
# range this model gets is not published: `SpendCap.priority_price` chooses).
FLEX_DISCOUNT = 0.50
PRIORITY_SURCHARGE = {"top": 1.00, "bottom": 0.75}


@dataclass
class SpendCap:
    """The rolling spend cap of the billing account every key belongs to (§10 [C RL2]: Tier 1
    $10, Tier 2 $50, Tier 3 $200 per 10 minutes); None: no cap."""

    spend_cap_usd: float | None = None
    spend_cap_window_s: float = 600.0
    priority_price: str = choice("top", tuple(PRIORITY_SURCHARGE))  # of priority's range


def tier_price_factor(served: str, cap: SpendCap) -> float:
    """What the tier that served a request does to its standard price (§10 [C OPT])."""
    if served == "flex":
        return 1.0 - FLEX_DISCOUNT
    if served == "priority":
        return 1.0 + PRIORITY_SURCHARGE[cap.priority_price]
    return 1.0


@dataclass
class Bill:
    """One accepted generateContent's cost, billed from its arrival; `until`: its answer."""

    usd: float
    since: float
    until: float | None = None

    def answered(self) -> None:
        self.until = time.monotonic()


@dataclass
class BillingAccount:
    """What the account was billed, and the requests the cap refused."""

    bills: list[Bill] = field(default_factory=list)
    refusals: int = 0
    peak_usd: float = 0.0      # the most any window held (a request's own cost included)

    def in_window(self, window_s: float, now: float) -> float:
        """USD a window ending now counts: every bill not answered more than a window ago
        (one that is still generating counts from its arrival)."""
        self.bills = [b for b in self.bills if b.until is None or now - b.until < window_s]
        return sum(b.usd for b in self.bills)

    def refusal(self, cap: SpendCap, cost: float) -> Response | None:
        """429 RESOURCE_EXHAUSTED when `cost` more would take a window past the cap, with
        RetryInfo until enough of the window's spend leaves (emulator's choice of wording)."""
        if cap.spend_cap_usd is None:
            return None
        now = time.monotonic()
        held = self.in_window(cap.spend_cap_window_s, now)
        if held + cost <= cap.spend_cap_usd + 1e-9:
            self.peak_usd = max(self.peak_usd, held + cost)
            return None
        self.refusals += 1
        leaving = sorted(b.until for b in self.bills if b.until is not None)
        wait = leaving[0] + cap.spend_cap_window_s - now if leaving else 1.0
        _, message = OVERLOADS["spend_cap"]
        return google_error(429, message, [
            {"@type": RETRY_INFO, "retryDelay": f"{max(1, math.ceil(wait))}s"}])

    def bill(self, cap: SpendCap, cost: float) -> Bill:
        """A request accepted: billed from now (kept only while a cap counts bills)."""
        bill = Bill(cost, time.monotonic())
        if cap.spend_cap_usd is not None:
            self.bills.append(bill)
        return bill


def request_cost(body: dict[str, Any]) -> float:
    """What a generateContent bills (§7), from the usage the emulator will report for it."""
    config = body.get("generationConfig") or {}
    size = (config.get("imageConfig") or {}).get("imageSize", "1K")
    probe = RemoteTask("", prompt_of(body), "1:1", size, "png", 0.0, 0.0, "success",
                       references=references_of(body))
    usage = usage_metadata(probe)
    image = sum(d["tokenCount"] for d in usage["candidatesTokensDetails"]
                if d["modality"] == "IMAGE")
    text = usage["candidatesTokenCount"] - image + usage["thoughtsTokenCount"]
    return float(usage["promptTokenCount"] * USD_PER_INPUT_TOKEN + image * USD_PER_IMAGE_TOKEN
                 + text * USD_PER_TEXT_TOKEN)


# -- batch lifetimes (protocols-gemini.md §6, §10) --------------------------------------------

INT64_RANGE = (-(2**63), 2**63 - 1)


@dataclass
class BatchLifetimes:
    """How batches end and what they leave (see the module docstring)."""

    expire_after_s: float | None = None
    expired_results: str = choice("none", ("none", "partial"),
                                  "what an expired batch holds: no results [C BAT], or the "
                                  "results of the lines that ran [I]")
    results_gone: bool = False
    failed_count_skew: int = 0


def batch_priority(value: Any) -> tuple[int, Response | None]:
    """`batch.priority` (int64 [C REF]: proto JSON takes a number or its text; default 0),
    or Google's 400 for anything else (wording [I])."""
    if value is None:
        return 0, None
    number = value
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value):
        number = int(value)
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    if isinstance(number, int) and not isinstance(number, bool) and (
            INT64_RANGE[0] <= number <= INT64_RANGE[1]):
        return number, None
    return 0, google_error(400, f"Invalid value at 'batch.priority' (TYPE_INT64), "
                                f"{json.dumps(value)}")


# -- requests ---------------------------------------------------------------------------------


def request_problem(body: Any) -> tuple[str, list[dict[str, Any]]] | None:
    """What Google's validation says about a (lowerCamel) GenerateContentRequest: the message
    and BadRequest details of a 400 INVALID_ARGUMENT (§2), or None when it is fine."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received. Expected an object.", []
    for where, value, allowed in _field_checks(body):
        unknown = sorted(k for k in value if k not in allowed)
        if unknown:  # §2 [I] wording and BadRequest.fieldViolations
            return (f'Invalid JSON payload received. Unknown name "{unknown[0]}" at '
                    f"'{where}': Cannot find field.", [{
                        "@type": BAD_REQUEST, "fieldViolations": [{
                            "field": where, "description":
                                f'Invalid JSON payload received. Unknown name "{unknown[0]}" '
                                f"at '{where}': Cannot find field."}]}])
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified", []
    images = 0
    for content in contents:
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts:
            return "* GenerateContentRequest.contents.parts: contents.parts must not be empty.", []
        for part in parts:
            problem = _part_problem(part)
            if problem:
                return problem, []
            images += "inlineData" in part or "fileData" in part
    if images > MAX_INPUT_IMAGES:  # §2 [C IMG]; wording [I]
        return f"Too many images: at most {MAX_INPUT_IMAGES} input images are supported.", []
    config = body.get("generationConfig") or {}
    modalities = config.get("responseModalities") or []
    if not isinstance(modalities, list) or any(str(m).upper() not in MODALITIES
                                               for m in modalities):
        return "response_modalities must be TEXT and/or IMAGE.", []
    image_config = config.get("imageConfig") or {}
    ratio = image_config.get("aspectRatio")
    if ratio is not None and ratio not in ASPECT_RATIOS:  # §2 [I] relayed wording
        return f"aspect_ratio must be one of {', '.join(ASPECT_RATIOS)}.", []
    size = image_config.get("imageSize")
    if size is not None and size not in IMAGE_SIZES:  # §2 [C IMG]: lowercase is rejected
        return (f"image_size must be one of {', '.join(IMAGE_SIZES)} "
                "(use an uppercase 'K').", [])
    if "seed" in config and seed_of(config["seed"]) is None:  # proto JSON's wording [I]
        return (f"Invalid value at 'generation_config.seed' (TYPE_INT32), "
                f"{json.dumps(config['seed'])}", [])
    return None


def seed_of(value: Any) -> int | None:
    """An int32 as proto JSON writes one (a number without a fraction, or its text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and INT32_RANGE[0] <= value <= INT32_RANGE[1]:
        return value
    return None


def _field_checks(body: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], frozenset[str]]]:
    yield "", body, REQUEST_FIELDS
    config = body.get("generationConfig")
    if isinstance(config, dict):
        yield "generation_config", config, GENERATION_FIELDS
        image_config = config.get("imageConfig")
        if isinstance(image_config, dict):  # Vertex-only fields land here (§2 [C PY])
            yield "generation_config.image_config", image_config, IMAGE_CONFIG_FIELDS
    for content in body.get("contents") or ():
        for part in (content.get("parts") or ()) if isinstance(content, dict) else ():
            if isinstance(part, dict):
                yield "contents.parts", part, PART_FIELDS


def _part_problem(part: Any) -> str | None:
    if not isinstance(part, dict):
        return "* contents.parts: a part must be an object."
    inline = part.get("inlineData")
    if inline is not None:
        if not isinstance(inline, dict) or inline.get("mimeType") not in INPUT_TYPES:
            return (f"Unsupported MIME type: {(inline or {}).get('mimeType')}"
                    if isinstance(inline, dict) else "inline_data must be an object.")
        try:
            base64.b64decode(str(inline.get("data") or ""), validate=True)
        except (binascii.Error, ValueError):
            return "Invalid value at 'contents.parts.inline_data.data' (TYPE_BYTES), Base64 " \
                   "decoding failed."
        if not inline.get("data"):
            return "inline_data.data must not be empty."
        return None
    data = part.get("fileData")
    if data is not None:
        if not isinstance(data, dict) or not isinstance(data.get("fileUri"), str):
            return "file_data.file_uri is required."
        return None
    if not isinstance(part.get("text"), str):
        return "* contents.parts: a part needs text, inline_data or file_data."
    return None


def prompt_of(body: Any) -> str:
    """The user's text parts, joined (what the prompt markers are looked for in)."""
    if not isinstance(body, dict):
        return ""
    texts = [str(part["text"]) for content in body.get("contents") or ()
             if isinstance(content, dict) for part in content.get("parts") or ()
             if isinstance(part, dict) and isinstance(part.get("text"), str)]
    return "\n".join(texts)


def references_of(body: dict[str, Any]) -> list[str]:
    """Input images as received: inline data by type and hash, files by URI."""
    found = []
    for content in body.get("contents") or ():
        for part in content.get("parts") or ():
            if "inlineData" in part:
                inline = part["inlineData"]
                digest = hashlib.sha256(str(inline.get("data")).encode()).hexdigest()[:16]
                found.append(f"inline:{inline.get('mimeType')}:{digest}")
            elif "fileData" in part:
                found.append(str(part["fileData"].get("fileUri")))
    return found


def parse_line(text: str, index: int) -> BatchLine:
    """A JSONL input line `{"key", "request"}` (§6 [C BAT]); an unreadable line becomes an
    error line of its own (whether Google fails the create instead is open, §9: emulator's
    choice)."""
    try:
        data = json.loads(text)
    except ValueError:
        return BatchLine(str(index), None, f"Line {index + 1} is not valid JSON.")
    if not isinstance(data, dict):
        return BatchLine(str(index), None, f"Line {index + 1} is not a JSON object.")
    return line_of(str(data.get("key") or index), data.get("request"))


def line_of(key: str, request: Any) -> BatchLine:
    body = camel(request)
    problem = request_problem(body)
    return BatchLine(key, body, problem[0] if problem else None)


def usage_metadata(task: RemoteTask, *, image: bool = True) -> dict[str, Any]:
    """usageMetadata (§2): input text and images, image and text output, thinking."""
    text_in = max(1, len(task.prompt) // 4)
    images_in = len(task.references)
    image_out = IMAGE_TOKENS.get(task.resolution, 1120) if image else 0
    text_out = 12
    prompt = text_in + images_in * INPUT_IMAGE_TOKENS
    details_in = [{"modality": "TEXT", "tokenCount": text_in}]
    if images_in:
        details_in.append({"modality": "IMAGE", "tokenCount": images_in * INPUT_IMAGE_TOKENS})
    details_out = [{"modality": "TEXT", "tokenCount": text_out}]
    if image_out:
        details_out.insert(0, {"modality": "IMAGE", "tokenCount": image_out})
    return {
        "promptTokenCount": prompt, "candidatesTokenCount": image_out + text_out,
        "totalTokenCount": prompt + image_out + text_out + THOUGHT_TOKENS,
        "thoughtsTokenCount": THOUGHT_TOKENS, "promptTokensDetails": details_in,
        "candidatesTokensDetails": details_out,
    }


def _outcome(prompt: str) -> str:
    if CONTENT_MARKER in prompt:
        return "content"
    if FAIL_MARKER in prompt:
        return "fail"
    if NO_IMAGE_MARKER in prompt:
        return "noimage"
    return "success"


def _signature(task: RemoteTask) -> str:
    return base64.b64encode(hashlib.sha256(f"sig:{task.task_id}".encode()).digest()).decode()


def thought_image(task: RemoteTask) -> str:
    """An interim "thought" image (§2): a small draft of the final one (its size is not
    documented: a quarter of the final width here)."""
    width, height = pixel_size(task.aspect_ratio, task.resolution)
    data = render_image(max(16, width // 4), max(16, height // 4), "png", f"draft {task.prompt}")
    return base64.b64encode(data).decode()


def result_image(task: RemoteTask, oversize_bytes: int) -> FileBody:
    """The final image's bytes: the documented size (§2 table), or what a marker asks."""
    width, height = pixel_size(task.aspect_ratio, task.resolution)
    if task.image == "bomb":
        return FileBody(bomb_png(*BOMB_SIZE), "image/png", result=True)
    if task.image == "wrongsize":
        width, height = max(1, width // 2), max(1, height // 2)
    data = render_image(width, height, "png", picture_seed(task))
    if task.image == "oversize" and oversize_bytes > len(data):
        return oversize_body(data, "image/png", oversize_bytes)
    return FileBody(data, "image/png", result=True)


IMAGE_SLOT = "\x00nbp-image\x00"  # where the final image's base64 goes in the JSON text


@dataclass(frozen=True)
class AnswerBody:
    """An answer's JSON text, with the final image's base64 streamed into its slot (an
    oversize image is never held in memory as base64)."""

    head: bytes
    image: FileBody | None
    tail: bytes

    @classmethod
    def of(cls, answer: Mapping[str, Any], *, image: FileBody | None = None,
           prefix: bytes = b"") -> AnswerBody:
        text = json.dumps(answer, separators=(",", ":")).encode()
        slot = json.dumps(IMAGE_SLOT).encode()[1:-1]
        if image is None or slot not in text:
            return cls(prefix + text, None, b"")
        head, _, tail = text.partition(slot)
        return cls(prefix + head, image, tail)

    @property
    def size(self) -> int:
        encoded = 4 * math.ceil(self.image.size / 3) if self.image is not None else 0
        return len(self.head) + encoded + len(self.tail)

    def chunks(self) -> Iterator[bytes]:
        yield self.head
        if self.image is not None:
            carry = b""
            for chunk in self.image.chunks():
                data = carry + chunk
                cut = len(data) - len(data) % 3
                if cut:
                    yield base64.b64encode(data[:cut])
                carry = data[cut:]
            if carry:
                yield base64.b64encode(carry)
        yield self.tail
