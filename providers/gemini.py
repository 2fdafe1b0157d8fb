"""Gemini API adapter for Nano Banana Pro (`gemini-3-pro-image`), Google's own host.

Wire format: `POST {base}/{version}/models/{model}:generateContent` with header
`x-goog-api-key` and a GenerateContentRequest in lowerCamel JSON: `contents[0].parts` = the
prompt as a text part, then each reference as `inlineData` (base64 + mimeType) or, for an
http(s) URL, `fileData` (fileUri); `generationConfig.responseModalities` ["TEXT", "IMAGE"] and
`generationConfig.imageConfig` {aspectRatio, imageSize "1K" | "2K" | "4K"}, and the request's
seed as `generationConfig.seed` (documented for every generateContent request: best effort,
`gemini_facts.SEED`), and `options.service_tier` flex or priority as the top-level
`serviceTier` (`gemini_facts.TIER_FIELD`). The answer is the finished GenerateContentResponse,
synchronously: the image is the last `inlineData` image part that is not a thought
(`thought: true` parts are interim images, skipped), its cost follows from `usageMetadata`
at the price of the tier the `x-gemini-service-tier` header names; a refusal is HTTP 200 too
(`finishReason`, `promptFeedback.blockReason`).
Errors are `{"error": {code, message, status, details}}`. There is no remote task: nothing to
poll, nothing to cancel, no idempotency, so a lost answer is `SubmitUncertain` and stays so;
an answer that carries Google's error body made nothing (an overload, an unknown model id, a
refused tier) and may be sent again.
The wire helpers here (request body, response parsing, error mapping) serve
`providers.gemini_batch` too: a batch line is the same request and the same response.

Sources: /work/shared/protocols-gemini.md (Google's docs and SDKs; its tags IMG, API, ERR, RL,
PRC, PY), no reseller seed: this is Google's own API.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
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
    ModelNotFound,
    Overloaded,
    ProviderError,
    RateLimited,
    Rejected,
    ResultMismatch,
    SubmitUncertain,
    TaskFailed,
    TaskNotFound,
    TransientError,
)
from nbp.providers.gemini_facts import (
    API_KEY_ENV,
    DEFAULT_API_VERSION,
    DEFAULT_MODEL,
    FACTS,
    FALLBACK_KEY_ENV,
    FLEX_TIMEOUT_S,
    MAX_SEED,
    SENT_TIERS,
    SERVICE_TIERS,
    TIER_FIELD,
    TIER_HEADER,
    TIER_PRICE_FACTORS,
)
from nbp.providers.gemini_facts import (
    MODELS as MODELS,
)

log = logging.getLogger("nbp.providers.gemini")

# -- documented constants --------------------------------------------------------------------
# protocols-gemini.md (§ numbers below; its source tags in brackets).

KEY_HEADER = "x-goog-api-key"        # §1 [C API]; never `?key=` (URLs end up in logs)
REFERENCE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/heic", "image/heif")  # [C VTX]
# Inline data: the 20 MB request cap is documented for inline batch requests (§6 [C BAT]);
# Google's guides give generateContent the same cap [I]. nbp counts the base64 it sends.
MAX_INLINE_BYTES = 20 * 1000 * 1000
RESPONSE_MODALITIES = ("TEXT", "IMAGE")     # the docs' example; IMAGE alone fails with grounding
# Image generation takes 10-60+ s (§2 [I]): the answer is waited for this long.
GENERATE_TIMEOUT_S = 300.0

# Prices per token (§7 [C PRC]) of what usageMetadata reports (per image: `gemini_facts`).
USD_PER_IMAGE_TOKEN = 120e-6            # $120 / 1M image output tokens (1120 at 1K/2K: 0.134)
USD_PER_TEXT_TOKEN = 12e-6              # $12 / 1M text and thinking output tokens
USD_PER_INPUT_TOKEN = 2e-6              # $2 / 1M input tokens (560 per input image)

# finishReason / blockReason values (§2 [C PY types]) that are the model's refusal of the
# content: retrying the same request cannot help. NO_IMAGE is among them because the issue
# (#13) says so: the model declined to draw this prompt. A STOP answer that merely lacks an
# image part is a failed task (`no_image`, retried), as with every other provider.
CONTENT_FINISH_REASONS = frozenset({
    "SAFETY", "PROHIBITED_CONTENT", "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "BLOCKLIST",
    "SPII", "RECITATION", "IMAGE_RECITATION", "NO_IMAGE",
})
FINISHED_OK = frozenset({"STOP", "FINISH_REASON_UNSPECIFIED", ""})
# Error `status` values (§3 [C ERR]) and the ErrorInfo reason of a wrong key (§1 [C ERR]).
KEY_INVALID_REASON = "API_KEY_INVALID"
BILLING_STATUS = "FAILED_PRECONDITION"  # "free tier unavailable / billing needed"
# A create answered with one of these in Google's error body made nothing: 503 UNAVAILABLE
# "The model is overloaded" (§3 [I]), RESOURCE_EXHAUSTED (429: quota, spend cap, "high
# demand" §10 [C RL2, I]; also seen with 503 [I]).
OVERLOAD_STATUSES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})
# A 429 that is the model's overload, not the account's quota or spend cap (§10 [I]).
OVERLOAD_WORDS = re.compile(r"overloaded|high demand", re.IGNORECASE)
# What a 400 that refuses the service tier names (the field in either casing, or the words).
TIER_REFUSAL = re.compile(r"service[_ ]?tier", re.IGNORECASE)
RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"

# -- adapter ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenPrices:
    """USD per token of each kind usageMetadata counts (§7): standard, or batch at half."""

    image: float = USD_PER_IMAGE_TOKEN
    text: float = USD_PER_TEXT_TOKEN
    input: float = USD_PER_INPUT_TOKEN

    def scaled(self, factor: float) -> TokenPrices:
        return TokenPrices(self.image * factor, self.text * factor, self.input * factor)


STANDARD_TOKEN_PRICES = TokenPrices()


class GeminiProvider(HttpAdapter):
    """Nano Banana Pro on Google's Gemini API (`gemini`): one generateContent per image, the
    image inline in the answer (`Submitted.finished`)."""

    name: ClassVar[str] = FACTS.name
    model: ClassVar[str] = FACTS.model
    default_base_url: ClassVar[str] = FACTS.base_url
    secret_headers: ClassVar[tuple[str, ...]] = (KEY_HEADER,)
    capabilities: ClassVar[Capabilities] = FACTS.capabilities
    token_prices: ClassVar[TokenPrices] = STANDARD_TOKEN_PRICES

    def __init__(self, settings: ProviderSettings, *, api_version: str | None = None) -> None:
        super().__init__(settings)
        self.api_version = api_version or DEFAULT_API_VERSION
        # Google refused the service tier field once (`_drop_tier`): why, and no tier is sent
        # from then on by this adapter (one channel, one run).
        self.tier_refused: str | None = None

    async def submit(self, request: ImageRequest) -> Submitted:
        """One generateContent. A tier Google refuses (400 naming it) is said once and not
        sent again; a flex request Google sheds (429, or 503 with its error body: flex "may
        be shed" [C OPT]) goes again at the standard tier at once only when
        `options.flex_fallback` asks for it, else the engine waits as for any overload. Either
        first answer carried Google's error body: nothing was created, so the second send
        pays once."""
        self.check_limits(request)
        options = self.checked_options(request)
        body = request_body(request)
        check_inline_size(self.name, body)
        model = model_of(options)
        url = self.url(f"/{version_of(options, self.api_version)}/models/{model}:generateContent")
        tier = None if self.tier_refused else tier_of(options)
        try:
            return await self._generate(url, model, body, tier)
        except Rejected as exc:
            if tier is None or isinstance(exc, ModelNotFound | AuthError) \
                    or not TIER_REFUSAL.search(exc.message):
                raise
            self._drop_tier(tier, exc)
        except RateLimited as exc:  # a 429 or a 503 with Google's body: flex was shed
            if tier != "flex" or not options.get("flex_fallback"):
                raise
            log.info("%s: a flex request was shed (%s); sent again at the standard tier "
                     "(options.%s.flex_fallback)", self.name, exc.code, self.name)
        return await self._generate(url, model, body, None)

    async def poll(self, submitted: Submitted) -> Pending | Finished:
        """The answer `submit` got: its image, or the refusal it carried (`TaskFailed`,
        `ContentRejected`); `TaskNotFound` when neither was recorded."""
        if submitted.finished is not None:
            return submitted.finished
        failure = failure_of(submitted.extra)
        if failure is not None:
            raise failure
        raise TaskNotFound(
            f"gemini: generateContent answered {submitted.task_id} synchronously; an answer "
            "that was not recorded cannot be fetched again (it may have been billed)"
        )

    def auth_headers(self) -> dict[str, str]:
        return key_headers(self.name, self.settings)

    async def _generate(
        self, url: str, model: str, body: Mapping[str, Any], tier: str | None
    ) -> Submitted:
        """Send the request (with `serviceTier` when `tier` is given) and read its answer."""
        sent = {**body, TIER_FIELD: tier} if tier else body
        wait = FLEX_TIMEOUT_S if tier == "flex" else GENERATE_TIMEOUT_S
        response, raw = await http.send_bounded(
            self.client, "POST", url, creates_task=True, json=sent, headers=self.auth_headers(),
            max_bytes=answer_cap(self.settings.max_image_bytes),
            timeout=httpx.Timeout(max(wait, self.settings.timeout_s), connect=10.0),
        )
        answer = parse_json(response, raw, creating=True)
        raise_for_error(response, answer, creating=True, model=model)
        task_id = str(answer.get("responseId") or f"nbp-{uuid.uuid4().hex}")
        served = served_tier(response.headers, tier)
        prices = self.token_prices.scaled(TIER_PRICE_FACTORS.get(served, 1.0))
        try:
            finished = finished_of(answer, prices, self.settings.max_image_bytes)
        except TaskFailed as exc:
            # The model answered with a refusal: the task exists and ended, so it is named
            # here and its end reported by `poll`, as the contract has it (and as a journal
            # replays it: the outcome travels in `extra`, plain strings).
            return Submitted(self.name, task_id, extra=failure_extra(exc))
        return Submitted(self.name, task_id,
                         finished=dataclasses.replace(finished, service_tier=served))

    def _drop_tier(self, tier: str, refusal: Rejected) -> None:
        """Google refused the tier field or value: said once, then no tier for the run."""
        if self.tier_refused is not None:
            return  # another request in flight heard it first
        self.tier_refused = refusal.message
        log.warning("%s: Google refuses service_tier %s (%s); this run sends no tier from now "
                    "on: every image is made and priced at the standard tier", self.name, tier,
                    refusal.message)


# -- wire format -----------------------------------------------------------------------------


def key_headers(name: str, settings: ProviderSettings) -> dict[str, str]:
    """`x-goog-api-key` from GEMINI_API_KEY, else GOOGLE_API_KEY; `AuthError` naming the
    variables (never a value) when neither is set."""
    key = settings.credential(API_KEY_ENV) or settings.credential(FALLBACK_KEY_ENV)
    if not key:
        raise AuthError(f"{name}: set {API_KEY_ENV} (or {FALLBACK_KEY_ENV}) in the environment")
    return {KEY_HEADER: key}


def model_of(options: Mapping[str, Any]) -> str:
    return str(options.get("model") or DEFAULT_MODEL)


def version_of(options: Mapping[str, Any], default: str = DEFAULT_API_VERSION) -> str:
    return str(options.get("api_version") or default)


def tier_of(options: Mapping[str, Any]) -> str | None:
    """The `serviceTier` a request sends: flex or priority; None for standard (the tier an
    omitted field means) and when no tier is asked."""
    tier = str(options.get("service_tier") or "").lower()
    return tier if tier in SENT_TIERS else None


def served_tier(headers: Mapping[str, str], asked: str | None) -> str:
    """The tier that served an answer: the `x-gemini-service-tier` header (lowercase, an
    enum prefix dropped), else the tier asked (standard when none)."""
    said = str(headers.get(TIER_HEADER) or "").strip().lower().removeprefix("service_tier_")
    if said in SERVICE_TIERS:
        return said
    return asked or "standard"


def request_body(request: ImageRequest) -> dict[str, Any]:
    """The GenerateContentRequest for `request` (§2), in lowerCamel as the REST reference
    writes it (Google's examples mix in snake_case; the API takes both).

    `request.seed` goes as `generationConfig.seed` (an int32: `gemini_facts.SEED` says why);
    out of its range it is `LimitExceeded`, before anything is sent.
    """
    parts: list[dict[str, Any]] = [{"text": request.prompt}]
    parts += [reference_part(ref) for ref in request.references]
    config: dict[str, Any] = {
        "responseModalities": list(RESPONSE_MODALITIES),
        "imageConfig": {"aspectRatio": request.aspect_ratio,
                        "imageSize": request.resolution},  # "1K": uppercase K (§8.1)
    }
    seed = sent_seed(FACTS.capabilities, request)
    if seed is not None:
        if not 0 <= seed <= MAX_SEED:
            raise LimitExceeded(f"gemini: seeds go from 0 to {MAX_SEED}; this one is {seed}")
        config["seed"] = seed
    return {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}


def reference_part(ref: Reference) -> dict[str, Any]:
    """A local reference as `inlineData` (plain base64), a URL as `fileData` (§2)."""
    if ref.data is not None:
        if ref.mime_type not in REFERENCE_TYPES:
            raise LimitExceeded(f"gemini: reference {ref.filename!r} is {ref.mime_type}; "
                                f"accepted: {', '.join(REFERENCE_TYPES)}")
        data = base64.b64encode(ref.data).decode("ascii")
        return {"inlineData": {"mimeType": ref.mime_type, "data": data}}
    if ref.is_url:
        # fileData.fileUri is documented for Files API URIs [C IMG]; public http(s) URLs
        # are accepted there too [I] (Google's file-input guide, not in protocols-gemini.md).
        return {"fileData": {"mimeType": ref.mime_type, "fileUri": ref.uri}}
    raise LimitExceeded(f"gemini: reference {ref.uri!r} is neither a URL nor local content")


def check_inline_size(name: str, body: Mapping[str, Any]) -> None:
    """`LimitExceeded` when the inline references pass `MAX_INLINE_BYTES` (base64)."""
    parts = body["contents"][0]["parts"]
    size = sum(len(p["inlineData"]["data"]) for p in parts if "inlineData" in p)
    if size > MAX_INLINE_BYTES:
        raise LimitExceeded(
            f"{name}: the reference images take {size} bytes inline, more than the "
            f"{MAX_INLINE_BYTES} a request may carry; use smaller images"
        )


def answer_cap(max_image_bytes: int) -> int:
    """The most bytes an answer may have: the final image in base64 (4/3) plus up to two
    interim thought images and text (§2), i.e. twice the image cap and a megabyte."""
    return 2 * max_image_bytes + 1024 * 1024


def parse_json(
    response: httpx.Response, raw: bytes, *, creating: bool = False
) -> Mapping[str, Any]:
    """The answer's JSON object. A non-JSON error goes to the status ladder; a 2xx that is
    not JSON is a garbled answer: lost for a create (it may have been generated and billed),
    transient otherwise."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, Mapping):
        return body
    text = raw[:200].decode("utf-8", "replace")
    if response.status_code >= 400:
        raise http.status_error(response, f"gemini: HTTP {response.status_code}: {text}")
    message = f"gemini: HTTP {response.status_code}: the answer is not a JSON object ({text!r})"
    if creating:
        raise SubmitUncertain(message)
    raise TransientError(message)


def finished_of(
    answer: Mapping[str, Any], prices: TokenPrices, max_image_bytes: int
) -> Finished:
    """The image, cost and usage of a GenerateContentResponse, or the refusal it carries.

    Safety first (`promptFeedback.blockReason`, a content finishReason: `ContentRejected`),
    then the last non-thought inline image; none is `TaskFailed`: code `no_image` after a
    normal finish, else the finishReason (MAX_TOKENS, OTHER, IMAGE_OTHER, ...).
    """
    feedback = answer.get("promptFeedback")
    block = feedback.get("blockReason") if isinstance(feedback, Mapping) else None
    if block:
        why = feedback.get("blockReasonMessage") if isinstance(feedback, Mapping) else None
        raise ContentRejected(f"gemini: the prompt was blocked ({block}){_tail(why)}",
                              code=str(block))
    candidates = [c for c in answer.get("candidates") or () if isinstance(c, Mapping)]
    candidate = candidates[0] if candidates else {}
    reason = str(candidate.get("finishReason") or "")
    message = candidate.get("finishMessage")
    if reason in CONTENT_FINISH_REASONS:
        raise ContentRejected(f"gemini: no image ({reason}){_tail(message)}", code=reason)
    image = final_image(candidate, max_image_bytes)
    if image is None:
        if reason in FINISHED_OK:
            said = _text_of(candidate)
            raise TaskFailed(f"gemini: the answer has no image{_tail(said)}", code="no_image")
        raise TaskFailed(f"gemini: no image ({reason}){_tail(message)}", code=reason)
    usage = usage_of(answer.get("usageMetadata"))
    return Finished(images=(image,), cost_usd=cost_of(usage, prices), state=reason or "STOP",
                    usage=usage)


def final_image(candidate: Mapping[str, Any], max_image_bytes: int) -> ResultImage | None:
    """The last `inlineData` image part that is not a thought, sized before it is decoded."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, Mapping) else None
    found: Mapping[str, Any] | None = None
    for part in parts or ():
        if not isinstance(part, Mapping) or part.get("thought"):
            continue
        inline = part.get("inlineData") or part.get("inline_data")
        if isinstance(inline, Mapping):
            mime = str(inline.get("mimeType") or inline.get("mime_type") or "")
            if mime.startswith("image/"):
                found = inline
    if found is None:
        return None
    payload = "".join(str(found.get("data") or "").split())
    size = len(payload) * 3 // 4 - payload[-2:].count("=")
    if size > max_image_bytes:
        raise ResultMismatch(
            f"gemini: the image has {size} bytes, more than the {max_image_bytes} allowed",
            code=http.TOO_LARGE,
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ResultMismatch("gemini: the image is not valid base64", code="undecodable") from exc
    if not data:
        return None
    mime = str(found.get("mimeType") or found.get("mime_type"))
    return ResultImage(data=data, mime_type=mime)


def usage_of(metadata: Any) -> dict[str, int]:
    """Token counts of usageMetadata (§2): `image` and `text` output (from
    candidatesTokensDetails), `thinking`, `input`, `total`; absent counts are left out."""
    if not isinstance(metadata, Mapping):
        return {}
    usage: dict[str, int] = {}
    details = [d for d in metadata.get("candidatesTokensDetails") or () if isinstance(d, Mapping)]
    by_modality = {str(d.get("modality")): _int(d.get("tokenCount")) for d in details}
    candidates = _int(metadata.get("candidatesTokenCount"))
    if details:
        usage["image"] = by_modality.get("IMAGE", 0)
        usage["text"] = max(0, candidates - usage["image"])
    elif "candidatesTokenCount" in metadata:
        usage["text"] = candidates
    for key, name in (("thoughtsTokenCount", "thinking"), ("promptTokenCount", "input"),
                      ("totalTokenCount", "total")):
        if key in metadata:
            usage[name] = _int(metadata.get(key))
    return usage


def cost_of(usage: Mapping[str, int], prices: TokenPrices) -> float | None:
    """USD of an answer from its token counts (§7: image output, text and thinking output,
    input); None without counts, so the published price stands."""
    if "image" not in usage:
        return None
    cost = (usage["image"] * prices.image
            + (usage.get("text", 0) + usage.get("thinking", 0)) * prices.text
            + usage.get("input", 0) * prices.input)
    return round(cost, 6)


def failure_extra(error: TaskFailed) -> dict[str, str]:
    """A refusal as `Submitted.extra` (journalled as JSON): kind, code and message."""
    kind = "content" if isinstance(error, ContentRejected) else "failed"
    return {"outcome": kind, "code": error.code or "", "message": error.message}


def failure_of(extra: Mapping[str, str]) -> TaskFailed | None:
    """The refusal `failure_extra` recorded, as the exception it was; None without one."""
    kind = extra.get("outcome")
    if kind not in ("content", "failed"):
        return None
    cls = ContentRejected if kind == "content" else TaskFailed
    return cls(extra.get("message") or "gemini: the answer had no image",
               code=extra.get("code") or None)


def _text_of(candidate: Mapping[str, Any]) -> str:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, Mapping) else None
    texts = [str(p["text"]) for p in parts or () if isinstance(p, Mapping)
             and not p.get("thought") and p.get("text")]
    return " ".join(texts)[:200]


def _tail(text: Any) -> str:
    return f": {str(text)[:300]}" if text else ""


def _int(value: Any) -> int:
    try:
        return int(value)  # int64 counts may arrive as strings
    except (TypeError, ValueError):
        return 0


# -- errors ----------------------------------------------------------------------------------


def raise_for_error(
    response: httpx.Response, body: Mapping[str, Any], *, creating: bool = False,
    model: str | None = None,
) -> None:
    """Translate Google's error body (§3) into `providers.errors`; 2xx returns quietly.

    The one place Google's `status` and `details` are read; statuses go to the shared ladder.
    400 with ErrorInfo reason API_KEY_INVALID is a wrong key (`AuthError`), 400
    FAILED_PRECONDITION is billing (`InsufficientBalance`), other 400s are `Rejected`; 403 is
    `AuthError`; 404 of a create is the model id `model` Google does not serve
    (`ModelNotFound`, naming the other ids), else `TaskNotFound`. A 429 RESOURCE_EXHAUSTED is
    `RateLimited` (quota, spend cap) or, when its message says the model is overloaded or in
    "high demand", `Overloaded`; a create's 5xx that carries Google's error body with status
    UNAVAILABLE or RESOURCE_EXHAUSTED is `Overloaded` too. Each waits `RetryInfo.retryDelay`
    when there is one (else a Retry-After header, else the caller's own backoff). None of
    them made an image or bills anything (§10): Google answered with its error and nothing
    else. A 5xx without that body (a front end's page, an empty answer), other 5xx statuses
    (INTERNAL, DEADLINE_EXCEEDED) and 499 are transient: for a create, the image may have
    been generated (the engine treats the create as one that may exist). Messages come from
    the body only (it never echoes the key).
    """
    if response.status_code < 300:
        return
    raise error_of(response, body, creating=creating, model=model)


def error_of(
    response: httpx.Response, body: Mapping[str, Any], *, creating: bool = False,
    model: str | None = None,
) -> ProviderError:
    error = body.get("error")
    error = error if isinstance(error, Mapping) else {}
    status = str(error.get("status") or "")
    details = [d for d in error.get("details") or () if isinstance(d, Mapping)]
    code: str | int = status or response.status_code
    message = f"gemini: {error.get('message') or f'HTTP {response.status_code}'}"
    if status:
        message = f"{message} ({status})"
    reasons = {str(d.get("reason")) for d in details if d.get("@type") == ERROR_INFO_TYPE}
    if KEY_INVALID_REASON in reasons:
        return AuthError(message, code=KEY_INVALID_REASON)
    if status == BILLING_STATUS:
        return InsufficientBalance(message, code=code)
    overloaded = creating and response.status_code >= 500 and status in OVERLOAD_STATUSES
    if response.status_code == 429 or overloaded:
        delays = [retry_delay(d.get("retryDelay")) for d in details
                  if d.get("@type") == RETRY_INFO_TYPE]
        retry_after = next((d for d in delays if d is not None), None)
        if retry_after is None:
            retry_after = http.parse_retry_after(response.headers.get("Retry-After"))
        if overloaded or OVERLOAD_WORDS.search(str(error.get("message") or "")):
            return Overloaded(message, code=code, retry_after=retry_after)
        return RateLimited(message, code=code, retry_after=retry_after)
    if response.status_code == 404 and creating:
        return model_not_found(message, model or "?")
    if response.status_code == 499:
        return TransientError(message, code=code)
    return http.status_error(response, message, code=code)


def model_not_found(message: str, model: str) -> ModelNotFound:
    """A create's 404: Google does not serve `model` (§10: a retired preview id); the message
    names it and the documented ids besides it."""
    others = tuple(m for m in FACTS.capabilities.models if m != model)
    hint = (f"; use {' or '.join(others)} (options.<provider>.model, or the model axis)"
            if others else "")
    return ModelNotFound(f"{message}: model {model} is not served here{hint}",
                         model=model, others=others)


def retry_delay(value: Any) -> float | None:
    """Seconds of a `google.protobuf.Duration` in JSON ("30s", "1.5s"), capped like
    Retry-After; None when absent or unreadable."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)s\s*", str(value or ""))
    if not match:
        return None
    return max(0.0, min(float(match.group(1)), http.MAX_RETRY_AFTER_S))


def line_error(error: Mapping[str, Any]) -> TaskFailed:
    """A batch line's status object (`{"code", "message", "status"}`, §6: its exact shape is
    an open question) as a failed request: `ContentRejected` when it reads as a safety
    refusal, else `TaskFailed` with the status (or code) as its code."""
    status = str(error.get("status") or error.get("code") or "error")
    message = f"gemini: {error.get('message') or 'the request failed'} ({status})"
    if status in CONTENT_FINISH_REASONS or looks_like_content_rejection(error.get("message")):
        return ContentRejected(message, code=status)
    return TaskFailed(message, code=status)


__all__ = [
    "GeminiProvider",
    "TokenPrices",
    "error_of",
    "finished_of",
    "key_headers",
    "line_error",
    "raise_for_error",
    "request_body",
    "retry_delay",
    "served_tier",
    "tier_of",
    "usage_of",
]
