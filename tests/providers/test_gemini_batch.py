"""gemini-batch (Google's Batch API) against the Gemini emulator, what is Google's own:
creation through the Files API's resumable upload, how many list pages finding a batch
takes, both spellings of the states, the results file streamed line by line (an oversized
and a refused line among them), cancel read back, failed and expired batches. What every
batch provider does is the batch conformance suite's (test_batch_conformance.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from PIL import Image

from nbp.providers import gemini_batch, http
from nbp.providers.base import BatchJob, BatchProvider, BatchResult, ImageRequest, Reference
from nbp.providers.emulator.core import CONTENT_MARKER, FAIL_MARKER, OVERSIZE_MARKER
from nbp.providers.emulator.gemini import GeminiEmulator
from nbp.providers.emulator.hub import TEST_CREDENTIALS, EmulatorHub
from nbp.providers.errors import (
    ContentRejected,
    LimitExceeded,
    ResultMismatch,
    TaskFailed,
)
from nbp.providers.gemini_batch import GeminiBatchProvider, batch_job, batch_state, key_in
from nbp.providers.model import pixel_size

PROVIDER = "gemini"  # the emulator of Google's host serves both adapters
LATENCY_S = 0.4
KEY = TEST_CREDENTIALS["GEMINI_API_KEY"]


def provider_for(env: dict[str, str], **settings: Any) -> GeminiBatchProvider:
    built = GeminiBatchProvider.settings_from_env(env)
    if settings:
        import dataclasses

        built = dataclasses.replace(built, **settings)
    return GeminiBatchProvider(built)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def png(size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (20, 180, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


async def create(provider: GeminiBatchProvider, name: str,
                 requests: Sequence[tuple[str, ImageRequest]]) -> BatchJob:
    try:
        return await provider.create_batch(name, requests)
    finally:
        await provider.aclose()


async def finished(provider: GeminiBatchProvider, job: BatchJob) -> BatchJob:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        job = await provider.get_batch(job.name)
        if job.state not in ("pending", "running"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError("the batch did not finish")


async def results(provider: GeminiBatchProvider, job: BatchJob) -> list[BatchResult]:
    return [result async for result in provider.batch_results(job)]


def test_the_env_and_capabilities_are_geminis_at_half_price() -> None:
    settings = GeminiBatchProvider.settings_from_env(
        {"NBP_GEMINI_BASE_URL": "http://127.0.0.1:9/g", "GEMINI_API_KEY": "k"})
    assert settings.base_url == "http://127.0.0.1:9/g"
    assert settings.credential("GEMINI_API_KEY") == "k"
    caps = GeminiBatchProvider.capabilities
    assert dict(caps.prices_usd) == {"1K": 0.067, "2K": 0.067, "4K": 0.12}
    assert caps.batch is not None and caps.batch.turnaround_s == 24 * 3600
    assert caps.max_references == 14
    assert isinstance(GeminiBatchProvider(settings), BatchProvider)


def test_create_uploads_jsonl_resumably_then_creates_the_batch(
    env: dict[str, str], emulator: GeminiEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gemini_batch, "UPLOAD_CHUNK_BYTES", 256 * 1024)
    photo = Reference("p.png", data=png() + os.urandom(400_000), mime_type="image/png")
    requests = [(f"cell-{i}", ImageRequest(f"shoe {i}", "4:5", "2K", references=(photo,),
                                           seed=40 + i)) for i in range(3)]
    job = run(create(provider_for(env), "nbp-job-1", requests))
    assert job.name.startswith("batches/") and job.display_name == "nbp-job-1"
    assert job.state == "pending" and job.created_at is not None
    commands = [c for c, _, _ in emulator.upload_chunks]
    assert commands[-1] == "upload, finalize" and set(commands[:-1]) == {"upload"}
    assert len(commands) > 2
    offsets = [o for _, o, _ in emulator.upload_chunks]
    sizes = [n for _, _, n in emulator.upload_chunks]
    assert offsets == [sum(sizes[:i]) for i in range(len(sizes))]
    [record] = emulator.creates
    assert record.task_id == job.name
    assert record.body == {"batch": {"display_name": "nbp-job-1",
                                     "input_config": {"file_name": record.body["batch"][
                                         "input_config"]["file_name"]}}}
    batch = emulator.batches[job.name.removeprefix("batches/")]
    assert [line.key for line in batch.lines] == ["cell-0", "cell-1", "cell-2"]
    assert batch.lines[0].request["generationConfig"]["imageConfig"] == {
        "aspectRatio": "4:5", "imageSize": "2K"}
    # each line is a GenerateContentRequest: its seed goes as generateContent's does
    assert [line.request["generationConfig"]["seed"] for line in batch.lines] == [40, 41, 42]
    assert ("POST", "/gemini/upload/v1beta/files") in emulator.requests
    assert ("POST", "/gemini/v1beta/models/gemini-3-pro-image:batchGenerateContent") \
        in emulator.requests  # the GA id by default


def test_a_batch_runs_one_model_and_checks_limits_before_sending(
    env: dict[str, str], emulator: GeminiEmulator
) -> None:
    mixed = [("a", ImageRequest("x")),
             ("b", ImageRequest("y", options={"model": "gemini-3-pro-image-preview"}))]
    twice = [("a", ImageRequest("x")), ("a", ImageRequest("y"))]
    too_many = [("a", ImageRequest("x", references=tuple(
        Reference(f"https://example.com/{i}.png") for i in range(15))))]
    for requests in (mixed, twice, too_many, []):
        with pytest.raises(LimitExceeded):
            run(create(provider_for(env), "refused", requests))
    assert emulator.requests == [] and emulator.creates == []


def test_find_batch_follows_pages_by_display_name(
    env: dict[str, str], emulator: GeminiEmulator
) -> None:
    for i in range(7):
        run(create(provider_for(env), f"nbp-find-{i}", [("k", ImageRequest(f"p{i}"))]))
    emulator.requests.clear()
    provider = provider_for(env)

    async def go() -> tuple[BatchJob | None, BatchJob | None]:
        try:
            return await provider.find_batch("nbp-find-0"), await provider.find_batch("nope")
        finally:
            await provider.aclose()

    oldest, missing = run(go())
    assert oldest is not None and oldest.display_name == "nbp-find-0"
    assert oldest.name == emulator.creates[0].task_id
    assert missing is None
    lists = [p for m, p in emulator.requests if p == "/gemini/v1beta/batches"]
    assert len(lists) == 6  # 7 batches, 3 a page (the emulator's cap), listed twice


@pytest.mark.parametrize("prefix", ["BATCH_STATE_", "JOB_STATE_"])
def test_both_state_spellings_are_read(
    env: dict[str, str], emulator: GeminiEmulator, prefix: str
) -> None:
    emulator.state_prefix = prefix
    provider = provider_for(env)

    async def go() -> tuple[BatchJob, BatchJob]:
        try:
            job = await provider.create_batch("nbp-states", [("k", ImageRequest("a lemon"))])
            return job, await finished(provider, job)
        finally:
            await provider.aclose()

    first, last = run(go())
    assert first.state == "pending" and last.state == "succeeded"
    assert last.results is not None and last.results.startswith("files/")
    assert [batch_state(f"{p}{s}") for p in ("BATCH_STATE_", "JOB_STATE_")
            for s in ("PENDING", "RUNNING", "SUCCEEDED", "CANCELLED", "EXPIRED")] == [
        "pending", "running", "succeeded", "cancelled", "expired"] * 2


def test_results_stream_line_by_line_with_a_refused_line(
    env: dict[str, str], emulator: GeminiEmulator
) -> None:
    cap = 2 * 1024 * 1024  # a 1K image has ~600 KB; the line cap is 2 x cap + ~1 MB
    emulator.configure(oversize_bytes=4 * cap)
    requests = [
        ("ok", ImageRequest("a lemon", "16:9", "1K")),
        ("safety", ImageRequest(f"a {CONTENT_MARKER}")),
        ("huge", ImageRequest(f"a {OVERSIZE_MARKER}")),
        ("broken", ImageRequest(f"a {FAIL_MARKER}")),
        ("also-ok", ImageRequest("a pear", "1:1", "1K")),
    ]
    provider = provider_for(env, max_image_bytes=cap)

    async def go() -> list[BatchResult]:
        try:
            job = await finished(provider, await provider.create_batch("nbp-res", requests))
            assert job.state == "succeeded"
            return await results(provider, job)
        finally:
            await provider.aclose()

    got = run(go())
    assert [r.key for r in got] == ["ok", "safety", "huge", "broken", "also-ok"]
    assert [r.line for r in got] == [0, 1, 2, 3, 4]
    ok, safety, huge, broken, also = got
    assert ok.finished is not None and ok.error is None
    with Image.open(io.BytesIO(ok.finished.images[0].data or b"")) as image:
        assert image.size == pixel_size("16:9", "1K")
    assert ok.finished.usage["image"] == 1120
    assert ok.finished.cost_usd is not None and ok.finished.cost_usd < 0.134 / 2 + 0.01
    assert isinstance(safety.error, ContentRejected) and safety.error.code == "IMAGE_SAFETY"
    assert isinstance(huge.error, ResultMismatch) and huge.error.code == http.TOO_LARGE
    assert "longer than" in str(huge.error)  # skipped unread, not parsed
    assert isinstance(broken.error, TaskFailed) and broken.error.code == "INTERNAL"
    assert not isinstance(broken.error, ContentRejected)
    assert also.finished is not None


def test_cancel_failed_and_expired_batches(env: dict[str, str], emulator: GeminiEmulator) -> None:
    provider = provider_for(env)

    async def go() -> tuple[BatchJob, BatchJob, BatchJob]:
        try:
            emulator.configure(latency_s=30.0)
            cancelled = await provider.create_batch("nbp-cancel", [("k", ImageRequest("x"))])
            assert await provider.cancel_batch(cancelled.name) is True  # read back CANCELLED
            emulator.batch_expiry_s = 0.3
            expired = await provider.create_batch("nbp-expire", [("k", ImageRequest("x"))])
            emulator.configure(latency_s=0.2)
            failed = await provider.create_batch(f"nbp {FAIL_MARKER}", [("k", ImageRequest("x"))])
            return (await finished(provider, cancelled), await finished(provider, expired),
                    await finished(provider, failed))
        finally:
            await provider.aclose()

    cancelled, expired, failed = run(go())
    assert (cancelled.state, expired.state, failed.state) == ("cancelled", "expired", "failed")
    assert cancelled.error and "cancelled" in cancelled.error
    assert expired.error and "48 h" in expired.error and expired.results is None
    assert failed.error and "failed" in failed.error
    with pytest.raises(TaskFailed):
        run(results(provider, failed))  # refused before any request


def test_a_cancel_is_confirmed_only_by_the_batch_read_back(
    env: dict[str, str], emulator: GeminiEmulator
) -> None:
    """`batches.cancel` answers `{}` whatever happened: only the batch's state read right
    after proves it. A batch that already ended stays as it was: False, no error."""
    emulator.configure(latency_s=0.1)

    async def go() -> tuple[bool, BatchJob]:
        provider = provider_for(env)
        try:
            job = await provider.create_batch("nbp-too-late", [("k", ImageRequest("x"))])
            done = await finished(provider, job)
            return await provider.cancel_batch(done.name), await provider.get_batch(done.name)
        finally:
            await provider.aclose()

    confirmed, after = run(go())
    assert confirmed is False and after.state == "succeeded"
    paths = [path for _, path in emulator.requests]
    batch = f"/gemini/v1beta/{after.name}"
    assert paths[-3:] == [f"{batch}:cancel", batch, batch]  # the read-back, then ours


# -- the emulator's own surface ------------------------------------------------------------------


def _api(hub: EmulatorHub, method: str, path: str, *, headers: dict[str, str] | None = None,
         **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{hub.base_url('gemini')}{path}",
                         headers={"x-goog-api-key": KEY, **(headers or {})}, timeout=30,
                         **kwargs)


def test_inline_requests_delete_and_the_sdks_download_path(
    hub: EmulatorHub, emulator: GeminiEmulator
) -> None:
    emulator.configure(latency_s=0.05)
    request = {"contents": [{"parts": [{"text": "inline"}]}],
               "generation_config": {"image_config": {"image_size": "1K"}}}
    created = _api(hub, "POST", "/v1beta/models/gemini-3-pro-image-preview:batchGenerateContent",
                   json={"batch": {"display_name": "inline", "input_config": {"requests": {
                       "requests": [{"request": request, "metadata": {"key": "only"}}]}}}})
    assert created.status_code == 200, created.text
    name = created.json()["name"]
    assert created.json()["metadata"]["state"] == "BATCH_STATE_PENDING"
    time.sleep(0.1)
    done = _api(hub, "GET", f"/v1beta/{name}").json()
    assert done["done"] is True
    assert done["response"]["responsesFile"] == done["metadata"]["output"]["responsesFile"]
    file_id = done["response"]["responsesFile"].removeprefix("files/")
    sdk = _api(hub, "GET", f"/v1beta/files/{file_id}:download", params={"alt": "media"})
    docs = _api(hub, "GET", f"/download/v1beta/files/{file_id}:download",
                params={"alt": "media"})
    assert sdk.status_code == docs.status_code == 200
    [line] = [json.loads(text) for text in docs.text.splitlines()]
    assert line["key"] == "only" and line["response"]["candidates"][0]["finishReason"] == "STOP"
    data = base64.b64decode(line["response"]["candidates"][0]["content"]["parts"][-1][
        "inlineData"]["data"])
    assert data.startswith(b"\x89PNG")
    assert _api(hub, "DELETE", f"/v1beta/{name}").status_code == 200
    assert _api(hub, "GET", f"/v1beta/{name}").status_code == 404
    assert _api(hub, "GET", "/v1beta/batches").json() == {"operations": []}


def test_uploaded_files_cannot_be_downloaded_and_unknown_ones_are_403(
    hub: EmulatorHub, emulator: GeminiEmulator
) -> None:
    start = _api(hub, "POST", "/upload/v1beta/files", json={"file": {"display_name": "in"}},
                 headers={"X-Goog-Upload-Protocol": "resumable",
                          "X-Goog-Upload-Command": "start",
                          "X-Goog-Upload-Header-Content-Length": "3"})
    session = start.headers["X-Goog-Upload-URL"]
    final = httpx.post(session, content=b"abc", headers={
        "X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"})
    assert final.headers["X-Goog-Upload-Status"] == "final"
    file = final.json()["file"]
    assert file["sizeBytes"] == "3" and file["source"] == "UPLOADED"
    file_id = file["name"].removeprefix("files/")
    assert _api(hub, "GET", f"/download/v1beta/files/{file_id}:download",
                params={"alt": "media"}).status_code == 400
    unknown = _api(hub, "GET", "/v1beta/files/nope")
    assert unknown.status_code == 403


def test_operation_parsing_reads_both_places_of_the_results_file() -> None:
    job = batch_job({"name": "batches/b", "done": True, "metadata": {
        "displayName": "d", "state": "JOB_STATE_SUCCEEDED",
        "createTime": "2026-11-27T10:00:00.123456789Z",
        "output": {"responsesFile": "files/out"}}})
    assert (job.state, job.results, job.display_name) == ("succeeded", "files/out", "d")
    assert job.created_at is not None and abs(job.created_at - 1795773600.123456) < 1e-3
    assert BatchJob.from_json(job.to_json()) == job
    assert key_in(b'{"key":"c\\"1","response":{"candidates":[{"cont') == 'c"1'
    assert key_in(b'{"response": ') == ""


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_bounded_lines_across_chunks(chunk: int) -> None:
    body = b'{"a":1}\r\n\n' + b"x" * 50 + b'\n{"b":2}\n' + b"y" * 30 + b"\n{\"c\":3}"

    async def chunks() -> Any:
        for start in range(0, len(body), chunk):
            yield body[start:start + chunk]

    async def go() -> list[tuple[bytes, bool]]:
        return [item async for item in http.bounded_lines(chunks(), 40, keep_bytes=5)]

    assert run(go()) == [(b'{"a":1}', False), (b"xxxxx", True), (b'{"b":2}', False),
                         (b"y" * 30, False), (b'{"c":3}', False)]
