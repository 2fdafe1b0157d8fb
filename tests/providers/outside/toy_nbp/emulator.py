"""The toy reseller on loopback, built on nbp's `ProviderEmulator`: fault knobs, the clock-
driven task, prompt markers and result images at the model's pixel sizes come with it.

Facts (the toy's own documentation): `POST /v1/jobs`, `GET|DELETE /v1/jobs/{id}`, Bearer
auth, ratios 1:1 16:9 3:4 21:9, sizes 1K 2K, formats png jpg, at most 2 reference URLs, an
optional `quality` of draft or final; errors are HTTP statuses with `{"error": message}`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from nbp.providers.emulator.core import FaultConfig, ProviderEmulator

RATIOS = ("1:1", "16:9", "3:4", "21:9")
SIZES = ("1K", "2K")
FORMATS = ("png", "jpg")
MAX_REFS = 2
FIELDS = {"prompt", "ratio", "size", "format", "refs", "quality"}
TEST_KEY = "toy-test-key"


class ToyEmulator(ProviderEmulator):
    name = "toy"
    base_path = "/v1"

    def __init__(self, config: FaultConfig | None = None, *, api_key: str = TEST_KEY) -> None:
        super().__init__(config, api_key=api_key)

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/v1/jobs", self.create, methods=["POST"]),
            Route("/v1/jobs/{job_id}", self.detail, methods=["GET"]),
            Route("/v1/jobs/{job_id}", self.cancel, methods=["DELETE"]),
        ]

    async def create(self, request: Request) -> Response:
        self.log_request(request)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "bad API key")
        if not self.admit_create():
            return _error(429, "slow down", headers={"Retry-After": "10"})
        if self.chance(self.config.submit_5xx_prob):
            return _error(503, "busy")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "body is not JSON")
        problem = _problem(body)
        if problem:
            return _error(400, problem)
        task = self.new_task(
            uuid.uuid4().hex, prompt=body["prompt"], aspect_ratio=body["ratio"],
            resolution=body["size"], output_format=body["format"], body=body,
            references=body["refs"],
        )
        if (fault := self.created_fault()) is not None:
            return fault
        answer = {"id": task.task_id}
        if self.chance(self.config.drop_after_create_prob):
            return self.dropped_connection(json.dumps(answer).encode())
        return JSONResponse(answer, status_code=201)

    async def detail(self, request: Request) -> Response:
        self.log_request(request)
        if (fault := self.status_fault()) is not None:
            return fault
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "bad API key")
        if self.chance(self.config.poll_5xx_prob):
            return _error(503, "busy")
        task = self.tasks.get(request.path_params["job_id"])
        if task is None:
            return _error(404, "no such job")
        phase = task.phase()
        job: dict[str, object] = {"id": task.task_id, "state": phase}
        if phase == "cancelled":
            job.update(state="cancelled", reason="cancelled by the client")
        elif phase == "done" and task.outcome == "success":
            job.update(state="done", image=self.result_url(task))
        elif phase == "done" and task.outcome == "noimage":
            job.update(state="done")
        elif phase == "done":
            reason = "blocked by the content policy" if task.outcome == "content" else "crashed"
            job.update(state="failed", reason=reason)
        return JSONResponse(job)

    async def cancel(self, request: Request) -> Response:
        self.log_request(request)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "bad API key")
        task = self.tasks.get(request.path_params["job_id"])
        if task is None:
            return _error(404, "no such job")
        if task.terminal:
            return _error(409, "job has ended")
        task.cancelled_at = time.time()
        return JSONResponse({"id": task.task_id, "state": "cancelled"})


def _problem(body: object) -> str | None:
    if not isinstance(body, dict) or set(body) - FIELDS:
        return "unknown fields"
    prompt, refs = body.get("prompt"), body.get("refs")
    if not isinstance(prompt, str) or not prompt.strip():
        return "prompt is required"
    if body.get("ratio") not in RATIOS or body.get("size") not in SIZES:
        return "unsupported ratio or size"
    if body.get("format") not in FORMATS:
        return "unsupported format"
    if not isinstance(refs, list) or len(refs) > MAX_REFS:
        return "refs: at most 2 URLs"
    if not all(isinstance(r, str) and r.startswith(("http://", "https://")) for r in refs):
        return "refs must be URLs"
    if body.get("quality", "final") not in ("draft", "final"):
        return "quality must be draft or final"
    return None


def _error(status: int, message: str, *, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)
