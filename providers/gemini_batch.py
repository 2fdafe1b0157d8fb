"""Gemini Batch API adapter for Nano Banana Pro (`gemini-batch`): many images as one job, at
half the standard price, with hours of turnaround (target 24 h, expired after 48 h).

Wire format: the requests become a JSONL file, one `{"key", "request": GenerateContentRequest}`
per line (the same request `providers.gemini` sends), uploaded with the Files API's resumable
protocol (`POST {base}/upload/{version}/files` with `X-Goog-Upload-Command: start` answers the
session URL in `X-Goog-Upload-URL`; chunks of 8 MiB go there with `upload` and, last, `upload,
finalize`, each at its `X-Goog-Upload-Offset`; the final answer is `{"file": File}`); then
`POST {base}/{version}/models/{model}:batchGenerateContent` with `{"batch": {"display_name",
"input_config": {"file_name"}}}` answers a long-running Operation (`name` "batches/…",
`metadata.state`). `GET {base}/{version}/batches/{id}` follows it, `GET {base}/{version}/batches`
lists them (`operations`, `nextPageToken`), `POST …/batches/{id}:cancel` cancels one. A
succeeded batch names its results file (`response.responsesFile`, also
`metadata.output.responsesFile`), downloaded from `GET {base}/download/{version}/files/{id}
:download?alt=media`: JSONL in request order, each line `{"key", "response"}` or `{"key",
"error"}`. Creation is not idempotent; the display name is nbp's handle to find a batch again.
Same host and key as `gemini` (`NBP_GEMINI_BASE_URL`, `GEMINI_API_KEY`).

Lifetimes (§6, §10): a batch pending or running for 48 h ends `EXPIRED`, documented without
results [C BAT]; should Google name a results file for one anyway (lines that ran before
it expired [I]), those results are streamed like a succeeded batch's. Results are kept 6
weeks [C BAT2]: a results file Google answers 404 for (or 403 "may not exist", §5, once the
batch is older than that) is `ResultsExpired`. `options.gemini-batch.priority` goes out as
`batch.priority` (int64, higher first [C BAT2, REF]); `batchStats.failedRequestCount` is read
into `BatchJob.failed_requests`.

Sources: /work/shared/protocols-gemini.md §4-§7 (Google's docs and SDKs: BAT, REF, FIL, RL,
PRC, PY), no reseller seed: this is Google's own API.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import IO, Any, ClassVar

from nbp.providers import http
from nbp.providers.adapter import HttpAdapter
from nbp.providers.base import (
    BatchJob,
    BatchResult,
    BatchState,
    Capabilities,
    ImageRequest,
    ProviderSettings,
)
from nbp.providers.errors import (
    AuthError,
    LimitExceeded,
    ProviderError,
    Rejected,
    ResultMismatch,
    ResultsExpired,
    SubmitUncertain,
    TaskFailed,
    TaskNotFound,
    TransientError,
)
from nbp.providers.gemini import (
    KEY_HEADER,
    STANDARD_TOKEN_PRICES,
    TokenPrices,
    answer_cap,
    check_inline_size,
    finished_of,
    key_headers,
    line_error,
    model_of,
    parse_json,
    raise_for_error,
    request_body,
    version_of,
)
from nbp.providers.gemini_batch_facts import FACTS, MAX_INPUT_FILE_BYTES, RESULTS_KEPT_S
from nbp.providers.gemini_facts import DEFAULT_API_VERSION

# -- documented constants --------------------------------------------------------------------
# protocols-gemini.md (§ numbers; its source tags in brackets).

BATCH_TOKEN_PRICES: TokenPrices = STANDARD_TOKEN_PRICES.scaled(0.5)      # §7 "Batch (50 %)"
UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024   # §5 the SDK's chunk [C PY]
SPOOL_BYTES = 16 * 1024 * 1024         # JSONL beyond this goes to a temporary file, not memory
JSONL_MIME = "application/jsonl"       # what nbp declares for its input file [I]
MAX_DISPLAY_NAME = 512                 # §5 File.displayName [C PY]
LIST_PAGE_SIZE = 100                   # §9: default and maximum pageSize are not documented
# States (§6): the REST API says BATCH_STATE_*, the SDKs and BAT JOB_STATE_*; both are read.
STATE_PREFIXES = ("BATCH_STATE_", "JOB_STATE_")
STATES: Mapping[str, BatchState] = {
    "UNSPECIFIED": "pending", "PENDING": "pending", "QUEUED": "pending",
    "RUNNING": "running", "PAUSED": "running", "CANCELLING": "running", "UPDATING": "running",
    "SUCCEEDED": "succeeded", "PARTIALLY_SUCCEEDED": "succeeded",
    "FAILED": "failed", "CANCELLED": "cancelled", "EXPIRED": "expired",
}
DEFAULT_ERRORS: Mapping[str, str] = {
    "failed": "the batch failed",
    "expired": "the batch was pending or running for more than 48 h and has no results",
    "cancelled": "the batch was cancelled",
}
_KEY_IN_LINE = re.compile(rb'"key"\s*:\s*"((?:[^"\\]|\\.)*)"')

# -- adapter ---------------------------------------------------------------------------------


class GeminiBatchProvider(HttpAdapter):
    """Google's Batch API (`gemini-batch`), a `providers.base.BatchProvider`: no
    `submit`/`poll`; the engine groups cells into batches and follows them."""

    name: ClassVar[str] = FACTS.name
    env_name: ClassVar[str | None] = FACTS.env_name
    model: ClassVar[str] = FACTS.model
    default_base_url: ClassVar[str] = FACTS.base_url
    secret_headers: ClassVar[tuple[str, ...]] = (KEY_HEADER,)
    capabilities: ClassVar[Capabilities] = FACTS.capabilities
    token_prices: ClassVar[TokenPrices] = BATCH_TOKEN_PRICES

    def __init__(self, settings: ProviderSettings, *, api_version: str | None = None) -> None:
        super().__init__(settings)
        self.api_version = api_version or DEFAULT_API_VERSION

    async def create_batch(
        self, display_name: str, requests: Sequence[tuple[str, ImageRequest]]
    ) -> BatchJob:
        """Upload the requests as JSONL and create the batch. A lost or 5xx answer to the
        create is `SubmitUncertain` (the batch may exist: `find_batch` first)."""
        model, version, priority = self._check_batch(display_name, requests)
        headers = self.auth_headers()
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            size = write_jsonl(spool, requests)
            if size > MAX_INPUT_FILE_BYTES:
                raise LimitExceeded(f"{self.name}: the batch's input file would have {size} "
                                    f"bytes, more than the {MAX_INPUT_FILE_BYTES} allowed")
            file_name = await self._upload(spool, size, display_name, version, headers)
        batch: dict[str, Any] = {"display_name": display_name,
                                 "input_config": {"file_name": file_name}}
        if priority is not None:
            batch["priority"] = str(priority)  # int64: a string in proto3 JSON
        body = {"batch": batch}
        url = self.url(f"/{version}/models/{model}:batchGenerateContent")
        response = await http.send(self.client, "POST", url, creates_task=True, json=body,
                                   headers=headers)
        if response.status_code >= 500:
            raise SubmitUncertain(f"{self.name}: batch {display_name!r}: the create answered "
                                  f"HTTP {response.status_code}; the batch may exist")
        answer = parse_json(response, response.content, creating=True)
        raise_for_error(response, answer, creating=True, model=model)  # 404: `ModelNotFound`
        return batch_job(answer)

    async def find_batch(self, display_name: str) -> BatchJob | None:
        """The first batch listed with this display name, following `nextPageToken`."""
        headers = self.auth_headers()
        token: str | None = None
        seen: set[str] = set()
        while True:
            params: dict[str, str | int] = {"pageSize": LIST_PAGE_SIZE}
            if token:
                params["pageToken"] = token
            response = await http.send(self.client, "GET", self.url(
                f"/{self.api_version}/batches"), params=params, headers=headers)
            body = parse_json(response, response.content)
            raise_for_error(response, body)
            for operation in body.get("operations") or body.get("batches") or ():
                if isinstance(operation, Mapping):
                    job = batch_job(operation)
                    if job.display_name == display_name:
                        return job
            token = str(body.get("nextPageToken") or "")
            if not token or token in seen:
                return None
            seen.add(token)

    async def get_batch(self, name: str) -> BatchJob:
        response = await http.send(self.client, "GET", self.url(
            f"/{self.api_version}/{batch_path(name)}"), headers=self.auth_headers())
        body = parse_json(response, response.content)
        raise_for_error(response, body)
        return batch_job(body)

    async def batch_results(self, job: BatchJob) -> AsyncIterator[BatchResult]:
        """One `BatchResult` per line of the results file, streamed; a line longer than the
        answer cap is skipped unread and reported as `ResultMismatch` (`too_large`). An
        expired batch has results only if Google names a file for it (see the module
        docstring); a results file no longer served is `ResultsExpired`."""
        if job.state not in ("succeeded", "expired") or (job.state == "expired"
                                                         and not job.results):
            raise TaskFailed(f"{self.name}: batch {job.name} is {job.state}: "
                             f"{job.error or 'it has no results'}", code=job.state)
        results = job.results or (await self.get_batch(job.name)).results
        if not results:
            raise TaskFailed(f"{self.name}: batch {job.name} succeeded without a results file",
                             code="no_results")
        file_id = results.removeprefix("files/")
        url = self.url(f"/download/{self.api_version}/files/{file_id}:download")
        cap = answer_cap(self.settings.max_image_bytes) + 64 * 1024  # the key and wrapping
        async with http.stream(self.client, "GET", url, params={"alt": "media"},
                               headers=self.auth_headers()) as response:
            if response.status_code >= 300:
                raw = await response.aread()
                if results_gone(response.status_code, job):
                    raise ResultsExpired(
                        f"{self.name}: the results of batch {job.name} ({results}) are no "
                        f"longer served (HTTP {response.status_code}; Google keeps them 6 "
                        "weeks); its requests were billed", code="results_expired")
                raise_for_error(response, parse_json(response, raw[:65536]))
            index = 0
            chunks = response.aiter_bytes(http.DOWNLOAD_CHUNK_BYTES)
            async for line, cut in http.bounded_lines(chunks, cap):
                yield self._result(line, cut, index, cap)
                index += 1

    async def cancel_batch(self, name: str) -> bool:
        """Ask Google to cancel the batch; True only when the batch, read right after,
        is CANCELLED. `batches.cancel` answers an empty body and "stops processing new
        requests" (§6 [C BAT]): the answer itself proves nothing, a batch may still be
        cancelling or have ended otherwise. A refusal is no error (False, or True when the
        batch is cancelled all the same); transport and auth trouble raise."""
        response = await http.send(self.client, "POST", self.url(
            f"/{self.api_version}/{batch_path(name)}:cancel"), headers=self.auth_headers())
        try:
            raise_for_error(response, parse_json(response, response.content or b"{}"))
            return (await self.get_batch(name)).state == "cancelled"
        except AuthError:
            raise
        except TaskNotFound:
            return False
        except Rejected:  # e.g. a batch that has ended: it may have ended cancelled
            return (await self.get_batch(name)).state == "cancelled"

    async def delete_batch(self, name: str) -> None:
        """Remove a finished batch from listings (§6 batches.delete)."""
        response = await http.send(self.client, "DELETE", self.url(
            f"/{self.api_version}/{batch_path(name)}"), headers=self.auth_headers())
        raise_for_error(response, parse_json(response, response.content or b"{}"))

    def auth_headers(self) -> dict[str, str]:
        return key_headers(self.name, self.settings)

    def _check_batch(
        self, display_name: str, requests: Sequence[tuple[str, ImageRequest]]
    ) -> tuple[str, str, int | None]:
        """Every request within the documented limits, unique keys, one model, version and
        priority (None: Google's default)."""
        if not requests:
            raise LimitExceeded(f"{self.name}: a batch needs at least one request")
        if not display_name or len(display_name) > MAX_DISPLAY_NAME:
            raise LimitExceeded(f"{self.name}: a display name has 1 to {MAX_DISPLAY_NAME} "
                                "characters")
        keys: set[str] = set()
        targets: set[tuple[str, str, int | None]] = set()
        for key, request in requests:
            if not key or key in keys:
                raise LimitExceeded(f"{self.name}: request keys must be unique and non-empty "
                                    f"({key!r})")
            keys.add(key)
            self.check_limits(request)
            options = self.checked_options(request)
            priority = options.get("priority")
            targets.add((model_of(options), version_of(options, self.api_version),
                         int(priority) if priority is not None else None))
        if len(targets) > 1:
            raise LimitExceeded(f"{self.name}: one batch runs one model at one priority; these "
                                f"requests name {', '.join(sorted({m for m, _, _ in targets}))} "
                                f"at {sorted({str(p) for _, _, p in targets})}")
        [target] = targets
        return target

    async def _upload(
        self, spool: IO[bytes], size: int, display_name: str, version: str,
        headers: Mapping[str, str],
    ) -> str:
        """The Files API's resumable upload (§5): the new file's name ("files/…")."""
        start = await http.send(
            self.client, "POST", self.url(f"/upload/{version}/files"),
            json={"file": {"displayName": display_name[:MAX_DISPLAY_NAME]}},
            headers={**headers, "X-Goog-Upload-Protocol": "resumable",
                     "X-Goog-Upload-Command": "start",
                     "X-Goog-Upload-Header-Content-Length": str(size),
                     "X-Goog-Upload-Header-Content-Type": JSONL_MIME},
        )
        if start.status_code >= 300:  # a started session answers with headers only
            raise_for_error(start, parse_json(start, start.content))
        session = start.headers.get("X-Goog-Upload-URL")
        if not session:
            raise TransientError(f"{self.name}: the upload start answered no X-Goog-Upload-URL")
        spool.seek(0)
        offset, answer = 0, None
        while answer is None:
            chunk = spool.read(UPLOAD_CHUNK_BYTES)
            last = offset + len(chunk) >= size
            response = await http.send(
                self.client, "POST", session, content=chunk,
                headers={**headers, "X-Goog-Upload-Offset": str(offset),
                         "X-Goog-Upload-Command": "upload, finalize" if last else "upload"},
            )
            if response.status_code >= 300 or last:  # chunks before the last: headers only
                body = parse_json(response, response.content)
                raise_for_error(response, body)
                answer = body if last else None
            offset += len(chunk)
        file = answer.get("file")
        name = file.get("name") if isinstance(file, Mapping) else None
        if not isinstance(name, str) or not name:
            raise TransientError(f"{self.name}: the upload finished without a file name")
        return name

    def _result(self, line: bytes, cut: bool, index: int, cap: int) -> BatchResult:
        """One results line as a `BatchResult`: the image, or why there is none."""
        if cut:
            key = key_in(line)
            return BatchResult(key, error=ResultMismatch(
                f"{self.name}: result line {index} ({key or 'no key'}) is longer than the "
                f"{cap} bytes allowed", code=http.TOO_LARGE), line=index)
        try:
            data = json.loads(line)
        except ValueError:
            data = None
        if not isinstance(data, Mapping):
            return BatchResult(key_in(line), error=ResultMismatch(
                f"{self.name}: result line {index} is not a JSON object",
                code="undecodable"), line=index)
        metadata = data.get("metadata")
        key = str(data.get("key") or (metadata.get("key") if isinstance(metadata, Mapping)
                                      else None) or "")
        error = data.get("error") or data.get("status")
        if isinstance(error, Mapping):
            return BatchResult(key, error=line_error(error), line=index, failed=True)
        response = data.get("response")
        if not isinstance(response, Mapping):
            return BatchResult(key, error=TaskFailed(
                f"{self.name}: result line {index} has neither a response nor an error",
                code="no_response"), line=index)
        try:
            finished = finished_of(response, self.token_prices, self.settings.max_image_bytes)
        except ProviderError as exc:
            return BatchResult(key, error=exc, line=index)
        return BatchResult(key, finished=finished, line=index)


# -- wire format -----------------------------------------------------------------------------


def write_jsonl(out: IO[bytes], requests: Sequence[tuple[str, ImageRequest]]) -> int:
    """The batch's input file (§6 JSONL: `{"key", "request"}` per line); its size in bytes."""
    size = 0
    for key, request in requests:
        body = request_body(request)
        check_inline_size("gemini-batch", body)
        line = json.dumps({"key": key, "request": body}, separators=(",", ":"),
                          ensure_ascii=False).encode() + b"\n"
        out.write(line)
        size += len(line)
    return size


def batch_path(name: str) -> str:
    """"batches/<id>" from a batch's name or bare id."""
    return name if name.startswith("batches/") else f"batches/{name}"


def batch_state(value: Any) -> BatchState:
    """`BatchState` of `BATCH_STATE_*` (the wire) or `JOB_STATE_*` (docs, SDKs); an unknown
    state counts as running: the batch is followed until a known end (or EXPIRED)."""
    text = str(value or "UNSPECIFIED")
    for prefix in STATE_PREFIXES:
        text = text.removeprefix(prefix)
    return STATES.get(text, "running")


def batch_job(operation: Mapping[str, Any]) -> BatchJob:
    """A `BatchJob` from the long-running Operation (create, get, list entries; §6)."""
    metadata = operation.get("metadata")
    meta: Mapping[str, Any] = metadata if isinstance(metadata, Mapping) else {}
    state = batch_state(meta.get("state") or operation.get("state"))
    results = None
    for holder in (operation.get("response"), meta.get("output")):
        if isinstance(holder, Mapping):
            found = holder.get("responsesFile") or holder.get("responses_file")
            results = results or (str(found) if found else None)
    error = operation.get("error") or meta.get("error")
    message = error.get("message") if isinstance(error, Mapping) else None
    if state in DEFAULT_ERRORS:
        message = message or DEFAULT_ERRORS[state]
    return BatchJob(
        name=str(operation.get("name") or meta.get("name") or ""),
        display_name=str(meta.get("displayName") or meta.get("display_name") or ""),
        state=state,
        created_at=timestamp(meta.get("createTime")),
        error=str(message) if message else None,
        results=results,
        failed_requests=failed_requests(meta),
    )


def failed_requests(meta: Mapping[str, Any]) -> int | None:
    """`batchStats.failedRequestCount` (§10 [C REF]; int64 as a string, left out when zero
    [I]); None when the batch reports no stats."""
    stats = meta.get("batchStats") or meta.get("batch_stats")
    if not isinstance(stats, Mapping) or not stats:
        return None
    value = stats.get("failedRequestCount", stats.get("failed_request_count", 0))
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def results_gone(status: int, job: BatchJob) -> bool:
    """Whether a refused results download means the results are no longer kept: a 404, or
    the 403 Google answers for a file that "may not exist" (§5 [I]) once the batch is older
    than the 6 weeks results are kept (§10 [C BAT2])."""
    if status == 404:
        return True
    old = job.created_at is not None and time.time() - job.created_at > RESULTS_KEPT_S
    return status == 403 and old


def timestamp(value: Any) -> float | None:
    """Epoch seconds of an RFC 3339 time ("2026-01-02T03:04:05.123456789Z"), None if absent."""
    if not isinstance(value, str) or not value:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip()).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def key_in(line: bytes) -> str:
    """The `key` of a results line read only in part (its head), else ""."""
    match = _KEY_IN_LINE.search(line)
    if not match:
        return ""
    try:
        return str(json.loads(b'"' + match.group(1) + b'"'))
    except ValueError:
        return ""


# -- errors ----------------------------------------------------------------------------------
# Google's error bodies are mapped by `providers.gemini.raise_for_error` (one place for both
# adapters); a results line's status object by `providers.gemini.line_error`. What is batch's
# own: a 5xx answer to the create may follow a created batch (`create_batch`).
__all__ = ["GeminiBatchProvider", "batch_job", "batch_state", "key_in", "write_jsonl"]
