"""HTTP plumbing shared by the adapters: one client per adapter, transport faults translated
once into `providers.errors`, and the status codes every provider means the same way.

Adapters call `send()` and then read their own body codes; nothing here knows a wire format.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx

from providers.errors import (
    AuthError,
    InsufficientBalance,
    RateLimited,
    Rejected,
    SubmitUncertain,
    TaskNotFound,
    TransientError,
)

USER_AGENT = "nbp/0.1 (+https://github.com/nbp; python-httpx)"
# Kie's hosts sit behind Cloudflare, which answers bare 403s to clients without a UA
# (protocols.md §4.1), so every request carries one.
DEFAULT_HEADERS = {"User-Agent": USER_AGENT, "Accept": "application/json"}
MAX_RETRY_AFTER_S = 300.0


def make_client(timeout_s: float, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """An async client with pooled connections sized for hundreds of tasks in flight."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
        headers={**DEFAULT_HEADERS, **(headers or {})},
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        follow_redirects=True,
    )


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
        raise TransientError(f"could not connect to {_host(url)}: {type(exc).__name__}") from exc
    except httpx.TransportError as exc:
        message = f"{method} {_path(url)}: connection lost ({type(exc).__name__})"
        if creates_task:
            raise SubmitUncertain(message) from exc
        raise TransientError(message) from exc


def raise_for_http_status(response: httpx.Response, message: str) -> None:
    """Map the HTTP statuses every provider means the same way; 2xx returns quietly.

    Adapters call this after reading any body code they know better; `message` must come
    from the response body (never from request headers, which carry credentials).
    """
    status = response.status_code
    if status < 300:
        return
    if status == 429:
        raise RateLimited(
            message, code=status, retry_after=parse_retry_after(response.headers.get("Retry-After"))
        )
    if status in (401, 403):
        raise AuthError(message, code=status)
    if status == 402:
        raise InsufficientBalance(message, code=status)
    if status == 404:
        raise TaskNotFound(message, code=status)
    if status >= 500 or status in (408, 409, 425):
        raise TransientError(message, code=status)
    raise Rejected(message, code=status)


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
