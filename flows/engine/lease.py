"""Leases on a target: who may write what, across processes and machines, through fsspec.

A lease is a small file created exclusively (`Sink.write_bytes(overwrite=False)`: a hard
link on local disks, a conditional PUT on object stores), naming its holder. Holders are
processes; each keeps a heartbeat file fresh (`Heartbeat`), so a lease whose holder stopped
beating — a crashed or killed run — can be taken over after `STALE_AFTER_S`.

    heartbeat = Heartbeat(sink, holder="f3a9...")      # one per process, started by the job
    lock = Lease(sink, ".nbp/locks/budget", heartbeat)  # short critical sections
    async with lock:
        ...
    claim = Lease(sink, f".nbp/claims/{cell_id}", heartbeat)
    if await claim.try_acquire():                        # long-lived: one per cell in flight
        ...

Why heartbeats and not expiry times inside each lease: a cell may wait hours for its task,
and renewing thousands of cell claims would cost a write each; one heartbeat per process
renews them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import time
from types import TracebackType

from nbp.outputs.layout import HOLDERS_DIR
from nbp.outputs.sink import Sink

BEAT_EVERY_S = 15.0
STALE_AFTER_S = 60.0      # four missed beats: the holder is gone
LOCK_WAIT_S = 120.0       # how long a short critical section may wait for another holder
HOST = socket.gethostname()


class LeaseTimeout(TimeoutError):
    """Another live holder kept the lease longer than we could wait."""


class Heartbeat:
    """This process's proof of life on the target: `.nbp/holders/{holder}.json`."""

    def __init__(self, sink: Sink, holder: str) -> None:
        self.sink, self.holder = sink, holder
        self._task: asyncio.Task[None] | None = None

    def beat(self) -> None:
        self.sink.put_json(f"{HOLDERS_DIR}/{self.holder}.json", {
            "holder": self.holder, "at": time.time(), "host": HOST, "pid": os.getpid(),
        }, durable=False)

    def is_alive(self, holder: str) -> bool:
        """Whether `holder` beat within `STALE_AFTER_S` (this process always is). A holder on
        this machine whose process is gone is dead at once: a rerun after a crash or
        `kill -9` does not wait for its heartbeat to go stale."""
        if holder == self.holder:
            return True
        data = self.sink.get_json(f"{HOLDERS_DIR}/{holder}.json")
        if not isinstance(data, dict) or time.time() - float(data.get("at", 0)) >= STALE_AFTER_S:
            return False
        if data.get("host") == HOST and isinstance(data.get("pid"), int):
            return _process_exists(data["pid"])
        return True

    async def __aenter__(self) -> Heartbeat:
        await asyncio.to_thread(self.beat)
        self._task = asyncio.create_task(self._beating())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.sink.delete, f"{HOLDERS_DIR}/{self.holder}.json")

    async def _beating(self) -> None:
        while True:
            await asyncio.sleep(BEAT_EVERY_S)
            with contextlib.suppress(Exception):  # a missed beat is retried on the next one
                await asyncio.to_thread(self.beat)


class Lease:
    """An exclusive file at `rel` naming this process (see the module docstring)."""

    def __init__(self, sink: Sink, rel: str, heartbeat: Heartbeat) -> None:
        self.sink, self.rel, self.heartbeat = sink, rel, heartbeat

    def holder(self) -> str | None:
        """Who holds the lease now (None: nobody, or unreadable)."""
        data = self.sink.read_bytes(self.rel)
        if data is None:
            return None
        with contextlib.suppress(ValueError):
            value = json.loads(data)
            if isinstance(value, dict) and isinstance(value.get("holder"), str):
                return str(value["holder"])
        return ""  # half-written or foreign: treated as a holder that is gone

    def _try(self) -> bool:
        body = json.dumps({"holder": self.heartbeat.holder, "at": time.time()}).encode()
        for _ in range(2):
            try:
                self.sink.write_bytes(self.rel, body, overwrite=False, durable=False)
                return True
            except FileExistsError:
                holder = self.holder()
                if holder == self.heartbeat.holder:
                    return True
                if holder is not None and self.heartbeat.is_alive(holder):
                    return False
                self.sink.delete(self.rel)  # a crashed holder's lease: take it over
        return False

    async def try_acquire(self) -> bool:
        """Take the lease if nobody alive holds it; never waits."""
        return await asyncio.to_thread(self._try)

    async def acquire(self, wait_s: float = LOCK_WAIT_S) -> None:
        """Take the lease, waiting (with jitter) while another live holder has it."""
        deadline = time.monotonic() + wait_s
        delay = 0.005
        while not await self.try_acquire():
            if time.monotonic() > deadline:
                raise LeaseTimeout(f"{self.rel} is held by another run")
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(0.5, delay * 2)

    async def release(self) -> None:
        def drop() -> None:
            if self.holder() == self.heartbeat.holder:
                self.sink.delete(self.rel)

        await asyncio.to_thread(drop)

    async def __aenter__(self) -> Lease:
        await self.acquire()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.release())


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True
