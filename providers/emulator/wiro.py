"""Wiro emulator: `google/nano-banana-pro` as protocols.md §1 and seed wiro.txt describe it.

- Auth per request: a signature-mode project (the default when a secret is configured)
  wants `x-api-key`, `x-nonce` (an integer) and `x-signature` = lowercase hex
  HMAC-SHA256(key=API key, msg=secret + nonce); a key-only project (`signature_mode =
  False`) wants `x-api-key`. Failures: HTTP 401 with the documented messages.
- Run accepts JSON (URLs only) or multipart/form-data (repeated `inputImage`: files and
  URLs); unknown fields and bad enums are rejected with code 0, an unknown model with code 1.
- Limits: `FaultConfig.rate_limit` answers HTTP 429 (introduction.md), `max_concurrency`
  (and `balance_usd` via Wiro's formula) code 96, `balance_usd` < $0.50 code 97.
- Task/Detail walks the documented lifecycle; Task/Cancel works while queued (else code 1
  "Task is not in a cancellable state."), Task/Kill while running; both end in
  `task_cancel`. Task calls take `taskid`, `tasktoken` or `socketaccesstoken`.
- A stop while a task runs is a reading of protocols.md §11 (`WiroReadings`, set through
  `configure`): Task/Kill before `task_assign` kills (`kill_before_assign="kill"`, the
  default) or is refused ("refuse": code 1 "Task could not be killed: ..."); an accepted
  kill answers the task as `task_cancel` (`kill_answer="cancelled"`, the default) or as it
  still is ("pending"), the kill taking effect `kill_settle_s` later (`inf`: never). How long
  a task sits in `task_queue` (`FaultConfig.queue_s`, which these readings set too) and
  before `task_assign` (`assign_after_s`, a switch) are chosen so that tests can stop it in
  each state; the task ends no earlier than that.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import io
import itertools
import json
import math
import secrets
import string
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from nbp.providers.emulator.core import (
    ASPECT_RATIOS,
    CANCEL,
    PIXEL_SIZES,
    FaultConfig,
    ProviderEmulator,
    Readings,
    RemoteTask,
    choice,
    proxy_error,
)
from nbp.providers.emulator.hub import TEST_CREDENTIALS

# -- Wiro's documented facts (S0 = seeds/wiro.txt, protocols.md §1; WD = wiroai/Wiro-Docs) ------

MODEL_OWNER, MODEL_PROJECT = "google", "nano-banana-pro"  # S0 Run Task Endpoint
# S0 inputs: aspectRatio select (default match_input_image), resolution select (default 1K),
# inputImage combinefileinput "up to 14 reference images"; prompt is a textarea with no
# documented length limit, so the emulator sets none.
MATCH_INPUT_IMAGE = "match_input_image"
RUN_ASPECT_RATIOS: tuple[str, ...] = (
    MATCH_INPUT_IMAGE, "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9",
)
RUN_RESOLUTIONS: tuple[str, ...] = ("1K", "2K", "4K")
DEFAULT_ASPECT_RATIO, DEFAULT_RESOLUTION = MATCH_INPUT_IMAGE, "1K"
MAX_INPUT_IMAGES = 14
# Body error codes (§1.2 [C WD error-reference.md]).
CODE_GENERAL = 0       # validation, server and general errors
CODE_NOT_FOUND = 1     # not found / not accessible / not cancellable
CODE_CONCURRENCY = 96  # concurrent task limit reached
CODE_BALANCE = 97      # insufficient balance
# Task statuses (§1.3 [C WD tasks.md]): only task_postprocess_end and task_cancel end a task.
TASK_LIFECYCLE: tuple[str, ...] = (
    "task_queue", "task_accept", "task_preprocess_start", "task_preprocess_end",
    "task_assign", "task_start", "task_output", "task_output_full", "task_end",
    "task_postprocess_start", "task_postprocess_end",
)
STATE_DONE, STATE_CANCELLED = "task_postprocess_end", "task_cancel"
# Wiro's price for this model is not in the stored material (§1.7, §8): the emulator charges
# Google's standard price (§6.4) for a successful task, and nothing for a failed one (§1.7).
EMULATED_PRICES_USD: dict[str, float] = {"1K": 0.134, "2K": 0.134, "4K": 0.24}

# Documented messages (WD error-reference.md, protocols.md §1.1-1.3).
MSG_KEY_NOT_FOUND = "Project authorization is not founded."
MSG_SIGNATURE_REQUIRED = (
    "Project requires signature authentication. x-signature and x-nonce headers are required."
)
MSG_SIGNATURE_INVALID = "Project authorization is not valid."
MSG_BAD_URL = "Error parsing url."
MSG_INVALID = "Request parameters are invalid."
MSG_MODEL_NOT_FOUND = "slug-owner-project-not-exist"
MSG_TASK_KEY_REQUIRED = "taskid or socketaccesstoken is required"
MSG_NO_TASK = "There is no task yet."
MSG_NOT_CANCELLABLE = "Task is not in a cancellable state."
MSG_NOT_KILLED = "Task could not be killed: {reason}"  # WD error-reference.md
MSG_BALANCE = "Insufficient balance"
MSG_CONCURRENCY = (
    "You have reached your concurrent task limit. With your current balance of ${balance:.2f}, "
    "you can run up to {limit} tasks at the same time. Add funds to increase your limit."
)
MIN_BALANCE_USD = 0.50        # "minimum $0.50 required" (error-reference.md)
UNLIMITED_BALANCE_USD = 250.0  # no concurrency limit above (concurrency-limits.md)

RUN_FIELDS = frozenset({"prompt", "inputImage", "aspectRatio", "resolution", "callbackUrl",
                        "projectid"})
TASK_KEYS = ("taskid", "tasktoken", "socketaccesstoken")
# Image types the Files API takes (WD files.md); Run uploads are held to the same list.
IMAGE_TYPES = frozenset({"image/jpeg", "image/jpg", "image/png", "image/gif", "image/webp",
                         "image/heic"})
# Between queue and the end: what a worker reports while it holds the task (WD tasks.md).
RUNNING_STAGES: tuple[str, ...] = TASK_LIFECYCLE[1:-1]
ASSIGN_STAGE = "task_assign"  # Task/Kill stops "any status after assign" (WD tasks.md)
BEFORE_ASSIGN: tuple[str, ...] = RUNNING_STAGES[: RUNNING_STAGES.index(ASSIGN_STAGE)]
FROM_ASSIGN: tuple[str, ...] = RUNNING_STAGES[RUNNING_STAGES.index(ASSIGN_STAGE):]
STDERR_STAGE = "task_error"  # a log event shown instead of task_output when stderr_logs
# The documented failure (pexit "1", no outputs, totalcost "0"). Wiro documents no content
# rejection; the most plausible one is the same failure with the upstream safety reason in
# `debugerror` (the adapter classifies it by keywords).
FAIL_DEBUGERROR = "RuntimeError: image generation failed (upstream returned an error)"
CONTENT_DEBUGERROR = (
    "Error: image generation was blocked by the safety policy (finishReason: IMAGE_SAFETY)"
)


@dataclass
class WiroReadings:
    """Which reading of protocols.md §11 the emulator serves for a stop, and how long a task
    waits before it is assigned (see the module docstring)."""

    kill_before_assign: str = choice("kill", ("kill", "refuse"))
    kill_answer: str = choice("cancelled", ("cancelled", "pending"))
    kill_settle_s: float = 0.0          # "pending": the kill takes effect this much later
    assign_after_s: float | None = None  # from create to task_assign (None: the even spread)


@dataclass
class _Upload:
    name: str
    data: bytes
    mime: str


@dataclass
class _RunInput:
    prompt: str
    aspect_ratio: str
    resolution: str
    images: list[str | _Upload] = field(default_factory=list)
    callback_url: str = ""
    content_type: str = "json"


class WiroEmulator(ProviderEmulator):
    """Wiro's Run / Task / File API under `/wiro/v1`."""

    name = "wiro"
    base_path = "/v1"  # documented base https://api.wiro.ai/v1
    # Each reading with the timing that puts the task where the stop meets it.
    READINGS: ClassVar[Readings] = {CANCEL: {
        "queued-task-cancel": {"queue_s": 3600.0},
        "kill-before-assign": {"queue_s": 0.0, "assign_after_s": 3600.0},
        "kill-refused-before-assign": {"queue_s": 0.0, "assign_after_s": 3600.0,
                                       "kill_before_assign": "refuse"},
        "kill-after-assign": {"queue_s": 0.0, "assign_after_s": 0.0},
        "kill-answered-before-cancel": {"queue_s": 0.0, "assign_after_s": 0.0,
                                        "kill_answer": "pending", "kill_settle_s": 0.0},
        "kill-not-carried-out-yet": {"queue_s": 0.0, "assign_after_s": 0.0,
                                     "kill_answer": "pending", "kill_settle_s": 3600.0},
    }}

    def __init__(
        self,
        config: FaultConfig | None = None,
        *,
        api_key: str = TEST_CREDENTIALS["WIRO_API_KEY"],
        api_secret: str | None = TEST_CREDENTIALS["WIRO_API_SECRET"],
    ) -> None:
        super().__init__(config, api_key=api_key)
        self.api_secret = api_secret
        self.signature_mode = bool(api_secret)  # the project's auth setting
        self.balance_usd: float | None = None   # None: enough money, no balance-based limit
        self.stderr_logs = False                 # report task_error while the model runs
        self._ids = itertools.count(2221)
        self._tokens: dict[str, str] = {}       # socketaccesstoken -> task id
        self.readings = WiroReadings()

    def switches(self) -> Sequence[Any]:
        return (self.readings,)

    def restored(self, task: RemoteTask) -> None:
        token = task.extra.get("token")
        if isinstance(token, str):
            self._tokens[token] = task.task_id

    def reset(self) -> None:
        """Forget tasks and restore the default project settings and readings."""
        super().reset()
        self.signature_mode = bool(self.api_secret)
        self.balance_usd = None
        self.stderr_logs = False
        self.readings = WiroReadings()
        with self._lock:
            self._tokens.clear()

    def routes(self) -> Sequence[BaseRoute]:
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        return [
            Route("/v1/Run/{owner}/{project}", self._run, methods=["POST"]),
            Route("/v1/Task/Detail", self._detail, methods=["POST"]),
            Route("/v1/Task/Cancel", self._cancel, methods=["POST"]),
            Route("/v1/Task/Kill", self._kill, methods=["POST"]),
            Route("/v1/File/Upload", self._upload, methods=["POST"]),
            Route("/{path:path}", self._unknown, methods=methods),
        ]

    # -- endpoints --------------------------------------------------------------------

    async def _run(self, request: Request) -> Response:
        self.log_request(request)
        if (denied := self._authenticate(request)) is not None:
            return denied
        params = request.path_params
        if (params["owner"], params["project"]) != (MODEL_OWNER, MODEL_PROJECT):
            return _error(CODE_NOT_FOUND, MSG_MODEL_NOT_FOUND)
        if not self.admit_create():
            return _error(CODE_GENERAL, "Too Many Requests", status=429)
        if self.chance(self.config.submit_5xx_prob):
            return self._server_error()
        parsed = await self._run_input(request)
        if isinstance(parsed, Response):
            return parsed
        if self.balance_usd is not None and self.balance_usd < MIN_BALANCE_USD:
            return _error(CODE_BALANCE, MSG_BALANCE)
        limit = self._concurrency_limit()
        if limit is not None and self.in_flight() >= limit:
            balance = self.balance_usd if self.balance_usd is not None else limit * 10.0
            return _error(CODE_CONCURRENCY, MSG_CONCURRENCY.format(balance=balance, limit=limit))
        return self._create(parsed)

    async def _detail(self, request: Request) -> Response:
        self.log_request(request)
        if (fault := self.status_fault()) is not None:
            return fault
        if (denied := self._authenticate(request)) is not None:
            return denied
        if self.chance(self.config.poll_5xx_prob):
            return self._server_error()
        found = await self._find_task(request)
        if isinstance(found, Response):
            return found
        return JSONResponse(
            {"result": True, "errors": [], "total": "1", "tasklist": [self._task_json(found)]}
        )

    async def _cancel(self, request: Request) -> Response:
        """Only a task still in `task_queue` can be cancelled (WD tasks.md)."""
        self.log_request(request)
        if (denied := self._authenticate(request)) is not None:
            return denied
        found = await self._find_task(request)
        if isinstance(found, Response):
            return found
        with self._lock:
            if self._stage(found) != TASK_LIFECYCLE[0]:
                return _error(CODE_NOT_FOUND, MSG_NOT_CANCELLABLE)
            found.cancelled_at = time.time()
        return JSONResponse({"result": True, "errors": [], "tasklist": [self._task_json(found)]})

    async def _kill(self, request: Request) -> Response:
        """Kill stops a running task. WD says "any status after assign"; the accept/preprocess
        window before assign is covered by neither Cancel nor Kill in the docs: a reading
        (`kill_before_assign`). An accepted kill answers the task as `task_cancel`, or as it
        still is while the kill takes `kill_settle_s` (`kill_answer="pending"`)."""
        self.log_request(request)
        if (denied := self._authenticate(request)) is not None:
            return denied
        found = await self._find_task(request)
        if isinstance(found, Response):
            return found
        with self._lock:
            refusal = self._kill_refusal(self._stage(found))
            if refusal is not None:
                return _error(CODE_NOT_FOUND, MSG_NOT_KILLED.format(reason=refusal))
            now = time.time()
            if self.readings.kill_answer == "pending":
                answer = self._task_json(found, now)  # before the kill takes effect
                if found.cancelled_at is None:
                    found.cancelled_at = now + self.readings.kill_settle_s
                return JSONResponse({"result": True, "errors": [], "tasklist": [answer]})
            found.cancelled_at = now
        return JSONResponse({"result": True, "errors": [], "tasklist": [self._task_json(found)]})

    def _kill_refusal(self, stage: str) -> str | None:
        """Why Task/Kill refuses a task in `stage`, or None when it kills it."""
        if stage in (STATE_DONE, STATE_CANCELLED):
            return "task has already ended."
        if stage == TASK_LIFECYCLE[0]:
            return "task is queued, use Task/Cancel."
        if stage in BEFORE_ASSIGN and self.readings.kill_before_assign == "refuse":
            return "task is not assigned to a worker yet."
        return None

    async def _upload(self, request: Request) -> Response:
        """Files API (WD files.md): multipart `file` (+ `folderid`), answered as a `list`."""
        self.log_request(request)
        if (denied := self._authenticate(request)) is not None:
            return denied
        fields = await _read_form(request)
        if fields is None:
            return _error(CODE_GENERAL, MSG_INVALID)
        files = [v for v in fields.get("file", []) if isinstance(v, _Upload)]
        if len(files) != 1:
            return _error(CODE_GENERAL, "Request files [file] required")
        upload = files[0]
        url = self._store(f"upload{secrets.token_hex(6)}", upload)
        now = str(int(time.time()))
        return JSONResponse({"result": True, "errors": [], "list": [{
            "id": uuid.uuid4().hex, "name": upload.name, "contenttype": upload.mime,
            "size": str(len(upload.data)), "parentid": str(_first(fields, "folderid") or ""),
            "url": url, "addedtime": now, "accesskey": _random_token(),
        }]})

    async def _unknown(self, request: Request) -> Response:
        self.log_request(request)
        return _error(CODE_GENERAL, MSG_BAD_URL, status=404)

    # -- auth ---------------------------------------------------------------------------

    def _authenticate(self, request: Request) -> Response | None:
        """None when the project's auth mode accepts the headers, else its HTTP 401."""
        key = request.headers.get("x-api-key", "")
        if not key or not any(hmac.compare_digest(key.encode(), known.encode())
                              for known in self.accounts):
            return _error(CODE_GENERAL, MSG_KEY_NOT_FOUND, status=401)
        if not self.signature_mode:
            return None
        nonce = request.headers.get("x-nonce", "")
        signature = request.headers.get("x-signature", "")
        if not nonce or not signature:
            return _error(CODE_GENERAL, MSG_SIGNATURE_REQUIRED, status=401)
        # "unix time or any random integer value" (seed); uniqueness is not documented.
        expected = hmac.new(
            key.encode(), ((self.api_secret or "") + nonce).encode(), hashlib.sha256
        ).hexdigest()
        if not nonce.isdigit() or not hmac.compare_digest(signature.encode(), expected.encode()):
            return _error(CODE_GENERAL, MSG_SIGNATURE_INVALID, status=401)
        return None

    # -- run ----------------------------------------------------------------------------

    async def _run_input(self, request: Request) -> _RunInput | Response:
        """Parse and validate a Run body the way the model's input schema (seed) allows."""
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            fields = await _read_json(request)
            kind = "json"
        elif content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            fields = await _read_form(request)
            kind = "multipart"
        else:
            fields = None
            kind = ""
        if fields is None:
            return _error(CODE_GENERAL, MSG_INVALID)
        # Unknown fields: the docs say nothing; rejecting them catches adapter drift
        # (e.g. the n8n node's `inputImageUrl` / `safetySetting`, protocols.md §1.2).
        if set(fields) - RUN_FIELDS:
            return _error(CODE_GENERAL, MSG_INVALID)
        scalars: dict[str, str] = {}
        for name in RUN_FIELDS - {"inputImage"}:
            values = fields.get(name, [])
            if len(values) > 1 or any(not isinstance(v, str) for v in values):
                return _error(CODE_GENERAL, MSG_INVALID)
            scalars[name] = str(values[0]) if values else ""
        prompt = scalars["prompt"]
        if not prompt.strip():
            return _error(CODE_GENERAL, "Request parameter [prompt] required")
        aspect_ratio = scalars["aspectRatio"] or DEFAULT_ASPECT_RATIO
        resolution = scalars["resolution"] or DEFAULT_RESOLUTION
        if aspect_ratio not in RUN_ASPECT_RATIOS or resolution not in RUN_RESOLUTIONS:
            return _error(CODE_GENERAL, MSG_INVALID)
        images: list[str | _Upload] = []
        for value in fields.get("inputImage", []):
            if isinstance(value, _Upload):
                if value.mime not in IMAGE_TYPES:
                    return _error(CODE_GENERAL, MSG_INVALID)
                images.append(value)
            elif isinstance(value, str) and value.startswith(("http://", "https://")):
                images.append(value)
            elif value != "":  # an empty multipart entry is "no file"
                return _error(CODE_GENERAL, MSG_INVALID)
        if len(images) > MAX_INPUT_IMAGES:
            return _error(CODE_GENERAL, MSG_INVALID)
        return _RunInput(prompt, aspect_ratio, resolution, images, scalars["callbackUrl"], kind)

    def _create(self, run: _RunInput) -> Response:
        token = _random_token()
        with self._lock:
            task_id = str(next(self._ids))
        references = [
            image if isinstance(image, str)
            else self._store(f"{token}-inputImage-{index}", image)
            for index, image in enumerate(run.images)
        ]
        body: dict[str, Any] = {"prompt": run.prompt, "aspectRatio": run.aspect_ratio,
                                "resolution": run.resolution}
        if references:
            body["inputImage"] = references
        if run.callback_url:
            body["callbackUrl"] = run.callback_url
        task = self.new_task(
            task_id, prompt=run.prompt, aspect_ratio=_concrete_ratio(run),
            resolution=run.resolution, output_format="png", body=body, references=references,
        )
        queue_s, assign_at, task.latency_s = _timing(self.readings, task.latency_s,
                                                     task.queued_s)
        task.queue_s = queue_s
        task.extra.update(token=token, uuid=str(uuid.uuid4()), content_type=run.content_type,
                          schedule=_schedule(queue_s, assign_at, task.latency_s))
        with self._lock:
            self._tokens[token] = task_id
        if (fault := self.created_fault()) is not None:
            return fault
        answer = {"result": True, "errors": [], "taskid": task_id, "socketaccesstoken": token}
        if self.chance(self.config.drop_after_create_prob):
            return self.dropped_connection(json.dumps(answer).encode())
        return JSONResponse(answer)

    def _store(self, name: str, upload: _Upload) -> str:
        extension = upload.mime.rsplit("/", 1)[-1].replace("jpeg", "jpg")
        key = f"wiro-{name}.{extension}"
        self.hub.files.put(key, upload.data, upload.mime)
        return f"{self.hub.url}/files/{key}"

    def _concurrency_limit(self) -> int | None:
        """The smaller of the configured limit and Wiro's balance formula (§1.5)."""
        limits = [self.config.max_concurrency] if self.config.max_concurrency else []
        if self.balance_usd is not None and self.balance_usd <= UNLIMITED_BALANCE_USD:
            limits.append(max(1, math.floor(self.balance_usd * 0.10)))
        return min(limits) if limits else None

    # -- tasks --------------------------------------------------------------------------

    async def _find_task(self, request: Request) -> RemoteTask | Response:
        content_type = request.headers.get("content-type", "")
        fields = (
            await _read_json(request) if content_type.startswith("application/json")
            else await _read_form(request)
        )
        if fields is None:
            return _error(CODE_GENERAL, MSG_INVALID)
        keys = {k: str(_first(fields, k)) for k in TASK_KEYS if _first(fields, k) not in (None, "")}
        if not keys:
            return _error(CODE_GENERAL, MSG_TASK_KEY_REQUIRED)
        with self._lock:
            task_id = keys.get("taskid") or self._tokens.get(
                keys.get("tasktoken") or keys.get("socketaccesstoken") or ""
            )
            task = self.tasks.get(task_id or "")
        if task is None:
            return _error(CODE_NOT_FOUND, MSG_NO_TASK)
        return task

    def _stage(self, task: RemoteTask, now: float | None = None) -> str:
        """The task's Wiro status, from where the clock puts it."""
        now = time.time() if now is None else now
        phase = task.phase(now)
        if phase == "cancelled":
            return STATE_CANCELLED
        if phase == "done":
            return STATE_DONE
        elapsed = now - task.created
        stage = TASK_LIFECYCLE[0]
        for name, start in task.extra["schedule"].items():
            if start <= elapsed and name != STATE_DONE:
                stage = name
        return STDERR_STAGE if stage == "task_output" and self.stderr_logs else stage

    def _task_json(self, task: RemoteTask, now: float | None = None) -> dict[str, Any]:
        """The Task/Detail object: every value a string, as Wiro sends it (seed)."""
        now = time.time() if now is None else now
        stage = self._stage(task, now)
        reached = _reached_times(task, stage, now)
        succeeded = stage == STATE_DONE and task.outcome in ("success", "noimage")
        price = EMULATED_PRICES_USD[task.resolution] if succeeded else 0.0
        outputs: list[dict[str, Any]] = []
        if stage == STATE_DONE and task.outcome == "success":
            outputs.append(self._output_json(task, reached["postprocessendtime"]))
        debugerror = ""
        if stage == STATE_DONE and task.outcome == "fail":
            debugerror = FAIL_DEBUGERROR
        elif stage == STATE_DONE and task.outcome == "content":
            debugerror = CONTENT_DEBUGERROR
        pexit = "" if stage not in (STATE_DONE, STATE_CANCELLED) else (
            "1" if stage == STATE_DONE and task.outcome in ("fail", "content") else "0"
        )
        if stage == STATE_CANCELLED:
            end = task.cancelled_at or now
        else:
            end = task.created + task.latency_s if stage == STATE_DONE else now
        parameters: dict[str, str] = {
            k: ",".join(v) if isinstance(v, list) else str(v) for k, v in task.body.items()
        }
        return {
            "id": task.task_id, "uuid": task.extra["uuid"], "name": "",
            "socketaccesstoken": task.extra["token"], "parameters": parameters,
            "debugoutput": "", "debugerror": debugerror, "status": stage, "pexit": pexit,
            "elapsedseconds": f"{max(0.0, end - task.created):.4f}",
            "cps": f"{price / task.latency_s if task.latency_s else 0.0:.12f}",
            "totalcost": f"{price:.12f}" if price else "0",
            "guestid": None, "projectid": "699", "modelid": "598", "description": "",
            "basemodelid": "0", "runtype": "model", "modelfolderid": "", "modelfileid": "",
            "callbackurl": str(task.body.get("callbackUrl", "")), "marketplaceid": None,
            "modelslugowner": MODEL_OWNER, "modelslugproject": MODEL_PROJECT,
            **reached,
            "outputs": outputs,
            "size": outputs[0]["size"] if outputs else "0",
        }

    def _output_json(self, task: RemoteTask, added: str) -> dict[str, Any]:
        url = self.result_url(task)
        return {
            "id": hashlib.md5(url.encode()).hexdigest(), "name": "0.png",
            "contenttype": "image/png", "parentid": uuid.uuid4().hex, "uuid": task.extra["uuid"],
            # Rendering a 4K image to learn its byte size would slow every poll; the hub
            # renders lazily on download, so the size is not known here.
            "size": "0", "addedtime": added, "modifiedtime": added,
            "accesskey": _random_token(), "foldercount": "0", "filecount": "0",
            "ispublic": 0, "expiretime": None, "url": url,
        }

    def _server_error(self) -> Response:
        status = 503 if self.chance(0.5) else 500
        return _error(CODE_GENERAL, "Internal server error", status=status)

    def fault_response(self, status: int) -> Response:
        """A 500 from Wiro itself (introduction.md lists it; the body is the usual envelope,
        code 0 "server" kind); 403, 502, 503 and 504 from the proxy in front of it."""
        if status == 500:
            return _error(CODE_GENERAL, "Internal server error", status=500)
        return proxy_error(status)


