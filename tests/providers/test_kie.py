"""What is specific to Kie.ai (protocols.md §4, seeds/kie.txt): the wire body, the body-code
envelope on HTTP 200, JSON-string fields, both readings of an unknown or expired task
(protocols.md §11), the upload host (reached by `prepare`), and the options it accepts.
Generic behaviour (states, faults, auth, limits) is in the shared conformance suite."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
import pytest

from nbp.providers.base import Finished, ImageRequest, Pending, Reference, Submitted
from nbp.providers.emulator.hub import EmulatorHub
from nbp.providers.emulator.kie import KieEmulator
from nbp.providers.errors import (
    AuthError,
    ContentRejected,
    InsufficientBalance,
    LimitExceeded,
    ProviderError,
    RateLimited,
    Rejected,
    TaskFailed,
    TaskNotFound,
    TransientError,
)
from nbp.providers.kie import KieProvider, task_times

T = TypeVar("T")
PNG = b"\x89PNG\r\n\x1a\n" + b"product-photo" * 50
PROVIDER = "kie"
LATENCY_S = 0.1


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def finish(provider: KieProvider, submitted: Submitted) -> Finished:
    deadline = time.monotonic() + 5
    while isinstance(outcome := await provider.poll(submitted), Pending):
        assert time.monotonic() < deadline, "task never finished"
        await asyncio.sleep(0.02)
    return outcome


def provider_for(env: dict[str, str], **overrides: str) -> KieProvider:
    return KieProvider(KieProvider.settings_from_env({**env, **overrides}))


def raw(env: dict[str, str], method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {env['KIE_API_KEY']}", **kwargs.pop("headers", {})}
    url = env["NBP_KIE_BASE_URL"] + path
    return httpx.request(method, url, headers=headers, timeout=10, **kwargs)


def valid_body(**input_changes: Any) -> dict[str, Any]:
    inp = {"prompt": "a lemon", "image_input": [], "aspect_ratio": "1:1",
           "resolution": "1K", "output_format": "png", **input_changes}
    return {"model": "nano-banana-pro", "input": inp}


# -- wire format --------------------------------------------------------------------------


def test_create_body_sends_every_field_and_the_callback_option(
    env: dict[str, str], emulator: KieEmulator
) -> None:
    request = ImageRequest(
        "a lemon on marble", aspect_ratio="4:5", resolution="2K", output_format="jpg",
        references=(Reference("https://example.com/lemon.png"),),
        options={"callBackUrl": "https://hooks.example.com/kie"},
    )

    async def go() -> Finished:
        async with provider_for(env) as provider:
            return await finish(provider, await provider.submit(request))

    finished = run(go())
    assert emulator.creates[0].body == {
        "model": "nano-banana-pro",
        "callBackUrl": "https://hooks.example.com/kie",
        "input": {
            "prompt": "a lemon on marble",
            "image_input": ["https://example.com/lemon.png"],
            "aspect_ratio": "4:5",
            "resolution": "2K",
            "output_format": "jpg",
        },
    }
    assert finished.images[0].mime_type == "image/jpeg"
    assert finished.cost_usd == pytest.approx(0.09)  # 18 credits at $0.005


def test_record_info_carries_json_strings_and_millisecond_times(
    env: dict[str, str], emulator: KieEmulator
) -> None:
    latency_s = 0.5  # long enough for the first look to come before the end, under load
    emulator.configure(latency_s=latency_s, queue_s=0.2)
    created = raw(env, "POST", "/api/v1/jobs/createTask", json=valid_body()).json()
    task_id = created["data"]["taskId"]
    assert created["code"] == 200 and created["msg"] == "success"
    assert len(task_id) == 32 and int(task_id, 16) >= 0

    early = raw(env, "GET", "/api/v1/jobs/recordInfo", params={"taskId": task_id}).json()
    assert early["data"]["state"] in ("waiting", "queuing", "generating")
    assert early["data"]["resultJson"] == "" and early["data"]["completeTime"] is None
    time.sleep(latency_s + 0.05)
    done = raw(env, "GET", "/api/v1/jobs/recordInfo", params={"taskId": task_id}).json()

    data = done["data"]
    assert (done["code"], done["msg"], data["state"]) == (200, "success", "success")
    assert json.loads(data["param"]) == valid_body()
    assert json.loads(data["resultJson"])["resultUrls"][0].startswith("http")
    assert data["createTime"] > 1_600_000_000_000
    assert data["completeTime"] - data["createTime"] == pytest.approx(latency_s * 1000, abs=1)
    assert data["costTime"] == pytest.approx((latency_s - 0.2) * 1000, abs=1)  # running


@pytest.mark.parametrize("unit", ["ms", "s"])
def test_queue_and_generation_times_are_the_records_own(
    env: dict[str, str], emulator: KieEmulator, unit: str
) -> None:
    """costTime (ms) is the time the task ran; the rest of completeTime - createTime the
    wait before it, the timestamps in milliseconds (S3's example) or seconds (a reading)."""
    emulator.configure(latency_s=0.6, queue_s=0.2, timestamps=unit)

    async def go() -> Finished:
        async with provider_for(env) as provider:
            return await finish(provider, await provider.submit(ImageRequest("a timed lemon")))

    finished = run(go())
    assert finished.generation_s == pytest.approx(0.4, abs=0.002)
    assert finished.queue_s is not None
    if unit == "ms":
        assert finished.queue_s == pytest.approx(0.2, abs=0.002)
    else:  # whole seconds: the wait is known to the second
        assert 0 <= finished.queue_s <= 1.0


@pytest.mark.parametrize(("record", "times"), [
    pytest.param({"createTime": 1757584164490, "completeTime": 1757584184490,
                  "costTime": 15000}, (5.0, 15.0), id="milliseconds"),
    pytest.param({"createTime": 1757584164, "completeTime": 1757584184, "costTime": 15000},
                 (5.0, 15.0), id="seconds"),
    pytest.param({"createTime": "1757584164490", "completeTime": "1757584170490",
                  "costTime": "9000"}, (0.0, 9.0), id="text-and-a-duration-over-the-span"),
    pytest.param({"createTime": 1757584164490, "costTime": 15000}, (None, 15.0),
                 id="no-completeTime"),
    pytest.param({"createTime": 1757584164490, "completeTime": None, "costTime": None},
                 (None, None), id="none"),
])
def test_task_times_read_every_spelling(record: dict[str, Any], times: tuple[Any, Any]) -> None:
    assert task_times(record) == times


def test_pending_states_are_kies_own_words(env: dict[str, str], emulator: KieEmulator) -> None:
    emulator.configure(latency_s=0.4)

    async def go() -> set[str]:
        seen: set[str] = set()
        async with provider_for(env) as provider:
            submitted = await provider.submit(ImageRequest("a lemon"))
            while isinstance(outcome := await provider.poll(submitted), Pending):
                seen.add(outcome.state)
                await asyncio.sleep(0.01)
        return seen

    seen = run(go())
    assert "generating" in seen and seen <= {"waiting", "queuing", "generating"}


def test_unknown_task_is_body_422_recordinfo_is_null(env: dict[str, str]) -> None:
    answer = raw(env, "GET", "/api/v1/jobs/recordInfo", params={"taskId": "nope"})
    assert answer.status_code == 200
    assert answer.json() == {"code": 422, "msg": "recordInfo is null", "data": None}

    async def go() -> None:
        async with provider_for(env) as provider:
            await provider.poll(Submitted("kie", "nope"))

    with pytest.raises(TaskNotFound):
        run(go())


@pytest.mark.parametrize("reading", ["code_422", "data_null"])
def test_an_expired_task_is_not_found_under_both_readings(
    env: dict[str, str], emulator: KieEmulator, reading: str
) -> None:
    """protocols.md §11: `code: 422` "recordInfo is null", or a `code: 200` envelope with
    `data: null`; a record past its time (`record_ttl_s`) answers like an unknown one."""
    emulator.configure(unknown_task=reading, record_ttl_s=0.3)

    async def go() -> tuple[Pending | Finished, Exception]:
        async with provider_for(env) as provider:
            submitted = await provider.submit(ImageRequest("a lemon that expires"))
            first = await provider.poll(submitted)
            await asyncio.sleep(0.35)
            with pytest.raises(TaskNotFound) as caught:
                await provider.poll(submitted)
            return first, caught.value

    first, error = run(go())
    assert isinstance(first, Pending | Finished)
    answer = raw(env, "GET", "/api/v1/jobs/recordInfo", params={"taskId": "nope"}).json()
    if reading == "data_null":
        assert answer == {"code": 200, "msg": "success", "data": None}
        assert error.code == "data_null"
    else:
        assert answer == {"code": 422, "msg": "recordInfo is null", "data": None}
        assert error.code == "422"


# -- failures as Kie shows them -----------------------------------------------------------


def test_wrong_key_is_body_401_on_http_200(env: dict[str, str], emulator: KieEmulator) -> None:
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": "Token " + "x"}):
        answer = raw(env, "POST", "/api/v1/jobs/createTask", json=valid_body(), headers=headers)
        assert answer.status_code == 200
        assert answer.json()["code"] == 401
        assert answer.json()["msg"] == "You do not have access permissions"
    assert emulator.creates == []


def test_moderation_is_a_fail_state_and_other_failures_are_not(
    env: dict[str, str], emulator: KieEmulator
) -> None:
    async def go(prompt: str) -> None:
        async with provider_for(env) as provider:
            await finish(provider, await provider.submit(ImageRequest(prompt)))

    with pytest.raises(ContentRejected) as content:
        run(go("a lemon [emulate:content]"))
    with pytest.raises(TaskFailed) as failed:
        run(go("a lemon [emulate:fail]"))
    assert not isinstance(failed.value, ContentRejected)
    assert (content.value.code, failed.value.code) == ("400", "500")
    record = emulator.record(emulator.tasks[emulator.creates[0].task_id])
    assert record["state"] == "fail" and "content policy" in record["failMsg"]


def test_noimage_is_success_with_empty_result_urls(
    env: dict[str, str], emulator: KieEmulator
) -> None:
    async def go() -> None:
        async with provider_for(env) as provider:
            await finish(provider, await provider.submit(ImageRequest("x [emulate:noimage]")))

    with pytest.raises(TaskFailed) as caught:
        run(go())
    assert caught.value.code == "no_image"
    record = emulator.record(emulator.tasks[emulator.creates[0].task_id])
    assert record["state"] == "success"
    assert json.loads(record["resultJson"]) == {"resultUrls": []}


@pytest.mark.parametrize(
    ("code", "msg", "error"),
    [
        pytest.param(402, "Insufficient credits", InsufficientBalance, id="402-balance"),
        pytest.param(400, "Invalid request parameters", Rejected, id="400-rejected"),
        pytest.param(404, "Not found", Rejected, id="404-on-create-rejected"),
        pytest.param(422, "Parameter validation failed", Rejected, id="422-rejected"),
        pytest.param(500, "Internal server error", TransientError, id="500-transient"),
        pytest.param(500, "This field is required", Rejected, id="500-validation-rejected"),
    ],
)
def test_body_codes_become_the_exception_tree(
    env: dict[str, str], emulator: KieEmulator, code: int, msg: str,
    error: type[ProviderError],
) -> None:
    emulator.force_code(code, msg)

    async def go() -> None:
        async with provider_for(env) as provider:
            await provider.submit(ImageRequest("a lemon"))

    with pytest.raises(error) as caught:
        run(go())
    assert type(caught.value) is error
    assert caught.value.code == str(code) and msg in caught.value.message


def test_kie_does_not_document_apikleys_extra_codes(emulator: KieEmulator) -> None:
    with pytest.raises(ValueError):
        emulator.force_code(455)


def test_rate_limit_is_body_429_on_http_200_and_not_queued(
    env: dict[str, str], emulator: KieEmulator
) -> None:
    emulator.configure(rate_limit=(1, 60.0))
    assert raw(env, "POST", "/api/v1/jobs/createTask", json=valid_body()).json()["code"] == 200
    second = raw(env, "POST", "/api/v1/jobs/createTask", json=valid_body())
    assert (second.status_code, second.json()["code"]) == (200, 429)

    async def go() -> None:
        async with provider_for(env) as provider:
            await provider.submit(ImageRequest("a lemon"))

    with pytest.raises(RateLimited):
        run(go())
    assert len(emulator.creates) == 1


# -- emulator strictness ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param({**valid_body(), "model": "nano-banana"}, 422, id="model"),
        pytest.param(valid_body(prompt="x" * 20001), 422, id="prompt-over-20000"),
        pytest.param(valid_body(prompt=""), 422, id="prompt-empty"),
        pytest.param(valid_body(image_input=["https://e.com/a.png"] * 9), 422, id="9-images"),
        pytest.param(valid_body(image_input=["/tmp/a.png"]), 422, id="image-not-url"),
        pytest.param(valid_body(aspect_ratio="7:3"), 422, id="ratio"),
        pytest.param(valid_body(resolution="8K"), 422, id="resolution"),
        pytest.param(valid_body(output_format="webp"), 422, id="webp"),
        pytest.param({**valid_body(), "callBackUrl": "not a url"}, 422, id="callback"),
        pytest.param({"model": "nano-banana-pro"}, 422, id="no-input"),
        pytest.param(b"{not json", 400, id="bad-json"),
    ],
)
def test_emulator_rejects_what_kie_rejects(
    env: dict[str, str], emulator: KieEmulator, body: Any, code: int
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = raw(env, "POST", "/api/v1/jobs/createTask", content=content,
                 headers={"Content-Type": "application/json"})
    assert (answer.status_code, answer.json()["code"]) == (200, code)
    assert emulator.creates == []


def test_emulator_accepts_the_longest_prompt_and_auto_ratio(
    env: dict[str, str], emulator: KieEmulator
) -> None:
    answer = raw(env, "POST", "/api/v1/jobs/createTask",
                 json=valid_body(prompt="x" * 20000, aspect_ratio="auto"))
    assert answer.json()["code"] == 200
    assert len(emulator.creates) == 1


# -- uploads ------------------------------------------------------------------------------


def test_upload_host_is_separate_and_overridable(hub: EmulatorHub, env: dict[str, str]) -> None:
    documented = KieProvider.settings_from_env({"KIE_API_KEY": "k"})
    assert documented.extra_urls["upload"] == "https://kieai.redpandaai.co"
    assert KieProvider.settings_from_env(env).extra_urls["upload"] == f"{hub.url}/kie-upload"


def test_local_reference_is_uploaded_once_per_content(
    hub: EmulatorHub, env: dict[str, str], emulator: KieEmulator
) -> None:
    photo = Reference("shop/sku-1.png", data=PNG)
    other = Reference("shop/sku-2.jpg", data=b"\xff\xd8" + b"jpeg" * 40, mime_type="image/jpeg")

    async def go() -> None:
        async with provider_for(env) as provider:
            await asyncio.gather(
                *(provider.submit(ImageRequest(f"lemon {i}", references=(photo,)))
                  for i in range(3)),
                provider.submit(ImageRequest("pair", references=(photo, other))),
            )

    run(go())
    assert len(emulator.uploads) == 2
    assert emulator.requests.count(("POST", "/kie-upload/api/file-stream-upload")) == 2
    assert {u.file_path.rsplit(".", 1)[1] for u in emulator.uploads} == {"png", "jpg"}
    pair = next(t for t in emulator.tasks.values() if t.prompt == "pair")
    assert [httpx.get(url).content for url in pair.references] == [PNG, other.data]
    assert all(url.startswith(f"{hub.url}/files/kie-upload-") for url in pair.references)


def test_prepare_uploads_and_the_create_then_carries_only_urls(
    hub: EmulatorHub, env: dict[str, str], emulator: KieEmulator
) -> None:
    url = "https://example.com/a.png"
    request = ImageRequest("prepared lemon", references=(Reference("shop/sku-1.png", PNG),
                                                         Reference(url)))

    async def go() -> tuple[ImageRequest, int, Submitted]:
        async with provider_for(env) as provider:
            prepared = await provider.prepare(request)
            sent = len(emulator.requests)
            return prepared, sent, await provider.submit(prepared)

    prepared, sent, submitted = run(go())
    [upload] = emulator.uploads
    assert sent == 1 and emulator.creates[0].task_id == submitted.task_id
    assert [(r.uri, r.data) for r in prepared.references] == [(upload.download_url, None),
                                                              (url, None)]
    assert emulator.requests[1:] == [("POST", "/kie/api/v1/jobs/createTask")]
    assert emulator.creates[0].body["input"]["image_input"] == [upload.download_url, url]


def test_prepare_checks_before_it_uploads(env: dict[str, str], emulator: KieEmulator) -> None:
    gif = Reference("a.gif", b"GIF89a" + bytes(64), mime_type="image/gif")

    async def go() -> None:
        async with provider_for(env) as provider:
            with pytest.raises(LimitExceeded):
                await provider.prepare(ImageRequest("x", references=(
                    Reference("a.png", PNG), gif)))
            with pytest.raises(LimitExceeded):
                await provider.prepare(ImageRequest("x", references=(
                    Reference("a.png", PNG), Reference("not/a/url.png"))))

    run(go())
    assert emulator.requests == [] and emulator.uploads == []


def test_upload_with_wrong_key_is_auth_error_before_any_create(
    env: dict[str, str], emulator: KieEmulator
) -> None:
    async def go() -> None:
        async with provider_for(env, KIE_API_KEY="wrong-key-123") as provider:
            await provider.submit(ImageRequest("x", references=(Reference("a.png", PNG),)))

    with pytest.raises(AuthError) as caught:
        run(go())
    assert "wrong-key-123" not in str(caught.value)
    assert emulator.uploads == [] and emulator.creates == []


def test_emulator_serves_base64_and_url_uploads(env: dict[str, str], emulator: KieEmulator) -> None:
    upload = env["NBP_KIE_UPLOAD_BASE_URL"]
    headers = {"Authorization": f"Bearer {env['KIE_API_KEY']}"}
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    first = httpx.post(f"{upload}/api/file-base64-upload", headers=headers,
                       json={"base64Data": data_url, "uploadPath": "x", "fileName": "a.png"}).json()
    assert (first["code"], first["success"], first["data"]["mimeType"]) == (200, True, "image/png")
    assert httpx.get(first["data"]["downloadUrl"]).content == PNG
    second = httpx.post(f"{upload}/api/file-url-upload", headers=headers,
                        json={"fileUrl": first["data"]["downloadUrl"], "uploadPath": "y"}).json()
    assert second["data"]["filePath"] == "y/" + first["data"]["downloadUrl"].rsplit("/", 1)[1]
    assert httpx.get(second["data"]["downloadUrl"]).content == PNG
    denied = httpx.post(f"{upload}/api/file-base64-upload", json={"base64Data": "AA=="}).json()
    assert denied["code"] == 401


# -- options and local limits -------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        pytest.param({"webhook": "https://e.com"}, "webhook", id="unknown-option"),
        pytest.param({"callBackUrl": "ftp://e.com/x"}, "callBackUrl", id="not-http"),
        pytest.param({"callBackUrl": 5}, "callBackUrl", id="not-a-string"),
    ],
)
def test_options_are_validated_before_sending(
    env: dict[str, str], emulator: KieEmulator, options: dict[str, Any], named: str
) -> None:
    async def go() -> None:
        async with provider_for(env) as provider:
            await provider.submit(ImageRequest("a lemon", options=options))

    with pytest.raises(LimitExceeded, match=named):
        run(go())
    assert emulator.requests == []


@pytest.mark.parametrize(
    "reference",
    [
        pytest.param(Reference("big.png", data=b"\0" * (30 * 1024 * 1024 + 1)), id="over-30MB"),
        pytest.param(Reference("anim.gif", data=b"GIF89a", mime_type="image/gif"), id="gif"),
    ],
)
def test_reference_files_are_checked_before_upload(
    env: dict[str, str], emulator: KieEmulator, reference: Reference
) -> None:
    async def go() -> None:
        async with provider_for(env) as provider:
            await provider.submit(ImageRequest("a lemon", references=(reference,)))

    with pytest.raises(LimitExceeded):
        run(go())
    assert emulator.requests == []


def test_capabilities_match_the_docs() -> None:
    caps = KieProvider.capabilities
    assert (caps.max_prompt_chars, caps.max_references, caps.output_formats) == (
        20000, 8, ("png", "jpg"))
    assert dict(caps.prices_usd) == {"1K": 0.09, "2K": 0.09, "4K": 0.12}
    assert caps.default_rate == "20/10s" and caps.price_is_published
    assert not (caps.can_cancel or caps.idempotent_submit or caps.recoverable_submit)
