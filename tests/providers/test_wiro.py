"""What is specific to Wiro (protocols.md §1, seeds/wiro.txt): the HMAC signature recipe and
both auth modes, JSON vs multipart Run bodies, body codes on HTTP 200 (96, 97, 0, 1), the
string-typed Task/Detail lifecycle, Cancel-then-Kill confirmed only by a `task_cancel` status
(the readings of a stop, protocols.md §11), and the `callbackUrl` option.
Generic behaviour (states, faults, limits) is in the shared conformance suite."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
import pytest

from nbp.providers.base import Finished, ImageRequest, Pending, Reference, Submitted
from nbp.providers.emulator.core import CONTENT_MARKER, FAIL_MARKER
from nbp.providers.emulator.hub import EmulatorHub
from nbp.providers.emulator.wiro import WiroEmulator
from nbp.providers.errors import (
    AuthError,
    ContentRejected,
    InsufficientBalance,
    LimitExceeded,
    ProviderError,
    RateLimited,
    Rejected,
    TaskFailed,
    TaskNotFound,
    TransientError,
)
from nbp.providers.wiro import (
    TASK_LIFECYCLE,
    WiroProvider,
    raise_for_error,
    sign,
    task_outcome,
    task_times,
)

T = TypeVar("T")
PROVIDER = "wiro"
LATENCY_S = 0.1
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8  # binary, with CR/LF inside


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def provider_for(env: dict[str, str], **overrides: str) -> WiroProvider:
    merged = {k: v for k, v in {**env, **overrides}.items() if v}  # "" drops a variable
    return WiroProvider(WiroProvider.settings_from_env(merged))


async def finish(provider: WiroProvider, submitted: Submitted) -> Finished:
    deadline = time.monotonic() + 5
    while isinstance(outcome := await provider.poll(submitted), Pending):
        assert time.monotonic() < deadline, "task never finished"
        await asyncio.sleep(0.01)
    return outcome


async def submit_once(env: dict[str, str], request: ImageRequest, **overrides: str) -> Any:
    """Submit and follow to the end: (submitted, finished) or the ProviderError raised."""
    provider = provider_for(env, **overrides)
    try:
        submitted = await provider.submit(request)
        return submitted, await finish(provider, submitted)
    except ProviderError as exc:
        return exc
    finally:
        await provider.aclose()


def signed_headers(env: dict[str, str], nonce: str = "1734513807") -> dict[str, str]:
    key, secret = env["WIRO_API_KEY"], env["WIRO_API_SECRET"]
    signature = hmac.new(key.encode(), (secret + nonce).encode(), hashlib.sha256).hexdigest()
    return {"x-api-key": key, "x-nonce": nonce, "x-signature": signature}


def raw(env: dict[str, str], path: str, headers: dict[str, str] | None = None,
        **kwargs: Any) -> httpx.Response:
    """One POST under the Wiro base URL, signed correctly unless `headers` says otherwise."""
    url = env["NBP_WIRO_BASE_URL"] + path
    return httpx.post(url, headers=signed_headers(env) if headers is None else headers,
                      timeout=10, **kwargs)


# -- auth -----------------------------------------------------------------------------------


def test_signature_is_the_documented_hmac_and_not_the_openssl_output() -> None:
    # `echo -n "my-secret1734513807" | openssl dgst -sha256 -hmac "my-key"` (the seed recipe)
    # prints "SHA2-256(stdin)= 5624…"; the header is only the hex (protocols.md §9.1).
    expected = "5624166e9a51d622e2286b849bca78f503555f93dc17e832ad669484ea019a2e"
    assert sign("my-key", "my-secret", "1734513807") == expected


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({}, None, id="correct"),
        pytest.param({"x-api-key": "other"}, "Project authorization is not founded.", id="key"),
        pytest.param({"x-nonce": None}, "x-signature and x-nonce headers are required", id="nonce"),
        pytest.param({"x-signature": None}, "headers are required", id="no-signature"),
        pytest.param({"x-signature": "openssl"}, "Project authorization is not valid.",
                     id="openssl-prefix"),
        pytest.param({"x-signature": "swapped"}, "Project authorization is not valid.",
                     id="secret-as-key"),
        pytest.param({"x-nonce": "1734513808"}, "Project authorization is not valid.",
                     id="other-nonce"),
    ],
)
def test_the_emulator_checks_the_signature_recipe(
    env: dict[str, str], change: dict[str, str | None], message: str | None
) -> None:
    headers = signed_headers(env)
    key, secret = env["WIRO_API_KEY"], env["WIRO_API_SECRET"]
    for name, value in change.items():
        if value is None:
            del headers[name]
        elif value == "openssl":
            headers[name] = f"SHA2-256(stdin)= {headers[name]}"
        elif value == "swapped":
            headers[name] = sign(secret, key, headers["x-nonce"])
        else:
            headers[name] = value
    response = raw(env, "/Task/Detail", headers=headers, json={"taskid": "1"})
    if message is None:
        assert response.status_code == 200  # past auth: the task simply does not exist
        assert response.json()["errors"] == [{"code": 1, "message": "There is no task yet."}]
    else:
        assert response.status_code == 401
        body = response.json()
        assert body["result"] is False and body["errors"][0]["code"] == 0
        assert message in body["errors"][0]["message"]


def test_a_key_only_project_takes_a_client_without_secret(
    env: dict[str, str], emulator: WiroEmulator
) -> None:
    emulator.signature_mode = False
    assert raw(env, "/Task/Detail", headers={"x-api-key": env["WIRO_API_KEY"]},
               json={"taskid": "1"}).status_code == 200
    outcome = run(submit_once(env, ImageRequest("key only"), WIRO_API_SECRET=""))
    assert isinstance(outcome, tuple), outcome
    assert len(emulator.creates) == 1


def test_a_signature_project_refuses_a_client_without_secret(
    env: dict[str, str], emulator: WiroEmulator
) -> None:
    outcome = run(submit_once(env, ImageRequest("no secret"), WIRO_API_SECRET=""))
    assert isinstance(outcome, AuthError) and outcome.code == "401"
    assert "requires signature authentication" in str(outcome)
    assert emulator.creates == []


def test_a_wrong_secret_is_an_auth_error_without_the_secret(
    env: dict[str, str], emulator: WiroEmulator
) -> None:
    outcome = run(submit_once(env, ImageRequest("bad secret"), WIRO_API_SECRET="s3cr3t-wrong"))
    assert isinstance(outcome, AuthError)
    assert "is not valid" in str(outcome) and "s3cr3t-wrong" not in repr(outcome)
    assert emulator.creates == []


# -- run body -------------------------------------------------------------------------------


def test_urls_only_go_as_json_field_by_field(env: dict[str, str], emulator: WiroEmulator) -> None:
    urls = ("https://example.com/a.png", "https://example.com/b.jpg")
    request = ImageRequest(
        "a koala in a shirt", aspect_ratio="4:5", resolution="2K", seed=7,
        references=tuple(Reference(u) for u in urls),
        options={"callbackUrl": "https://hooks.example.com/wiro"},
    )
    outcome = run(submit_once(env, request))
    assert isinstance(outcome, tuple), outcome
    submitted, _ = outcome
    task = emulator.tasks[submitted.task_id]
    assert task.extra["content_type"] == "json"
    # Wiro has no seed input: it is not sent (an unknown field would be rejected).
    assert emulator.creates[0].body == {
        "prompt": "a koala in a shirt", "aspectRatio": "4:5", "resolution": "2K",
        "inputImage": list(urls), "callbackUrl": "https://hooks.example.com/wiro",
    }
    assert submitted.extra == {"socketaccesstoken": task.extra["token"]}


def test_local_files_go_multipart_with_urls_in_the_same_field_in_order(
    env: dict[str, str], emulator: WiroEmulator, hub: EmulatorHub
) -> None:
    refs = (
        Reference("https://example.com/first.png"),
        Reference("specs/data/shoe.png", data=PNG, mime_type="image/png"),
        Reference("https://example.com/third.png"),
        Reference("specs/data/logo.jpg", data=b"\xff\xd8\xff" + PNG, mime_type="image/jpeg"),
    )
    request = ImageRequest("multipart", aspect_ratio="1:1", references=refs)
    outcome = run(submit_once(env, request))
    assert isinstance(outcome, tuple), outcome
    task = emulator.tasks[outcome[0].task_id]
    assert task.extra["content_type"] == "multipart"
    received = task.references
    assert received[0] == refs[0].uri and received[2] == refs[2].uri
    assert received[1].startswith(f"{hub.url}/files/wiro-") and received[1].endswith(".png")
    assert received[3].endswith(".jpg")
    assert httpx.get(received[1], timeout=10).content == PNG
    assert httpx.get(received[3], timeout=10).content == b"\xff\xd8\xff" + PNG
    assert emulator.creates[0].body["aspectRatio"] == "1:1"


def test_a_file_that_is_not_an_image_is_rejected_not_retried(
    env: dict[str, str], emulator: WiroEmulator
) -> None:
    notes = Reference("notes.txt", data=b"hello", mime_type="text/plain")
    outcome = run(submit_once(env, ImageRequest("text file", references=(notes,))))
    assert isinstance(outcome, Rejected) and outcome.code == "0"
    assert emulator.creates == []


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        pytest.param({"aspectRatio": "1:1"}, 0, "Request parameter [prompt] required",
                     id="no-prompt"),
        pytest.param({"prompt": "x", "resolution": "2k"}, 0, "Request parameters are invalid.",
                     id="lowercase-k"),
        pytest.param({"prompt": "x", "aspectRatio": "7:3"}, 0, "Request parameters are invalid.",
                     id="bad-ratio"),
        pytest.param({"prompt": "x", "safetySetting": "OFF"}, 0,
                     "Request parameters are invalid.", id="n8n-field"),
        pytest.param({"prompt": "x", "inputImage": ["https://e.com/i.png"] * 15}, 0,
                     "Request parameters are invalid.", id="15-refs"),
        pytest.param({"prompt": "x", "inputImage": ["wiro_resized_transparent_192x192.png"]}, 0,
                     "Request parameters are invalid.", id="not-a-url"),
    ],
)
def test_the_emulator_validates_run_like_the_model_schema(
    env: dict[str, str], emulator: WiroEmulator, body: dict[str, Any], code: int, message: str
) -> None:
    response = raw(env, "/Run/google/nano-banana-pro", json=body)
    assert response.status_code == 200
    assert response.json() == {"result": False, "errors": [{"code": code, "message": message}]}
    assert emulator.creates == []


def test_the_emulator_accepts_the_seed_defaults_and_refuses_the_seed_curl(
    env: dict[str, str], emulator: WiroEmulator
) -> None:
    ok = raw(env, "/Run/google/nano-banana-pro",
             json={"prompt": "defaults", "aspectRatio": "match_input_image"})
    assert ok.json()["result"] is True and ok.json()["taskid"]
    assert emulator.tasks[ok.json()["taskid"]].resolution == "1K"
    # The seed's curl sends a JSON body under a multipart Content-Type (protocols.md §1.2).
    seed_curl = raw(env, "/Run/google/nano-banana-pro",
                    headers={**signed_headers(env), "Content-Type": "multipart/form-data"},
                    content=json.dumps({"prompt": "seed curl"}).encode())
    assert seed_curl.json()["errors"][0]["message"] == "Request parameters are invalid."
    other_model = raw(env, "/Run/google/nano-banana", json={"prompt": "x"})
    assert other_model.json()["errors"] == [{"code": 1, "message": "slug-owner-project-not-exist"}]
    assert len(emulator.creates) == 1


def test_callback_url_must_be_an_http_url(env: dict[str, str], emulator: WiroEmulator) -> None:
    request = ImageRequest("callback", options={"callbackUrl": "not a url"})
    outcome = run(submit_once(env, request))
    assert isinstance(outcome, LimitExceeded) and "callbackUrl" in str(outcome)
    assert emulator.requests == []


# -- body codes and HTTP statuses -----------------------------------------------------------


def test_the_concurrency_limit_is_code_96_without_retry_after(
    env: dict[str, str], emulator: WiroEmulator
) -> None:
    emulator.configure(max_concurrency=1, latency_s=0.3)

    async def go() -> None:
        provider = provider_for(env)
        try:
            first = await provider.submit(ImageRequest("first"))
            with pytest.raises(RateLimited) as caught:
                await provider.submit(ImageRequest("second"))
            assert caught.value.code == "96" and caught.value.retry_after is None
            assert caught.value.concurrency  # fewer tasks in flight, not fewer creates
            assert "you can run up to 1 tasks" in str(caught.value)
            await finish(provider, first)  # a finished task frees its slot
            await provider.submit(ImageRequest("third"))
        finally:
            await provider.aclose()

    run(go())
    assert [c.prompt for c in emulator.creates] == ["first", "third"]


def test_the_balance_formula_limits_concurrency(
    env: dict[str, str], emulator: WiroEmulator
) -> None:
    emulator.balance_usd = 25.0  # max(1, floor(25 * 0.10)) = 2
    emulator.configure(latency_s=2.0)

    async def go() -> RateLimited:
        provider = provider_for(env)
        try:
            await provider.submit(ImageRequest("one"))
            await provider.submit(ImageRequest("two"))
            with pytest.raises(RateLimited) as caught:
                await provider.submit(ImageRequest("three"))
            return caught.value
        finally:
            await provider.aclose()

    error = run(go())
    assert "balance of $25.00, you can run up to 2 tasks" in str(error)


def test_a_low_balance_is_code_97(env: dict[str, str], emulator: WiroEmulator) -> None:
    emulator.balance_usd = 0.2
    outcome = run(submit_once(env, ImageRequest("poor")))
    assert isinstance(outcome, InsufficientBalance) and outcome.code == "97"
    assert emulator.creates == []


def test_rate_limiting_is_http_429(env: dict[str, str], emulator: WiroEmulator) -> None:
    emulator.configure(rate_limit=(1, 60.0))
    assert isinstance(run(submit_once(env, ImageRequest("one"))), tuple)
    outcome = run(submit_once(env, ImageRequest("two")))
    assert isinstance(outcome, RateLimited) and outcome.code == "429"
    assert not outcome.concurrency  # a create rate, not tasks in flight


def test_a_wrong_base_path_is_rejected_not_a_missing_task(
    env: dict[str, str], emulator: WiroEmulator
) -> None:
    wrong = env["NBP_WIRO_BASE_URL"].replace("/v1", "/v2")
    outcome = run(submit_once(env, ImageRequest("lost"), NBP_WIRO_BASE_URL=wrong))
    assert type(outcome) is Rejected and outcome.code == "404"
    assert "Error parsing url." in str(outcome)


def test_an_unknown_task_is_task_not_found(env: dict[str, str], emulator: WiroEmulator) -> None:
    async def go() -> None:
        provider = provider_for(env)
        try:
            with pytest.raises(TaskNotFound) as caught:
                await provider.poll(Submitted("wiro", "999999"))
            assert caught.value.code == "1"
        finally:
            await provider.aclose()

    run(go())


@pytest.mark.parametrize(
    ("status", "code", "message", "error"),
    [
        pytest.param(200, 0, "Request parameter [prompt] required", Rejected, id="0-validation"),
        pytest.param(200, 0, "You don't have any permission for this action.", Rejected,
                     id="0-permission"),
        pytest.param(200, 0, "Internal server error, please retry", TransientError,
                     id="0-server"),
        pytest.param(200, 1, "tool-not-accessible", Rejected, id="1-model"),
        pytest.param(200, 1, "There is no task yet.", TaskNotFound, id="1-task"),
        pytest.param(200, 96, "You have reached your concurrent task limit.", RateLimited,
                     id="96"),
        pytest.param(200, 97, "Insufficient balance", InsufficientBalance, id="97"),
        pytest.param(200, 98, "sign in to run this model", AuthError, id="98"),
        pytest.param(200, 99, "Authorization bearer token expired.", AuthError, id="99"),
        pytest.param(401, 0, "Requested ip 10.0.0.1 is not allowed.", AuthError, id="401-ip"),
        pytest.param(503, 0, "Service Unavailable", TransientError, id="503"),
    ],
)
def test_every_documented_code_has_one_meaning(
    status: int, code: int, message: str, error: type[ProviderError]
) -> None:
    # Codes 98/99, the IP allow-list and code-0 server errors cannot be provoked on the
    # emulator with API-key auth, so the documented bodies (error-reference.md) go in directly.
    body = {"result": False, "errors": [{"code": code, "message": message}]}
    response = httpx.Response(status, json=body)
    with pytest.raises(error) as caught:
        raise_for_error(response, body, "run")
    assert type(caught.value) is error
    assert message in str(caught.value)
    if isinstance(caught.value, RateLimited):
        assert caught.value.concurrency is (code == 96)


# -- task detail ----------------------------------------------------------------------------


def test_task_detail_walks_the_documented_lifecycle_to_a_billed_success(
    env: dict[str, str], emulator: WiroEmulator
) -> None:
    emulator.configure(latency_s=0.4)
    emulator.stderr_logs = True  # task_error is a log event, never an end

    async def go() -> tuple[list[str], Finished]:
        provider = provider_for(env)
        try:
            submitted = await provider.submit(ImageRequest("walk", resolution="4K"))
            states: list[str] = []
            while isinstance(outcome := await provider.poll(submitted), Pending):
                states.append(outcome.state)
                await asyncio.sleep(0.003)
            return states, outcome
        finally:
            await provider.aclose()

    states, finished = run(go())
    assert set(states) <= {*TASK_LIFECYCLE, "task_error"} - {"task_output"}
    positions = [TASK_LIFECYCLE.index(s if s != "task_error" else "task_output") for s in states]
    assert positions == sorted(positions)
    assert states[0] == "task_queue" and len(set(states)) >= 4
    assert finished.state == "task_postprocess_end"
    assert finished.cost_usd == pytest.approx(0.24)  # emulated price of a 4K image
    assert finished.images[0].mime_type == "image/png"


OUTPUT = {"name": "0.png", "contenttype": "image/png", "url": "https://cdn1.wiro.ai/x/0.png"}


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        pytest.param({"status": "task_error", "pexit": ""}, "task_error", id="stderr-log"),
        pytest.param({"status": "task_end", "pexit": "0", "outputs": [OUTPUT]}, "task_end",
                     id="end-is-not-terminal"),
        pytest.param({"status": "task_output_full", "outputs": []}, "task_output_full",
                     id="output-full"),
        pytest.param({"status": "task_postprocess_end", "outputs": [OUTPUT], "totalcost": "0.1"},
                     Finished, id="no-pexit-with-outputs"),
        pytest.param({"status": "task_postprocess_end", "pexit": "0", "outputs": [],
                      "totalcost": "0"}, "no_image", id="pexit-0-without-outputs"),
        pytest.param({"status": "task_postprocess_end", "pexit": "137", "outputs": [OUTPUT],
                      "debugerror": "Killed"}, "pexit_137", id="nonzero-pexit-wins"),
        pytest.param({"status": "task_postprocess_end", "pexit": "1", "outputs": [],
                      "debugerror": "finishReason: PROHIBITED_CONTENT"}, ContentRejected,
                     id="prohibited"),
    ],
)
def test_only_postprocess_end_and_cancel_end_a_task(
    task: dict[str, Any], expected: str | type[Any]
) -> None:
    # Documented task objects (tasks.md) fed straight to the adapter's state reading: the
    # emulator's clock shows stderr logs and task_end only for a few milliseconds.
    document = {"id": "2221", **task}
    if isinstance(expected, str) and expected.startswith(("no_image", "pexit")):
        with pytest.raises(TaskFailed) as caught:
            task_outcome(document)
        assert caught.value.code == expected and not isinstance(caught.value, ContentRejected)
    elif expected is ContentRejected:
        with pytest.raises(ContentRejected):
            task_outcome(document)
    elif expected is Finished:
        outcome = task_outcome(document)
        assert isinstance(outcome, Finished) and outcome.cost_usd == pytest.approx(0.1)
    else:
        assert task_outcome(document) == Pending(str(expected))


def test_task_detail_answers_by_every_documented_key_with_string_fields(
    env: dict[str, str], emulator: WiroEmulator
) -> None:
    created = raw(env, "/Run/google/nano-banana-pro", json={"prompt": "keys"}).json()
    time.sleep(LATENCY_S * 1.5)
    token = created["socketaccesstoken"]
    for key, value in [("taskid", created["taskid"]), ("tasktoken", token),
                       ("socketaccesstoken", token)]:
        body = raw(env, "/Task/Detail", json={key: value}).json()
        assert body["result"] is True and body["total"] == "1"
        (task,) = body["tasklist"]
        assert task["id"] == created["taskid"] and task["socketaccesstoken"] == token
        assert task["status"] == "task_postprocess_end" and task["pexit"] == "0"
        assert task["outputs"][0]["name"] == "0.png"
        assert float(task["totalcost"]) > 0
        not_strings = {"parameters", "outputs", "guestid", "marketplaceid"}
        assert all(isinstance(v, str) for k, v in task.items() if k not in not_strings)
    missing = raw(env, "/Task/Detail", json={}).json()
    assert missing["errors"] == [{"code": 0, "message": "taskid or socketaccesstoken is required"}]


def test_a_failed_task_is_pexit_1_unbilled_and_a_blocked_one_is_content_rejected(
    env: dict[str, str], emulator: WiroEmulator
) -> None:
    failed = run(submit_once(env, ImageRequest(f"{FAIL_MARKER} boom")))
    assert type(failed) is TaskFailed and failed.code == "pexit_1"
    blocked = run(submit_once(env, ImageRequest(f"{CONTENT_MARKER} no")))
    assert isinstance(blocked, ContentRejected) and "safety" in str(blocked)
    for record in emulator.creates:
        (task,) = raw(env, "/Task/Detail", json={"taskid": record.task_id}).json()["tasklist"]
        assert (task["status"], task["pexit"], task["outputs"], task["totalcost"]) == (
            "task_postprocess_end", "1", [], "0"
        )


# -- cancel ---------------------------------------------------------------------------------


def test_cancel_uses_task_cancel_while_queued(env: dict[str, str], emulator: WiroEmulator) -> None:
    emulator.configure(latency_s=4.0)  # queued for the first second

    async def go() -> None:
        provider = provider_for(env)
        try:
            submitted = await provider.submit(ImageRequest("cancel queued"))
            assert await provider.cancel(submitted) is True  # the answer shows task_cancel
            with pytest.raises(TaskFailed) as caught:
                await provider.poll(submitted)
            assert caught.value.code == "task_cancel"
        finally:
            await provider.aclose()

    run(go())
    paths = [path for _, path in emulator.requests]
    assert paths.count("/wiro/v1/Task/Cancel") == 1 and "/wiro/v1/Task/Kill" not in paths
    assert paths.count("/wiro/v1/Task/Detail") == 1  # the poll after it, nothing more


def test_cancel_falls_back_to_kill_while_running(
    env: dict[str, str], emulator: WiroEmulator
) -> None:
    emulator.configure(latency_s=0.4)

    async def go() -> str:
        provider = provider_for(env)
        try:
            submitted = await provider.submit(ImageRequest("kill running"))
            while (await provider.poll(submitted)) == Pending("task_queue"):
                await asyncio.sleep(0.01)
            assert await provider.cancel(submitted) is True
            return submitted.task_id
        finally:
            await provider.aclose()

    task_id = run(go())
    assert emulator.tasks[task_id].cancelled_at is not None
    paths = [path for _, path in emulator.requests]
    assert paths.index("/wiro/v1/Task/Cancel") < paths.index("/wiro/v1/Task/Kill")
    (task,) = raw(env, "/Task/Detail", json={"taskid": task_id}).json()["tasklist"]
    assert task["status"] == "task_cancel" and task["outputs"] == []


def test_cancel_after_the_end_changes_nothing(env: dict[str, str], emulator: WiroEmulator) -> None:
    async def go() -> str:
        provider = provider_for(env)
        try:
            submitted = await provider.submit(ImageRequest("already done"))
            await finish(provider, submitted)
            # Cancel and Kill both refuse: nothing to stop, no error, nothing confirmed
            assert await provider.cancel(submitted) is False
            assert isinstance(await provider.poll(submitted), Finished)
            return submitted.task_id
        finally:
            await provider.aclose()

    task_id = run(go())
    assert emulator.tasks[task_id].cancelled_at is None


def stop(env: dict[str, str], prompt: str) -> tuple[bool, Pending | Finished | ProviderError, str]:
    """Submit, cancel at once, poll once: (confirmed, what the poll saw, task id)."""
    async def go() -> tuple[bool, Pending | Finished | ProviderError, str]:
        provider = provider_for(env)
        try:
            submitted = await provider.submit(ImageRequest(prompt))
            confirmed = await provider.cancel(submitted)
            try:
                after: Pending | Finished | ProviderError = await provider.poll(submitted)
            except ProviderError as exc:
                after = exc
            return confirmed, after, submitted.task_id
        finally:
            await provider.aclose()

    return run(go())


def test_a_task_sits_between_queue_and_assign_as_long_as_asked(
    env: dict[str, str], emulator: WiroEmulator
) -> None:
    emulator.configure(queue_s=0.2, assign_after_s=0.6, latency_s=0.1)
    task_id = raw(env, "/Run/google/nano-banana-pro", json={"prompt": "p"}).json()["taskid"]

    def status() -> str:
        return str(raw(env, "/Task/Detail", json={"taskid": task_id}).json()
                   ["tasklist"][0]["status"])

    seen = [status()]
    while seen[-1] != "task_postprocess_end":
        time.sleep(0.03)
        seen.append(status())
    before_assign = [s for s in seen if s in
                     ("task_accept", "task_preprocess_start", "task_preprocess_end")]
    assert seen[0] == "task_queue" and len(before_assign) >= 3  # ~0.4 s of them
    positions = [TASK_LIFECYCLE.index(s) for s in seen]
    assert positions == sorted(positions)  # and the task ends no earlier than assigned
    (task,) = raw(env, "/Task/Detail", json={"taskid": task_id}).json()["tasklist"]
    assert task["assigntime"] != "0" and float(task["elapsedseconds"]) >= 0.6


def test_a_kill_refused_before_assign_is_not_a_cancel(
    env: dict[str, str], emulator: WiroEmulator
) -> None:
    """Reading (a): Task/Cancel refuses a task that left the queue, Task/Kill refuses one
    not yet assigned; `cancel` says False (no error) and the task runs on."""
    emulator.configure(queue_s=0.0, assign_after_s=60.0, kill_before_assign="refuse")
    confirmed, after, task_id = stop(env, "too early to kill")
    assert confirmed is False and after == Pending("task_accept")
    assert emulator.tasks[task_id].cancelled_at is None
    paths = [path for _, path in emulator.requests]
    assert paths[1:4] == ["/wiro/v1/Task/Cancel", "/wiro/v1/Task/Kill", "/wiro/v1/Task/Detail"]
    refused = raw(env, "/Task/Kill", json={"taskid": task_id}).json()
    assert refused == {"result": False, "errors": [{
        "code": 1, "message": "Task could not be killed: task is not assigned to a worker yet."}]}
    assert raw(env, "/Task/Cancel", json={"taskid": task_id}).json()["errors"][0] == {
        "code": 1, "message": "Task is not in a cancellable state."}


def test_a_kill_answered_before_it_takes_effect_is_confirmed_by_detail_only(
    env: dict[str, str], emulator: WiroEmulator
) -> None:
    """Reading (b): Task/Kill answers with the task as it still is. Only a Task/Detail that
    shows `task_cancel` proves the stop: asked right after, it does when the kill has taken
    effect, and does not while it has not."""
    emulator.configure(queue_s=0.0, assign_after_s=0.0, kill_answer="pending",
                       kill_settle_s=0.0, latency_s=5.0)
    confirmed, after, _ = stop(env, "killed at once")
    assert confirmed is True and isinstance(after, TaskFailed) and after.code == "task_cancel"
    paths = [path for _, path in emulator.requests]
    assert paths[2:4] == ["/wiro/v1/Task/Kill", "/wiro/v1/Task/Detail"]

    emulator.configure(kill_settle_s=0.4)
    confirmed, after, task_id = stop(env, "killed later")
    assert confirmed is False and isinstance(after, Pending)
    killed = raw(env, "/Task/Kill", json={"taskid": task_id}).json()
    assert killed["result"] is True and killed["tasklist"][0]["status"] != "task_cancel"
    time.sleep(0.45)
    (task,) = raw(env, "/Task/Detail", json={"taskid": task_id}).json()["tasklist"]
    assert task["status"] == "task_cancel" and task["canceltime"] != "0"


def test_queue_and_generation_times_come_from_the_task_detail(
    env: dict[str, str], emulator: WiroEmulator
) -> None:
    """From createtime to starttime the task waited (queued, preprocessed, assigned); from
    starttime to endtime it ran (S0's example: 1734513807, 09, 13 -> 2 s and 4 s). Wiro's
    times are whole seconds: the emulator's schedule, to the second."""
    assert task_times({"createtime": "1734513807", "starttime": "1734513809",
                       "endtime": "1734513813"}) == (2.0, 4.0)
    assert task_times({"createtime": "1734513807", "starttime": "0", "endtime": "0"}) == (
        None, None)
    emulator.configure(queue_s=0.3, latency_s=0.9)

    async def go() -> tuple[Submitted, Finished]:
        async with provider_for(env) as provider:
            submitted = await provider.submit(ImageRequest("a timed koala"))
            return submitted, await finish(provider, submitted)

    submitted, finished = run(go())
    task = emulator.tasks[submitted.task_id]
    schedule = task.extra["schedule"]

    def at(stage: str) -> int:
        return int(task.created + schedule[stage])

    assert finished.queue_s == at("task_start") - int(task.created)
    assert finished.generation_s == at("task_end") - at("task_start")
    assert schedule["task_queue"] == 0.0 and schedule["task_accept"] == pytest.approx(0.3)


def test_the_stop_readings_take_only_their_values(emulator: WiroEmulator) -> None:
    with pytest.raises(ValueError, match="kill_answer must be one of"):
        emulator.configure(kill_answer="maybe")
    with pytest.raises(AttributeError, match="no_such_switch"):
        emulator.configure(no_such_switch=True)
    emulator.configure(kill_before_assign="refuse", assign_after_s=1.0)
    emulator.hub.reset()
    assert (emulator.readings.kill_before_assign, emulator.readings.assign_after_s) == (
        "kill", None)


# -- files API ------------------------------------------------------------------------------


def test_the_files_api_stores_an_upload_and_serves_it(env: dict[str, str]) -> None:
    answer = raw(env, "/File/Upload", files={"file": ("shoe.png", PNG, "image/png")},
                 data={"folderid": "f-1"}).json()
    assert answer["result"] is True
    (entry,) = answer["list"]
    assert (entry["name"], entry["contenttype"], entry["size"], entry["parentid"]) == (
        "shoe.png", "image/png", str(len(PNG)), "f-1"
    )
    assert httpx.get(entry["url"], timeout=10).content == PNG
    missing = raw(env, "/File/Upload", data={"folderid": "f-1"}).json()
    assert missing["errors"] == [{"code": 0, "message": "Request files [file] required"}]
