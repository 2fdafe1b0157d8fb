"""What a person sees while `nbp run` works: a live line on a terminal, nothing extra
otherwise (the flow logs plain progress lines), and a summary table at the end."""

from __future__ import annotations

import time
from typing import Any, TextIO

from flows.engine.progress import Progress

BAR_WIDTH = 28
REDRAW_S = 0.2


class TerminalDisplay:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self._last = 0.0
        self._drawn = False

    def update(self, progress: Progress) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if now - self._last < REDRAW_S and progress.done < progress.total:
            return
        self._last = now
        filled = int(BAR_WIDTH * progress.done / max(1, progress.total))
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self.stream.write(f"\r[{bar}] {progress.line()}\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()

    @staticmethod
    def summary(result: dict[str, Any]) -> str:
        counts = result["counts"]
        width = max(len(k) for k in counts)
        lines = [f"job {result['job']}  run {result['run_id']}", ""]
        lines += [f"  {status:<{width}}  {count:>7}" for status, count in counts.items()]
        lines += [
            f"  {'spent':<{width}}  ${result['spent_usd']:>6.2f}",
            "",
            f"manifest: {result['manifest']}",
            f"gallery:  {result['gallery']}",
        ]
        if result.get("stop_reason"):
            lines.append(f"stopped early: {result['stop_reason']}")
        return "\n".join(lines)
