"""Wiro adapter for `google/nano-banana-pro`.

Wire format: `POST /Run/google/nano-banana-pro` with JSON (only URLs) or multipart/form-data
(local files, repeated `inputImage` field) answers `{result, errors, taskid,
socketaccesstoken}`; `POST /Task/Detail {"taskid"}` returns a `tasklist` whose fields are all
strings; the task is over only at `task_postprocess_end` (success iff `pexit == "0"` with
outputs) or `task_cancel`; `Task/Cancel` stops a queued task (else code 1, "not in a
cancellable state"), `Task/Kill` a running one (it may refuse before `task_assign`, or answer
with the task not yet `task_cancel`: protocols.md §11), so only a `task_cancel` status proves
a stop.
Errors come back HTTP 200 with `result:false` and a numeric code, except auth (HTTP 401) and
rate limiting (HTTP 429); code 96 is the account's concurrency limit.

Sources: seeds/wiro.txt (S0), protocols.md §1, WD = github wiroai/Wiro-Docs markdown/.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx

from nbp.providers import http
from nbp.providers.adapter import HttpAdapter, looks_like_content_rejection
from nbp.providers.base import (
    Capabilities,
    Finished,
    ImageRequest,
    Pending,
    ResultImage,
    Submitted,
)
from nbp.providers.errors import (
    AuthError,
    ContentRejected,
    InsufficientBalance,
    LimitExceeded,
    RateLimited,
    Rejected,
    SubmitUncertain,
    TaskFailed,
    TaskNotFound,
    TransientError,
)
from nbp.providers.model import ASPECT_RATIOS
from nbp.providers.times import between, epoch_s
from nbp.providers.wiro_facts import API_KEY_ENV, API_SECRET_ENV, FACTS, MODEL_OWNER, MODEL_PROJECT

# -- documented constants --------------------------------------------------------------------
# protocols.md §1; WD = github wiroai/Wiro-Docs markdown/.

RUN_PATH = f"/Run/{MODEL_OWNER}/{MODEL_PROJECT}"
DETAIL_PATH = "/Task/Detail"
CANCEL_PATH = "/Task/Cancel"
KILL_PATH = "/Task/Kill"
UPLOAD_PATH = "/File/Upload"

# The auth headers (protocols.md §1.1): all three are credentials (the signature is replayable).
AUTH_HEADERS: tuple[str, ...] = ("x-api-key", "x-nonce", "x-signature")

# Seed inputs: `aspectRatio` select (default match_input_image), `resolution` 1K|2K|4K
# (seed, protocols.md §1.2).
MATCH_INPUT_IMAGE = "match_input_image"
WIRE_ASPECT_RATIOS: tuple[str, ...] = (MATCH_INPUT_IMAGE, *ASPECT_RATIOS)

# Task statuses (protocols.md §1.3, WD tasks.md). Only these two end a task; `task_end`
# and `task_error` (a stderr log event) are not terminal.
STATE_DONE = "task_postprocess_end"
STATE_CANCELLED = "task_cancel"
TASK_LIFECYCLE: tuple[str, ...] = (
    "task_queue", "task_accept", "task_preprocess_start", "task_preprocess_end",
    "task_assign", "task_start", "task_output", "task_output_full", "task_end",
    "task_postprocess_start", STATE_DONE,
)

# Body error codes (protocols.md §1.2, WD error-reference.md).
CODE_GENERAL = 0       # validation, server and general errors
CODE_NOT_FOUND = 1     # not found / not accessible / not cancellable
CODE_CONCURRENCY = 96  # concurrent task limit reached: retry after a task ends
CODE_BALANCE = 97      # insufficient balance (minimum $0.50)
CODE_SIGN_IN = 98      # sign in required
CODE_TOKEN = 99        # bearer token missing, invalid or expired
NO_TASK_MESSAGE = "There is no task yet."
# Code-0 messages WD error-reference.md lists as request or account problems: never retried.
# Any other code-0 message is taken for the "server" kind, which WD says to retry.
REJECTION_PHRASES: tuple[str, ...] = (
    "request parameter", "request files", "request parameters are invalid",
    "suspended", "permission", "not available for your team", "model name",
    "name is not allowed", "already in use", "taskid or socketaccesstoken is required",
)
# Wiro documents no representation of a content/policy block: the model's refusal reaches
# us only as a failed task (pexit != "0") whose `debugerror` carries the upstream reason,
# classified by `looks_like_content_rejection` (a heuristic, not a documented signal).

# -- adapter ---------------------------------------------------------------------------------


class WiroProvider(HttpAdapter):
    """Wiro's `google/nano-banana-pro`: signature or key-only auth, uploads inside Run.

    Signature mode (`x-api-key`, `x-nonce`, `x-signature`) is used when `WIRO_API_SECRET`
    is set, key-only mode (`x-api-key`) otherwise; the project's setting on Wiro decides
    which one is accepted. Wiro has no seed input: `ImageRequest.seed` is not sent.
    """

    name: ClassVar[str] = FACTS.name
    model: ClassVar[str] = FACTS.model
    default_base_url: ClassVar[str] = FACTS.base_url
    secret_headers: ClassVar[tuple[str, ...]] = AUTH_HEADERS
    capabilities: ClassVar[Capabilities] = FACTS.capabilities

    async def submit(self, request: ImageRequest) -> Submitted:
        self.check_limits(request)
        options = self.checked_options(request)
        for ref in request.references:
            if ref.data is None and not ref.is_url:
                raise LimitExceeded(
                    f"wiro: reference {ref.uri!r} is neither an http(s) URL nor loaded content"
                )
        fields: dict[str, str] = {
            "prompt": request.prompt,
            "aspectRatio": request.aspect_ratio,
            "resolution": request.resolution,
            **{key: str(value) for key, value in options.items()},
        }
        kwargs: dict[str, Any]
        if any(ref.data is not None for ref in request.references):
            # combinefileinput: files and URLs repeat the same field, in the caller's order
            # (WD model-parameters.md). A part without filename is a plain text field.
            parts: list[tuple[str, tuple[str | None, bytes, str | None]]] = [
                ("inputImage", (ref.filename, ref.data, ref.mime_type))
                if ref.data is not None
                else ("inputImage", (None, ref.uri.encode(), None))
                for ref in request.references
            ]
            kwargs = {"data": fields, "files": parts}
        else:
            body: dict[str, Any] = dict(fields)
            if request.references:
                body["inputImage"] = [ref.uri for ref in request.references]
            kwargs = {"json": body}
        response = await http.send(
            self.client, "POST", self.url(RUN_PATH), creates_task=True,
            headers=self._auth_headers(), **kwargs,
        )
        answer = _checked(response, "run")
        task_id = str(answer.get("taskid") or "")
        if not task_id:
            raise SubmitUncertain("wiro run: result:true without a taskid")
        token = str(answer.get("socketaccesstoken") or "")
        return Submitted(self.name, task_id, {"socketaccesstoken": token} if token else {})

    async def poll(self, submitted: Submitted) -> Pending | Finished:
        answer = await self._task_call(DETAIL_PATH, {"taskid": submitted.task_id}, "detail")
        tasks = answer.get("tasklist")
        if not isinstance(tasks, list) or not tasks or not isinstance(tasks[0], Mapping):
            raise TaskNotFound(f"wiro detail: no task {submitted.task_id}", code=CODE_NOT_FOUND)
        return task_outcome(tasks[0])

    async def cancel(self, submitted: Submitted) -> bool:
        """Task/Cancel (a queued task), else Task/Kill (a running one); True only when an
        answer's tasklist, or a Task/Detail asked right after, shows `task_cancel`. A refusal
        (code 1: "not in a cancellable state", "could not be killed: ...") is no error: the
        task runs on and the caller keeps following it."""
        body = {"taskid": submitted.task_id}
        token = submitted.extra.get("socketaccesstoken")
        if token:
            body["tasktoken"] = token  # WD tasks.md names `tasktoken`, the seed `taskid`
        for path, what in ((CANCEL_PATH, "cancel"), (KILL_PATH, "kill")):
            answer = await self._unless_refused(path, body, what)
            if answer is not None:  # accepted: its tasklist may already show the end
                if shows_cancelled(answer):
                    return True
                break
        detail = await self._unless_refused(DETAIL_PATH, {"taskid": submitted.task_id}, "detail")
        return detail is not None and shows_cancelled(detail)

    async def _unless_refused(
        self, path: str, body: Mapping[str, str], what: str
    ) -> Mapping[str, Any] | None:
        """A task call whose refusal is an answer, not an error: None when Wiro refused
        (`Rejected`, not `AuthError`) or does not know the task (`TaskNotFound`)."""
        try:
            return await self._task_call(path, body, what)
        except AuthError:
            raise
        except (Rejected, TaskNotFound):
            return None

    async def _task_call(self, path: str, body: Mapping[str, str], what: str) -> Mapping[str, Any]:
        response = await http.send(
            self.client, "POST", self.url(path), json=dict(body), headers=self._auth_headers()
        )
        return _checked(response, what)

    def _auth_headers(self) -> dict[str, str]:
        """Fresh headers per request (protocols.md §1.1): the nonce is unix seconds, as in
        the seed recipe and Wiro's own n8n node."""
        key = self.require_credential(API_KEY_ENV)
        secret = self.settings.credential(API_SECRET_ENV)
        if not secret:
            return {"x-api-key": key}
        nonce = str(int(time.time()))
        return {"x-api-key": key, "x-nonce": nonce, "x-signature": sign(key, secret, nonce)}


