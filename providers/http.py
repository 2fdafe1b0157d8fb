"""HTTP plumbing shared by the adapters: one client per adapter, transport faults translated
once into `providers.errors`, the one status ladder (`raise_for_http_status`) for the status
codes every provider means the same way, and the rules for where credentials may go.

Adapters call `send()` for API calls and `download()` for result images, map their own body
codes, then hand the rest to the ladder; nothing here knows a wire format.

Credentials (`CREDENTIAL_HEADERS` plus an adapter's `secret_headers`) never leave the
origin (scheme, host, port) they were meant for:

    API call (`send`)        a redirect to the same origin is followed; one to another origin
                             is refused (`Rejected`, code "redirect") before anything is sent
                             there: the request body is the user's too, and an answer from
                             elsewhere is not the provider's
    download (`download`)    redirects are followed (result images live on CDNs); a hop to
                             another origin carries no credential header
    any request              carrying credentials to an origin outside the settings'
                             `credential_origins` is refused (`AuthError`) before it is sent
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import httpx

from nbp.providers.base import MAX_IMAGE_BYTES, is_loopback, url_origin, url_variable
from nbp.providers.errors import (
    AuthError,
    InsufficientBalance,
    ProviderError,
    RateLimited,
    Rejected,
    RequestNotSent,
    ResultMismatch,
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
# Headers that carry credentials in some provider's protocol (protocols.md §0: Bearer tokens,
# Wiro's x-api-key / x-nonce / x-signature, Gemini's x-goog-api-key), lowercase. (Cookies are
# not among them: httpx sends each host only its own, from the client's jar.)
CREDENTIAL_HEADERS: frozenset[str] = frozenset({
    "authorization", "proxy-authorization", "x-api-key", "x-nonce", "x-signature",
    "x-goog-api-key",
})
MAX_REDIRECTS = 5
TOO_LARGE = "too_large"  # `ResultMismatch.code` of an image over the byte cap
# A download's body arrives as httpcore reads it (at most 64 KiB a read, its READ_NUM_BYTES),
# and the byte cap is checked after each piece. Not re-chunked: httpx's ByteChunker copies
# every byte through a BytesIO (0.3 ms of CPU per 1K PNG, bench/cost.py).
DOWNLOAD_CHUNK_BYTES = 64 * 1024

# What httpx raises (a RuntimeError) when a closed client is asked to send: nothing left.
CLIENT_CLOSED_MESSAGE = "Cannot send a request, as the client has been closed."

# Request extensions that carry the redirect rules through httpx's redirect chain.
_FIRST_ORIGIN = "nbp_first_origin"
_SAME_ORIGIN_ONLY = "nbp_same_origin_only"


def make_client(
    timeout_s: float,
    headers: dict[str, str] | None = None,
    *,
    secret_headers: Iterable[str] = (),
    credential_origins: frozenset[str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An async client with pooled connections sized for hundreds of tasks in flight, that
    keeps credentials where they belong (see the module docstring). `secret_headers` adds
    header names to `CREDENTIAL_HEADERS`; `credential_origins` (None: any) lists the
    origins (`providers.base.url_origin`) that may receive them; `transport` replaces the
    pooled one (tests: `httpx.MockTransport`)."""
    guard = CredentialGuard(CREDENTIAL_HEADERS | {h.lower() for h in secret_headers},
                            credential_origins)
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
        headers={**DEFAULT_HEADERS, **(headers or {})},
        transport=transport or ShardedTransport(POOL_SHARDS, CONNECTIONS_PER_SHARD),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        event_hooks={"request": [guard]},
    )