# -- helpers ------------------------------------------------------------------------------


def _error(code: int, message: str, *, status: int = 200) -> JSONResponse:
    """Wiro's error envelope; HTTP 200 unless auth (401), routing (404) or limits (429)."""
    return JSONResponse(
        {"result": False, "errors": [{"code": code, "message": message}]}, status_code=status
    )


async def _read_json(request: Request) -> dict[str, list[Any]] | None:
    try:
        data = json.loads(await request.body())
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return {k: (v if isinstance(v, list) else [v]) for k, v in data.items()}


async def _read_form(request: Request) -> dict[str, list[Any]] | None:
    """Form fields in order; uploaded files become `_Upload`s. None when unparseable (the
    seed's curl sends JSON with a multipart Content-Type, which no server can parse).

    Parsed with the standard library's MIME parser so the emulator does not depend on
    python-multipart (which Starlette's `request.form()` needs).
    """
    content_type = request.headers.get("content-type", "")
    body = await request.body()
    fields: dict[str, list[Any]] = {}
    if content_type.startswith("application/x-www-form-urlencoded"):
        try:
            pairs = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)
        except UnicodeDecodeError:
            return None
        for name, value in pairs:
            fields.setdefault(name, []).append(value)
        return fields
    if not content_type.startswith("multipart/form-data"):
        return fields if not body.strip() else None
    message = email.message_from_bytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body,
        policy=email.policy.HTTP,
    )
    if not isinstance(message, EmailMessage) or not message.is_multipart() or message.defects:
        return None
    for part in message.iter_parts():
        field_name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(field_name, str) or not isinstance(payload, bytes):
            return None
        filename = part.get_filename()
        if filename is None:
            try:
                fields.setdefault(field_name, []).append(payload.decode())
            except UnicodeDecodeError:
                return None
        else:
            mime = part.get("content-type") or "application/octet-stream"
            upload = _Upload(filename, payload, str(mime).lower())
            fields.setdefault(field_name, []).append(upload)
    return fields


