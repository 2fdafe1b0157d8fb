"""What Apikley does differently from Kie (protocols.md §5, seeds/apikley.txt): host and
upload path, prompt limit, extra body codes, task ids, envelope key and price. Everything it
shares with Kie is pinned down in test_kie.py and the conformance suite."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
import pytest

from nbp.providers.apikley import ApikleyProvider
from nbp.providers.base import Finished, ImageRequest, Pending, Reference, Submitted
from nbp.providers.emulator.apikley import ApikleyEmulator
from nbp.providers.emulator.hub import EmulatorHub
from nbp.providers.errors import (
    LimitExceeded,
    ProviderError,
    Rejected,
    TaskFailed,
    TaskNotFound,
    TransientError,
)

T = TypeVar("T")
PNG = b"\x89PNG\r\n\x1a\n" + b"apikley-product" * 40
PROVIDER = "apikley"
LATENCY_S = 0.1


@pytest.fixture
def provider(hub: EmulatorHub, emulator: ApikleyEmulator) -> ApikleyProvider:
    """Unopened until a test's coroutine uses it; each test closes it."""
    return ApikleyProvider(ApikleyProvider.settings_from_env(hub.environ()))


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def raw(hub: EmulatorHub, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": "Bearer " + hub.environ()["APIKLEY_API_KEY"],
               **kwargs.pop("headers", {})}
    return httpx.request(method, hub.base_url("apikley") + path, headers=headers, timeout=10,
                         **kwargs)


async def finish(provider: ApikleyProvider, submitted: Submitted) -> Finished:
    deadline = time.monotonic() + 5
    while isinstance(outcome := await provider.poll(submitted), Pending):
        assert time.monotonic() < deadline, "task never finished"
        await asyncio.sleep(0.02)
    return outcome


def test_base_url_and_uploads_live_on_apikleys_own_host(
    hub: EmulatorHub, emulator: ApikleyEmulator, provider: ApikleyProvider
) -> None:
    documented = ApikleyProvider.settings_from_env({"APIKLEY_API_KEY": "k"})
    assert documented.base_url == "https://api.apikley.ru"
    assert ApikleyProvider(documented).upload_url("/api/x") == (
        "https://api.apikley.ru/file-upload/api/x")

    async def go() -> Finished:
        async with provider:
            request = ImageRequest("a lemon", references=(Reference("sku.png", data=PNG),))
            first = await provider.submit(request)
            await provider.submit(request)
            return await finish(provider, first)

    finished = run(go())
    assert emulator.requests.count(("POST", "/apikley/file-upload/api/file-stream-upload")) == 1
    assert not any(path.startswith("/kie") for _, path in emulator.requests)
    task = emulator.tasks[emulator.creates[0].task_id]
    assert task.references[0].startswith(f"{hub.url}/files/apikley-upload-")
    assert httpx.get(task.references[0]).content == PNG
    assert finished.cost_usd is None  # Apikley reports no price


def test_prompt_limit_is_10000_not_kies_20000(
    hub: EmulatorHub, emulator: ApikleyEmulator, provider: ApikleyProvider
) -> None:
    body: dict[str, Any] = {"model": "nano-banana-pro", "input": {"prompt": "x" * 10001}}
    answer = raw(hub, "POST", "/api/v1/jobs/createTask", json=body)
    assert (answer.status_code, answer.json()["code"]) == (200, 422)
    body["input"]["prompt"] = "x" * 10000
    assert raw(hub, "POST", "/api/v1/jobs/createTask", json=body).json()["code"] == 200

    async def go() -> None:
        async with provider:
            await provider.submit(ImageRequest("x" * 10001))

    with pytest.raises(LimitExceeded, match="10000"):
        run(go())
    assert len(emulator.creates) == 1


@pytest.mark.parametrize(
    ("code", "error"),
    [
        pytest.param(455, TransientError, id="455-maintenance-transient"),
        pytest.param(501, TaskFailed, id="501-generation-failed"),
        pytest.param(505, Rejected, id="505-feature-disabled-rejected"),
    ],
)
def test_apikley_only_codes(
    emulator: ApikleyEmulator, provider: ApikleyProvider, code: int, error: type[ProviderError]
) -> None:
    emulator.force_code(code, "Service says no")

    async def go() -> None:
        async with provider:
            await provider.submit(ImageRequest("a lemon"))

    with pytest.raises(error) as caught:
        run(go())
    assert type(caught.value) is error and caught.value.code == str(code)
    assert emulator.creates == []


def test_emulator_refuses_codes_outside_apikleys_enum(emulator: ApikleyEmulator) -> None:
    with pytest.raises(ValueError):
        emulator.force_code(400)


def test_task_ids_follow_apikleys_pattern_and_never_repeat(
    hub: EmulatorHub, emulator: ApikleyEmulator
) -> None:
    body = {"model": "nano-banana-pro", "input": {"prompt": "a lemon"}}
    ids = [raw(hub, "POST", "/api/v1/jobs/createTask", json=body).json()["data"]["taskId"]
           for _ in range(5)]
    assert all(re.fullmatch(r"task_nano-banana-pro_\d{13,}", i) for i in ids)
    assert len(set(ids)) == 5


def test_record_info_uses_the_message_key_and_unknown_ids_are_not_found(
    hub: EmulatorHub, provider: ApikleyProvider
) -> None:
    answer = raw(hub, "GET", "/api/v1/jobs/recordInfo", params={"taskId": "task_x"}).json()
    assert answer == {"code": 422, "message": "recordInfo is null", "data": None}

    async def go() -> None:
        async with provider:
            await provider.poll(Submitted("apikley", "task_x"))

    with pytest.raises(TaskNotFound, match="recordInfo is null"):
        run(go())


def test_malformed_json_is_422_since_apikley_has_no_400(
    hub: EmulatorHub, emulator: ApikleyEmulator
) -> None:
    answer = raw(hub, "POST", "/api/v1/jobs/createTask", content=b"{oops",
                 headers={"Content-Type": "application/json"})
    assert (answer.status_code, answer.json()["code"]) == (200, 422)
    created = raw(hub, "POST", "/api/v1/jobs/createTask",
                  json={"model": "nano-banana-pro", "input": {"prompt": "p"}}).json()
    time.sleep(LATENCY_S + 0.05)
    record = raw(hub, "GET", "/api/v1/jobs/recordInfo",
                 params={"taskId": created["data"]["taskId"]}).json()
    assert record["message"] == "success" and "creditsConsumed" not in record["data"]
    assert json.loads(record["data"]["param"])["input"] == {"prompt": "p"}


def test_capabilities_flag_the_unpublished_price() -> None:
    caps = ApikleyProvider.capabilities
    assert not caps.price_is_published
    assert dict(caps.prices_usd) == {"1K": 0.134, "2K": 0.134, "4K": 0.24}
    assert (caps.max_prompt_chars, caps.default_rate, caps.env_vars) == (
        10000, "20/10s", ("APIKLEY_API_KEY",))
    assert ApikleyProvider.extra_url_defaults == {}
