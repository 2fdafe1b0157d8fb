"""The failure policy: what the engine does with each error, in one place.

A cell's life (`flows.engine.lifecycle`) has two halves. Before a create may have reached the
provider, nothing is spent and anything may be tried again or elsewhere. From the moment a
create may have reached it, the cell is never created again (on any channel, in any run)
unless the provider says the task failed or its image proved wrong.

Two tables decide. `STEP_ENDS` says what each error does to the *step* it met (prepare,
create, poll, download, verify, write), before and after the create:

    RETRY         the step again where it stands: a rate limit waits Retry-After (and tells
                  the account throttle), other faults back off with full jitter, up to
                  `RetryPolicy.max_attempts`
    PATIENCE      after a create: the step again until `RetryPolicy.patience_s` has passed,
                  then the cell is `pending` and keeps its task (`TaskPending`)
    NOT_SENT      the request never left: nothing was created, the cell is unsent
    REFUSED       the provider answered and created nothing: the cell is unsent
    MAY_EXIST     a create may have reached the provider: the resend rule (`resend_rule`)
                  recovers it, sends it again with the same key, or ends the cell uncertain
    TASK_FAILED   the provider's word: the task failed (a new task, `retries` times)
    CONTENT       the provider's word: the content is refused; final everywhere
    UNKNOWN_TASK  the provider does not know a task we created: uncertain, never a new task
    WRONG_IMAGE   the image is proved not what was asked: a new task may be created
    PENDING       the task is the provider's; the next run collects it
    OUTPUT_TAKEN  the output path holds another cell's file: final, nothing overwritten
    BUG           not a provider signal: the cell fails `internal_error`, its journal kept

When a step ends, the *cell* decides (`decide`), by the first matching row of `DECISIONS`:

    Interrupted          stop where it stands: unsent cells are skipped, tasks left pending
    Unsubmittable        stop: budget or fail-fast, nothing more is submitted
    TaskPending          pending: the task is the provider's; the next run collects it
    ResultsExpired       final: the task was billed, its results are gone; never again
    CreateUncertain, SubmitUncertain, TaskNotFound
                         uncertain: it may exist and be billed; never re-sent unless asked
    ContentRejected      final: the same content fails everywhere
    OutputTaken, CellInvalid
                         final, found before anything was paid
    AuthError, InsufficientBalance
                         drop the account for the run (found at a create), the next provider
    Rejected             the next provider (this one cannot take the request)
    TransientError       the next provider (its creates stayed down, nothing was created)
    TaskExpired          the next channel, no retry where it expired (nothing was billed);
                         with none left, pending: the next run creates it again
    TaskFailed, ResultMismatch
                         a new task on the same provider, `retries` times, then the next

Provider signals reach this module only as classes of `providers.errors` (adapters map them);
no provider name appears here.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from nbp.flows.engine.throttle import AccountThrottle
from nbp.providers.base import Capabilities
from nbp.providers.errors import (
    AuthError,
    ContentRejected,
    InsufficientBalance,
    ProviderError,
    RateLimited,
    Rejected,
    RequestNotSent,
    ResultMismatch,
    ResultsExpired,
    SubmitUncertain,
    TaskExpired,
    TaskFailed,
    TaskNotFound,
    TransientError,
)

T = TypeVar("T")


class OutputTaken(Exception):
    """The output path already holds a file that belongs to another cell (or to no cell)."""


class CellInvalid(Exception):
    """The cell cannot be sent anywhere as it is (e.g. a reference that may not be read)."""


class TaskPending(Exception):
    """A created task could not be collected in this run; the next run collects it."""


class CreateUncertain(Exception):
    """A create may have reached a provider that cannot be asked about it."""


class Interrupted(Exception):
    """The run was asked to stop (Ctrl-C, SIGTERM) while this cell waited or worked."""


class RunConfigurationError(ValueError):
    """The run cannot start as configured (a missing API key, an unreadable ledger): found
    before anything is sent; `nbp run` exits 2."""


class Unsubmittable(Exception):
    """Nothing more may be submitted for this cell (budget, fail-fast)."""

    def __init__(self, status: str, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# -- steps --------------------------------------------------------------------------------------


class Step(enum.Enum):
    """One request (or local act) of a cell's life."""

    PREPARE = "reference uploads and whatever else a create needs, before its intent"
    CREATE = "the create request"
    POLL = "a status request about a created task"
    DOWNLOAD = "the result image's bytes"
    VERIFY = "the image checked against what was asked"
    WRITE = "the image written to the target"


