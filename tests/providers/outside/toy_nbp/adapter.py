"""Toy adapter: a made-up reseller, small enough to read in one go.

Wire format in one paragraph: `POST {base}/jobs` with `{"prompt", "ratio", "size", "format",
"refs"}` answers HTTP 201 `{"id"}`; `GET {base}/jobs/{id}` answers `{"state": queued |
running | done | failed | cancelled, "image"?, "reason"?}`; `DELETE {base}/jobs/{id}`
cancels. Bearer auth; errors are plain HTTP statuses with `{"error": message}`. Sources: the
toy is its own documentation (toy_nbp.emulator states the same facts independently).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import httpx

from nbp.providers import http
from nbp.providers.adapter import HttpAdapter, looks_like_content_rejection
from nbp.providers.base import Capabilities, Finished, ImageRequest, Pending, ResultImage, Submitted
from nbp.providers.errors import ContentRejected, SubmitUncertain, TaskFailed, TransientError

# -- documented constants --------------------------------------------------------------------

DOCUMENTED_BASE_URL = "https://api.toy.example/v1"
API_KEY_ENV = "TOY_API_KEY"
JOBS_PATH = "/jobs"
RUNNING_STATES = ("queued", "running")

# -- options ---------------------------------------------------------------------------------

OPTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"quality": {"enum": ["draft", "final"]}},
    "additionalProperties": False,
}

# -- adapter ---------------------------------------------------------------------------------


class ToyProvider(HttpAdapter):
    """The toy reseller: URL references only, cancellable jobs."""

    name: ClassVar[str] = "toy"
    model: ClassVar[str] = "toy-banana"
    default_base_url: ClassVar[str] = DOCUMENTED_BASE_URL
    capabilities: ClassVar[Capabilities] = Capabilities(
        aspect_ratios=("1:1", "16:9", "3:4", "21:9"),
        resolutions=("1K", "2K"),
        output_formats=("png", "jpg"),
        max_prompt_chars=2_000,
        max_references=2,
        reference_delivery="url_only",
        can_cancel=True,
        prices_usd={"1K": 0.05, "2K": 0.08},
        option_schema=OPTION_SCHEMA,
        env_vars=(API_KEY_ENV,),
    )

    async def submit(self, request: ImageRequest) -> Submitted:
        self.check_limits(request)
        options = self.checked_options(request)
        response = await http.send(
            self.client, "POST", self.url(JOBS_PATH), creates_task=True,
            json=job_body(request, options), headers=self._auth(),
        )
        job_id = checked(response).get("id")
        if not job_id:
            raise SubmitUncertain("toy: the create was answered without a job id")
        return Submitted(self.name, str(job_id))

    async def poll(self, submitted: Submitted) -> Pending | Finished:
        response = await http.send(
            self.client, "GET", self.url(f"{JOBS_PATH}/{submitted.task_id}"),
            headers=self._auth(),
        )
        return outcome_of(checked(response))

    async def cancel(self, submitted: Submitted) -> bool:
        """True only when the toy answers the job `cancelled`; a refusal is no error."""
        response = await http.send(
            self.client, "DELETE", self.url(f"{JOBS_PATH}/{submitted.task_id}"),
            headers=self._auth(),
        )
        if response.status_code in (404, 409):  # unknown, or the job has ended already
            return False
        return checked(response).get("state") == "cancelled"

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.require_credential(API_KEY_ENV)}"}


# -- wire format -----------------------------------------------------------------------------


def job_body(request: ImageRequest, options: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "prompt": request.prompt, "ratio": request.aspect_ratio, "size": request.resolution,
        "format": request.output_format, "refs": [ref.uri for ref in request.references],
        **options,
    }


def outcome_of(job: Mapping[str, Any]) -> Pending | Finished:
    state = str(job.get("state") or "")
    if state in RUNNING_STATES:
        return Pending(state=state)
    if state in ("failed", "cancelled"):
        raise task_failure(state, str(job.get("reason") or state))
    if not job.get("image"):
        raise TaskFailed("toy: job done without an image", code="no_image")
    return Finished(images=(ResultImage(url=str(job["image"])),))


# -- errors ----------------------------------------------------------------------------------


def raise_for_error(response: httpx.Response, body: Any) -> None:
    """The toy has no body codes: its HTTP status says it all (the shared ladder)."""
    message = body.get("error") if isinstance(body, Mapping) else None
    http.raise_for_http_status(response, f"toy: {message or f'HTTP {response.status_code}'}")


def task_failure(state: str, reason: str) -> TaskFailed:
    if looks_like_content_rejection(reason):
        return ContentRejected(f"toy: {reason}", code="content")
    return TaskFailed(f"toy: {reason}", code=state)


def checked(response: httpx.Response) -> Mapping[str, Any]:
    body = http.json_body(response)
    raise_for_error(response, body)
    if not isinstance(body, Mapping):
        raise TransientError("toy: answer is not a JSON object")
    return body
