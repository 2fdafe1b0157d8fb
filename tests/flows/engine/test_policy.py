"""The failure policy's step table: every error class at every step, against a table this
test states on its own (a change to `STEP_ENDS` must change this table too), and the retry
loop it drives, timed."""

from __future__ import annotations

import asyncio
import time

import pytest

from nbp.flows.engine.policy import (
    STEP_ENDS,
    CellInvalid,
    OutputTaken,
    RetryPolicy,
    Step,
    StepEnd,
    TaskPending,
    step_end,
    with_retries,
)
from nbp.providers.errors import (
    AuthError,
    ContentRejected,
    InsufficientBalance,
    LimitExceeded,
    ProviderError,
    RateLimited,
    Rejected,
    RequestNotSent,
    ResultMismatch,
    SubmitUncertain,
    TaskFailed,
    TaskNotFound,
    TransientError,
)

E = StepEnd
ERRORS: tuple[type[Exception], ...] = (
    ProviderError, TransientError, RequestNotSent, RateLimited, Rejected, AuthError,
    InsufficientBalance, LimitExceeded, SubmitUncertain, TaskFailed, ContentRejected,
    ResultMismatch, TaskNotFound, TaskPending, OutputTaken, CellInvalid, OSError, RuntimeError,
)
REFUSALS = (Rejected, AuthError, InsufficientBalance, LimitExceeded)
PROVIDER_TROUBLE = (ProviderError, TransientError, RequestNotSent, SubmitUncertain, *REFUSALS)


def expected(step: Step, error: type[Exception]) -> StepEnd:
    """What each step must do with each error (issue 19: the provider's word is final
    wherever it arrives; a create that may have left is never guessed about)."""
    if step is Step.PREPARE:  # before the intent: nothing can have been paid
        return E.RETRY if issubclass(error, TransientError) else E.NOT_SENT
    if step is Step.CREATE:
        if error in (RateLimited, RequestNotSent):
            return E.RETRY
        if error in REFUSALS:
            return E.REFUSED
        return {ContentRejected: E.CONTENT, TaskFailed: E.TASK_FAILED,
                ResultMismatch: E.WRONG_IMAGE}.get(error, E.MAY_EXIST)
    if step is Step.POLL:
        fixed = {RateLimited: E.RETRY, ContentRejected: E.CONTENT, TaskFailed: E.TASK_FAILED,
                 TaskNotFound: E.UNKNOWN_TASK, ResultMismatch: E.WRONG_IMAGE,
                 TaskPending: E.PENDING}
        return fixed.get(error, E.PATIENCE if error in PROVIDER_TROUBLE else E.BUG)
    if step is Step.DOWNLOAD:
        fixed = {RateLimited: E.RETRY, ResultMismatch: E.WRONG_IMAGE,
                 TaskFailed: E.TASK_FAILED, ContentRejected: E.TASK_FAILED,
                 TaskNotFound: E.PATIENCE}  # a 404 on a result URL: an expired link
        return fixed.get(error, E.PATIENCE if error in PROVIDER_TROUBLE else E.BUG)
    if step is Step.VERIFY:
        return E.WRONG_IMAGE if error is ResultMismatch else E.BUG
    return {OutputTaken: E.OUTPUT_TAKEN, OSError: E.PATIENCE}.get(error, E.BUG)


@pytest.mark.parametrize("step", list(Step), ids=lambda s: s.name.lower())
@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_every_error_at_every_step(step: Step, error: type[Exception]) -> None:
    exc = error("x") if not issubclass(error, OSError) else error(5, "x")
    assert step_end(step, exc) is expected(step, error)


def test_every_step_has_a_row_for_anything_else() -> None:
    for step, rows in STEP_ENDS.items():
        assert rows[-1][0] is Exception, step


FAST = RetryPolicy(max_attempts=4, base_s=0.001, cap_s=0.002)


def test_retry_after_is_the_delay_before_the_next_try() -> None:
    calls: list[float] = []

    async def limited() -> str:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RateLimited("429", retry_after=0.4)
        return "ok"

    assert asyncio.run(with_retries(limited, Step.CREATE, policy=FAST)) == "ok"
    assert 0.4 <= calls[1] - calls[0] < 0.6  # the backoff alone would be ~1 ms


def test_after_a_create_a_step_keeps_trying_until_its_patience_runs_out() -> None:
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise TransientError("503")

    until = time.monotonic() + 0.2
    started = time.monotonic()
    with pytest.raises(TransientError):
        asyncio.run(with_retries(down, Step.POLL, policy=FAST, until=until))
    assert calls > FAST.max_attempts and time.monotonic() - started < 1.0


def test_the_providers_word_on_a_task_ends_the_poll_at_once() -> None:
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise ContentRejected("contentModerated", code="contentModerated")

    with pytest.raises(ContentRejected):
        asyncio.run(with_retries(refused, Step.POLL, policy=FAST,
                                 until=time.monotonic() + 60))
    assert calls == 1
