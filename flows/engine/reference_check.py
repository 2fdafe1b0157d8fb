"""Whether a job's http(s) reference images answer, asked before anything is paid for.

A provider fetches an http(s) reference itself, after nbp has paid for the create: a photo
that is gone (404), a soft error page, or a host that never answers costs an image made from
the prompt alone. So nbp asks each distinct URL once, cheaply, first:

    states = await check_references(http_references(job.cells), job.spec.policy)
    states["https://cdn.example.com/a.jpg"]
    # ReferenceState(url=..., fingerprint='etag:"5f1c"', failure=None, code=None)
    payable_problem(cell.references, states)     # None: every reference answered
    references_fingerprint(cell.references, states)   # "9d1f0c2a7b3e4d55": record it

How one URL is asked (`_Prober`):

- `HEAD`; when HEAD is refused (403, 405, 501: an S3 URL signed for GET answers HEAD with
  403) a `GET` with `Range: bytes=0-0` whose body is never read;
- redirects are followed by hand, at most `MAX_REDIRECTS`, each hop under the host rule of
  every fetch nbp makes (`flows.spec.inputs.fetch_target`: public addresses only unless
  `InputPolicy.allow_private_hosts`); the connection goes to the very addresses that were
  checked (TLS still verified against the host name), so a name that resolves again to a
  private address cannot slip in between;
- a 2xx answer is a failure when it says it is not an image (`text/html`: a soft 404 page)
  or is larger than `InputPolicy.max_reference_bytes`; any other status is a failure.

Bounded: at most `CheckLimits.concurrency` URLs at once (16), `timeout_s` per request and
`total_s` for the whole check; a URL not answered by then is `not_checked`. No environment
proxy is used (the host rule judges the host nbp connects to).

A fingerprint says which content a URL served, from what its server states (never the
bytes): `etag:<ETag>`, else `modified:<Last-Modified>` with `;length:<bytes>` when the size
is known, else None (the server gives no way to tell a changed photo behind the URL).
Messages show a URL without its user info and query (`https://cdn.example.com/a.jpg?…`): a
signed URL's signature is a credential.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import httpx

from nbp.flows.spec import yamlpos
from nbp.flows.spec.inputs import (
    HTTP_PORTS,
    FetchTarget,
    HostRefused,
    InputPolicy,
    Resolver,
    fetch_target,
    is_http,
    resolve_host,
)
from nbp.flows.spec.loader import Problem
from nbp.flows.spec.model import Cell, Job
from nbp.flows.spec.records import MAX_LISTED, dataset_lines, file_name, places

__all__ = [
    "DEFAULT_LIMITS",
    "CheckLimits",
    "ReferenceState",
    "ReferenceUse",
    "check_job_references",
    "check_references",
    "http_references",
    "payable_problem",
    "reference_uses",
    "references_fingerprint",
    "shown_url",
]

MAX_REDIRECTS = 5
MAX_ADDRESSES = 4  # of a host's checked addresses, tried in turn when one does not connect
HEAD_REFUSED = frozenset({403, 405, 501})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# what a 2xx answer may call itself: an image, or a type that says nothing (S3's defaults)
IMAGE_TYPES = ("image/",)
NEUTRAL_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
USER_AGENT = "nbp-reference-check"


@dataclass(frozen=True)
class CheckLimits:
    """How much one check may take.

        CheckLimits()                             # 16 at once, 10 s each, 300 s in all
        CheckLimits(concurrency=4, total_s=30)    # a small catalog, a tight deadline
    """

    concurrency: int = 16
    """URLs asked at the same time (and connections open)."""
    timeout_s: float = 10.0
    """One request: connecting, sending, the answer's headers."""
    total_s: float = 300.0
    """The whole check; URLs not answered by then are `not_checked`."""


DEFAULT_LIMITS = CheckLimits()


@dataclass(frozen=True, slots=True)
class ReferenceState:
    """What the check found for one URL: it answered (`failure` None, `fingerprint` when its
    server gives one), or why it cannot be fetched.

    `code` names the kind of failure for programs: `invalid` (not a URL httpx can send),
    `refused` (host rule), `status` (4xx, 5xx), `not_image`, `too_large`, `timeout`,
    `connect` (DNS, refused connection, TLS), `redirects`, `not_checked` (the check's total
    time ran out)."""

    url: str
    fingerprint: str | None = None
    failure: str | None = None
    code: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