class StepEnd(enum.Enum):
    """What an error does to the step it met (see the module docstring)."""

    RETRY = "retry"
    PATIENCE = "patience"
    NOT_SENT = "not_sent"
    REFUSED = "refused"
    MAY_EXIST = "may_exist"
    TASK_FAILED = "task_failed"
    CONTENT = "content"
    UNKNOWN_TASK = "unknown_task"
    WRONG_IMAGE = "wrong_image"
    PENDING = "pending"
    OUTPUT_TAKEN = "output_taken"
    BUG = "bug"


_Rows = tuple[tuple[type[BaseException], StepEnd], ...]
# Every step's rows, first match wins; the last row of each is `Exception` (anything else).
STEP_ENDS: dict[Step, _Rows] = {
    Step.PREPARE: (
        (RateLimited, StepEnd.RETRY),
        (TransientError, StepEnd.RETRY),
        (Exception, StepEnd.NOT_SENT),  # no create intent exists yet: nothing can be paid
    ),
    Step.CREATE: (
        (RateLimited, StepEnd.RETRY),
        (RequestNotSent, StepEnd.RETRY),
        (Rejected, StepEnd.REFUSED),
        (ContentRejected, StepEnd.CONTENT),     # a synchronous create's answer
        (TaskFailed, StepEnd.TASK_FAILED),      # a synchronous create's answer
        (ResultMismatch, StepEnd.WRONG_IMAGE),  # a synchronous create's image
        (Exception, StepEnd.MAY_EXIST),         # the bytes may have left: never guessed
    ),
    Step.POLL: (
        (RateLimited, StepEnd.RETRY),
        (ContentRejected, StepEnd.CONTENT),
        (TaskFailed, StepEnd.TASK_FAILED),
        (TaskNotFound, StepEnd.UNKNOWN_TASK),
        (ResultMismatch, StepEnd.WRONG_IMAGE),
        (TaskPending, StepEnd.PENDING),
        (ProviderError, StepEnd.PATIENCE),
        (Exception, StepEnd.BUG),
    ),
    Step.DOWNLOAD: (
        (RateLimited, StepEnd.RETRY),
        (ResultMismatch, StepEnd.WRONG_IMAGE),  # larger than any real image
        (TaskFailed, StepEnd.TASK_FAILED),      # nothing to download for this cell
        (ProviderError, StepEnd.PATIENCE),      # a 404 on a result URL is an expired link
        (Exception, StepEnd.BUG),
    ),
    Step.VERIFY: (
        (ResultMismatch, StepEnd.WRONG_IMAGE),
        (Exception, StepEnd.BUG),
    ),
    Step.WRITE: (
        (OutputTaken, StepEnd.OUTPUT_TAKEN),
        (OSError, StepEnd.PATIENCE),            # the target is down: the image waits
        (Exception, StepEnd.BUG),
    ),
}
# The ends that are the provider's own word on a created task: final for that task.
PROVIDERS_WORD: frozenset[StepEnd] = frozenset({
    StepEnd.TASK_FAILED, StepEnd.CONTENT, StepEnd.UNKNOWN_TASK, StepEnd.WRONG_IMAGE,
})


def step_end(step: Step, exc: BaseException) -> StepEnd:
    """The first row of `STEP_ENDS[step]` whose class `exc` is an instance of."""
    for cls, end in STEP_ENDS[step]:
        if isinstance(exc, cls):
            return end
    return StepEnd.BUG  # BaseException that is not an Exception: never swallowed


# -- cells --------------------------------------------------------------------------------------


class Decision(enum.Enum):
    """What a cell does after one of its steps gave up."""

    INTERRUPTED = "end the cell where it stands: unsent is skipped, a task is left pending"
    STOP = "end the cell with the run's stop reason; submit nothing more"
    PENDING = "end the run's work on the cell; its task stays journalled for the next run"
    UNCERTAIN = "end the cell uncertain: never re-sent unless the user asks"
    FINAL = "end the cell failed: no retry, no fallback"
    DROP_ACCOUNT = "no more cells on this account in this run; the next provider"
    NEXT_PROVIDER = "the next provider of the fallback list"
    REROUTE = ("the next channel, never a new task where it expired; with none left the cell "
               "is pending for the next run")
    RETRY_TASK = "a new task on the same provider (up to `retries`), then the next provider"


