"""HiAPI-only behaviour: the wire body field by field, Bearer auth, the error envelope,
Idempotency-Key replay / mismatch / processing, the callback option, URL-only references.
Generic behaviour (states, markers, faults) is in the shared conformance suite."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import httpx
import pytest

from nbp.providers import registry
from nbp.providers.base import ImageRequest, Pending, Reference, Submitted
from nbp.providers.emulator.hiapi import HiapiEmulator
from nbp.providers.emulator.hub import TEST_CREDENTIALS, EmulatorHub
from nbp.providers.errors import (
    AuthError,
    ContentRejected,
    LimitExceeded,
    RateLimited,
    Rejected,
    SubmitUncertain,
    TaskFailed,
    TaskNotFound,
    TransientError,
)
from nbp.providers.hiapi import HiapiProvider

PROVIDER = "hiapi"
LATENCY_S = 0.15
KEY = TEST_CREDENTIALS["HIAPI_API_KEY"]
TASK_ID = re.compile(r"^tk-hiapi-[0-9A-HJKMNP-TV-Z]{26}$")
REF = "https://example.com/reference.png"


def provider_for(hub: EmulatorHub, **env: str) -> HiapiProvider:
    return HiapiProvider(HiapiProvider.settings_from_env({**hub.environ(), **env}))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def until_done(provider: HiapiProvider, submitted: Submitted) -> tuple[list[str], Any]:
    states: list[str] = []
    for _ in range(200):
        outcome = await provider.poll(submitted)
        if not isinstance(outcome, Pending):
            return states, outcome
        states.append(outcome.state)
        await asyncio.sleep(0.01)
    raise AssertionError("task never finished")


def raw(hub: EmulatorHub, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}", **kwargs.pop("headers", {})}
    return httpx.request(method, f"{hub.base_url('hiapi')}{path}", headers=headers, **kwargs)


def body(prompt: str = "a banana", **input_fields: Any) -> dict[str, Any]:
    return {"model": "Nano-Banana-Pro", "input": {"prompt": prompt, **input_fields}}


# -- adapter: wire format and auth ---------------------------------------------------------


def test_wire_body_idempotency_key_and_task_id(
    hub: EmulatorHub, emulator: HiapiEmulator
) -> None:
    request = ImageRequest(
        prompt="Studio photo of a lemon",
        aspect_ratio="4:5",
        resolution="2K",
        output_format="jpg",
        references=(Reference(REF), Reference("https://example.com/b.jpg")),
        seed=7,
        options={"callback": {"url": "https://hooks.example.com/hiapi"}},
        idempotency_key="cell-1:attempt-0",
    )

    async def go() -> Submitted:
        async with provider_for(hub) as provider:
            result: Submitted = await provider.submit(request)
            return result

    submitted = run(go())
    assert TASK_ID.match(submitted.task_id)
    [create] = emulator.creates
    assert create.body == {
        "model": "Nano-Banana-Pro",
        "input": {
            "prompt": "Studio photo of a lemon",
            "image_input": [REF, "https://example.com/b.jpg"],
            "aspect_ratio": "4:5",
            "resolution": "2K",
            "output_format": "jpg",
        },
        "callback": {"url": "https://hooks.example.com/hiapi", "when": "final"},
    }
    assert create.idempotency_key == "cell-1:attempt-0"
    assert emulator.tasks[submitted.task_id].references == [REF, "https://example.com/b.jpg"]


def test_emulator_wants_bearer_scheme(hub: EmulatorHub, emulator: HiapiEmulator) -> None:
    response = raw(hub, "POST", "/v1/tasks", json=body(), headers={"Authorization": KEY})
    assert response.status_code == 401
    assert response.json() == {"code": 401, "message": response.json()["message"], "data": None}
    assert emulator.creates == []


def test_missing_key_names_the_variable_and_sends_nothing(
    hub: EmulatorHub, emulator: HiapiEmulator
) -> None:
    env = {k: v for k, v in hub.environ().items() if k != "HIAPI_API_KEY"}

    async def go() -> None:
        async with HiapiProvider(HiapiProvider.settings_from_env(env)) as provider:
            await provider.submit(ImageRequest(prompt="x"))

    with pytest.raises(AuthError, match="HIAPI_API_KEY"):
        run(go())
    assert emulator.requests == []


def test_registry_and_base_url_override(hub: EmulatorHub) -> None:
    assert registry.get_class("hiapi") is HiapiProvider
    assert HiapiProvider.settings_from_env({}).base_url == "https://api.hiapi.ai"
    settings = HiapiProvider.settings_from_env({"NBP_HIAPI_BASE_URL": "http://x:1/hiapi"})
    assert settings.base_url == "http://x:1/hiapi"
    caps = HiapiProvider.capabilities
    assert caps.idempotent_submit and not caps.can_cancel and not caps.price_is_published
    assert caps.reference_delivery == "url_only" and caps.max_references == 8


# -- adapter: states and failure shapes -------------------------------------------------------


def test_states_are_hiapi_words_and_result_is_downloadable(
    hub: EmulatorHub, emulator: HiapiEmulator
) -> None:
    async def go() -> tuple[list[str], bytes]:
        async with provider_for(hub) as provider:
            submitted = await provider.submit(ImageRequest(prompt="a pear", output_format="jpg"))
            states, finished = await until_done(provider, submitted)
            return states, await provider.download(finished.images[0])

    states, data = run(go())
    assert states and set(states) <= {"queued", "handling", "archiving"}
    assert data[:3] == b"\xff\xd8\xff"  # JPEG


def test_content_rejection_keeps_the_provider_code(
    hub: EmulatorHub, emulator: HiapiEmulator
) -> None:
    async def go() -> None:
        async with provider_for(hub) as provider:
            submitted = await provider.submit(ImageRequest(prompt="x [emulate:content]"))
            await until_done(provider, submitted)

    with pytest.raises(ContentRejected) as caught:
        run(go())
    assert caught.value.code == "CONTENT_POLICY_VIOLATION"


def test_generic_failure_is_not_a_content_rejection(
    hub: EmulatorHub, emulator: HiapiEmulator
) -> None:
    async def go() -> None:
        async with provider_for(hub) as provider:
            submitted = await provider.submit(ImageRequest(prompt="x [emulate:fail]"))
            await until_done(provider, submitted)

    with pytest.raises(TaskFailed) as caught:
        run(go())
    assert type(caught.value) is TaskFailed and caught.value.code == "TASK_FAILED"


def test_unknown_task_is_not_found(hub: EmulatorHub, emulator: HiapiEmulator) -> None:
    async def go() -> None:
        async with provider_for(hub) as provider:
            await provider.poll(Submitted("hiapi", "tk-hiapi-01HZTQ8BX2N3GM3YFK4Z9D7VQR"))

    with pytest.raises(TaskNotFound):
        run(go())


def test_rate_limit_answers_429_with_retry_after(
    hub: EmulatorHub, emulator: HiapiEmulator
) -> None:
    emulator.configure(rate_limit=(1, 30.0))

    async def go() -> None:
        async with provider_for(hub) as provider:
            await provider.submit(ImageRequest(prompt="one"))
            await provider.submit(ImageRequest(prompt="two"))

    with pytest.raises(RateLimited) as caught:
        run(go())
    assert caught.value.code == "RATE_LIMITED"
    assert caught.value.retry_after is not None and 25 <= caught.value.retry_after <= 30
    assert len(emulator.creates) == 1


def test_platform_busy_is_transient(hub: EmulatorHub, emulator: HiapiEmulator) -> None:
    emulator.configure(submit_5xx_prob=1.0)

    async def go() -> None:
        async with provider_for(hub) as provider:
            await provider.submit(ImageRequest(prompt="x"))

    with pytest.raises(TransientError) as caught:
        run(go())
    assert caught.value.code == "503" and emulator.creates == []


# -- idempotency ------------------------------------------------------------------------------


def test_lost_create_answer_is_replayed_by_resending_the_key(
    hub: EmulatorHub, emulator: HiapiEmulator
) -> None:
    emulator.configure(drop_after_create_prob=1.0)
    request = ImageRequest(prompt="a plum", idempotency_key="cell-9:0")

    async def go() -> tuple[str, Submitted, Any]:
        async with provider_for(hub) as provider:
            with pytest.raises(SubmitUncertain):
                await provider.submit(request)
            [created] = emulator.creates
            again = await provider.submit(request)  # the same key replays, never drops
            _, finished = await until_done(provider, again)
            return created.task_id, again, finished

    first_id, again, finished = run(go())
    assert again.task_id == first_id and again.extra == {"replay": "true"}
    assert len(emulator.creates) == 1 and len(emulator.tasks) == 1
    assert finished.images


def test_replay_header_and_no_new_record(hub: EmulatorHub, emulator: HiapiEmulator) -> None:
    headers = {"Idempotency-Key": "k-1"}
    first = raw(hub, "POST", "/v1/tasks", json=body(), headers=headers)
    second = raw(hub, "POST", "/v1/tasks", json=body(), headers=headers)
    assert first.status_code == second.status_code == 200
    assert "Idempotent-Replay" not in first.headers
    assert second.headers["Idempotent-Replay"] == "true"
    assert first.json() == second.json()
    assert first.json()["code"] == 200 and first.json()["message"] == "success"
    assert len(emulator.creates) == 1 and emulator.replays == 1
    third = raw(hub, "POST", "/v1/tasks", json=body(), headers={"Idempotency-Key": "k-2"})
    assert third.json()["data"]["taskId"] != first.json()["data"]["taskId"]


def test_same_key_different_body_is_rejected(hub: EmulatorHub, emulator: HiapiEmulator) -> None:
    async def go() -> None:
        async with provider_for(hub) as provider:
            await provider.submit(ImageRequest(prompt="one", idempotency_key="same"))
            await provider.submit(ImageRequest(prompt="two", idempotency_key="same"))

    with pytest.raises(Rejected) as caught:
        run(go())
    assert caught.value.code == "IDEMPOTENCY_KEY_MISMATCH"
    assert len(emulator.creates) == 1


def test_key_still_processing_is_rate_limited_with_retry_after(
    hub: EmulatorHub, emulator: HiapiEmulator
) -> None:
    emulator.configure(processing_s=5.0)
    request = ImageRequest(prompt="x", idempotency_key="busy")

    async def go() -> None:
        async with provider_for(hub) as provider:
            await provider.submit(request)
            await provider.submit(request)

    with pytest.raises(RateLimited) as caught:
        run(go())
    assert caught.value.code == "IDEMPOTENCY_KEY_PROCESSING"
    assert caught.value.retry_after is not None and 1 <= caught.value.retry_after <= 5


def test_keys_per_intent_within_the_replay_window(
    hub: EmulatorHub, emulator: HiapiEmulator
) -> None:
    """Keys are random per create intent and sent as they are: two intents are two tasks
    even with the same body inside the replay window; the same intent re-sent is replayed."""
    first = ImageRequest(prompt="a pear", idempotency_key=str(uuid.uuid4()))
    second = ImageRequest(prompt="a pear", idempotency_key=str(uuid.uuid4()))

    async def go() -> list[Submitted]:
        async with provider_for(hub) as provider:
            return [await provider.submit(r) for r in (first, second, first)]

    one, two, again = run(go())
    assert [c.idempotency_key for c in emulator.creates] == [first.idempotency_key,
                                                             second.idempotency_key]
    assert one.task_id == again.task_id != two.task_id
    assert again.extra == {"replay": "true"} and not one.extra and not two.extra


def test_after_the_replay_window_a_key_makes_a_new_task(
    hub: EmulatorHub, emulator: HiapiEmulator
) -> None:
    """protocols.md §2.2, §11: the original task comes back within ~24 h (`replay_window_s`),
    a new task after that; the adapter reports what it is told."""
    emulator.configure(replay_window_s=0.3)
    request = ImageRequest(prompt="a fig", idempotency_key=str(uuid.uuid4()))

    async def go() -> list[Submitted]:
        async with provider_for(hub) as provider:
            first = await provider.submit(request)
            within = await provider.submit(request)
            await asyncio.sleep(0.35)
            return [first, within, await provider.submit(request)]

    first, within, after = run(go())
    assert within.task_id == first.task_id and within.extra == {"replay": "true"}
    assert after.task_id != first.task_id and after.extra == {}
    assert len(emulator.creates) == 2


def test_the_first_create_in_flight_answers_409_then_the_replay(
    hub: EmulatorHub, emulator: HiapiEmulator
) -> None:
    emulator.configure(processing_s=0.4)
    headers = {"Idempotency-Key": "in-flight"}
    first = raw(hub, "POST", "/v1/tasks", json=body(), headers=headers)
    busy = raw(hub, "POST", "/v1/tasks", json=body(), headers=headers)
    assert busy.status_code == 409 and busy.json()["error_code"] == "IDEMPOTENCY_KEY_PROCESSING"
    assert busy.json()["code"] == 409 and busy.headers["Retry-After"] == "1"
    time.sleep(0.45)
    later = raw(hub, "POST", "/v1/tasks", json=body(), headers=headers)
    assert later.headers["Idempotent-Replay"] == "true"
    assert later.json()["data"] == first.json()["data"]
    mismatch = raw(hub, "POST", "/v1/tasks", json=body("other"), headers=headers)
    assert (mismatch.status_code, mismatch.json()["error_code"]) == (
        422, "IDEMPOTENCY_KEY_MISMATCH")
    assert len(emulator.creates) == 1


def test_over_long_key_is_sent_hashed(hub: EmulatorHub, emulator: HiapiEmulator) -> None:
    long_key = "k" * 300
    response = raw(hub, "POST", "/v1/tasks", json=body(), headers={"Idempotency-Key": long_key})
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_REQUEST"

    async def go() -> None:
        async with provider_for(hub) as provider:
            await provider.submit(ImageRequest(prompt="x", idempotency_key=long_key))

    run(go())
    [create] = emulator.creates
    assert create.idempotency_key is not None and len(create.idempotency_key) == 64


# -- options and references -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "names"),
    [
        pytest.param({"webhook": "https://a.b"}, "webhook", id="unknown-option"),
        pytest.param({"callback": {"url": "https://a.b", "when": "always"}}, "callback.when",
                     id="bad-when"),
        pytest.param({"callback": {"url": "http://a.b"}}, "callback.url", id="not-https"),
        pytest.param({"callback": {"when": "final"}}, "callback", id="no-url"),
    ],
)
def test_bad_options_are_refused_before_sending(
    hub: EmulatorHub, emulator: HiapiEmulator, options: dict[str, Any], names: str
) -> None:
    async def go() -> None:
        async with provider_for(hub) as provider:
            await provider.submit(ImageRequest(prompt="x", options=options))

    with pytest.raises(LimitExceeded, match=re.escape(f"options.hiapi.{names}")):
        run(go())
    assert emulator.requests == []


def test_local_reference_is_refused_with_the_fix(
    hub: EmulatorHub, emulator: HiapiEmulator
) -> None:
    local = Reference("specs/data/shoe.png", data=b"\x89PNG...")

    async def go() -> None:
        async with provider_for(hub) as provider:
            await provider.submit(ImageRequest(prompt="x", references=(local,)))

    with pytest.raises(LimitExceeded, match=r"URLs only.*publish it at a URL.*uploads"):
        run(go())
    assert emulator.requests == []


# -- emulator strictness (what the real API rejects) ------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({**body(), "model": "nano-banana-pro"}, id="model-id-is-case-sensitive"),
        pytest.param(body(prompt="x" * 10_001), id="prompt-too-long"),
        pytest.param(body(prompt=""), id="empty-prompt"),
        pytest.param(body(image_input=[REF] * 9), id="nine-references"),
        pytest.param(body(image_input=["/tmp/a.png"]), id="reference-not-url"),
        pytest.param(body(aspect_ratio="7:3"), id="bad-ratio"),
        pytest.param(body(resolution="8K"), id="bad-resolution"),
        pytest.param(body(output_format="webp"), id="webp"),
        pytest.param(body(seed=1), id="unknown-input-field"),
        pytest.param(body(callback={"url": "https://a.b"}), id="callback-inside-input"),
        pytest.param({**body(), "callback": {"url": "https://a.b", "when": "each"}},
                     id="callback-when"),
        pytest.param({"input": {"prompt": "x"}}, id="no-model"),
    ],
)
def test_emulator_rejects_invalid_create(
    hub: EmulatorHub, emulator: HiapiEmulator, payload: dict[str, Any]
) -> None:
    response = raw(hub, "POST", "/v1/tasks", json=payload)
    assert response.status_code == 400
    envelope = response.json()
    assert envelope["code"] == 400 and envelope["data"] is None
    assert envelope["error_code"] == "INVALID_REQUEST" and envelope["message"]
    assert emulator.creates == []


def test_emulator_accepts_documented_defaults_and_auto(
    hub: EmulatorHub, emulator: HiapiEmulator
) -> None:
    response = raw(hub, "POST", "/v1/tasks", json=body(aspect_ratio="auto"))
    assert response.status_code == 200
    task = emulator.tasks[response.json()["data"]["taskId"]]
    assert (task.resolution, task.output_format) == ("1K", "png")


def test_detail_shape_through_the_life_of_a_task(
    hub: EmulatorHub, emulator: HiapiEmulator
) -> None:
    task_id = raw(hub, "POST", "/v1/tasks", json=body()).json()["data"]["taskId"]
    emulator.tasks[task_id].latency_s = 60.0  # running until the test moves the clock
    running = raw(hub, "GET", f"/v1/tasks/{task_id}").json()["data"]
    assert running["status"] in ("queued", "handling", "archiving")
    assert running["completed"] == 0 and isinstance(running["created"], int)
    assert "output" not in running and "error" not in running
    emulator.tasks[task_id].created -= 60.0  # move the clock past the end
    done = raw(hub, "GET", f"/v1/tasks/{task_id}").json()["data"]
    assert done["status"] == "success" and done["model"] == "Nano-Banana-Pro"
    assert done["completed"] >= done["created"] and "error" not in done
    [image] = done["output"]
    assert image["type"] == "image" and image["expireAt"] > done["completed"]
    listed = raw(hub, "GET", "/v1/tasks", params={"page": 1, "size": 5}).json()["data"]
    assert listed["total"] == 1 and listed["tasks"][0]["taskId"] == task_id


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        pytest.param("[emulate:noimage]", {"status": "success", "output": []}, id="noimage"),
        pytest.param("[emulate:fail]", {"status": "fail"}, id="fail"),
    ],
)
def test_terminal_representations(
    hub: EmulatorHub, emulator: HiapiEmulator, marker: str, expected: dict[str, Any]
) -> None:
    task_id = raw(hub, "POST", "/v1/tasks", json=body(f"x {marker}")).json()["data"]["taskId"]
    emulator.tasks[task_id].created -= LATENCY_S
    data = raw(hub, "GET", f"/v1/tasks/{task_id}").json()["data"]
    assert {k: data[k] for k in expected} == expected
    assert ("error" in data) == (expected["status"] == "fail")
    assert ("output" in data) == (expected["status"] == "success")
