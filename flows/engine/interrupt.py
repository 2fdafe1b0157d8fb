"""A run's stop request: Ctrl-C or SIGTERM, the most common fault of all.

    interrupt = Interrupt()
    loop.add_signal_handler(signal.SIGINT, interrupt.request, signal.SIGINT)
    ...
    await interrupt.waiting(throttle.before_create())   # raises Interrupted on the first
    await interrupt.sending(provider.submit(request))   # raises Interrupted on the second

The first request stops everything that *waits* (a slot, the budget, a rate token, uploads,
polls, downloads): no new create leaves, and cells stop where they stand. Creates already on
the wire are awaited, so their task ids get journalled. The second request stops waiting for
those too (they become uncertain). Either way the engine goes on to write the journal, the
manifest and the gallery: the process's exit is the caller's.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nbp.flows.engine.policy import Interrupted

T = TypeVar("T")


class Interrupt:
    """Stop requests of one run; see the module docstring."""

    def __init__(self) -> None:
        self.signals: list[int] = []
        self.listeners: list[Callable[[Interrupt], None]] = []  # told of every request
        self._soft: asyncio.Future[None] | None = None
        self._hard: asyncio.Future[None] | None = None

    @property
    def requested(self) -> bool:
        """Stop waiting: no new create may leave."""
        return bool(self.signals)

    @property
    def hard(self) -> bool:
        """Stop waiting for creates on the wire too."""
        return len(self.signals) > 1

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signals[0]).name if self.signals else ""

    @property
    def exit_code(self) -> int | None:
        """128 + the first signal's number (130 for SIGINT, 143 for SIGTERM), else None."""
        return 128 + self.signals[0] if self.signals else None

    def request(self, signum: int = signal.SIGINT) -> None:
        """A stop request (a signal handler calls this in the event loop's thread)."""
        self.signals.append(signum)
        if self._soft is not None:
            self._resolve()
        for listener in self.listeners:
            listener(self)

    async def waiting(self, awaitable: Awaitable[T]) -> T:
        """`awaitable`, unless a stop is requested first: then it is cancelled and this
        raises `Interrupted`."""
        return await self._race(awaitable, hard=False)

    async def sending(self, awaitable: Awaitable[T]) -> T:
        """A create on the wire: awaited through the first stop request, cancelled (and
        `Interrupted` raised) on the second."""
        return await self._race(awaitable, hard=True)

    async def _race(self, awaitable: Awaitable[T], *, hard: bool) -> T:
        stop = self._futures()[1 if hard else 0]
        if stop.done():
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise Interrupted(self._why(hard))
        work = asyncio.ensure_future(awaitable)
        try:
            await asyncio.wait((work, stop), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()
            raise
        if work.done():
            return work.result()
        work.cancel()
        await asyncio.wait((work,))  # its end, whatever it was, is moot now
        if not work.cancelled():
            work.exception()
        raise Interrupted(self._why(hard))

    def _why(self, hard: bool) -> str:
        if hard:
            return (f"stopped by a second {self.signal_name} while the create was on the "
                    "wire; it may have reached the provider")
        return f"stopped by {self.signal_name or 'a stop request'}"

    def _futures(self) -> tuple[asyncio.Future[None], asyncio.Future[None]]:
        if self._soft is None or self._hard is None:
            loop = asyncio.get_running_loop()
            self._soft, self._hard = loop.create_future(), loop.create_future()
            self._resolve()
        return self._soft, self._hard

    def _resolve(self) -> None:
        for future, needed in ((self._soft, 1), (self._hard, 2)):
            if future is not None and len(self.signals) >= needed and not future.done():
                future.set_result(None)