def _first(fields: dict[str, list[Any]], name: str) -> Any:
    values = fields.get(name) or [None]
    return values[0]


def _random_token() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(30))


def _timing(
    readings: WiroReadings, latency_s: float, queue_s: float
) -> tuple[float, float, float]:
    """(seconds in task_queue, seconds to task_assign, seconds to the end) of a new task:
    `queue_s` queued (`FaultConfig.queue_s`, a quarter of the latency by default) and the
    stages spread evenly, unless the readings say otherwise; the task never ends before it is
    assigned."""
    end = max(latency_s, queue_s)
    assign_at = readings.assign_after_s
    if assign_at is None:
        assign_at = queue_s + (end - queue_s) * len(BEFORE_ASSIGN) / len(RUNNING_STAGES)
    assign_at = max(assign_at, queue_s)
    return queue_s, assign_at, max(end, assign_at)


def _schedule(queue_s: float, assign_at: float, end: float) -> dict[str, float]:
    """When each status begins, in seconds after the create: the stages before task_assign
    spread over [queue_s, assign_at), the rest over [assign_at, end)."""
    starts = {TASK_LIFECYCLE[0]: 0.0}
    for stages, begin, until in ((BEFORE_ASSIGN, queue_s, assign_at),
                                 (FROM_ASSIGN, assign_at, end)):
        for index, name in enumerate(stages):
            starts[name] = begin + (until - begin) * index / len(stages)
    starts[STATE_DONE] = end
    return starts


