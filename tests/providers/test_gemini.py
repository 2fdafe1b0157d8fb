"""Gemini-only behaviour (generateContent on Google's host): the key header and never `?key=`,
the request body field by field, uppercase "1K", thought parts skipped, refusals as content
rejections, Google's error body (RetryInfo, API_KEY_INVALID, billing, overloads, a retired
model id), the answer that cannot be fetched again, cost from usageMetadata at the service
tier that served it. Generic behaviour is in the conformance suite."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from typing import Any

import httpx
import pytest
from PIL import Image

from nbp.providers import http
from nbp.providers.base import Finished, ImageRequest, Reference, Submitted
from nbp.providers.emulator.core import CONTENT_MARKER, NO_IMAGE_MARKER
from nbp.providers.emulator.gemini import BLOCK_MARKER, GeminiEmulator, request_cost
from nbp.providers.emulator.hub import TEST_CREDENTIALS, EmulatorHub
from nbp.providers.errors import (
    AuthError,
    ContentRejected,
    InsufficientBalance,
    LimitExceeded,
    ModelNotFound,
    Overloaded,
    RateLimited,
    Rejected,
    SubmitUncertain,
    TaskFailed,
    TaskNotFound,
    TransientError,
)
from nbp.providers.gemini import (
    GeminiProvider,
    error_of,
    finished_of,
    request_body,
    retry_delay,
    usage_of,
)
from nbp.providers.gemini_batch import GeminiBatchProvider
from nbp.providers.gemini_facts import DOCUMENTED_BASE_URL, FLEX_TIMEOUT_S, SERVICE_TIERS
from nbp.providers.model import pixel_size
from nbp.schemas import load_job_schema

PROVIDER = "gemini"
LATENCY_S = 0.05
KEY = TEST_CREDENTIALS["GEMINI_API_KEY"]


def provider_for(env: dict[str, str], **changes: str) -> GeminiProvider:
    return GeminiProvider(GeminiProvider.settings_from_env({**env, **changes}))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def submit(provider: GeminiProvider, request: ImageRequest) -> Submitted:
    try:
        return await provider.submit(request)
    finally:
        await provider.aclose()


def png(size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 180, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- what goes on the wire -------------------------------------------------------------------


def test_the_key_goes_in_its_header_and_never_in_the_url() -> None:
    seen: list[httpx.Request] = []
    answer = {"candidates": [{"content": {"parts": [
        {"inlineData": {"mimeType": "image/png", "data": b64(png())}}]},
        "finishReason": "STOP"}], "responseId": "r-1"}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=answer)

    settings = GeminiProvider.settings_from_env({"GEMINI_API_KEY": "sekrit-key"})
    provider = GeminiProvider(settings)
    provider.client = http.make_client(30, secret_headers=("x-goog-api-key",),
                                       transport=httpx.MockTransport(handler))
    submitted = run(submit(provider, ImageRequest("a lemon", "4:5", "2K")))
    [request] = seen
    assert str(request.url) == (f"{DOCUMENTED_BASE_URL}/v1beta/models/"
                                "gemini-3-pro-image:generateContent")  # the GA id
    assert request.headers["x-goog-api-key"] == "sekrit-key"
    assert "key=" not in str(request.url) and "sekrit" not in str(request.url)
    assert submitted.task_id == "r-1" and submitted.finished is not None
    assert "sekrit" not in repr(settings) and "sekrit" not in repr(provider.settings)


def test_google_api_key_is_the_fallback(env: dict[str, str], emulator: GeminiEmulator) -> None:
    fallback = {k: v for k, v in env.items() if k != "GEMINI_API_KEY"}
    fallback["GOOGLE_API_KEY"] = KEY
    submitted = run(submit(provider_for(fallback), ImageRequest("fallback key")))
    assert submitted.finished is not None and len(emulator.creates) == 1


def test_the_request_body_field_by_field(env: dict[str, str], emulator: GeminiEmulator) -> None:
    local = Reference("specs/data/shoe.png", data=png(), mime_type="image/png")
    remote = Reference("https://example.com/ref.jpg", mime_type="image/jpeg")
    request = ImageRequest("a shoe on marble", "21:9", "4K", references=(local, remote),
                           options={"model": "gemini-3-pro-image", "api_version": "v1"})
    submitted = run(submit(provider_for(env), request))
    task = emulator.tasks[submitted.task_id]
    assert emulator.requests == [("POST", "/gemini/v1/models/gemini-3-pro-image:generateContent")]
    assert task.body == {
        "contents": [{"role": "user", "parts": [
            {"text": "a shoe on marble"},
            {"inlineData": {"mimeType": "image/png", "data": b64(local.data or b"")}},
            {"fileData": {"mimeType": "image/jpeg", "fileUri": remote.uri}},
        ]}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"],
                             "imageConfig": {"aspectRatio": "21:9", "imageSize": "4K"}},
    }
    assert (task.aspect_ratio, task.resolution) == ("21:9", "4K")


def test_the_seed_goes_as_generation_config_seed_an_int32(
    hub: EmulatorHub, env: dict[str, str], emulator: GeminiEmulator
) -> None:
    """Google documents `generationConfig.seed` for every generateContent request (an int32,
    best effort: `gemini_facts.SEED`); a seed out of its range is refused before sending, and
    the emulator refuses what the API would."""
    submitted = run(submit(provider_for(env), ImageRequest("a seeded shoe", seed=2**31 - 1)))
    assert emulator.tasks[submitted.task_id].body["generationConfig"]["seed"] == 2**31 - 1
    assert "seed" not in request_body(ImageRequest("no seed"))["generationConfig"]
    with pytest.raises(LimitExceeded, match="seeds"):
        run(submit(provider_for(env), ImageRequest("too big", seed=2**31)))
    assert len(emulator.creates) == 1
    for bad in (2**31, 1.5, "x", True):
        answer = post(hub, {**a_body(imageSize="1K"),
                            "generationConfig": {"imageConfig": {}, "seed": bad}})
        assert answer.status_code == 400, bad
        assert "generation_config.seed" in answer.json()["error"]["message"]
    for good in (-(2**31), 0, "7", 7.0):  # proto JSON: an int32 as a number or its text
        answer = post(hub, {**a_body(), "generationConfig": {"imageConfig": {}, "seed": good}})
        assert answer.status_code == 200, (good, answer.text)


@pytest.mark.parametrize("resolution", ["1K", "2K", "4K"])
def test_image_size_is_sent_with_an_uppercase_k(resolution: str) -> None:
    body = request_body(ImageRequest("x", resolution=resolution))
    assert body["generationConfig"]["imageConfig"]["imageSize"] == resolution


def post(hub: EmulatorHub, body: Any, *, key: str | None = KEY,
         path: str = "/v1beta/models/gemini-3-pro-image:generateContent"
         ) -> httpx.Response:
    headers = {"x-goog-api-key": key} if key else {}
    return httpx.post(f"{hub.base_url('gemini')}{path}", json=body, headers=headers, timeout=30)


def a_body(**config: Any) -> dict[str, Any]:
    return {"contents": [{"parts": [{"text": "a lemon"}]}],
            "generationConfig": {"imageConfig": config}}


def test_the_emulator_refuses_what_google_refuses(
    hub: EmulatorHub, emulator: GeminiEmulator
) -> None:
    lower = post(hub, a_body(imageSize="1k"))
    assert lower.status_code == 400
    assert lower.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "uppercase" in lower.json()["error"]["message"]
    assert post(hub, a_body(aspectRatio="7:3")).status_code == 400
    vertex_only = post(hub, a_body(imageSize="1K", outputMimeType="image/jpeg")).json()
    assert 'Unknown name "outputMimeType"' in vertex_only["error"]["message"]
    assert vertex_only["error"]["details"][0]["@type"].endswith("google.rpc.BadRequest")
    fifteen = {"contents": [{"parts": [{"text": "many"}, *[
        {"inlineData": {"mimeType": "image/png", "data": b64(png())}}] * 15]}]}
    assert post(hub, fifteen).status_code == 400
    missing = post(hub, a_body(), path="/v1beta/models/imagen-9:generateContent")
    assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"
    assert emulator.creates == []


def test_the_emulator_takes_snake_case_as_googles_examples_write_it(
    hub: EmulatorHub, emulator: GeminiEmulator
) -> None:
    body = {"contents": [{"parts": [{"text": "snake"}, {"inline_data": {
        "mime_type": "image/png", "data": b64(png())}}]}],
        "generation_config": {"response_modalities": ["Image"],
                              "image_config": {"aspect_ratio": "3:2", "image_size": "1K"}}}
    answer = post(hub, body)
    assert answer.status_code == 200, answer.text
    finished = finished_of(answer.json(), GeminiProvider.token_prices, 10**8)
    data = finished.images[0].data or b""
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == pixel_size("3:2", "1K")


def test_no_key_is_403_and_a_wrong_key_400_api_key_invalid(
    hub: EmulatorHub, env: dict[str, str], emulator: GeminiEmulator
) -> None:
    none = post(hub, a_body(), key=None)
    assert none.status_code == 403 and none.json()["error"]["status"] == "PERMISSION_DENIED"
    wrong = post(hub, a_body(), key="nope")
    assert wrong.status_code == 400
    assert wrong.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    with pytest.raises(AuthError) as caught:
        run(submit(provider_for(env, GEMINI_API_KEY="nope"), ImageRequest("x")))
    assert caught.value.code == "API_KEY_INVALID" and "nope" not in str(caught.value)


# -- what comes back -------------------------------------------------------------------------


def test_thought_images_are_skipped_and_the_last_image_is_the_result(
    env: dict[str, str], emulator: GeminiEmulator
) -> None:
    submitted = run(submit(provider_for(env), ImageRequest("thinking", "9:16", "1K")))
    assert submitted.finished is not None
    [image] = submitted.finished.images
    assert image.mime_type == "image/png" and image.url is None
    with Image.open(io.BytesIO(image.data or b"")) as decoded:
        assert decoded.size == pixel_size("9:16", "1K")  # not the quarter-size draft
    draft, final = png((4, 4)), png((16, 16))
    answer = {"candidates": [{"content": {"parts": [
        {"text": "plan", "thought": True},
        {"inlineData": {"mimeType": "image/png", "data": b64(draft)}, "thought": True},
        {"inlineData": {"mimeType": "image/png", "data": b64(draft)}},
        {"text": "here", "thoughtSignature": "c2ln"},
        {"inlineData": {"mimeType": "image/png", "data": b64(final)}, "thoughtSignature": "c2ln"},
        {"inlineData": {"mimeType": "image/png", "data": b64(draft)}, "thought": True},
    ]}, "finishReason": "STOP"}]}
    assert finished_of(answer, GeminiProvider.token_prices, 10**6).images[0].data == final


def test_the_answer_is_finished_at_once_and_never_journalled_with_its_image(
    env: dict[str, str], emulator: GeminiEmulator
) -> None:
    provider = provider_for(env)
    submitted = run(submit(provider, ImageRequest("a pear")))
    assert isinstance(submitted.finished, Finished)
    journalled = json.dumps(submitted.to_json())
    assert len(journalled) < 300 and submitted.task_id in journalled
    assert run(provider.poll(submitted)) is submitted.finished
    image = submitted.finished.images[0]
    assert run(provider.download(image)) == image.data
    with pytest.raises(TaskNotFound, match="cannot be fetched again"):
        run(provider.poll(Submitted.from_json(submitted.to_json())))


def test_cost_and_usage_come_from_usage_metadata(
    env: dict[str, str], emulator: GeminiEmulator
) -> None:
    ref = Reference("r.png", data=png(), mime_type="image/png")
    for resolution, image_tokens in (("2K", 1120), ("4K", 2000)):
        request = ImageRequest("a lemon on a plate", resolution=resolution, references=(ref,))
        finished = run(submit(provider_for(env), request)).finished
        assert finished is not None
        usage = finished.usage
        assert usage["image"] == image_tokens and usage["thinking"] > 0
        assert usage["input"] >= 560  # one input image
        expected = (usage["image"] * 120 + (usage["text"] + usage["thinking"]) * 12
                    + usage["input"] * 2) / 1e6
        assert finished.cost_usd == pytest.approx(expected)
    assert usage_of({"promptTokenCount": "7"}) == {"input": 7}
    no_usage = {"candidates": [{"content": {"parts": [
        {"inlineData": {"mimeType": "image/png", "data": b64(png())}}]}}]}
    assert finished_of(no_usage, GeminiProvider.token_prices, 10**6).cost_usd is None


@pytest.mark.parametrize(
    ("marker", "error", "code"),
    [
        pytest.param(CONTENT_MARKER, ContentRejected, "IMAGE_SAFETY", id="image-safety"),
        pytest.param(BLOCK_MARKER, ContentRejected, "PROHIBITED_CONTENT", id="block-reason"),
        pytest.param("[emulate:finish:NO_IMAGE]", ContentRejected, "NO_IMAGE", id="no-image"),
        pytest.param("[emulate:finish:PROHIBITED_CONTENT]", ContentRejected,
                     "PROHIBITED_CONTENT", id="prohibited"),
        pytest.param("[emulate:finish:MAX_TOKENS]", TaskFailed, "MAX_TOKENS", id="max-tokens"),
        pytest.param(NO_IMAGE_MARKER, TaskFailed, "no_image", id="text-only"),
    ],
)
def test_refusals_arrive_as_http_200_and_are_mapped(
    env: dict[str, str], emulator: GeminiEmulator, marker: str, error: type[Exception],
    code: str,
) -> None:
    provider = provider_for(env)

    async def go() -> Submitted:
        try:
            submitted = await provider.submit(ImageRequest(f"please {marker}"))
            with pytest.raises(error) as caught:  # the task is named, its end polled
                await provider.poll(submitted)
            assert isinstance(caught.value, TaskFailed) and caught.value.code == code
            if error is TaskFailed:
                assert not isinstance(caught.value, ContentRejected)
            return submitted
        finally:
            await provider.aclose()

    submitted = run(go())
    assert submitted.finished is None
    replayed = Submitted.from_json(json.loads(json.dumps(submitted.to_json())))
    with pytest.raises(error) as caught:  # a journalled refusal is the same refusal
        run(provider.poll(replayed))
    assert isinstance(caught.value, TaskFailed) and caught.value.code == code
    if error is TaskFailed:
        assert not isinstance(caught.value, ContentRejected)
    assert len(emulator.creates) == 1


# -- errors ----------------------------------------------------------------------------------


def test_429_waits_the_retry_info_delay(env: dict[str, str], emulator: GeminiEmulator) -> None:
    emulator.configure(rate_limit=(1, 30.0))

    async def go() -> None:
        provider = provider_for(env)
        try:
            await provider.submit(ImageRequest("first"))
            with pytest.raises(RateLimited) as caught:
                await provider.submit(ImageRequest("second"))
            assert caught.value.code == "RESOURCE_EXHAUSTED"
            assert caught.value.retry_after is not None and 28 <= caught.value.retry_after <= 30
        finally:
            await provider.aclose()

    run(go())
    assert retry_delay("1.5s") == 1.5 and retry_delay("soon") is None
    assert retry_delay("86400s") == http.MAX_RETRY_AFTER_S


def test_a_lost_answer_is_uncertain_and_created_once(
    env: dict[str, str], emulator: GeminiEmulator
) -> None:
    emulator.configure(drop_after_create_prob=1.0)
    with pytest.raises(SubmitUncertain):
        run(submit(provider_for(env), ImageRequest("dropped")))
    assert len(emulator.creates) == 1
    caps = GeminiProvider.capabilities
    assert not caps.idempotent_submit and not caps.recoverable_submit and caps.synchronous


def _google(status: int, body: Any, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers,
                          request=httpx.Request("POST", "https://x/v1beta/models/m"))


@pytest.mark.parametrize(
    ("status", "google_status", "details", "expected", "code"),
    [
        pytest.param(400, "INVALID_ARGUMENT", [], Rejected, "INVALID_ARGUMENT", id="invalid"),
        pytest.param(400, "INVALID_ARGUMENT", [{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}],
            AuthError, "API_KEY_INVALID", id="bad-key"),
        pytest.param(400, "FAILED_PRECONDITION", [], InsufficientBalance,
                     "FAILED_PRECONDITION", id="billing"),
        pytest.param(403, "PERMISSION_DENIED", [], AuthError, "PERMISSION_DENIED", id="403"),
        pytest.param(404, "NOT_FOUND", [], ModelNotFound, "model_not_found",
                     id="unknown-model"),
        pytest.param(499, "CANCELLED", [], TransientError, "CANCELLED", id="499"),
        pytest.param(500, "INTERNAL", [], TransientError, "INTERNAL", id="500"),
        pytest.param(504, "DEADLINE_EXCEEDED", [], TransientError, "DEADLINE_EXCEEDED",
                     id="504"),
    ],
)
def test_googles_error_body_maps_to_the_tree(
    status: int, google_status: str, details: list[Any], expected: type[Exception], code: str,
) -> None:
    body = {"error": {"code": status, "message": "m", "status": google_status,
                      "details": details}}
    error = error_of(_google(status, body), body, creating=True)
    assert type(error) is expected and error.code == code
    assert not isinstance(error, RateLimited)


@pytest.mark.parametrize("creating", [True, False], ids=["create", "other-call"])
@pytest.mark.parametrize("google_status", ["UNAVAILABLE", "RESOURCE_EXHAUSTED"])
def test_a_503_with_googles_body_is_an_overload_of_a_create_only(
    creating: bool, google_status: str
) -> None:
    """A create's 503 that carries Google's error body made nothing (the model was
    overloaded): `Overloaded`, a rate signal the engine knows created nothing; a 5xx of a
    create without that body may have generated (below). Any other call's 503 is an
    ordinary transient fault."""
    body = {"error": {"code": 503, "message": "The model is overloaded. Please try again later.",
                      "status": google_status}}
    error = error_of(_google(503, body), body, creating=creating)
    assert isinstance(error, TransientError) and error.code == google_status
    assert isinstance(error, Overloaded) is creating


@pytest.mark.parametrize(
    ("message", "details", "overloaded"),
    [
        pytest.param("The model is experiencing high demand. Please try again later.", [], True,
                     id="high-demand"),
        pytest.param("The model is overloaded. Please try again later.", [], True,
                     id="overloaded"),
        pytest.param("You exceeded your current quota, please check your plan and billing "
                     "details.", [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                                   "violations": []}], False, id="quota"),
        pytest.param("Your billing account has exceeded its spending limit for the last 10 "
                     "minutes.", [], False, id="spend-cap"),
    ],
)
def test_a_429_is_a_rate_limit_and_an_overload_when_google_says_so(
    message: str, details: list[Any], overloaded: bool
) -> None:
    """Every 429 made nothing; "high demand" / "overloaded" is the model's trouble
    (`Overloaded`), quota and spend cap the account's (`RateLimited`, the throttle's)."""
    body = {"error": {"code": 429, "message": message, "status": "RESOURCE_EXHAUSTED",
                      "details": details}}
    error = error_of(_google(429, body), body, creating=True)
    assert isinstance(error, RateLimited) and error.code == "RESOURCE_EXHAUSTED"
    assert isinstance(error, Overloaded) is overloaded


def test_retry_info_wins_over_retry_after_and_retry_after_serves_without_it() -> None:
    retry_info = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}]
    for details, header, expected in ((retry_info, "3", 12.0), ([], "3", 3.0), ([], None, None)):
        body = {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE",
                          "details": details}}
        headers = {"Retry-After": header} if header else {}
        error = error_of(_google(503, body, **headers), body, creating=True)
        assert isinstance(error, Overloaded) and error.retry_after == expected


@pytest.mark.parametrize("kind", ["unavailable", "high_demand", "spend_cap"])
@pytest.mark.parametrize("retry_s", [None, 7.0], ids=["no-retry-info", "retry-info"])
def test_an_overload_creates_nothing_and_waits_what_retry_info_says(
    env: dict[str, str], emulator: GeminiEmulator, kind: str, retry_s: float | None
) -> None:
    """protocols.md §11, §10: 503 UNAVAILABLE or 429 RESOURCE_EXHAUSTED ("high demand", a
    spend cap), with or without RetryInfo; none carries an image, none is billed."""
    emulator.configure(overload=kind, overload_retry_s=retry_s)
    with pytest.raises(RateLimited) as caught:
        run(submit(provider_for(env), ImageRequest("too busy")))
    status = "UNAVAILABLE" if kind == "unavailable" else "RESOURCE_EXHAUSTED"
    assert caught.value.code == status
    assert caught.value.retry_after == retry_s
    assert isinstance(caught.value, Overloaded) is (kind != "spend_cap")
    assert emulator.creates == [] and emulator.tasks == {}
    emulator.configure(overload="none")
    assert run(submit(provider_for(env), ImageRequest("calm again"))).finished is not None


def test_a_503_without_googles_body_is_a_lost_answer(
    env: dict[str, str], emulator: GeminiEmulator
) -> None:
    """The image was made and its answer lost on the way (an empty 503): nothing says it was
    not generated, so it is no overload: a transient fault the engine treats as a create that
    may exist (uncertain, never sent again)."""
    emulator.configure(bare_503=True)
    with pytest.raises(TransientError) as caught:
        run(submit(provider_for(env), ImageRequest("made, then lost")))
    assert not isinstance(caught.value, RateLimited)
    assert len(emulator.creates) == 1


def test_the_overload_switch_takes_only_its_readings(emulator: GeminiEmulator) -> None:
    with pytest.raises(ValueError, match="overload must be one of"):
        emulator.configure(overload="meltdown")
    emulator.configure(overload="spend_cap")
    emulator.hub.reset()
    assert emulator.readings.overload == "none"


def test_a_proxy_page_goes_to_the_ladder(env: dict[str, str], emulator: GeminiEmulator) -> None:
    emulator.configure(submit_5xx_prob=1.0, seed=3)
    with pytest.raises(TransientError) as caught:
        run(submit(provider_for(env), ImageRequest("overloaded")))
    assert caught.value.code == "INTERNAL" and not isinstance(caught.value, RateLimited)
    assert emulator.creates == []


# -- model ids -------------------------------------------------------------------------------

GA, PREVIEW = "gemini-3-pro-image", "gemini-3-pro-image-preview"


def test_the_ga_model_is_the_default_and_the_preview_stays_selectable() -> None:
    caps = GeminiProvider.capabilities
    assert GeminiProvider.model == caps.models[0] == GA and PREVIEW in caps.models
    batch = GeminiBatchProvider
    assert batch.model == GA and batch.capabilities.models == caps.models


def test_a_retired_model_id_is_model_not_found_naming_the_other(
    env: dict[str, str], emulator: GeminiEmulator, hub: EmulatorHub
) -> None:
    """Google's 404 NOT_FOUND for `models/...` (the emulator answers exactly its shape): a
    setting of this channel and model, nothing created; the other ids still serve."""
    emulator.configure(retired_models=(PREVIEW,))
    answer = post(hub, a_body(), path=f"/v1beta/models/{PREVIEW}:generateContent")
    error = answer.json()["error"]
    assert answer.status_code == 404 and set(error) == {"code", "message", "status"}
    assert (error["code"], error["status"]) == (404, "NOT_FOUND")
    assert error["message"].startswith(f"models/{PREVIEW} is not found for API version v1beta")
    with pytest.raises(ModelNotFound) as caught:
        run(submit(provider_for(env), ImageRequest("old id", options={"model": PREVIEW})))
    assert (caught.value.model, caught.value.others, caught.value.code) == (
        PREVIEW, (GA,), "model_not_found")
    assert PREVIEW in caught.value.message and f"use {GA}" in caught.value.message
    assert emulator.creates == []
    assert run(submit(provider_for(env), ImageRequest("new id"))).finished is not None


def test_a_batch_of_a_retired_model_is_model_not_found(
    env: dict[str, str], emulator: GeminiEmulator
) -> None:
    emulator.configure(retired_models=(PREVIEW,))

    async def go() -> None:
        provider = GeminiBatchProvider(GeminiBatchProvider.settings_from_env(env))
        try:
            with pytest.raises(ModelNotFound) as caught:
                await provider.create_batch("nbp-retired", [
                    ("a", ImageRequest("x", options={"model": PREVIEW}))])
            assert caught.value.model == PREVIEW and caught.value.others == (GA,)
        finally:
            await provider.aclose()

    run(go())
    assert emulator.batches == {} and emulator.creates == []


# -- service tiers ---------------------------------------------------------------------------


def test_the_tier_goes_top_level_as_service_tier_and_standard_goes_unsaid(
    env: dict[str, str], emulator: GeminiEmulator
) -> None:
    """`serviceTier` beside `contents` (google-genai's `_GenerateContentConfig_to_mldev`,
    Google's REST examples), lowercase as the SDK sends; standard is what no field means."""
    sent = {}
    for tier in ("standard", "flex", "priority"):
        submitted = run(submit(provider_for(env), ImageRequest(
            f"tier {tier}", options={"service_tier": tier})))
        sent[tier] = emulator.tasks[submitted.task_id].body.get("serviceTier")
    assert sent == {"standard": None, "flex": "flex", "priority": "priority"}
    assert "serviceTier" not in request_body(ImageRequest("x"))  # a batch line has no tier


def test_the_tier_that_served_is_reported_and_priced(
    env: dict[str, str], emulator: GeminiEmulator
) -> None:
    """Cost follows the `x-gemini-service-tier` header: flex half, priority twice (the top
    of Google's "75-100 % more", an estimate); priority over its limit is served and billed
    as standard without a word but the header."""
    def served(tier: str) -> Finished:
        submitted: Submitted = run(submit(provider_for(env), ImageRequest(
            "the same lemon", options={"service_tier": tier})))
        finished = submitted.finished
        assert finished is not None and finished.cost_usd is not None
        return finished

    standard = served("standard")
    assert standard.service_tier == "standard" and standard.cost_usd is not None
    flex, priority = served("flex"), served("priority")
    assert flex.service_tier == "flex" and priority.service_tier == "priority"
    assert flex.cost_usd == pytest.approx(standard.cost_usd / 2, abs=1e-6)
    assert priority.cost_usd == pytest.approx(standard.cost_usd * 2, abs=1e-6)
    emulator.configure(priority="standard")
    fell_back = served("priority")
    assert fell_back.service_tier == "standard"
    assert fell_back.cost_usd == pytest.approx(standard.cost_usd)


@pytest.mark.parametrize(("tier", "reading", "factor"), [
    ("standard", {}, 1.0),
    ("flex", {}, 0.5),                                   # "50 % discount"
    ("priority", {}, 2.0),                               # "100 % more": the top, by default
    ("priority", {"priority_price": "bottom"}, 1.75),    # "75 % more": the bottom
    ("priority", {"priority": "standard"}, 1.0),         # over its limit: served as standard
])
def test_the_spend_cap_counts_each_request_at_the_tier_that_served_it(
    env: dict[str, str], emulator: GeminiEmulator, tier: str, reading: dict[str, str],
    factor: float,
) -> None:
    """§10 [C OPT, RL2]: the billing account's rolling cap counts what Google bills, and a
    tier changes that: flex half the standard price, priority 75-100 % more, priority that
    fell back to standard at standard. The cap lets through as many requests as fit at that
    price, then answers 429 creating nothing."""
    cap = 0.5
    emulator.configure(spend_cap_usd=cap, spend_cap_window_s=600.0, **reading)
    one = request_cost(request_body(ImageRequest("a tiered quince"))) * factor

    async def until_refused() -> int:
        provider = provider_for(env)
        try:
            for sent in range(20):
                try:
                    await provider.submit(ImageRequest(
                        "a tiered quince", options={"service_tier": tier}))
                except RateLimited as exc:
                    assert exc.code == "RESOURCE_EXHAUSTED"
                    return sent
            return 20
        finally:
            await provider.aclose()

    accepted = run(until_refused())
    assert accepted == int(cap // one) and len(emulator.creates) == accepted
    assert [bill.usd for bill in emulator.billing.bills] == pytest.approx([one] * accepted)
    assert emulator.billing.refusals == 1 and emulator.billing.peak_usd <= cap


def test_the_priority_price_switch_takes_only_its_readings(emulator: GeminiEmulator) -> None:
    with pytest.raises(ValueError, match="priority_price must be one of"):
        emulator.configure(priority_price="middle")


@pytest.mark.parametrize("shed", ["shed_429", "shed_503"])
def test_a_shed_flex_request_waits_unless_the_fallback_is_asked_for(
    env: dict[str, str], emulator: GeminiEmulator, shed: str
) -> None:
    """Flex "may be shed" under load: nothing was created, the engine waits as for any
    overload; with `flex_fallback` the same request goes again at once at the standard tier
    (and price), one image created."""
    emulator.configure(flex=shed)
    with pytest.raises(Overloaded):
        run(submit(provider_for(env), ImageRequest("cheap", options={"service_tier": "flex"})))
    assert emulator.creates == []
    submitted = run(submit(provider_for(env), ImageRequest(
        "cheap", options={"service_tier": "flex", "flex_fallback": True})))
    assert submitted.finished is not None and submitted.finished.service_tier == "standard"
    [created] = emulator.creates
    assert "serviceTier" not in created.body
    assert len(emulator.requests) == 3  # shed, shed, then the standard request


def test_a_refused_tier_is_said_once_and_dropped_for_the_adapter(
    env: dict[str, str], emulator: GeminiEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """An API that does not know `serviceTier` answers 400 naming it: nothing was created,
    the request goes again without it at once, and this adapter (the run's channel) sends no
    tier again; one warning says so."""
    emulator.configure(tier_field="unknown")

    async def go() -> list[Submitted]:
        provider = provider_for(env)
        try:
            return [await provider.submit(ImageRequest(
                f"flex {n}", options={"service_tier": "flex"})) for n in range(3)]
        finally:
            await provider.aclose()

    with caplog.at_level(logging.WARNING, logger="nbp.providers.gemini"):
        done = run(go())
    assert [s.finished.service_tier for s in done if s.finished] == ["standard"] * 3
    assert len(emulator.creates) == 3 and len(emulator.requests) == 4  # one refusal
    warnings = [r for r in caplog.records if "refuses service_tier" in r.getMessage()]
    assert len(warnings) == 1 and "serviceTier" in warnings[0].getMessage()


def test_a_flex_request_is_waited_for_fifteen_minutes_and_more() -> None:
    timeouts: dict[str | None, float] = {}
    answer = {"candidates": [{"content": {"parts": [
        {"inlineData": {"mimeType": "image/png", "data": b64(png())}}]},
        "finishReason": "STOP"}]}

    def handler(request: httpx.Request) -> httpx.Response:
        tier = json.loads(request.content).get("serviceTier")
        timeouts[tier] = request.extensions["timeout"]["read"]
        return httpx.Response(200, json=answer, headers={"x-gemini-service-tier": "FLEX"})

    provider = GeminiProvider(GeminiProvider.settings_from_env({"GEMINI_API_KEY": "k"}))
    provider.client = http.make_client(30, secret_headers=("x-goog-api-key",),
                                       transport=httpx.MockTransport(handler))
    flex = run(submit(provider, ImageRequest("slow", options={"service_tier": "flex"})))
    assert flex.finished is not None and flex.finished.service_tier == "flex"  # any casing
    provider.client = http.make_client(30, transport=httpx.MockTransport(handler))
    run(submit(provider, ImageRequest("quick")))
    assert timeouts == {"flex": FLEX_TIMEOUT_S, None: 300.0} and FLEX_TIMEOUT_S >= 15 * 60


def test_tiers_are_gemini_options_only(env: dict[str, str], emulator: GeminiEmulator) -> None:
    with pytest.raises(LimitExceeded, match="service_tier"):
        run(submit(provider_for(env), ImageRequest("x", options={"service_tier": "gold"})))
    batch = GeminiBatchProvider(GeminiBatchProvider.settings_from_env(env))
    with pytest.raises(LimitExceeded, match="service_tier"):
        batch.checked_options(ImageRequest("x", options={"service_tier": "flex"}))
    run(batch.aclose())
    assert emulator.requests == []
    assert GeminiProvider.capabilities.price_factors == {
        "service_tier": {"standard": 1.0, "flex": 0.5, "priority": 2.0}}


def test_the_job_schema_describes_the_tier_options_the_adapter_takes() -> None:
    """For editors, the job schema describes `options.gemini.service_tier` and
    `flex_fallback`; only the option schema checks them (one message per problem)."""
    described = load_job_schema()["properties"]["options"]["properties"]["gemini"]["properties"]
    taken = GeminiProvider.capabilities.option_schema["properties"]
    assert set(described) <= set(taken) and {"service_tier", "flex_fallback"} <= set(described)
    assert described["service_tier"]["examples"] == list(SERVICE_TIERS)
    assert taken["service_tier"]["enum"] == list(SERVICE_TIERS)
    assert all("enum" not in d and "type" not in d for d in described.values())
