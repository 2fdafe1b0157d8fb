"""Runware-only behaviour: the imageInference task field by field, Bearer and in-array auth,
the `{"data", "errors"}` shapes, the taskUUID of a create intent, the readings of a failed
generation and of a reused taskUUID (protocols.md §11), recovery of a lost create, sync
delivery, Runware's size list, uploads (in `prepare`) and provider options. Generic behaviour
(states, markers, faults, every reading) is in the shared conformance suite."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import io
import os
import uuid
from typing import Any

import httpx
import pytest
from PIL import Image

from nbp.providers.base import Finished, ImageRequest, Pending, Reference, Submitted
from nbp.providers.emulator.hub import TEST_CREDENTIALS, EmulatorHub
from nbp.providers.emulator.runware import RunwareEmulator
from nbp.providers.errors import (
    AuthError,
    ContentRejected,
    LimitExceeded,
    RateLimited,
    ResultMismatch,
    SubmitUncertain,
    TaskFailed,
    TaskNotFound,
)
from nbp.providers.model import pixel_size
from nbp.providers.runware import (
    INLINE_MAX_BYTES,
    WIRE_DIMENSIONS,
    RunwareProvider,
    outcome_of,
    task_uuid_for,
    task_word,
)

PROVIDER = "runware"
LATENCY_S = 0.1
KEY = TEST_CREDENTIALS["RUNWARE_API_KEY"]
URL_REF = "https://example.com/reference.jpg"

# The dimension table of runware.ai/docs/models/google-nano-banana-pro, as published, minus
# its 4K 3:2 / 2:3 duplicates 5096x3392 / 3392x5096 (nbp sends the 5056 variants).
RUNWARE_PUBLISHED = {
    (1024, 1024), (1264, 848), (848, 1264), (1200, 896), (896, 1200), (928, 1152),
    (1152, 928), (768, 1376), (1376, 768), (1548, 672),
    (2048, 2048), (2528, 1696), (1696, 2528), (2400, 1792), (1792, 2400), (1856, 2304),
    (2304, 1856), (1536, 2752), (2752, 1536), (3168, 1344),
    (4096, 4096), (5056, 3392), (3392, 5056), (4800, 3584), (3584, 4800), (3712, 4608),
    (4608, 3712), (3072, 5504), (5504, 3072), (6336, 2688),
}


def provider_for(hub: EmulatorHub, **env: str) -> RunwareProvider:
    return RunwareProvider(RunwareProvider.settings_from_env({**hub.environ(), **env}))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def png(size: tuple[int, int] = (8, 8), *, noise: bool = False) -> bytes:
    if noise:  # incompressible, so the file is about 3 bytes per pixel
        image = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    else:
        image = Image.new("RGB", size, (200, 180, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def post(hub: EmulatorHub, tasks: Any, *, auth: bool = True) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}"} if auth else {}
    return httpx.post(hub.base_url("runware"), json=tasks, headers=headers)


def inference(**fields: Any) -> dict[str, Any]:
    task = {
        "taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": "google:4@2",
        "positivePrompt": "a ripe banana", "width": 1024, "height": 1024,
        "deliveryMethod": "async",
    }
    task.update(fields)
    return {k: v for k, v in task.items() if v is not None}


async def until_done(provider: RunwareProvider, submitted: Submitted) -> Finished:
    for _ in range(200):
        outcome = await provider.poll(submitted)
        if isinstance(outcome, Finished):
            return outcome
        assert outcome.state == "processing"
        await asyncio.sleep(0.02)
    raise AssertionError("task never finished")


# -- adapter: wire format, taskUUID, auth ----------------------------------------------------


def test_wire_task_field_by_field(hub: EmulatorHub, emulator: RunwareEmulator) -> None:
    small = png()
    request = ImageRequest(
        prompt="Studio photo of a lemon",
        aspect_ratio="4:5",
        resolution="2K",
        output_format="webp",
        references=(Reference(URL_REF), Reference("specs/data/lemon.png", small)),
        seed=42,
        options={
            "settings": {"systemPrompt": "Be precise.", "temperature": 0.7, "topP": 0.9},
            "providerSettings": {"google": {"safetyTolerance": "off", "webSearch": True}},
            "outputQuality": 90,
            "safety": {"checkContent": True, "mode": "fast"},
            "ttl": 3600,
        },
        idempotency_key="cell-1:attempt-0",
    )

    async def go() -> Submitted:
        async with provider_for(hub) as provider:
            result: Submitted = await provider.submit(request)
            return result

    submitted = run(go())
    assert submitted.task_id == task_uuid_for("cell-1:attempt-0")
    [create] = emulator.creates
    assert create.body == {
        "taskType": "imageInference",
        "taskUUID": submitted.task_id,
        "model": "google:4@2",
        "positivePrompt": "Studio photo of a lemon",
        "width": 1856,
        "height": 2304,
        "outputType": "URL",
        "outputFormat": "WEBP",
        "numberResults": 1,
        "includeCost": True,
        "deliveryMethod": "async",
        "inputs": {"referenceImages": [
            URL_REF, "data:image/png;base64," + base64.b64encode(small).decode(),
        ]},
        "seed": 42,
        "outputQuality": 90,
        "ttl": 3600,
        "safety": {"checkContent": True, "mode": "fast"},
        "settings": {"systemPrompt": "Be precise.", "temperature": 0.7, "topP": 0.9},
        "providerSettings": {"google": {"safetyTolerance": "off", "webSearch": True}},
    }
    task = emulator.tasks[submitted.task_id]
    assert (task.aspect_ratio, task.resolution, task.output_format) == ("4:5", "2K", "webp")
    assert task.references[0] == URL_REF
    assert httpx.get(task.references[1]).content == small  # the inline image, as received


def test_a_uuid4_key_is_the_task_uuid_and_an_old_key_keeps_its_derived_one() -> None:
    """Keys are random UUID v4s per create intent: sent as the taskUUID itself. A key of an
    older journal (`nbp-{cell}-{channel}-{n}`) keeps the derivation those versions used, so
    its lost create is still found."""
    key = str(uuid.uuid4())
    assert task_uuid_for(key) == key
    old = "nbp-3f2a9c-runware-0"
    derived = hashlib.sha256(f"nbp-runware:{old}".encode()).digest()[:16]
    assert task_uuid_for(old) == str(uuid.UUID(bytes=derived, version=4))
    assert task_uuid_for(old) != old and task_uuid_for("not-a-uuid-4") != "not-a-uuid-4"
    v1 = "c232ab00-9414-11ec-b3c8-9f6bdeced846"  # a UUID, but not v4: derived like any key
    assert task_uuid_for(v1) != v1


def test_two_intents_are_two_tasks_and_a_resent_intent_is_one(
    hub: EmulatorHub, emulator: RunwareEmulator
) -> None:
    first = ImageRequest(prompt="a banana", idempotency_key=str(uuid.uuid4()))
    second = dataclasses.replace(first, idempotency_key=str(uuid.uuid4()))

    async def go() -> list[Submitted]:
        async with provider_for(hub) as provider:
            return [await provider.submit(first), await provider.submit(second),
                    await provider.submit(first)]

    one, two, again = run(go())
    assert [c.task_id for c in emulator.creates] == [first.idempotency_key,
                                                     second.idempotency_key]
    assert one.task_id == again.task_id == first.idempotency_key != two.task_id
    assert again.extra == {"resent": "true"} and emulator.duplicates == 1


def test_an_old_journals_lost_create_is_still_recovered(
    hub: EmulatorHub, emulator: RunwareEmulator
) -> None:
    """A create journalled by an older version (key `nbp-{cell}-{channel}-{n}`) whose answer
    was lost is found by the taskUUID that version derived."""
    request = ImageRequest(prompt="an old banana", idempotency_key="nbp-cell7-runware-0")
    task = inference(taskUUID=task_uuid_for(request.idempotency_key),
                     positivePrompt=request.prompt)
    assert post(hub, [task]).status_code == 200  # what the old version sent

    async def go() -> Submitted | None:
        async with provider_for(hub) as provider:
            return await provider.recover(request)

    found = run(go())
    assert found is not None and found.task_id == task["taskUUID"]


@pytest.mark.parametrize(
    ("reading", "status", "code"),
    [("duplicate", 400, "duplicateTaskUUID"), ("invalid", 400, "invalidTaskUUID"),
     ("ack", 200, None)],
)
def test_a_reused_task_uuid_is_answered_as_the_reading_says(
    hub: EmulatorHub, emulator: RunwareEmulator, reading: str, status: int, code: str | None
) -> None:
    """protocols.md §11: 400 duplicateTaskUUID, 400 invalidTaskUUID ("already used"), or the
    original task's ack; never a second task. The adapter reads all three as the task of
    this intent."""
    emulator.configure(reused_uuid=reading)
    task = inference()
    assert post(hub, [task]).status_code == 200
    again = post(hub, [task])
    assert again.status_code == status
    if code is None:
        assert again.json() == {"data": [{"taskType": "imageInference",
                                          "taskUUID": task["taskUUID"]}]}
    else:
        [error] = again.json()["errors"]
        assert (error["code"], error["taskUUID"]) == (code, task["taskUUID"])
        assert "already" in error["message"]
    assert (len(emulator.creates), emulator.duplicates) == (1, 1)

    async def go() -> Submitted:
        async with provider_for(hub) as provider:
            return await provider.submit(ImageRequest(prompt="again",
                                                      idempotency_key=task["taskUUID"]))

    assert run(go()).task_id == task["taskUUID"]
    assert len(emulator.creates) == 1


@pytest.mark.parametrize(
    ("fail_code", "content_code", "marker", "error", "code"),
    [
        pytest.param("providerError", "invalidProviderContent", "[emulate:fail]", TaskFailed,
                     "providerError", id="failed"),
        pytest.param("generationInterrupted", "x", "[emulate:fail]", TaskFailed,
                     "generationInterrupted", id="unseen-code"),
        pytest.param("x", "contentModerated", "[emulate:content]", ContentRejected,
                     "contentModerated", id="content-moderated"),
        pytest.param("x", "invalidProviderContent", "[emulate:content]", ContentRejected,
                     "invalidProviderContent", id="invalid-provider-content"),
    ],
)
def test_a_failure_at_http_400_is_the_tasks_fate_not_a_refused_request(
    hub: EmulatorHub, emulator: RunwareEmulator, fail_code: str, content_code: str,
    marker: str, error: type[Exception], code: str,
) -> None:
    """Reading (b) of protocols.md §11: HTTP 400, an errors[] item with our taskUUID and a
    code, no `status`. It is Runware's word on the task: `TaskFailed` / `ContentRejected`,
    never `Rejected` (which the engine would retry as a request for many minutes)."""
    emulator.configure(failure="code", fail_code=fail_code, content_code=content_code,
                       latency_s=0.05)
    task = inference(positivePrompt=f"a banana {marker}")
    assert post(hub, [task]).status_code == 200
    asyncio.run(asyncio.sleep(0.15))
    answer = post(hub, [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}])
    assert answer.status_code == 400
    [item] = answer.json()["errors"]
    assert (item["code"], item["taskUUID"]) == (code, task["taskUUID"]) and "status" not in item

    async def go() -> Any:
        async with provider_for(hub) as provider:
            return await provider.poll(Submitted("runware", task["taskUUID"]))

    with pytest.raises(TaskFailed) as caught:
        run(go())
    assert type(caught.value) is error and caught.value.code == code


def test_only_an_item_naming_our_task_is_its_word() -> None:
    ours, theirs = str(uuid.uuid4()), str(uuid.uuid4())

    def answer(status: int, *items: dict[str, Any]) -> httpx.Response:
        return httpx.Response(status, json={"errors": list(items)})

    word = {"code": "weirdNewCode", "taskUUID": ours, "message": "m"}
    assert task_word(answer(400, word), answer(400, word).json(), ours) == word
    assert task_word(answer(400, word), answer(400, word).json(), theirs) is None
    for status in (401, 404, 429, 500, 503):  # the status says: no word on the task
        assert task_word(answer(status, word), answer(status, word).json(), ours) is None
    for code in ("invalidApiKey", "taskNotFound", "queueCapacityExceeded", "invalidTaskUUID",
                 "timeoutProvider", "unsupportedParameter"):  # about the request itself
        item = {"code": code, "taskUUID": ours}
        assert task_word(answer(400, item), answer(400, item).json(), ours) is None


def test_task_uuid_is_a_stable_uuid4_per_idempotency_key() -> None:
    first, again = task_uuid_for("cell-7:attempt-0"), task_uuid_for("cell-7:attempt-0")
    other, random_one = task_uuid_for("cell-7:attempt-1"), task_uuid_for(None)
    assert first == again != other
    for value in (first, other, random_one):
        parsed = uuid.UUID(value)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
    assert random_one != task_uuid_for(None)


def test_wrong_key_is_an_auth_error_without_the_key(
    hub: EmulatorHub, emulator: RunwareEmulator
) -> None:
    async def go() -> None:
        async with provider_for(hub, RUNWARE_API_KEY="wrong-secret-123") as provider:
            await provider.submit(ImageRequest(prompt="a banana"))

    with pytest.raises(AuthError) as caught:
        run(go())
    assert caught.value.code == "invalidApiKey"
    assert "wrong-secret-123" not in str(caught.value)
    assert emulator.creates == []


def test_emulator_auth_by_header_or_authentication_task(
    hub: EmulatorHub, emulator: RunwareEmulator
) -> None:
    task = inference()
    answer = post(hub, [{"taskType": "authentication", "apiKey": KEY}, task], auth=False)
    assert answer.status_code == 200
    session, ack = answer.json()["data"]
    assert session["taskType"] == "authentication" and uuid.UUID(session["connectionSessionUUID"])
    assert ack == {"taskType": "imageInference", "taskUUID": task["taskUUID"]}

    wrong = post(hub, [{"taskType": "authentication", "apiKey": "nope"}, inference()], auth=False)
    assert wrong.status_code == 401
    assert wrong.json()["errors"][0] | {"message": ""} == {
        "code": "invalidApiKey", "message": "", "parameter": "apiKey",
        "taskType": "authentication", "documentation": wrong.json()["errors"][0]["documentation"],
    }
    assert post(hub, [inference()], auth=False).status_code == 401
    assert len(emulator.creates) == 1


# -- emulator strictness ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        pytest.param({"steps": 30}, "unsupportedParameter", id="steps"),
        pytest.param({"CFGScale": 7}, "unsupportedParameter", id="cfg-scale"),
        pytest.param({"referenceImages": [URL_REF]}, "unsupportedParameter", id="top-level-refs"),
        pytest.param({"taskUUID": "task-1"}, "invalidTaskUUID", id="slug-uuid"),
        pytest.param({"taskUUID": str(uuid.uuid1())}, "invalidTaskUUID", id="uuid1"),
        pytest.param({"model": "google:4@1"}, "invalidModel", id="model"),
        pytest.param({"positivePrompt": "ab"}, "invalidPositivePrompt", id="short-prompt"),
        pytest.param({"positivePrompt": "a" * 45_001}, "invalidPositivePrompt", id="long-prompt"),
        pytest.param({"width": 1000, "height": 1000}, "unsupportedDimensions", id="free-size"),
        pytest.param({"width": 1584, "height": 672}, "unsupportedDimensions", id="google-21-9"),
        pytest.param({"height": None}, "invalidHeight", id="width-alone"),
        pytest.param({"resolution": "2K"}, "conflictingParameters", id="resolution-and-size"),
        pytest.param({"inputs": {"referenceImages": [URL_REF] * 15}}, "invalidReferenceImages",
                     id="15-references"),
        pytest.param({"outputFormat": "GIF"}, "invalidOutputFormat", id="format"),
        pytest.param({"outputQuality": 100}, "invalidOutputQuality", id="quality"),
        pytest.param({"numberResults": 21}, "invalidNumberResults", id="number-results"),
        pytest.param({"deliveryMethod": "stream"}, "invalidDeliveryMethod", id="delivery"),
        pytest.param({"settings": {"temperature": 1.5}}, "invalidTemperature", id="temperature"),
        pytest.param({"providerSettings": {"google": {"search": True}}}, "unsupportedParameter",
                     id="google-search-drift"),
        pytest.param({"providerSettings": {"google": {"safetyTolerance": "max"}}},
                     "invalidSafetyTolerance", id="safety-tolerance"),
    ],
)
def test_emulator_refuses_what_runware_refuses(
    hub: EmulatorHub, emulator: RunwareEmulator, fields: dict[str, Any], code: str
) -> None:
    task = inference(**fields)
    answer = post(hub, [task])
    assert answer.status_code == 400
    [error] = answer.json()["errors"]
    assert error["code"] == code
    assert error["taskType"] == "imageInference"
    assert emulator.creates == []


def test_sizes_are_runwares_list_and_images_googles(
    hub: EmulatorHub, emulator: RunwareEmulator
) -> None:
    assert set(WIRE_DIMENSIONS.values()) == RUNWARE_PUBLISHED
    for width, height in sorted(RUNWARE_PUBLISHED):
        answer = post(hub, [inference(width=width, height=height)])
        assert answer.status_code == 200, (width, height, answer.text)
    request = ImageRequest(prompt="a wide banana", aspect_ratio="21:9", resolution="1K")

    async def go() -> bytes:
        async with provider_for(hub) as provider:
            submitted = await provider.submit(request)
            data: bytes = await provider.download((await until_done(provider, submitted)).images[0])
            return data

    image = Image.open(io.BytesIO(run(go())))
    assert emulator.creates[-1].body["width"] == 1548
    assert (image.size, image.format) == (pixel_size("21:9", "1K"), "PNG")


def test_errors_are_scoped_per_task_and_coexist_with_data(
    hub: EmulatorHub, emulator: RunwareEmulator
) -> None:
    good, bad = inference(), inference(steps=4)
    answer = post(hub, [good, bad])
    assert answer.status_code == 200
    body = answer.json()
    assert body["data"] == [{"taskType": "imageInference", "taskUUID": good["taskUUID"]}]
    [error] = body["errors"]
    assert (error["code"], error["taskUUID"]) == ("unsupportedParameter", bad["taskUUID"])
    assert [c.task_id for c in emulator.creates] == [good["taskUUID"]]


def test_get_response_states_cost_and_failure_items(
    hub: EmulatorHub, emulator: RunwareEmulator
) -> None:
    latency_s = 0.5  # long enough for the first look to come before the end, under load
    emulator.configure(latency_s=latency_s)
    refs = {"inputs": {"referenceImages": [URL_REF] * 4}}
    task = inference(width=2528, height=1696, includeCost=True, seed=7, **refs)
    content = inference(positivePrompt="a banana [emulate:content]")
    assert post(hub, [task, content]).status_code == 200
    poll = [{"taskType": "getResponse", "taskUUID": t["taskUUID"]} for t in (task, content)]
    early = post(hub, poll).json()
    assert [item["status"] for item in early["data"]] == ["processing", "processing"]
    asyncio.run(asyncio.sleep(latency_s * 1.5))
    late = post(hub, poll)
    assert late.status_code == 200
    [done] = late.json()["data"]
    assert done["status"] == "success" and done["seed"] == 7
    assert done["cost"] == pytest.approx(0.1424)  # S2: 2K with 4 references
    assert done["imageURL"].endswith(".jpg")      # outputFormat defaults to JPG
    [failed] = late.json()["errors"]
    assert failed | {"message": "", "documentation": ""} == {
        "taskType": "imageInference", "taskUUID": content["taskUUID"], "status": "error",
        "code": "invalidProviderContent", "message": "", "documentation": "",
    }
    unknown = post(hub, [{"taskType": "getResponse", "taskUUID": str(uuid.uuid4())}])
    assert (unknown.status_code, unknown.json()["errors"][0]["code"]) == (404, "taskNotFound")


def test_poll_translates_failures_and_unknown_tasks(
    hub: EmulatorHub, emulator: RunwareEmulator
) -> None:
    async def go(prompt: str) -> Any:
        async with provider_for(hub) as provider:
            return await until_done(provider, await provider.submit(ImageRequest(prompt=prompt)))

    with pytest.raises(ContentRejected) as content:
        run(go("a banana [emulate:content]"))
    assert content.value.code == "invalidProviderContent"
    with pytest.raises(TaskFailed) as failed:
        run(go("a banana [emulate:fail]"))
    assert failed.value.code == "providerError" and not isinstance(failed.value, ContentRejected)

    async def unknown() -> Any:
        async with provider_for(hub) as provider:
            return await provider.poll(Submitted("runware", str(uuid.uuid4())))

    with pytest.raises(TaskNotFound):
        run(unknown())


# -- duplicates, recovery, sync delivery -----------------------------------------------------


def test_reused_task_uuid_is_refused_not_billed_twice(
    hub: EmulatorHub, emulator: RunwareEmulator
) -> None:
    task = inference()
    assert post(hub, [task]).status_code == 200
    again = post(hub, [task])
    assert again.status_code == 400
    assert again.json()["errors"][0]["code"] == "duplicateTaskUUID"
    assert (len(emulator.creates), emulator.duplicates) == (1, 1)


def test_lost_create_is_recovered_not_paid_twice(
    hub: EmulatorHub, emulator: RunwareEmulator
) -> None:
    request = ImageRequest(prompt="a dropped banana", idempotency_key="cell-9:attempt-0")

    async def go() -> tuple[Submitted | None, Submitted, Finished]:
        async with provider_for(hub) as provider:
            emulator.configure(drop_after_create_prob=1.0)
            with pytest.raises(SubmitUncertain):
                await provider.submit(request)
            emulator.configure(drop_after_create_prob=0.0)
            recovered = await provider.recover(request)
            resent = await provider.submit(request)  # a blind re-send lands on the same task
            return recovered, resent, await until_done(provider, resent)

    recovered, resent, finished = run(go())
    expected = task_uuid_for("cell-9:attempt-0")
    assert recovered is not None and recovered.task_id == expected
    assert resent.task_id == expected and resent.extra == {"resent": "true"}
    assert finished.cost_usd == pytest.approx(0.138)
    assert (emulator.creates_for("a dropped banana"), emulator.duplicates) == (1, 1)


def test_recover_finds_nothing_without_a_task(
    hub: EmulatorHub, emulator: RunwareEmulator
) -> None:
    async def go() -> tuple[Submitted | None, Submitted | None]:
        async with provider_for(hub) as provider:
            keyed = await provider.recover(ImageRequest("a banana", idempotency_key="never"))
            unkeyed = await provider.recover(ImageRequest("a banana"))
            return keyed, unkeyed

    assert run(go()) == (None, None)
    assert len(emulator.requests) == 1  # without a key there is nothing to look up


def test_sync_delivery_answers_with_the_result(
    hub: EmulatorHub, emulator: RunwareEmulator
) -> None:
    sync = {"deliveryMethod": "sync"}

    async def go(prompt: str) -> Submitted:
        async with provider_for(hub) as provider:
            result: Submitted = await provider.submit(ImageRequest(prompt=prompt, options=sync))
            return result

    submitted = run(go("a quick banana"))
    assert submitted.finished is not None and submitted.finished.cost_usd == pytest.approx(0.138)
    assert emulator.creates[0].body["deliveryMethod"] == "sync"
    assert len(emulator.requests) == 1  # no polling
    with pytest.raises(TaskFailed) as no_image:
        run(go("a banana [emulate:noimage]"))
    assert no_image.value.code == "no_image"
    with pytest.raises(TaskFailed) as failed:
        run(go("a banana [emulate:fail]"))
    assert failed.value.code == "providerError"


def test_a_resent_sync_create_answered_by_an_ack_is_followed_by_polling(
    hub: EmulatorHub, emulator: RunwareEmulator
) -> None:
    """Under the "ack" reading a re-sent sync create comes back as the ack, not the image:
    the task is named (no `finished`), and polling collects it."""
    emulator.configure(reused_uuid="ack")
    request = ImageRequest(prompt="a banana twice", idempotency_key=str(uuid.uuid4()),
                           options={"deliveryMethod": "sync"})

    async def go() -> tuple[Submitted, Submitted, Finished]:
        async with provider_for(hub) as provider:
            first = await provider.submit(request)
            again = await provider.submit(request)
            return first, again, await until_done(provider, again)

    first, again, finished = run(go())
    assert first.finished is not None and again.finished is None
    assert again.task_id == first.task_id and len(finished.images) == 1
    assert len(emulator.creates) == 1


def test_capacity_excess_is_429_without_retry_after(
    hub: EmulatorHub, emulator: RunwareEmulator
) -> None:
    emulator.configure(rate_limit=(1, 60.0))
    assert post(hub, [inference()]).status_code == 200
    refused = post(hub, [inference()])
    assert refused.status_code == 429 and "Retry-After" not in refused.headers
    assert refused.json()["errors"][0]["code"] == "queueCapacityExceeded"

    async def go() -> None:
        async with provider_for(hub) as provider:
            await provider.submit(ImageRequest(prompt="a banana", idempotency_key="k"))

    with pytest.raises(RateLimited) as caught:
        run(go())
    assert caught.value.retry_after is None
    emulator.configure(rate_limit=None)
    run(go())  # the refused taskUUID was not used up: the retry is accepted
    assert emulator.duplicates == 0


# -- references and uploads ------------------------------------------------------------------


def test_large_local_reference_is_uploaded_once(
    hub: EmulatorHub, emulator: RunwareEmulator
) -> None:
    big = png((640, 640), noise=True)
    assert len(big) > INLINE_MAX_BYTES
    ref = Reference("specs/data/big.png", big)

    async def go() -> None:
        async with provider_for(hub) as provider:
            await asyncio.gather(*(
                provider.submit(ImageRequest(prompt=f"banana {i}", references=(ref,)))
                for i in range(3)
            ))

    run(go())  # unprepared requests: `submit` prepares them itself
    [(image_uuid, url)] = emulator.uploads.items()
    assert len(emulator.requests) == 4  # one imageUpload, three creates
    for create in emulator.creates:
        assert create.body["inputs"] == {"referenceImages": [image_uuid]}
        assert emulator.tasks[create.task_id].references == [url]
    assert httpx.get(url).content == big


def test_prepare_uploads_large_references_and_leaves_small_ones_inline(
    hub: EmulatorHub, emulator: RunwareEmulator
) -> None:
    big, small = png((640, 640), noise=True), png()
    request = ImageRequest(prompt="a prepared banana", references=(
        Reference("big.png", big), Reference("small.png", small), Reference(URL_REF)))

    async def go() -> tuple[ImageRequest, int, Submitted]:
        async with provider_for(hub) as provider:
            prepared = await provider.prepare(request)
            uploads = len(emulator.requests)
            return prepared, uploads, await provider.submit(prepared)

    prepared, uploads, submitted = run(go())
    [(image_uuid, _)] = emulator.uploads.items()
    assert uploads == 1 and len(emulator.requests) == 2  # the upload, then only the create
    assert [r.uri for r in prepared.references] == [image_uuid, "small.png", URL_REF]
    assert prepared.references[0].data is None and prepared.references[1].data == small
    sent = emulator.creates[0].body["inputs"]["referenceImages"]
    assert sent[0] == image_uuid and sent[1].startswith("data:image/png;base64,")
    assert submitted.task_id == emulator.creates[0].task_id


def test_prepare_checks_limits_before_uploading(
    hub: EmulatorHub, emulator: RunwareEmulator
) -> None:
    big = Reference("big.png", png((640, 640), noise=True))

    async def go() -> None:
        async with provider_for(hub) as provider:
            with pytest.raises(LimitExceeded):
                await provider.prepare(ImageRequest(prompt="x", references=(big,)))
            with pytest.raises(LimitExceeded):
                await provider.prepare(ImageRequest(prompt="a banana", references=(big,),
                                                    options={"steps": 4}))

    run(go())
    assert emulator.requests == [] and emulator.uploads == {}


def test_emulator_upload_task(hub: EmulatorHub, emulator: RunwareEmulator) -> None:
    upload = {"taskType": "imageUpload", "taskUUID": str(uuid.uuid4()),
              "image": base64.b64encode(png()).decode()}
    [item] = post(hub, [upload]).json()["data"]
    assert item["taskUUID"] == upload["taskUUID"] and uuid.UUID(item["imageUUID"])
    bad = dict(upload, taskUUID=str(uuid.uuid4()), image="not an image!")
    assert post(hub, [bad]).json()["errors"][0]["code"] == "invalidImage"
    unknown = inference(inputs={"referenceImages": [str(uuid.uuid4())]})
    assert post(hub, [unknown]).json()["errors"][0]["code"] == "invalidReferenceImages"
    known = inference(inputs={"referenceImages": [item["imageUUID"]]})
    assert post(hub, [known]).status_code == 200


# -- provider options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        pytest.param({"steps": 30}, "options.runware.steps: unknown key", id="unknown"),
        pytest.param({"numberResults": 2}, "only 1 is supported", id="number-results"),
        pytest.param({"settings": {"temperature": 2}}, "options.runware.settings.temperature",
                     id="temperature"),
        pytest.param({"providerSettings": {"google": {"search": True}}},
                     "options.runware.providerSettings.google.search", id="google-search"),
        pytest.param({"providerSettings": {"google": {"safetyTolerance": "strict"}}},
                     "safetyTolerance", id="safety-tolerance"),
        pytest.param({"safety": {"mode": "full"}}, "options.runware.safety.mode", id="safety"),
        pytest.param({"deliveryMethod": "stream"}, "options.runware.deliveryMethod",
                     id="delivery"),
        pytest.param({"outputQuality": 10}, "options.runware.outputQuality", id="quality"),
        pytest.param({"ttl": 30}, "options.runware.ttl", id="ttl"),
        pytest.param({"seed": 5}, "disagree", id="seed-conflict"),
    ],
)
def test_bad_options_are_refused_before_sending(
    hub: EmulatorHub, emulator: RunwareEmulator, options: dict[str, Any], named: str
) -> None:
    async def go() -> None:
        async with provider_for(hub) as provider:
            await provider.submit(ImageRequest(prompt="a banana", seed=4, options=options))

    with pytest.raises(LimitExceeded, match=named):
        run(go())
    assert emulator.requests == []


def test_option_seed_is_sent_when_the_request_has_none(
    hub: EmulatorHub, emulator: RunwareEmulator
) -> None:
    async def go() -> Pending | Finished:
        async with provider_for(hub) as provider:
            request = ImageRequest(prompt="a banana", options={"seed": 5, "includeCost": False})
            submitted = await provider.submit(request)
            return await until_done(provider, submitted)

    finished = run(go())
    assert isinstance(finished, Finished) and finished.cost_usd is None
    body = emulator.creates[0].body
    assert (body["seed"], body["includeCost"]) == (5, False)


@pytest.mark.parametrize("key", ["imageBase64Data", "imageDataURI"])
def test_inline_outputs_are_sized_before_they_are_decoded(hub: EmulatorHub, key: str) -> None:
    """Other outputTypes deliver the image inside the JSON (RP types.py): `poll` keeps it as
    a data URL, `download` checks its decoded size against the cap before decoding."""
    image = png((16, 16))
    encoded = base64.b64encode(image).decode()
    value = f"data:image/png;base64,{encoded}" if key == "imageDataURI" else encoded
    task_uuid = str(uuid.uuid4())
    finished = outcome_of([{"taskType": "imageInference", "taskUUID": task_uuid,
                            "status": "success", key: value}])
    assert isinstance(finished, Finished)
    [result] = finished.images
    generous = provider_for(hub)
    settings = dataclasses.replace(generous.settings, max_image_bytes=len(image) - 1)
    strict = RunwareProvider(settings)

    async def go() -> tuple[bytes, ResultMismatch]:
        try:
            data = await generous.download(result)
            with pytest.raises(ResultMismatch) as caught:
                await strict.download(result)
            return data, caught.value
        finally:
            await generous.aclose()
            await strict.aclose()

    data, error = run(go())
    assert data == image
    assert error.code == "too_large"
