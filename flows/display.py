"""What a person sees while `nbp run` works: a live line on a terminal, nothing extra
otherwise (the flow logs plain progress lines), and a summary table at the end."""

from __future__ import annotations

import time
from typing import Any, TextIO

from nbp.flows.engine.interrupt import Interrupt
from nbp.flows.engine.progress import Progress

BAR_WIDTH = 28
REDRAW_S = 0.2


class TerminalDisplay:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self._last = 0.0
        self._drawn = False
        self._progress: Progress | None = None

    def update(self, progress: Progress) -> None:
        self._progress = progress
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

    def stopping(self, interrupt: Interrupt) -> None:
        """Say what a stop request does, and what it is still waiting for."""
        self.stream.write(("\n" if self._drawn else "") + stop_message(interrupt, self._progress)
                          + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()

    @staticmethod
    def summary(result: dict[str, Any]) -> str:
        counts = result["counts"]
        spent = "would cost" if result.get("emulated") else "spent"
        width = max(len(k) for k in [*counts, spent])
        lines = [f"job {result['job']}  run {result['run_id']}", ""]
        if result.get("emulated"):
            lines[0] += ("  EMULATED: placeholder images from the local emulators, nothing "
                         "was paid")
        lines += [f"  {status:<{width}}  {count:>7}" for status, count in counts.items()]
        lines += [
            f"  {spent:<{width}}  ${result['spent_usd']:>6.2f}",
            "",
            f"manifest: {result['manifest']}",
            f"gallery:  {result['gallery']}",
        ]
        if result.get("stop_reason"):
            lines.append(f"stopped early: {result['stop_reason']}")
        if result.get("products"):
            lines.append(str(result["products"]))
        lines += failure_lines(result.get("failures") or [])
        if result.get("outcome") == "pending":
            lines.append("only tasks to collect are left: run the same command later "
                         f"(exit {result['exit_code']})")
        if result.get("interrupted_by") is not None and counts.get("pending"):
            lines.append("remote tasks were left running: run the same command again to "
                         "collect them (nothing is paid twice)")
        return "\n".join(lines)


def stop_message(interrupt: Interrupt, progress: Progress | None) -> str:
    """What happens after a first or second stop request, in one or two lines."""
    name = interrupt.signal_name
    if interrupt.hard:
        return (f"nbp: {name} again: not waiting for creates on the wire (they become "
                "uncertain); writing the manifest and exiting")
    sending = progress.sending if progress else 0
    generating = progress.generating if progress else 0
    waiting = "no create is on the wire"
    if sending:
        waiting = f"waiting for {sending} create(s) on the wire to answer, so their tasks "
        waiting += "are journalled"
        if generating:
            waiting += (f" ({generating} of them synchronous generations that return the "
                        "image itself: up to a minute or two)")
    return (f"nbp: {name}: stopping. No new creates; {waiting}; tasks already created are "
            "left running for the next run.\n"
            f"nbp: press Ctrl-C again to stop waiting (creates on the wire become uncertain)")


MAX_REASONS = 5


def failure_lines(groups: list[dict[str, Any]]) -> list[str]:
    """Why cells did not succeed, the commonest reasons first (as `nbp status` groups them)."""
    if not groups:
        return []
    lines = ["not succeeded:"]
    for group in groups[:MAX_REASONS]:
        reason = ": ".join(str(x) for x in (group.get("error_code"), group.get("error_message"))
                           if x) or "(no reason recorded)"
        lines.append(f"  {group['count']:>6} {group['status']}  {reason[:200]}")
    if len(groups) > MAX_REASONS:
        lines.append(f"  ... and {len(groups) - MAX_REASONS} more reason(s): nbp status TARGET")
    return lines