class _Failed(Exception):
    """One URL's check ends here; the message is its `ReferenceState.failure`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class _Answer:
    status: int
    reason: str
    headers: httpx.Headers


# -- the check ------------------------------------------------------------------------------


async def check_references(
    urls: Iterable[str],
    policy: InputPolicy,
    *,
    limits: CheckLimits = DEFAULT_LIMITS,
    transport: httpx.AsyncBaseTransport | None = None,
    resolve: Resolver = resolve_host,
) -> dict[str, ReferenceState]:
    """The state of every distinct http(s) URL of `urls` (others are left out), each asked
    once, in the order given. Never raises for a URL: whatever goes wrong is its state.
    `transport` and `resolve` replace the network and the system resolver (tests)."""
    distinct = list(dict.fromkeys(url for url in urls if is_http(url)))
    states: dict[str, ReferenceState] = {}
    if distinct:
        async with _Prober(policy, limits, transport, resolve) as prober:
            await _check_all(prober, distinct, states, limits)
    late = f"not checked: the check stopped after {limits.total_s:g} s"
    return {url: states.get(url) or ReferenceState(url, failure=late, code="not_checked")
            for url in distinct}


async def _check_all(
    prober: _Prober, urls: list[str], states: dict[str, ReferenceState], limits: CheckLimits
) -> None:
    """Workers take the URLs one at a time from one iterator: `concurrency` in flight,
    none asked twice, and at `total_s` every unfinished one is abandoned."""
    pending = iter(urls)

    async def worker() -> None:
        for url in pending:
            states[url] = await prober.check(url)

    workers = [asyncio.create_task(worker()) for _ in range(min(limits.concurrency, len(urls)))]
    done, late = await asyncio.wait(workers, timeout=limits.total_s)
    for task in late:
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    for task in done:
        task.result()  # a bug in the prober is a bug, not a URL's state


class _Prober:
    """Asks URLs over one client; each host's rule (and DNS answer) is worked out once."""

    def __init__(
        self, policy: InputPolicy, limits: CheckLimits,
        transport: httpx.AsyncBaseTransport | None, resolve: Resolver,
    ) -> None:
        self.policy, self.limits, self.resolve = policy, limits, resolve
        pool = httpx.Limits(max_connections=limits.concurrency,
                            max_keepalive_connections=limits.concurrency)
        self.client = httpx.AsyncClient(
            transport=transport, timeout=limits.timeout_s, limits=pool, trust_env=False,
            follow_redirects=False, headers={"User-Agent": USER_AGENT, "Accept": "image/*"},
        )
        self._targets: dict[tuple[str, str, int], asyncio.Task[FetchTarget]] = {}

    async def __aenter__(self) -> _Prober:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._targets.values():
            task.cancel()  # a resolver still busy after the deadline: nobody waits for it
        await self.client.aclose()

    async def check(self, url: str) -> ReferenceState:
        try:
            answer = await self._follow(url)
            return ReferenceState(url, fingerprint=self._judge(answer))
        except _Failed as failed:
            return ReferenceState(url, failure=str(failed), code=failed.code)
        except httpx.InvalidURL:  # the URL itself, or a hop's Location
            return ReferenceState(url, failure="is not a valid URL, or redirects to one",
                                  code="invalid")

    async def _follow(self, url: str) -> _Answer:
        current = url
        for hop in range(MAX_REDIRECTS + 1):
            target = await self._target(current, hop)
            answer = await self._ask(current, target)
            if answer.status not in REDIRECTS:
                return answer
            location = answer.headers.get("location")
            if not location:
                raise _Failed("status", f"answers {answer.status} {answer.reason} without "
                                        "saying where to (no Location)")
            current = str(httpx.URL(current).join(location))
        raise _Failed("redirects", f"redirects more than {MAX_REDIRECTS} times")

    async def _target(self, url: str, hop: int) -> FetchTarget:
        """The host rule for `url`'s host, asked once per host (in a thread: the rule
        resolves the name with the system resolver, which blocks); each URL waits for it at
        most `timeout_s`, the shared answer goes on meanwhile."""
        parsed = httpx.URL(url)
        key = (parsed.scheme, parsed.host, parsed.port or HTTP_PORTS.get(parsed.scheme, 0))
        task = self._targets.get(key)
        if task is None:
            task = self._targets[key] = asyncio.create_task(asyncio.to_thread(
                fetch_target, url, self.policy, resolve=self.resolve))
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.limits.timeout_s)
        except TimeoutError:
            raise _Failed("timeout", f"host {parsed.host}: no DNS answer within "
                                     f"{self.limits.timeout_s:g} s") from None
        except HostRefused as exc:
            where = f"redirects to {parsed.host or shown_url(url)}, but " if hop else ""
            raise _Failed("refused", f"{where}{exc}") from None

    async def _ask(self, url: str, target: FetchTarget) -> _Answer:
        """HEAD, or a one-byte GET where HEAD is refused; the body is never read."""
        answer = await self._send("HEAD", url, target)
        if answer.status in HEAD_REFUSED:
            answer = await self._send("GET", url, target, {"Range": "bytes=0-0"})
        return answer

    async def _send(
        self, method: str, url: str, target: FetchTarget,
        headers: Mapping[str, str] | None = None,
    ) -> _Answer:
        """One request, to the addresses the rule checked (in turn, while one does not
        connect), or by name under `allow_private_hosts`. Transport errors become
        `_Failed` here, and only here."""
        last: _Failed | None = None
        for request in self._requests(method, url, target, headers or {}):
            try:
                async with self.client.stream(
                    request.method, request.url, headers=request.headers,
                    extensions=request.extensions,
                ) as response:
                    return _Answer(response.status_code, response.reason_phrase,
                                   response.headers)
            except httpx.ConnectError as exc:
                last = _Failed("connect", f"cannot connect to {target.host} "
                                          f"({_cause(exc)})")
            except httpx.TimeoutException:
                raise _Failed("timeout", f"no answer within {self.limits.timeout_s:g} s") \
                    from None
            except httpx.HTTPError as exc:
                raise _Failed("connect", f"{target.host}: {type(exc).__name__} "
                                         f"({_cause(exc)})") from None
        assert last is not None
        raise last

    def _requests(
        self, method: str, url: str, target: FetchTarget, headers: Mapping[str, str]
    ) -> Iterable[httpx.Request]:
        parsed = httpx.URL(url)
        if not target.addresses:
            yield httpx.Request(method, parsed, headers=headers)
            return
        host_header = parsed.netloc.decode("ascii")
        sni = parsed.raw_host.decode("ascii")
        for address in target.addresses[:MAX_ADDRESSES]:
            yield httpx.Request(
                method, parsed.copy_with(host=address),
                headers={**headers, "Host": host_header},
                extensions={"sni_hostname": sni},  # TLS checks the name, not the address
            )

    def _judge(self, answer: _Answer) -> str | None:
        """The fingerprint of a final answer; `_Failed` when it is not a usable image."""
        if not 200 <= answer.status < 300:
            raise _Failed("status", f"answers {answer.status} {answer.reason}".rstrip())
        kind = answer.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if kind not in NEUTRAL_TYPES and not kind.startswith(IMAGE_TYPES):
            raise _Failed("not_image", f"answers {answer.status} with {kind}, not an image "
                                       "(an error page?)")
        size = _size(answer)
        limit = self.policy.max_reference_bytes
        if size is not None and size > limit:
            raise _Failed("too_large", f"is {size:,} bytes, more than the {limit:,} a "
                                       "reference may have (InputPolicy.max_reference_bytes)")
        return fingerprint(answer.headers, size)