def _reached_times(task: RemoteTask, stage: str, now: float) -> dict[str, str]:
    """The lifecycle timestamps (unix seconds as strings, "0" when not reached yet)."""
    order = {name: index for index, name in enumerate(TASK_LIFECYCLE)}
    # task_error is a log line during task_output; a cancelled task reached what it reached
    # before `cancelled_at`.
    position = order.get(stage, order["task_output"])
    cancelled = stage == STATE_CANCELLED
    if cancelled:
        position = len(TASK_LIFECYCLE) - 1
    stop = (task.cancelled_at or now) if cancelled else now
    schedule: dict[str, float] = task.extra["schedule"]

    def at(name: str) -> str:
        when = task.created + schedule[name]
        return str(int(when)) if order[name] <= position and when <= stop else "0"

    return {
        "createtime": str(int(task.created)), "accepttime": at("task_accept"),
        "preprocessstarttime": at("task_preprocess_start"),
        "preprocessendtime": at("task_preprocess_end"), "assigntime": at("task_assign"),
        "starttime": at("task_start"), "endtime": at("task_end"),
        "postprocessstarttime": at("task_postprocess_start"),
        "postprocessendtime": at(STATE_DONE),
        "canceltime": str(int(task.cancelled_at)) if cancelled and task.cancelled_at else "0",
    }


def _concrete_ratio(run: _RunInput) -> str:
    """The ratio the output will have: `match_input_image` follows the first uploaded
    reference (nearest documented ratio), else 1:1 (URLs are not fetched offline)."""
    if run.aspect_ratio != MATCH_INPUT_IMAGE:
        return run.aspect_ratio
    upload = next((i for i in run.images if isinstance(i, _Upload)), None)
    if upload is None:
        return "1:1"
    try:
        from PIL import Image

        with Image.open(io.BytesIO(upload.data)) as image:
            width, height = image.size
    except Exception:  # not decodable: the model would fall back to a square too
        return "1:1"
    return min(
        ASPECT_RATIOS,
        key=lambda r: abs(math.log(PIXEL_SIZES[(r, "1K")][0] / PIXEL_SIZES[(r, "1K")][1])
                          - math.log(width / height)),
    )