class CredentialGuard:
    """A request hook: httpx calls it for the first request and for every redirect hop.

    httpx itself drops only `Authorization` on a redirect to another host, and keeps it on
    an http -> https upgrade; this drops every credential header on any change of origin."""

    def __init__(self, secret_headers: frozenset[str], origins: frozenset[str] | None) -> None:
        self.secret_headers, self.origins = secret_headers, origins

    async def __call__(self, request: httpx.Request) -> None:
        url = str(request.url)
        origin = url_origin(url)
        first = request.extensions.setdefault(_FIRST_ORIGIN, origin)
        secrets = {name.lower() for name in request.headers} & self.secret_headers
        if origin != first:
            if request.extensions.get(_SAME_ORIGIN_ONLY):
                raise Rejected(
                    f"{request.method} {_path(url)}: the API redirected to {origin}, another "
                    f"origin than {first}; nbp does not follow it (credentials and request "
                    "bodies stay with the configured host): check the base URL",
                    code="redirect",
                )
            for name in secrets:
                request.headers.pop(name, None)
            return
        if secrets and self.origins is not None and origin not in self.origins \
                and not is_loopback(url):
            raise AuthError(
                f"{request.method} {_path(url)}: credentials are sent only to documented "
                f"hosts, hosts named in the environment ({url_variable('<provider>')}) and "
                f"loopback, not to {origin}"
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
    """Send one API request, translating transport faults.

    A fault before the request was written (connect errors, a closed client) is
    `RequestNotSent`.
    A fault after it was written is `SubmitUncertain` when the request creates a paid task
    (`creates_task`), since the provider may have created it, and `TransientError` otherwise.
    Redirects are followed only within the origin (`Rejected` otherwise).
    """
    with _translated(method, url, creates_task=creates_task):
        return await client.request(
            method, url, extensions={_SAME_ORIGIN_ONLY: True}, **kwargs
        )


async def send_bounded(
    client: httpx.AsyncClient, method: str, url: str, *, max_bytes: int,
    creates_task: bool = False, **kwargs: Any,
) -> tuple[httpx.Response, bytes]:
    """`send`, for answers that carry images inline (Gemini's generateContent): the body is
    read as a stream and refused once it passes `max_bytes` (`ResultMismatch`, code
    `too_large`; by its Content-Length before reading when it declares one), so an answer
    is never held in memory beyond the cap. Returns the response (body closed) and the
    body; a connection lost while the body arrives is a lost answer, as in `send`."""
    with _translated(method, url, creates_task=creates_task):
        async with client.stream(
            method, url, extensions={_SAME_ORIGIN_ONLY: True}, **kwargs
        ) as response:
            declared = response.headers.get("Content-Length", "")
            too_large = ResultMismatch(
                f"{method} {_path(url)}: the answer is larger than the {max_bytes} bytes "
                "allowed", code=TOO_LARGE,
            )
            if declared.isdigit() and int(declared) > max_bytes:
                raise too_large
            chunks: list[bytes] = []
            received = 0
            async for chunk in response.aiter_bytes(DOWNLOAD_CHUNK_BYTES):
                received += len(chunk)
                if received > max_bytes:
                    raise too_large
                chunks.append(chunk)
    return response, b"".join(chunks)


@contextlib.asynccontextmanager
async def stream(
    client: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> AsyncIterator[httpx.Response]:
    """An API response to read as a stream (a results file), with `send`'s rules: transport
    faults, also while the body is read, are `TransientError`; redirects stay in the origin."""
    with _translated(method, url):
        async with client.stream(
            method, url, extensions={_SAME_ORIGIN_ONLY: True}, **kwargs
        ) as response:
            yield response


@contextlib.contextmanager
def _translated(method: str, url: str, *, creates_task: bool = False) -> Iterator[None]:
    """httpx's transport faults -> `providers.errors` (see `send`)."""
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise RequestNotSent(f"could not connect to {_host(url)}: {type(exc).__name__}") from exc
    except httpx.TooManyRedirects as exc:
        raise TransientError(f"{method} {_path(url)}: too many redirects") from exc
    except httpx.TransportError as exc:
        message = f"{method} {_path(url)}: connection lost ({type(exc).__name__})"
        if creates_task:
            raise SubmitUncertain(message) from exc
        raise TransientError(message) from exc
    except RuntimeError as exc:
        # httpx refuses before writing anything once the client is closed (an adapter
        # closed while a step still ran): the provider saw nothing, so even a create may
        # be sent again. Any other RuntimeError is not ours to reinterpret.
        if str(exc) != CLIENT_CLOSED_MESSAGE:
            raise
        raise RequestNotSent(f"{method} {_path(url)}: not sent, the client is closed") from exc


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


async def download(
    client: httpx.AsyncClient, url: str, *, max_bytes: int = MAX_IMAGE_BYTES
) -> bytes:
    """Download a result image, following redirects (credentials stripped off-origin).

    A body over `max_bytes` is `ResultMismatch` (code `too_large`): refused by its
    Content-Length before reading, or once the running count passes the cap, so an unbounded
    body is never held in memory. A short or broken body is a `TransientError` (retry).
    """
    with _translated("GET", url):
        async with client.stream("GET", url) as response:
            raise_for_http_status(response, f"download {_path(url)}: HTTP {response.status_code}")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise _too_large(url, max_bytes, f"Content-Length {declared}")
            chunks: list[bytes] = []
            received = 0
            async for chunk in response.aiter_bytes():
                received += len(chunk)
                if received > max_bytes:
                    raise _too_large(url, max_bytes, f"more than {max_bytes} bytes sent")
                chunks.append(chunk)
            # Content-Length counts the bytes on the wire, before any Content-Encoding.
            encoded = response.headers.get("Content-Encoding", "identity") != "identity"
            sent = response.num_bytes_downloaded if encoded else received
    if declared.isdigit() and int(declared) != sent:
        raise TransientError(f"download {_path(url)}: got {sent} of {declared} bytes")
    if not received:
        raise TransientError(f"download {_path(url)}: empty body")
    return b"".join(chunks)


async def bounded_lines(
    chunks: AsyncIterator[bytes], max_line_bytes: int, *, keep_bytes: int = 4096
) -> AsyncIterator[tuple[bytes, bool]]:
    """The lines of a streamed body (JSONL), without their line ends: `(line, False)`, or
    `(first keep_bytes of the line, True)` for a line longer than `max_line_bytes`, which is
    skipped without ever being held whole. Empty lines are left out."""
    buffer = bytearray()
    cut = False  # inside a line that passed the cap: only its head is kept
    head = b""
    async for chunk in chunks:
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not cut:
                buffer += piece
                if len(buffer) > max_line_bytes:
                    cut, head = True, bytes(buffer[:keep_bytes])
                    buffer.clear()
            if end < 0:
                break
            start = end + 1
            if cut:
                yield head, True
            elif buffer.strip():
                yield bytes(buffer).rstrip(b"\r"), False
            buffer.clear()
            cut, head = False, b""
    if cut:
        yield head, True
    elif buffer.strip():
        yield bytes(buffer).rstrip(b"\r"), False


def inline_image(url: str, *, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of a `data:` URL (an image a provider returned inline, e.g. Runware's
    `imageDataURI`), sized before it is decoded: over `max_bytes` is `ResultMismatch`
    (`too_large`), undecodable is `ResultMismatch` (`undecodable`)."""
    header, comma, payload = url.partition(",")
    if not header.startswith("data:") or not comma:
        raise ResultMismatch("inline image: not a data: URL", code="undecodable")
    if header.endswith(";base64"):
        payload = "".join(payload.split())
        size = len(payload) * 3 // 4 - payload[-2:].count("=")
        if size > max_bytes:
            raise ResultMismatch(
                f"inline image: {size} bytes, more than the {max_bytes} allowed", code=TOO_LARGE
            )
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ResultMismatch("inline image: invalid base64", code="undecodable") from exc
    data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise ResultMismatch(
            f"inline image: {len(data)} bytes, more than the {max_bytes} allowed", code=TOO_LARGE
        )
    return data


def _too_large(url: str, max_bytes: int, why: str) -> ResultMismatch:
    return ResultMismatch(
        f"download {_path(url)}: the image is larger than {max_bytes} bytes ({why})",
        code=TOO_LARGE,
    )


def _host(url: str) -> str:
    return httpx.URL(url).host


def _path(url: str) -> str:
    return httpx.URL(url).path
