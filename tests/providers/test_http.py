"""The HTTP plumbing every adapter shares (`providers.http`): the download byte cap, inline
images, and where credentials may go (redirects, configured origins). What every adapter
must do with these is in the conformance suite; this file pins the mechanism down."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest

from nbp.providers import http, registry
from nbp.providers.base import (
    MAX_IMAGE_BYTES,
    ImageRequest,
    ProviderFacts,
    credential_origins,
    is_loopback,
    may_receive_credentials,
    url_origin,
)
from nbp.providers.conformance import RedirectPair
from nbp.providers.emulator.core import DEFAULT_OVERSIZE_BYTES, FaultConfig
from nbp.providers.emulator.hub import EmulatorHub
from nbp.providers.errors import AuthError, Rejected, RequestNotSent, ResultMismatch, TransientError

T = TypeVar("T")
BUILT_IN = ["wiro", "hiapi", "runware", "kie", "apikley"]
SECRET_HEADERS = {
    "Authorization": "Bearer secret-token",
    "x-api-key": "secret-key",
    "x-nonce": "1700000000",
    "x-signature": "secret-signature",
    "x-goog-api-key": "secret-google-key",
    "x-adapter-secret": "secret-marked-by-an-adapter",
}


def run(factory: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await factory()

    return asyncio.run(main())


# -- the download byte cap ---------------------------------------------------------------------


def test_the_default_cap_is_documented_and_the_emulators_default_oversize_exceeds_it() -> None:
    assert http.MAX_IMAGE_BYTES == MAX_IMAGE_BYTES == 64 * 1024 * 1024
    assert DEFAULT_OVERSIZE_BYTES > MAX_IMAGE_BYTES


def test_an_endless_body_without_length_is_read_only_up_to_the_cap() -> None:
    served: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        while True:
            served.append(64 * 1024)
            yield bytes(64 * 1024)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            with pytest.raises(ResultMismatch) as caught:
                await http.download(client, "https://cdn.example/a.png", max_bytes=1024 * 1024)
            assert caught.value.code == http.TOO_LARGE

    run(go)
    assert sum(served) <= 1024 * 1024 + 2 * http.DOWNLOAD_CHUNK_BYTES


def test_a_body_whose_length_is_over_the_cap_is_refused_unread() -> None:
    async def never_read() -> AsyncIterator[bytes]:
        raise AssertionError("the body was read")
        yield b""  # pragma: no cover

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Length": str(MAX_IMAGE_BYTES + 1)}
        return httpx.Response(200, headers=headers, content=never_read())

    async def go() -> ResultMismatch:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            with pytest.raises(ResultMismatch) as caught:
                await http.download(client, "https://cdn.example/a.png?token=abc")
            return caught.value

    error = run(go)
    assert error.code == http.TOO_LARGE and "Content-Length" in str(error)
    assert "token" not in str(error)  # signed query strings stay out of messages


def test_a_body_at_the_cap_is_delivered_and_a_short_one_is_transient() -> None:
    body = bytes(range(256)) * 16

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/short":
            return httpx.Response(200, headers={"Content-Length": "9999"}, content=body)
        return httpx.Response(200, content=body)

    async def go() -> bytes:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            with pytest.raises(TransientError):
                await http.download(client, "https://cdn.example/short")
            return await http.download(client, "https://cdn.example/a", max_bytes=len(body))

    assert run(go) == body


@pytest.mark.parametrize(
    ("url", "outcome"),
    [
        pytest.param("data:image/png;base64," + base64.b64encode(b"x" * 100).decode(),
                     b"x" * 100, id="base64"),
        pytest.param("data:image/png;base64," + base64.b64encode(b"x" * 101).decode(),
                     "too_large", id="base64-over-cap"),
        pytest.param("data:,abc%20d", b"abc d", id="percent-encoded"),
        pytest.param("data:image/png;base64,@@@@", "undecodable", id="bad-base64"),
        pytest.param("data:image/png;base64", "undecodable", id="no-comma"),
    ],
)
def test_inline_images_are_sized_before_they_are_decoded(url: str, outcome: object) -> None:
    if isinstance(outcome, bytes):
        assert http.inline_image(url, max_bytes=100) == outcome
        return
    with pytest.raises(ResultMismatch) as caught:
        http.inline_image(url, max_bytes=100)
    assert caught.value.code == outcome


# -- credentials across redirects ---------------------------------------------------------------


def test_a_download_redirected_to_another_host_arrives_there_without_any_credential() -> None:
    with RedirectPair() as pair:

        async def go() -> bytes:
            client = http.make_client(5.0, SECRET_HEADERS, secret_headers=["X-Adapter-Secret"])
            async with client:
                return await http.download(client, f"{pair.first.url}/files/a.png")

        data = run(go)
    assert data == RedirectPair.IMAGE
    [(_, _, sent_first)] = pair.first.received
    assert {k.lower() for k in SECRET_HEADERS} <= {k.lower() for k in sent_first}
    [(method, path, sent_second)] = pair.second.received
    assert (method, path) == ("GET", "/files/a.png")
    names = {k.lower() for k in sent_second}
    assert not names & ({k.lower() for k in SECRET_HEADERS} | http.CREDENTIAL_HEADERS)
    assert not any("secret" in value for value in sent_second.values())


def test_an_api_call_redirected_to_another_host_is_refused_before_it_goes_there() -> None:
    with RedirectPair() as pair:

        async def go() -> Rejected:
            async with http.make_client(5.0) as client:
                with pytest.raises(Rejected) as caught:
                    await http.send(client, "POST", f"{pair.first.url}/v1/tasks",
                                    json={"prompt": "private"}, headers=SECRET_HEADERS)
                return caught.value

        error = run(go)
    assert error.code == "redirect" and pair.second.url.split("//")[1] in str(error)
    assert len(pair.first.received) == 1 and pair.second.received == []


def test_an_api_call_follows_a_redirect_within_its_origin_with_its_credentials() -> None:
    hops: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hops.append(request)
        if request.url.path == "/v1/tasks":
            return httpx.Response(307, headers={"Location": "/v1/tasks/"})
        return httpx.Response(200, json={"ok": True})

    async def go() -> httpx.Response:
        async with http.make_client(5.0, transport=httpx.MockTransport(handler)) as client:
            return await http.send(client, "POST", "https://api.example/v1/tasks",
                                   json={}, headers={"Authorization": "Bearer k"})

    assert run(go).json() == {"ok": True}
    assert [h.headers.get("Authorization") for h in hops] == ["Bearer k", "Bearer k"]


# -- credentials only to configured origins -----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://API.kie.ai/", "https://api.kie.ai:443"),
        ("https://api.kie.ai:443/x", "https://api.kie.ai:443"),
        ("http://api.kie.ai", "http://api.kie.ai:80"),
        ("http://[::1]:8080/v1", "http://[::1]:8080"),
    ],
)
def test_url_origin(url: str, origin: str) -> None:
    assert url_origin(url) == origin


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8000/kie", True), ("http://127.9.9.9", True),
        ("http://localhost:1", True), ("http://[::1]:80", True),
        # a name the system resolver may ask the network about: not loopback for a key
        ("https://app.localhost", False), ("http://foo.localhost:9000", False),
        ("http://10.0.0.5", False), ("https://api.kie.ai", False),
        ("http://127.0.0.1.evil.example", False), ("ftp://127.0.0.1", False), ("", False),
    ],
)
def test_is_loopback(url: str, loopback: bool) -> None:
    assert is_loopback(url) is loopback


@pytest.mark.parametrize("name", BUILT_IN)
def test_documented_and_environment_named_hosts_may_receive_credentials(name: str) -> None:
    cls = registry.get_class(name)
    facts = ProviderFacts.of(cls)
    assert url_origin(cls.default_base_url) in facts.documented_origins
    assert may_receive_credentials(facts, cls.default_base_url, {})
    assert may_receive_credentials(facts, "http://127.0.0.1:8080/x", {})
    foreign = "https://nbp-elsewhere.example/api"
    assert not may_receive_credentials(facts, foreign, {})
    assert may_receive_credentials(facts, foreign, {f"NBP_{name.upper()}_BASE_URL": foreign})
    plain = cls.default_base_url.replace("https://", "http://")
    assert not may_receive_credentials(facts, plain, {})  # the documented host, unencrypted


def test_kies_upload_host_is_documented_and_its_override_is_named_by_the_environment() -> None:
    facts = ProviderFacts.of(registry.get_class("kie"))
    assert url_origin("https://kieai.redpandaai.co") in facts.documented_origins
    upload = "https://uploads.example"
    environ = {"NBP_KIE_UPLOAD_BASE_URL": upload}
    assert url_origin(upload) in credential_origins(facts, environ)
    assert facts.url_variables == ("NBP_KIE_BASE_URL", "NBP_KIE_UPLOAD_BASE_URL")


def test_gemini_batch_reads_geminis_url_variable() -> None:
    facts = ProviderFacts.of(registry.get_class("gemini-batch"))
    assert facts.url_variables == ("NBP_GEMINI_BASE_URL",)
    proxy = "https://gemini-proxy.example"
    assert may_receive_credentials(facts, proxy, {"NBP_GEMINI_BASE_URL": proxy})


def test_a_port_that_is_not_a_number_matches_no_origin() -> None:
    facts = ProviderFacts.of(registry.get_class("kie"))
    assert not may_receive_credentials(facts, "https://api.kie.ai:https/", {})


@pytest.mark.parametrize("name", BUILT_IN)
def test_a_base_url_nobody_named_gets_no_credentials(name: str, hub: EmulatorHub) -> None:
    """A spec's `base_urls` reaches `settings_from_env` as an argument: used, but never with
    the key, unless loopback."""
    cls = registry.get_class(name)
    environ = {k: v for k, v in hub.environ().items() if not k.startswith("NBP_")}
    foreign = cls(cls.settings_from_env(environ, base_url="https://nbp-test.invalid/api"))
    loopback = cls(cls.settings_from_env(environ, base_url=hub.base_url(name)))
    request = ImageRequest(prompt="a lemon on a plate", aspect_ratio="1:1",
                           output_format=cls.capabilities.output_formats[0])
    hub.reset()
    hub[name].configure(**vars(FaultConfig(latency_s=0.1)))

    async def go() -> tuple[AuthError, str]:
        try:
            with pytest.raises(AuthError) as caught:
                await foreign.submit(request)
            submitted = await loopback.submit(request)
            return caught.value, submitted.task_id
        finally:
            await foreign.aclose()
            await loopback.aclose()

    error, task_id = run(go)
    assert "nbp-test.invalid" in str(error)
    assert not any(secret in str(error) for secret in environ.values())
    assert [c.task_id for c in hub[name].creates] == [task_id]  # only the loopback one


def test_settings_built_by_hand_are_not_restricted() -> None:
    async def go() -> Any:
        def handler(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json={"seen": request.headers.get("Authorization")})

        async with http.make_client(5.0, transport=httpx.MockTransport(handler)) as client:
            response = await http.send(client, "GET", "https://anywhere.example/",
                                       headers={"Authorization": "Bearer k"})
            return response.json()

    assert run(go) == {"seen": "Bearer k"}


# -- a request that never left -----------------------------------------------------------------


@pytest.mark.parametrize("name", BUILT_IN)
def test_a_create_on_a_closed_client_never_left_and_is_request_not_sent(
    name: str, hub: EmulatorHub
) -> None:
    """httpx refuses before sending anything once its client is closed (a RuntimeError): the
    provider saw nothing, so even a create may be sent again (`RequestNotSent`, not the
    `SubmitUncertain` of a lost answer)."""
    cls = registry.get_class(name)
    provider = cls(cls.settings_from_env(hub.environ()))
    request = ImageRequest(prompt="a lemon on a plate", aspect_ratio="1:1",
                           output_format=cls.capabilities.output_formats[0])
    hub.reset()

    async def go() -> RequestNotSent:
        await provider.aclose()
        with pytest.raises(RequestNotSent) as caught:
            await provider.submit(request)
        return caught.value

    error = run(go)
    assert isinstance(error.__cause__, RuntimeError)
    assert hub[name].requests == [] and hub[name].creates == []


def test_only_the_closed_client_runtime_error_is_translated() -> None:
    """Another RuntimeError is no transport fault of ours: it passes as it is."""
    async def go() -> None:
        def handler(request: httpx.Request) -> httpx.Response:
            raise RuntimeError("something else broke")

        async with http.make_client(5.0, transport=httpx.MockTransport(handler)) as client:
            with pytest.raises(RuntimeError, match="something else broke"):
                await http.send(client, "GET", "https://anywhere.example/")
        with pytest.raises(RequestNotSent):  # closed now
            await http.send(client, "GET", "https://anywhere.example/")
        with pytest.raises(RequestNotSent):
            await http.download(client, "https://anywhere.example/image.png")

    run(go)