# -- wire format -----------------------------------------------------------------------------


def sign(api_key: str, api_secret: str, nonce: str) -> str:
    """`x-signature`: lowercase hex HMAC-SHA256 keyed with the API *key* over secret + nonce
    (protocols.md §1.1; the seed's openssl recipe leaves a `SHA2-256(stdin)= ` prefix)."""
    return hmac.new(api_key.encode(), (api_secret + nonce).encode(), hashlib.sha256).hexdigest()


def task_outcome(task: Mapping[str, Any]) -> Pending | Finished:
    """A Task/Detail task object -> Pending, Finished, or the failure it ended in."""
    status = str(task.get("status") or "")
    task_id = str(task.get("id") or "?")
    if status == STATE_CANCELLED:
        raise TaskFailed(f"wiro task {task_id} was cancelled", code=STATE_CANCELLED)
    if status != STATE_DONE:
        return Pending(state=status or "unknown")
    pexit = str(task.get("pexit") or "").strip()
    outputs = [o for o in task.get("outputs") or [] if isinstance(o, Mapping) and o.get("url")]
    if pexit not in ("", "0"):
        raise task_failure(task_id, pexit, str(task.get("debugerror") or ""))
    if not outputs:
        # pexit "0" (or absent, as in older docs) without files: nothing to deliver.
        raise TaskFailed(f"wiro task {task_id} ended without an image", code="no_image")
    images = tuple(
        ResultImage(url=str(o["url"]), mime_type=str(o.get("contenttype") or "") or None)
        for o in outputs
    )
    queue_s, generation_s = task_times(task)
    return Finished(images=images, cost_usd=_cost(task.get("totalcost")), state=status,
                    queue_s=queue_s, generation_s=generation_s)


