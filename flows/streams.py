"""Standard streams that outlive their reader: `nbp run spec | tee run.log`, then Ctrl-C,
stops `tee` with nbp; every later write to the pipe would raise `BrokenPipeError` (rich, in
Prefect's log handler, turns it into `SystemExit(1)`), and the run would die before it
writes its manifest. A guarded stream drops what it cannot deliver instead: the run ends
as it would have, its exit code and files say how.

    guard_standard_streams()   # before Prefect sets up its log handlers
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO, cast


class Guarded:
    """`stream`, until a write or flush finds its reader gone; then the null device."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (BrokenPipeError, ValueError):  # ValueError: the stream was closed
            self._give_up()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (BrokenPipeError, ValueError):
            self._give_up()

    def _give_up(self) -> None:
        if not self.broken:
            self.broken = True
            self._stream = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno... of the stream
        return getattr(self._stream, name)


def guard_standard_streams() -> None:
    """`sys.stdout` and `sys.stderr` as `Guarded` streams (once)."""
    if not isinstance(sys.stdout, Guarded):
        sys.stdout = cast(TextIO, Guarded(sys.stdout))
    if not isinstance(sys.stderr, Guarded):
        sys.stderr = cast(TextIO, Guarded(sys.stderr))
