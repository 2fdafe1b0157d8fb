"""The one conformance suite: every adapter, against its emulator, over real loopback HTTP.

Each test runs once per provider. What only one provider has (wire bodies field by field,
auth recipes, provider-only codes, uploads, options) lives in that provider's own test file.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from PIL import Image

from providers import registry
from providers.base import Finished, ImageRequest, Pending, Provider, Reference, Submitted
from providers.emulator.core import CONTENT_MARKER, FAIL_MARKER, NO_IMAGE_MARKER
from providers.emulator.hub import TEST_CREDENTIALS, EmulatorHub
from providers.errors import (
    AuthError,
    ContentRejected,
    LimitExceeded,
    ProviderError,
    RateLimited,
    SubmitUncertain,
    TaskFailed,
    TransientError,
)
from providers.model import PILLOW_FORMAT, pixel_size

PROVIDERS = ["wiro", "hiapi", "runware", "kie", "apikley"]
LATENCY_S = 0.3
T = TypeVar("T")


@pytest.fixture(scope="module")
def hub() -> Iterator[EmulatorHub]:
    with EmulatorHub.start(PROVIDERS, latency_s=LATENCY_S) as running:
        yield running


@pytest.fixture(params=[pytest.param(name, id=name) for name in PROVIDERS])
def name(request: pytest.FixtureRequest, hub: EmulatorHub) -> str:
    hub.reset()
    hub[request.param].configure(
        latency_s=LATENCY_S, rate_limit=None, submit_5xx_prob=0.0, poll_5xx_prob=0.0,
        drop_after_create_prob=0.0, fail_prob=0.0, max_concurrency=None,
    )
    return str(request.param)


def make(hub: EmulatorHub, name: str, **env_changes: str) -> Provider:
    cls = registry.get_class(name)
    return registry.create(name, cls.settings_from_env({**hub.environ(), **env_changes}))


def run(factory: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(factory())  # type: ignore[arg-type]


def request_for(name: str, prompt: str = "a lemon on a plate", **changes: Any) -> ImageRequest:
    caps = registry.capabilities(name)
    fields: dict[str, Any] = {
        "prompt": prompt, "aspect_ratio": "16:9", "resolution": "1K",
        "output_format": caps.output_formats[-1], "idempotency_key": f"key-{prompt}",
    }
    fields.update(changes)
    return ImageRequest(**fields)


async def until_done(provider: Provider, submitted: Submitted) -> Finished:
    if submitted.finished is not None:
        return submitted.finished
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        outcome = await provider.poll(submitted)
        if isinstance(outcome, Finished):
            return outcome
        await asyncio.sleep(0.05)
    raise AssertionError("task did not finish")


def one_submit(hub: EmulatorHub, name: str, request: ImageRequest) -> Any:
    """Submit and follow to the end; returns the exception or (submitted, finished, bytes)."""

    async def go() -> Any:
        provider = make(hub, name)
        try:
            submitted = await provider.submit(request)
            finished = await until_done(provider, submitted)
            data = await provider.download(finished.images[0]) if finished.images else b""
            return submitted, finished, data
        except ProviderError as exc:
            return exc
        finally:
            await provider.aclose()

    return run(go)


def test_wrong_key_is_an_auth_error_and_creates_nothing(hub: EmulatorHub, name: str) -> None:
    key_var = registry.capabilities(name).env_vars[0]
    provider = make(hub, name, **{key_var: "not-the-key"})

    async def go() -> None:
        try:
            with pytest.raises(AuthError) as caught:
                await provider.submit(request_for(name))
            assert "not-the-key" not in str(caught.value)
        finally:
            await provider.aclose()

    run(go)
    assert hub[name].creates == []


def test_missing_key_is_an_auth_error(hub: EmulatorHub, name: str) -> None:
    env = {k: v for k, v in hub.environ().items() if k not in TEST_CREDENTIALS}
    cls = registry.get_class(name)
    provider = registry.create(name, cls.settings_from_env(env))

    async def go() -> None:
        try:
            with pytest.raises(AuthError):
                await provider.submit(request_for(name))
        finally:
            await provider.aclose()

    run(go)
    assert hub[name].creates == []


@pytest.mark.parametrize(("ratio", "resolution"), [("16:9", "1K"), ("3:4", "2K"), ("21:9", "1K")])
def test_fields_reach_the_provider_and_the_image_is_what_was_asked(
    hub: EmulatorHub, name: str, ratio: str, resolution: str
) -> None:
    caps = registry.capabilities(name)
    for output_format in caps.output_formats:
        request = request_for(
            name, f"fields {ratio} {resolution} {output_format}",
            aspect_ratio=ratio, resolution=resolution, output_format=output_format,
        )
        submitted, finished, data = one_submit(hub, name, request)
        task = hub[name].tasks[submitted.task_id]
        assert (task.prompt, task.aspect_ratio, task.resolution, task.output_format) == (
            request.prompt, ratio, resolution, output_format
        )
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == PILLOW_FORMAT[output_format]
            assert image.size == pixel_size(ratio, resolution)
        assert finished.cost_usd is None or finished.cost_usd >= 0


def test_a_task_is_pending_before_it_finishes(hub: EmulatorHub, name: str) -> None:
    if name == "runware" and registry.capabilities(name).option_schema:
        pass  # runware polls in async delivery (the adapter's default)

    async def go() -> tuple[Any, Any]:
        provider = make(hub, name)
        try:
            submitted = await provider.submit(request_for(name, "pending then finished"))
            first = await provider.poll(submitted)
            last = await until_done(provider, submitted)
            return first, last
        finally:
            await provider.aclose()

    first, last = run(go)
    assert isinstance(first, Pending) and first.state
    assert isinstance(last, Finished) and len(last.images) == 1


@pytest.mark.parametrize(
    ("marker", "error", "not_error", "code"),
    [
        pytest.param(FAIL_MARKER, TaskFailed, ContentRejected, None, id="failed"),
        pytest.param(CONTENT_MARKER, ContentRejected, None, None, id="content"),
        pytest.param(NO_IMAGE_MARKER, TaskFailed, ContentRejected, "no_image", id="no-image"),
    ],
)
def test_failures_arrive_as_the_exception_tree(
    hub: EmulatorHub, name: str, marker: str, error: type[Exception],
    not_error: type[Exception] | None, code: str | None,
) -> None:
    outcome = one_submit(hub, name, request_for(name, f"please {marker} now"))
    assert isinstance(outcome, error), outcome
    if not_error is not None:
        assert not isinstance(outcome, not_error)
    if code is not None:
        assert outcome.code == code
    assert len(hub[name].creates) == 1


def test_rate_limit_excess_is_rate_limited(hub: EmulatorHub, name: str) -> None:
    hub[name].configure(rate_limit=(1, 60.0))

    async def go() -> None:
        provider = make(hub, name)
        try:
            await provider.submit(request_for(name, "first"))
            with pytest.raises(RateLimited) as caught:
                await provider.submit(request_for(name, "second"))
            assert caught.value.retry_after is None or caught.value.retry_after >= 0
        finally:
            await provider.aclose()

    run(go)
    assert len(hub[name].creates) == 1


def test_server_errors_on_submit_are_transient_and_create_nothing(
    hub: EmulatorHub, name: str
) -> None:
    hub[name].configure(submit_5xx_prob=1.0)
    outcome = one_submit(hub, name, request_for(name))
    assert isinstance(outcome, TransientError) and not isinstance(outcome, RateLimited)
    assert hub[name].creates == []


def test_server_errors_on_poll_are_transient(hub: EmulatorHub, name: str) -> None:
    async def go() -> None:
        provider = make(hub, name)
        try:
            submitted = await provider.submit(request_for(name, "poll trouble"))
            hub[name].configure(poll_5xx_prob=1.0)
            if submitted.finished is None:
                with pytest.raises(TransientError):
                    await provider.poll(submitted)
        finally:
            await provider.aclose()

    run(go)


def test_a_lost_create_answer_is_uncertain_and_created_once(hub: EmulatorHub, name: str) -> None:
    hub[name].configure(drop_after_create_prob=1.0)
    request = request_for(name, "dropped answer")

    async def go() -> Submitted | None:
        provider = make(hub, name)
        try:
            with pytest.raises(SubmitUncertain):
                await provider.submit(request)
            hub[name].configure(drop_after_create_prob=0.0)
            caps = provider.capabilities
            if caps.recoverable_submit:
                return await provider.recover(request)
            if caps.idempotent_submit:
                return await provider.submit(request)
            return None
        finally:
            await provider.aclose()

    found = run(go)
    assert len(hub[name].creates) == 1
    if found is not None:
        assert found.task_id == hub[name].creates[0].task_id


def test_limits_are_checked_before_anything_is_sent(hub: EmulatorHub, name: str) -> None:
    caps = registry.capabilities(name)
    too_long = "x" * (caps.max_prompt_chars + 1)
    too_many = tuple(
        Reference(f"https://example.com/{i}.png") for i in range(caps.max_references + 1)
    )
    bad = [
        request_for(name, too_long),
        request_for(name, references=too_many),
        request_for(name, resolution="8K"),
        request_for(name, options={"no_such_option": 1}),
    ]

    async def go() -> None:
        provider = make(hub, name)
        try:
            for request in bad:
                with pytest.raises(LimitExceeded):
                    await provider.submit(request)
        finally:
            await provider.aclose()

    run(go)
    assert hub[name].creates == []
    assert hub[name].requests == []


def test_reference_images_arrive_as_the_provider_accepts_them(
    hub: EmulatorHub, name: str
) -> None:
    caps = registry.capabilities(name)
    photo = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(photo, format="PNG")
    local = Reference("specs/data/shoe.png", data=photo.getvalue(), mime_type="image/png")
    remote = Reference(f"{hub.url}/files/none.png")
    if caps.reference_delivery == "url_only":
        outcome = one_submit(hub, name, request_for(name, "with refs", references=(local,)))
        assert isinstance(outcome, LimitExceeded)
        assert "URL" in str(outcome)
        request = request_for(name, "url ref only", references=(remote,))
        submitted, _, _ = one_submit(hub, name, request)
        assert hub[name].tasks[submitted.task_id].references == [remote.uri]
        return
    request = request_for(name, "with refs", references=(local, remote))
    submitted, _, _ = one_submit(hub, name, request)
    received = hub[name].tasks[submitted.task_id].references
    assert len(received) == 2
    assert received[1] == remote.uri
    assert received[0] != local.uri  # delivered as an upload / inline data, not a local path


def test_cancel_where_the_api_can(hub: EmulatorHub, name: str) -> None:
    caps = registry.capabilities(name)
    hub[name].configure(latency_s=5.0)

    async def go() -> str:
        provider = make(hub, name)
        try:
            submitted = await provider.submit(request_for(name, "cancel me"))
            await provider.cancel(submitted)
            return submitted.task_id
        finally:
            await provider.aclose()

    task_id = run(go)
    cancelled = hub[name].tasks[task_id].cancelled_at is not None
    assert cancelled is caps.can_cancel


def test_secrets_never_appear_in_errors_or_logs(
    hub: EmulatorHub, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = [v for k, v in TEST_CREDENTIALS.items() if k.startswith(name.upper())]
    caplog.set_level(logging.DEBUG)
    provider = make(hub, name)
    texts = [repr(provider), repr(getattr(provider, "settings", ""))]
    for marker in (FAIL_MARKER, CONTENT_MARKER):
        texts.append(repr(one_submit(hub, name, request_for(name, marker))))
    hub[name].configure(submit_5xx_prob=1.0)
    texts.append(repr(one_submit(hub, name, request_for(name))))
    run(provider.aclose)
    texts.append(caplog.text)
    for secret in secrets:
        assert all(secret not in text for text in texts)


def test_base_url_comes_from_the_environment(name: str) -> None:
    cls = registry.get_class(name)
    settings = cls.settings_from_env({f"NBP_{name.upper()}_BASE_URL": "http://127.0.0.1:9/x"})
    assert settings.base_url == "http://127.0.0.1:9/x"
    assert cls.settings_from_env({}).base_url == cls.default_base_url
