"""The failure policy: what the engine does with each error, in one place.

A cell's life has two halves (see flows.engine.journal for the states). Before a create may
have reached the provider, nothing is spent and anything may be tried again or elsewhere.
From the moment a create may have reached it, the cell is never created again — on any
provider, in any run — unless the provider says the task failed or its image proved wrong.

A *step* (one create, one poll, one download) is retried where it stands (`with_retries`):

    RateLimited      tell the account throttle (pause, fewer creates, or fewer tasks in
                     flight when `concurrency`), wait Retry-After, send the step again
    TransientError   exponential backoff with full jitter, up to `RetryPolicy.max_attempts`
                     (a create: only when the request never left, `RequestNotSent`, or the
                     provider can be asked about it; see `resend_rule`)
    after a create   any other provider error (a 403 from a proxy on one poll, a truncated
                     download) is retried too, for up to `RetryPolicy.patience_s`; then the
                     cell is `pending` and keeps its task for the next run (`TaskPending`)

When a step gives up, the *cell* decides (`decide`), by the first matching row of `DECISIONS`:

    Unsubmittable        stop: budget or fail-fast, nothing more is submitted
    TaskPending          pending: the task is the provider's; the next run collects it
    CreateUncertain, SubmitUncertain, TaskNotFound
                         uncertain: it may exist and be billed; never re-sent unless asked
    ContentRejected      final: the same content fails everywhere
    OutputTaken, CellInvalid
                         final, found before anything was paid
    AuthError, InsufficientBalance
                         drop the account for the run (found at a create), the next provider
    Rejected             the next provider (this one cannot take the request)
    TransientError       the next provider (its creates stayed down, nothing was created)
    TaskFailed, ResultMismatch
                         a new task on the same provider, `retries` times, then the next

A create whose answer was lost is handled by `resend_rule`: where the provider can look the
task up by a client-chosen id it is recovered, where the create is idempotent it is sent
again with the same key, and otherwise it is never sent again (`CreateUncertain`).

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

from flows.engine.throttle import AccountThrottle
from providers.base import Capabilities
from providers.errors import (
    AuthError,
    ContentRejected,
    InsufficientBalance,
    RateLimited,
    Rejected,
    ResultMismatch,
    SubmitUncertain,
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


class Unsubmittable(Exception):
    """Nothing more may be submitted for this cell (budget, fail-fast)."""

    def __init__(self, status: str, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Decision(enum.Enum):
    """What a cell does after one of its steps gave up."""

    STOP = "end the cell with the run's stop reason; submit nothing more"
    PENDING = "end the run's work on the cell; its task stays journalled for the next run"
    UNCERTAIN = "end the cell uncertain: never re-sent unless the user asks"
    FINAL = "end the cell failed: no retry, no fallback"
    DROP_ACCOUNT = "no more cells on this account in this run; the next provider"
    NEXT_PROVIDER = "the next provider of the fallback list"
    RETRY_TASK = "a new task on the same provider (up to `retries`), then the next provider"


DECISIONS: tuple[tuple[type[BaseException], Decision], ...] = (
    (Unsubmittable, Decision.STOP),
    (TaskPending, Decision.PENDING),
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
    (TaskFailed, Decision.RETRY_TASK),
    (ResultMismatch, Decision.RETRY_TASK),
)
HANDLED: tuple[type[BaseException], ...] = tuple(cls for cls, _ in DECISIONS)
# After a create, only these end a step at once: the provider's own word on the task.
FINAL_AFTER_CREATE: tuple[type[BaseException], ...] = (TaskFailed, TaskNotFound, ResultMismatch)


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
    NEVER = "never send again: the cell fails as SubmitUncertain (it may have been billed)"


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
    *,
    throttle: AccountThrottle | None = None,
    policy: RetryPolicy = DEFAULT_RETRY,
    before_each: Callable[[], Awaitable[None]] | None = None,
    after_each: Callable[[], None] | None = None,
    transient: tuple[type[BaseException], ...] = (TransientError,),
    final: tuple[type[BaseException], ...] = (),
    until: float | None = None,
) -> T:
    """Run one step until it returns or gives up (the step level of the module docstring).

    `transient`: what counts as worth another try besides rate limits, except `final`;
    `until` (monotonic time): keep trying those until then instead of `max_attempts` times.
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
            if limited > policy.max_rate_limited:
                raise
            if throttle is not None:
                throttle.rate_limited(exc.retry_after, concurrency=exc.concurrency)
            delay = exc.retry_after if exc.retry_after is not None else policy.backoff(
                min(limited, 6)
            )
            await asyncio.sleep(delay)
        except final:
            raise
        except transient:
            failures += 1
            delay = policy.backoff(failures)
            if until is not None:
                if time.monotonic() + delay > until:
                    raise
            elif failures >= policy.max_attempts:
                raise
            await asyncio.sleep(delay)