def _size(answer: _Answer) -> int | None:
    """The whole image's size: Content-Range's total for a 206, else Content-Length."""
    if answer.status == 206:
        total = answer.headers.get("content-range", "").rpartition("/")[2].strip()
        return int(total) if total.isdigit() else None
    length = answer.headers.get("content-length", "").strip()
    return int(length) if length.isdigit() else None


def fingerprint(headers: Mapping[str, str], size: int | None) -> str | None:
    """What the server says identifies this content (see the module docstring)."""
    etag = headers.get("etag", "").strip()
    if etag:
        return f"etag:{etag}"
    modified = headers.get("last-modified", "").strip()
    if modified:
        return f"modified:{modified}" + ("" if size is None else f";length:{size}")
    return None


def _cause(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# -- what the run asks ----------------------------------------------------------------------


def http_references(cells: Iterable[Cell]) -> list[str]:
    """The distinct http(s) references of `cells`, in order of first use: what
    `check_references` is given."""
    return list(dict.fromkeys(uri for cell in cells for uri in cell.references if is_http(uri)))


def payable_problem(
    references: Iterable[str], states: Mapping[str, ReferenceState]
) -> str | None:
    """Why a cell with these references may not be paid for, or None when it may: every
    http(s) reference answered `check_references` (an unchecked one does not count as
    answered). Local and fsspec references are not judged here: the run reads them itself
    (`flows.engine.references.ReferenceLoader`)."""
    for uri in references:
        if not is_http(uri):
            continue
        state = states.get(uri)
        if state is None:
            return (f"reference image {shown_url(uri)} was not checked; nbp pays only for "
                    "cells whose http(s) references answered, and did not create this one")
        if state.failure is not None:
            return (f"reference image {shown_url(uri)} cannot be fetched: {state.failure}; "
                    "nothing was created or paid for this cell")
    return None


def references_fingerprint(
    references: Iterable[str], states: Mapping[str, ReferenceState]
) -> str | None:
    """16 hex digits that change when the content behind any of the cell's http(s)
    references changes, as far as their servers tell (`ReferenceState.fingerprint`): a
    changed photo behind an unchanged URL. The same on every run and machine for the same
    URLs, order and answers. None for a cell without http(s) references (a local file's
    content is in the cell id already), and when no server of them gives one (nothing to
    tell: the cell keeps its id). A reference whose server gives no fingerprint counts as
    null beside others that do: a change behind it cannot be seen."""
    pairs = [[uri, _fingerprint_of(states.get(uri))] for uri in references if is_http(uri)]
    if not any(fingerprint for _, fingerprint in pairs):
        return None
    canonical = json.dumps(pairs, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _fingerprint_of(state: ReferenceState | None) -> str | None:
    return None if state is None else state.fingerprint


def shown_url(url: str) -> str:
    """`url` as messages show it: without user info, and with `?…` for a query (a signed
    URL's signature is a credential)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "(an invalid URL)"
    shown = parsed.copy_with(userinfo=b"", query=None, fragment=None)
    return str(shown) + ("?…" if parsed.query else "")


# -- nbp validate --check-references ----------------------------------------------------------


@dataclass
class ReferenceUse:
    """Which dataset rows (or cells, without a dataset) use one URL: the first
    `MAX_LISTED`, and how many."""

    count: int = 0
    rows: list[int] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)
    last_row: int | None = None

    def add(self, cell: Cell) -> None:
        row = cell.dataset_row
        if row is None:
            self.count += 1
            if len(self.cells) < MAX_LISTED:
                self.cells.append(cell.cell_id)
        elif row != self.last_row:
            self.count += 1
            self.last_row = row
            if len(self.rows) < MAX_LISTED:
                self.rows.append(row)


def reference_uses(cells: Iterable[Cell]) -> dict[str, ReferenceUse]:
    """Each distinct http(s) reference of `cells` with the rows that use it, in order of
    first use."""
    uses: dict[str, ReferenceUse] = {}
    for cell in cells:
        for uri in dict.fromkeys(cell.references):
            if is_http(uri):
                uses.setdefault(uri, ReferenceUse()).add(cell)
    return uses


async def check_job_references(
    job: Job,
    *,
    limits: CheckLimits = DEFAULT_LIMITS,
    transport: httpx.AsyncBaseTransport | None = None,
    resolve: Resolver = resolve_host,
) -> tuple[int, list[Problem]]:
    """(URLs checked, one located problem per URL that failed) for `nbp validate
    --check-references`: at the `references` template, naming the dataset lines that use
    the URL."""
    uses = reference_uses(job.cells)
    states = await check_references(uses, job.spec.policy, limits=limits,
                                    transport=transport, resolve=resolve)
    failed = [state for state in states.values() if not state.ok]
    if not failed:
        return len(states), []
    spec = job.spec
    path: yamlpos.JsonPath = ("references", 0) if len(spec.references) == 1 else (
        "references",)
    position = yamlpos.load(spec.text).position(path) if spec.text else yamlpos.START
    where = _row_places(job)
    problems = [
        Problem(spec.source, position.line, position.column, yamlpos.format_path(path),
                f"{shown_url(state.url)}: {state.failure}; used by "
                f"{_users(uses[state.url], where)}")
        for state in failed
    ]
    return len(states), problems


def _row_places(job: Job) -> _Places:
    dataset = job.spec.dataset
    if dataset is None:
        return _Places(None, "")
    # the job does not keep the dataset's row count: `places` checks each row it names
    lines = dataset_lines(dataset, None, job.spec.policy.max_dataset_bytes)
    return _Places(lines, file_name(dataset))


@dataclass(frozen=True)
class _Places:
    lines: list[int] | None
    name: str


def _users(use: ReferenceUse, where: _Places) -> str:
    if use.rows:
        return places(use.rows, use.count, where.lines, where.name)
    more = f" ({use.count:,} in all)" if use.count > len(use.cells) else ""
    return "cells " + ", ".join(use.cells) + more