def task_times(task: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(queue_s, generation_s) of a Task/Detail task (`wiro_facts.TASK_TIMES`): from
    `createtime` to `starttime` (queued, accepted, preprocessed, assigned), and from
    `starttime` to `endtime` (task_start to task_end: the model ran); unix seconds as text,
    "0" where not reached."""
    created, started, ended = (epoch_s(task.get(name))
                               for name in ("createtime", "starttime", "endtime"))
    return between(created, started), between(started, ended)


def shows_cancelled(answer: Mapping[str, Any]) -> bool:
    """Whether a Task/Cancel, Task/Kill or Task/Detail answer shows the task `task_cancel`
    (the only proof of a stop: an accepted kill may answer the task as it still is)."""
    tasks = answer.get("tasklist")
    return isinstance(tasks, list) and any(
        isinstance(task, Mapping) and task.get("status") == STATE_CANCELLED for task in tasks
    )


def _cost(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# -- errors ----------------------------------------------------------------------------------


def raise_for_error(response: httpx.Response, body: Any, what: str) -> None:
    """Every Wiro error signal -> `providers.errors`, in one place; quiet on success.

    HTTP 404 is an unknown endpoint ("Error parsing url."), other statuses go to the shared
    ladder (introduction.md lists 401 and 429; error-reference.md says everything else is
    HTTP 200, so both are handled); then HTTP 200 `result:false` with the body codes of
    protocols.md §1.2. Code 96 is a concurrency limit: fewer tasks in flight, not fewer creates.
    """
    status = response.status_code
    code, text = _first_error(body)
    message = f"wiro {what}: {text or f'HTTP {status}'}"
    if status == 404:
        raise Rejected(f"{message} (wrong base URL or path)", code=status)
    http.raise_for_http_status(response, message)
    if not isinstance(body, Mapping):
        raise TransientError(f"wiro {what}: HTTP {status}: answer is not a JSON object")
    if body.get("result") is True:
        return
    if code == CODE_CONCURRENCY:  # no Retry-After: a slot frees when a task ends
        raise RateLimited(message, code=code, concurrency=True)
    if code == CODE_BALANCE:
        raise InsufficientBalance(message, code=code)
    if code in (CODE_SIGN_IN, CODE_TOKEN):
        raise AuthError(message, code=code)
    if code == CODE_NOT_FOUND:
        if NO_TASK_MESSAGE.lower() in text.lower():
            raise TaskNotFound(message, code=code)
        raise Rejected(message, code=code)
    if code == CODE_GENERAL and not any(p in text.lower() for p in REJECTION_PHRASES):
        raise TransientError(message, code=code)
    raise Rejected(message, code=code)


def task_failure(task_id: str, pexit: str, debugerror: str) -> TaskFailed:
    """A task that ended with `pexit != "0"`: its `debugerror` says why (the only place Wiro
    shows a content block, so it is read with `looks_like_content_rejection`)."""
    reason = debugerror.strip()[-500:] or f"exit code {pexit}"
    if looks_like_content_rejection(reason):
        return ContentRejected(f"wiro task {task_id} was blocked: {reason}", code="content")
    return TaskFailed(f"wiro task {task_id} failed: {reason}", code=f"pexit_{pexit}")


def _checked(response: httpx.Response, what: str) -> Mapping[str, Any]:
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    raise_for_error(response, body, what)
    assert isinstance(body, Mapping)  # raise_for_error let it through
    return body


def _first_error(body: Any) -> tuple[int | None, str]:
    errors = body.get("errors") if isinstance(body, Mapping) else None
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], Mapping):
        return None, ""
    raw_code: Any = errors[0].get("code")
    text = str(errors[0].get("message") or "")
    try:
        return int(raw_code), text
    except (TypeError, ValueError):
        return None, text


__all__ = [
    "WiroProvider", "raise_for_error", "shows_cancelled", "sign", "task_failure", "task_outcome",
]
