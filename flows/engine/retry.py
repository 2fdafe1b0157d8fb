"""The one retry loop: read the error, then retry, slow down, or give up.

- `RateLimited`: tell the account throttle (which pauses and lowers the rate), then retry.
- `TransientError` (5xx, timeouts, dropped connections): exponential backoff with full jitter.
- everything else (`Rejected`, `AuthError`, `SubmitUncertain`, `TaskFailed`, ...) is raised at
  once: rejections are never retried, and task-level retries are the runner's decision.

Nothing here caches a failure: every call is made afresh.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from flows.engine.throttle import AccountThrottle
from providers.errors import RateLimited, TransientError

T = TypeVar("T")

# Wiro answers its concurrency limit with body code 96 (protocols.md §1.5).
CONCURRENCY_CODES = frozenset({"96"})


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying a transient fault. Defaults ride out a few minutes of
    provider trouble without hammering it."""

    max_attempts: int = 8
    base_s: float = 0.5
    cap_s: float = 30.0
    max_rate_limited: int = 1000  # rate limits are expected at full speed; they slow us down

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
) -> T:
    """Run `call` until it returns or fails for good; see the module docstring.
    `before_each` / `after_each` bracket every attempt (a create-rate token and its answer)."""
    transient = 0
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
                throttle.rate_limited(exc.retry_after, concurrency=exc.code in CONCURRENCY_CODES)
            delay = exc.retry_after if exc.retry_after is not None else policy.backoff(
                min(limited, 6)
            )
            await asyncio.sleep(delay)
        except TransientError:
            transient += 1
            if transient >= policy.max_attempts:
                raise
            await asyncio.sleep(policy.backoff(transient))