DECISIONS: tuple[tuple[type[BaseException], Decision], ...] = (
    (Interrupted, Decision.INTERRUPTED),
    (Unsubmittable, Decision.STOP),
    (TaskPending, Decision.PENDING),
    (ResultsExpired, Decision.FINAL),
    (CreateUncertain, Decision.UNCERTAIN),
    (SubmitUncertain, Decision.UNCERTAIN),
    (TaskNotFound, Decision.UNCERTAIN),
    (ContentRejected, Decision.FINAL),
    (OutputTaken, Decision.FINAL),
    (CellInvalid, Decision.FINAL),
    (AuthError, Decision.DROP_ACCOUNT),
    (InsufficientBalance, Decision.DROP_ACCOUNT),
    (Rejected, Decision.NEXT_PROVIDER),
    (TransientError, Decision.NEXT_PROVIDER),
    (TaskExpired, Decision.REROUTE),
    (TaskFailed, Decision.RETRY_TASK),
    (ResultMismatch, Decision.RETRY_TASK),
)
HANDLED: tuple[type[BaseException], ...] = tuple(cls for cls, _ in DECISIONS)


def decide(exc: BaseException) -> Decision:
    """The first row of `DECISIONS` whose class `exc` is an instance of."""
    for cls, decision in DECISIONS:
        if isinstance(exc, cls):
            return decision
    raise TypeError(f"no failure policy for {type(exc).__name__}") from exc


class Resend(enum.Enum):
    """What to do after a create whose answer was lost."""

    RECOVER = "look the task up by its client-chosen id; send again only if it does not exist"
    SAME_KEY = "send again with the same idempotency key: the provider returns the original"
    NEVER = "never send again: the cell is uncertain (it may have been billed)"


def resend_rule(caps: Capabilities) -> Resend:
    if caps.recoverable_submit:
        return Resend.RECOVER
    if caps.idempotent_submit:
        return Resend.SAME_KEY
    return Resend.NEVER


@dataclass(frozen=True)
class RetryPolicy:
    """How long a step keeps trying. Defaults ride out a few minutes of provider trouble
    without hammering it; after a create a step keeps trying for `patience_s` (the task is
    paid for: giving up early only moves the work to the next run)."""

    max_attempts: int = 8
    base_s: float = 0.5
    cap_s: float = 30.0
    max_rate_limited: int = 1000  # rate limits are expected at full speed; they slow us down
    patience_s: float = 600.0

    def backoff(self, attempt: int) -> float:
        """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2^attempt)]."""
        return random.uniform(0, min(self.cap_s, self.base_s * 2**attempt))


DEFAULT_RETRY = RetryPolicy()


async def with_retries(
    call: Callable[[], Awaitable[T]],
    step: Step,
    *,
    throttle: AccountThrottle | None = None,
    policy: RetryPolicy = DEFAULT_RETRY,
    before_each: Callable[[], Awaitable[None]] | None = None,
    after_each: Callable[[], None] | None = None,
    until: float | None = None,
) -> T:
    """Run one step until it returns or `STEP_ENDS` ends it (the step level of the module
    docstring): `RETRY` errors are tried again `policy.max_attempts` times, `PATIENCE` ones
    until `until` (monotonic time; without it, like `RETRY`); any other end is raised.
    `before_each` / `after_each` bracket every attempt (a create-rate token and its answer)."""
    failures = 0
    limited = 0
    while True:
        if before_each is not None:
            await before_each()
        try:
            try:
                return await call()
            finally:
                if after_each is not None:
                    after_each()
        except RateLimited as exc:
            limited += 1
            if limited > policy.max_rate_limited or step_end(step, exc) is not StepEnd.RETRY:
                raise
            if throttle is not None:
                throttle.rate_limited(exc.retry_after, concurrency=exc.concurrency)
            delay = exc.retry_after if exc.retry_after is not None else policy.backoff(
                min(limited, 6)
            )
            await asyncio.sleep(delay)
        except Exception as exc:
            end = step_end(step, exc)
            if end not in (StepEnd.RETRY, StepEnd.PATIENCE):
                raise
            failures += 1
            delay = policy.backoff(failures)
            if end is StepEnd.PATIENCE and until is not None:
                if time.monotonic() + delay > until:
                    raise
            elif failures >= policy.max_attempts:
                raise
            await asyncio.sleep(delay)
