"""HTTP plumbing shared by the adapters: one client per adapter, transport faults translated
once into `providers.errors`, and the one status ladder (`raise_for_http_status`) for the
status codes every provider means the same way.

Adapters call `send()`, map their own body codes, then hand the rest to the ladder; nothing
here knows a wire format.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from providers.errors import (
    AuthError,
    InsufficientBalance,
    ProviderError,
    RateLimited,
    Rejected,
    RequestNotSent,
    SubmitUncertain,
    TaskNotFound,
    TransientError,
)

USER_AGENT = "nbp/0.1 (+https://github.com/nbp; python-httpx)"
# Kie's hosts sit behind Cloudflare, which answers bare 403s to clients without a UA
# (protocols.md §4.1), so every request carries one.
DEFAULT_HEADERS = {"User-Agent": USER_AGENT, "Accept": "application/json"}
MAX_RETRY_AFTER_S = 300.0
# 64 pooled connections in 8 pools of 8: see `ShardedTransport`.
POOL_SHARDS, CONNECTIONS_PER_SHARD = 8, 8


def make_client(timeout_s: float, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """An async client with pooled connections sized for hundreds of tasks in flight."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
        headers={**DEFAULT_HEADERS, **(headers or {})},
        transport=ShardedTransport(POOL_SHARDS, CONNECTIONS_PER_SHARD),
        follow_redirects=True,
    )


class ShardedTransport(httpx.AsyncBaseTransport):
    """Several small httpcore pools instead of one big one; each request goes to the pool
    with the fewest requests open.

    httpcore 1.0.x re-examines every pooled connection (a poll() and a getpeername() each,
    plus a count over the whole pool per idle one) whenever a request starts or ends, so its
    cost per request grows with the pool: bench/cost.py measured ~19 ms of CPU per cell with
    one pool of 200 (50 kept alive) and ~8 ms with 8 pools of 8, the same 64 connections.
    (encode/httpcore#1035 fixes it upstream; drop this class when a release has it.)
    """

    def __init__(self, shards: int, connections_per_shard: int) -> None:
        limits = httpx.Limits(
            max_connections=connections_per_shard,
            max_keepalive_connections=connections_per_shard,
        )
        context = httpx.create_ssl_context()  # one for all pools: each costs ~20 ms to build
        self._pools = [
            httpx.AsyncHTTPTransport(verify=context, limits=limits) for _ in range(shards)
        ]
        self._open = [0] * shards  # requests whose response body is not closed yet

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(range(len(self._pools)), key=self._open.__getitem__)
        self._open[index] += 1
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self._open[index] -= 1

        try:
            response = await self._pools[index].handle_async_request(request)
        except BaseException:
            release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code, headers=response.headers,
            stream=_ReleasingStream(response.stream, release), extensions=response.extensions,
        )

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that tells its pool's counter when it is closed."""

    def __init__(self, inner: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._inner, self._release = inner, release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._release()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), capped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        seconds = parsed.timestamp() - time.time()
    return max(0.0, min(seconds, MAX_RETRY_AFTER_S))


async def send(
    client: httpx.AsyncClient, method: str, url: str, *, creates_task: bool = False, **kwargs: Any
) -> httpx.Response:
    """Send one request, translating transport faults.

    A fault before the request was written (connect errors) is a plain `TransientError`.
    A fault after it was written is `SubmitUncertain` when the request creates a paid task
    (`creates_task`), since the provider may have created it, and `TransientError` otherwise.
    """
    try:
        return await client.request(method, url, **kwargs)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise RequestNotSent(f"could not connect to {_host(url)}: {type(exc).__name__}") from exc
    except httpx.TransportError as exc:
        message = f"{method} {_path(url)}: connection lost ({type(exc).__name__})"
        if creates_task:
            raise SubmitUncertain(message) from exc
        raise TransientError(message) from exc


def raise_for_http_status(
    response: httpx.Response,
    message: str,
    *,
    status: int | None = None,
    code: str | int | None = None,
) -> None:
    """Raise what an HTTP status means in the error tree; 2xx returns quietly.

    The one place that maps statuses (401/403, 402, 404, 429, 5xx, ...). Adapters map the
    body codes they know better first, then call this. `status` replaces the response's
    where the provider puts the real status in the body (HiAPI's mirrored `code`, Kie's
    `code`); `code` is the code the exception carries (default: the status). `message` must
    come from the response body, never from request headers, which carry credentials.
    """
    status = response.status_code if status is None else status
    if status < 300:
        return
    raise status_error(response, message, status=status, code=code)


def status_error(
    response: httpx.Response,
    message: str,
    *,
    status: int | None = None,
    code: str | int | None = None,
) -> ProviderError:
    """The exception an error answer means by its status (see `raise_for_http_status`).

    For an answer the adapter already knows is an error, so a status below 400 (an error
    in the body of an HTTP 200, matched by no body code) is `Rejected`.
    """
    status = response.status_code if status is None else status
    key = status if code is None else code
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return RateLimited(message, code=key, retry_after=retry_after)
    if status in (401, 403):
        return AuthError(message, code=key)
    if status == 402:
        return InsufficientBalance(message, code=key)
    if status == 404:
        return TaskNotFound(message, code=key)
    if status >= 500 or status in (408, 409, 425):
        return TransientError(message, code=key)
    return Rejected(message, code=key)


def json_body(response: httpx.Response) -> Any:
    """The JSON body, or a `TransientError` when a proxy answered with something else."""
    try:
        return response.json()
    except ValueError as exc:
        if response.status_code >= 400:
            raise_for_http_status(response, f"HTTP {response.status_code}: {response.text[:200]}")
        raise TransientError(
            f"HTTP {response.status_code}: response is not JSON ({response.text[:120]!r})"
        ) from exc


async def download(client: httpx.AsyncClient, url: str) -> bytes:
    """Download a result image; a short or broken body is a `TransientError` (retry)."""
    response = await send(client, "GET", url)
    raise_for_http_status(response, f"download {_path(url)}: HTTP {response.status_code}")
    data = response.content
    expected = response.headers.get("Content-Length")
    if expected is not None and expected.isdigit() and int(expected) != len(data):
        raise TransientError(f"download {_path(url)}: got {len(data)} of {expected} bytes")
    if not data:
        raise TransientError(f"download {_path(url)}: empty body")
    return data


def _host(url: str) -> str:
    return httpx.URL(url).host


def _path(url: str) -> str:
    return httpx.URL(url).path
