"""One provider account's create rate, shared by every process through the Prefect server.

When several workers run shards of one job, each process's own `SlidingWindowLimiter` only
sees its own creates. `SharedWindowLimiter` adds a second gate in front of every create: a
token from a Prefect global concurrency limit in rate-limit mode, named after the account
(`nbp:{provider}:{hash of the credentials}`, never the key itself), so N workers together
stay inside the provider's documented window.

Why these numbers. A Prefect rate limit is a leaky bucket: `limit` slots of capacity C that
drain `slot_decay_per_second` = d (in whole slots, so never faster). Whatever the timing, it
grants at most C + d*T slots in any T seconds. A slot is taken in a batch of b at once (one
round of HTTP calls per b creates instead of per create), kept locally for at most
`TOKEN_TTL_S`, and a create reaches the provider within `TRANSIT_GRACE_S` of the grant (the
answer travelling back plus the create request travelling out). So the creates the provider
sees in any window W were all granted within W' = W + TOKEN_TTL_S + TRANSIT_GRACE_S, and

    C + d*W' <= N   with   C = 2b,  d = (N - C) / W'

keeps every provider window at N or fewer. For Kie's 20 / 10 s: b = 2, C = 4, W' = 11.5 s,
d = 16/11.5 = 1.39 creates/s at most. Measured with Prefect 3.8.8 on loopback: 1, 2 and 4
processes together got 1.2 creates/s (60% of the documented 2/s; the server's jittered
Retry-After leaves gaps) at 1.0, 1.5 and 2.5 HTTP calls per create. That is the price of a
guarantee across machines; a process alone keeps its exact local window and the full rate.
C = 2b rather than b lets a client that was told to wait find a batch ready when it returns.
The guarantee assumes a create reaches the provider within TRANSIT_GRACE_S of its grant; one
that is slower still gets a 429 at worst, which is retried and never billed.

Adaptivity stays local: a 429 still halves this process's own window (`penalise`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass

import httpx

from nbp.flows.engine.throttle import SlidingWindowLimiter
from nbp.flows.spec.rate import Rate
from nbp.providers.base import Provider

log = logging.getLogger("nbp.shared_limits")

TOKEN_TTL_S = 0.5        # an unspent token is dropped this long after its batch was granted
TRANSIT_GRACE_S = 1.0    # grant answer back + create request out (a first upload included)
ACQUIRE_ATTEMPTS = 6     # about a minute of Prefect server trouble before a create fails
BATCH_PER_WINDOW = 10    # b = N // 10: a batch is a tenth of the documented window


@dataclass(frozen=True)
class SharedRate:
    """A Prefect rate limit that keeps N creates per W seconds across processes."""

    name: str
    capacity: int                 # Prefect `limit`: C
    slot_decay_per_second: float  # d
    batch: int                    # slots taken per acquire: b

    @classmethod
    def for_account(cls, rate: Rate, name: str) -> SharedRate:
        """C, d and b for `rate` (see the module docstring)."""
        window = rate.window_s + TOKEN_TTL_S + TRANSIT_GRACE_S
        batch = max(1, rate.count // BATCH_PER_WINDOW)
        capacity = min(2 * batch, rate.count - 1)
        if capacity < batch:  # N of 1 or 2: one token at a time
            batch = capacity = 1
        decay = (rate.count - capacity) / window if rate.count > 1 else 1.0 / window
        # N = 1: C = b = 1 and whole-slot decay mean grants at least W' apart, one per window
        return cls(name, capacity, decay, batch)


def account_limit_name(provider: Provider) -> str:
    """`nbp:{provider}:{10 hex of sha256 of its credentials}`: one name per quota holder,
    the same on every machine, and nothing that reveals the key."""
    settings = getattr(provider, "settings", None)
    credentials = getattr(settings, "credentials", {}) or {}
    digest = hashlib.sha256(provider.name.encode())
    for var in sorted(credentials):
        digest.update(b"\0" + var.encode() + b"=" + str(credentials[var].get()).encode())
    return f"nbp:{provider.name}:{digest.hexdigest()[:10]}"


class SharedWindowLimiter(SlidingWindowLimiter):
    """The local sliding window, then a token of the account's shared Prefect rate limit."""

    def __init__(self, rate: Rate, shared: SharedRate) -> None:
        super().__init__(rate)
        self.shared = shared
        self._expiries: deque[float] = deque()  # one monotonic deadline per unspent token
        self._shared_lock = asyncio.Lock()
        self._limit_ready = False

    async def acquire(self) -> None:
        """Wait for the local window, then for a shared token (FIFO for both). The local
        window re-times the create from its answer (`answered`), shared wait included."""
        await super().acquire()
        await self._take_token()

    async def acquire_spent(self) -> None:
        """A create the router spent in the local window still needs its shared token."""
        await self._take_token()

    async def _take_token(self) -> None:
        async with self._shared_lock:
            now = time.monotonic()
            while self._expiries and self._expiries[0] <= now:  # the tail of a burst
                self._expiries.popleft()
            if not self._expiries:
                await self._acquire_batch()
            self._expiries.popleft()

    async def _acquire_batch(self) -> None:
        """b slots of the account's limit; a Prefect server that is briefly unreachable, or
        a limit deleted or shrunk by someone else, is waited out and the limit set again."""
        from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, rate_limit

        for attempt in range(ACQUIRE_ATTEMPTS):
            try:
                await self.ensure_limit()
                await rate_limit(self.shared.name, occupy=self.shared.batch, strict=True)
                break
            except (ConcurrencySlotAcquisitionError, httpx.HTTPError, OSError) as exc:
                if attempt == ACQUIRE_ATTEMPTS - 1:
                    raise
                log.warning("shared rate %s: %s; retrying", self.shared.name, exc)
                self._limit_ready = False
                await asyncio.sleep(min(30.0, 2.0**attempt))
        # Timed from the answer: the grace in the module docstring covers its travel time.
        deadline = time.monotonic() + TOKEN_TTL_S
        self._expiries.extend([deadline] * self.shared.batch)

    async def ensure_limit(self) -> None:
        """Create the account's limit, or set its numbers, once per process (idempotent;
        when two processes race to create it, one gets 409 and updates instead)."""
        if self._limit_ready:
            return
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectAlreadyExists

        if not os.environ.get("PREFECT_API_URL"):
            log.warning("shared limits without PREFECT_API_URL: processes on other machines "
                        "use other Prefect servers and do not share %s", self.shared.name)
        shared = self.shared
        async with get_client() as client:
            for _ in range(2):
                with contextlib.suppress(ObjectAlreadyExists):
                    await client.upsert_global_concurrency_limit_by_name(
                        shared.name, shared.capacity, shared.slot_decay_per_second
                    )
                    break
        self._limit_ready = True
        log.info("shared create rate %s: capacity %d, %.3f/s, batches of %d", shared.name,
                 shared.capacity, shared.slot_decay_per_second, shared.batch)


def shared_limiter(rate: Rate, provider: Provider) -> SharedWindowLimiter:
    """The limiter `make_throttles` uses for `provider` when limits are shared."""
    return SharedWindowLimiter(rate, SharedRate.for_account(rate, account_limit_name(provider)))
