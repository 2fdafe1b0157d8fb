"""The one exception tree of nbp's provider layer.

Every adapter translates its provider's HTTP statuses and body codes into these classes
exactly once, at its boundary; everything above (retries, throttles, fallback) reads only
these classes.

    ProviderError
    ├── TransientError            network fault, 5xx, timeout: retry with backoff
    │   ├── RequestNotSent        no connection was made: the provider saw nothing
    │   └── RateLimited           429 / body code 429: slow down, honour retry_after;
    │       │                       `concurrency`: the provider refused for concurrency: fewer
    │       │                       tasks in flight, not fewer creates (Wiro 96)
    │       └── Overloaded        the model is overloaded and made nothing (Gemini's 503 with
    │                               its error body, 429 "high demand"): wait, send again; after
    │                               the run's patience another channel may take the cell
    ├── Rejected                  the request is invalid: never retried, never paid
    │   ├── AuthError             missing or wrong credentials
    │   ├── InsufficientBalance   the account cannot pay
    │   ├── LimitExceeded         fails a documented provider limit before anything is sent
    │   └── ModelNotFound         the provider does not know the model id (404): a setting of
    │                               this channel and model is wrong; the model is dropped there
    ├── SubmitUncertain           a create was sent but its answer was lost: it may exist
    ├── TaskFailed                the provider ran the task and it failed (code, message)
    │   ├── ContentRejected       a content/policy rejection: retrying or falling back won't help
    │   └── TaskExpired           the provider dropped the task unrun (a batch past 48 h):
    │                               nothing billed; another channel may run it
    ├── ResultMismatch            the image is not what was asked (format, size, undecodable)
    └── TaskNotFound              the provider does not know the remote task id
        └── ResultsExpired        a finished task's results are no longer served (billed):
                                    never created again

Messages never contain credentials: adapters build them from response bodies and codes only.
"""

from __future__ import annotations


class ProviderError(Exception):
    """Base of every error raised by a provider adapter."""

    code: str | None

    def __init__(self, message: str, *, code: str | int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = None if code is None else str(code)


class TransientError(ProviderError):
    """A fault that may pass: retrying the same request later can succeed."""


class RequestNotSent(TransientError):
    """The request never reached the provider (no connection): sending it again is safe,
    even for a create."""


class RateLimited(TransientError):
    """The provider asked us to slow down; `retry_after` is seconds when it said how long,
    `concurrency` is True when it counts tasks in flight rather than creates per window."""

    def __init__(
        self,
        message: str,
        *,
        code: str | int | None = None,
        retry_after: float | None = None,
        concurrency: bool = False,
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after
        self.concurrency = concurrency


class Overloaded(RateLimited):
    """The model is overloaded and created nothing (Google's 503 UNAVAILABLE or
    RESOURCE_EXHAUSTED with its error body, a 429 "experiencing high demand"): sending the
    same request again later is safe. Not the account's quota: the channel backs off, and a
    cell may move to another channel after the run's patience."""


class Rejected(ProviderError):
    """The provider refused the request as invalid; sending it again cannot succeed."""


class AuthError(Rejected):
    """Credentials are missing, wrong, or not allowed for this endpoint."""


class InsufficientBalance(Rejected):
    """The account has no money or credits left for this request."""


class LimitExceeded(Rejected):
    """The request breaks a documented provider limit; raised before anything is sent."""


class ModelNotFound(Rejected):
    """The provider does not know the model id the request named (Google's 404 NOT_FOUND for
    `models/...`): nothing was created, and no cell asking this channel for that model can
    succeed in this run. `model` is the id sent, `others` the ids the provider documents
    besides it."""

    def __init__(
        self,
        message: str,
        *,
        model: str,
        others: tuple[str, ...] = (),
        code: str | int | None = "model_not_found",
    ) -> None:
        super().__init__(message, code=code)
        self.model = model
        self.others = others


class SubmitUncertain(ProviderError):
    """A create request went out but no answer came back: the task may exist and be billed.

    Re-sending is safe only where the protocol is idempotent (HiAPI `Idempotency-Key`) or
    the task can be found again (Runware `taskUUID` + getResponse)."""


class TaskFailed(ProviderError):
    """The remote task reached a terminal failure state."""


class ContentRejected(TaskFailed):
    """The provider refused the content (moderation / policy); no retry, no fallback."""


class TaskExpired(TaskFailed):
    """The provider gave up on the task before running it (a batch pending or running past
    its lifetime): nothing was generated or billed for it."""


class ResultMismatch(ProviderError):
    """The delivered image is not what was asked for (undecodable, wrong format or size)."""


class TaskNotFound(ProviderError):
    """The provider does not know the remote task id (expired, other account, never created)."""


class ResultsExpired(TaskNotFound):
    """The task finished (and was billed), but the provider no longer serves its results
    (a batch's results file past its retention): nothing to collect, nothing to redo."""


__all__ = [
    "AuthError",
    "ContentRejected",
    "InsufficientBalance",
    "LimitExceeded",
    "ModelNotFound",
    "Overloaded",
    "ProviderError",
    "RateLimited",
    "Rejected",
    "RequestNotSent",
    "ResultMismatch",
    "ResultsExpired",
    "SubmitUncertain",
    "TaskExpired",
    "TaskFailed",
    "TaskNotFound",
    "TransientError",
]
