"""A memory cap for tests whose subject is a guard against huge input: if the guard breaks,
the test fails with MemoryError instead of eating the machine."""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator

DEFAULT_HEADROOM = 768 << 20


def _address_space() -> int:
    """This process's virtual size now (bytes), from /proc; 0 where there is none."""
    try:
        with open("/proc/self/status") as status:
            kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    except (OSError, StopIteration):
        return 0
    return kb * 1024


@contextlib.contextmanager
def memory_cap(headroom: int = DEFAULT_HEADROOM) -> Iterator[None]:
    """At most `headroom` more bytes of address space inside the block (RLIMIT_AS, soft
    limit only: it is restored afterwards). No cap where /proc is missing."""
    used = _address_space()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if not used:
        yield
        return
    cap = used + headroom
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
