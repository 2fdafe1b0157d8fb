"""What a person sees while `nbp run` works, and the summary at the end.

On a terminal: one line at the bottom, redrawn in place (rich's `Live`), that fits the
terminal's width: the job, a bar, done/total (cells in a final state), failed (and
uncertain, cancelled, then pending, skipped and, after a stop, not started when some cell
is: never counted as done), spend, rate, elapsed and ETA; the narrower the terminal, the
fewer of these (`bar_parts`). Every other line, nbp's or Prefect's, is printed above it:
while the bar is up, Prefect's console handlers print through the bar's console and
`sys.stderr` is rich's proxy. Prefect's routine INFO lines (flow run began, task run
finished, the flow's own progress lines) stay off the terminal: its console handlers show
WARNING and above, unless `PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL` says otherwise; every
line still reaches the flow run's log in Prefect's UI.

Not a terminal (a pipe, a file, CI): no bar; the flow logs a plain progress line every 10 s
or 10 % of the cells (`flows.engine.progress.Beat`) through Prefect's console handler.

    display = TerminalDisplay(sys.stderr)   # before the flow is imported (quiets Prefect)
    flow = build_flow(listeners=[display.update], ...)
    ...
    display.close()
    print(display.summary(result))
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from nbp.flows.engine.interrupt import Interrupt
from nbp.flows.engine.progress import Progress, clock

REFRESH_PER_S = 4
MIN_BAR = 10          # the bar itself is at least this wide, or it goes
ECHO_ROOM = 2         # columns the bar leaves free at the right
CONSOLE_LEVEL = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"  # Prefect's own setting
SEPARATOR = " · "


class TerminalDisplay:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self._progress: Progress | None = None
        self.stopped = False                       # a stop request came
        self._bar: Any = None                      # rich's Live, while the bar is up
        self._console: Any = None
        self._restore: list[tuple[Any, str, Any]] = []  # (object, attribute, value)
        # Quiet Prefect's console before its logging is set up (the flow's import does it);
        # a user's own setting wins.
        self._quieted = self.live and CONSOLE_LEVEL not in os.environ
        if self._quieted:
            os.environ[CONSOLE_LEVEL] = "WARNING"
            self._quiet()  # ... and its handlers, when its logging is set up already

    def _quiet(self) -> None:
        """Prefect's console handlers at WARNING (unless the user set their level)."""
        handlers = sys.modules.get("prefect.logging.handlers")
        if not self._quieted or handlers is None:
            return
        for handler in _handlers():
            if isinstance(handler, handlers.PrefectConsoleHandler) and (
                    handler.level < logging.WARNING):
                self._set(handler, "level", logging.WARNING)

    def update(self, progress: Progress) -> None:
        """A listener of the run's `Progress`: the first call puts the bar up; rich
        redraws it `REFRESH_PER_S` times a second on its own thread."""
        self._progress = progress
        if self.live and self._bar is None:
            self._start()

    def _start(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self._console = Console(file=self.stream, markup=False, highlight=False)
        self._through_bar(self._console)
        self._bar = Live(_Bar(self), console=self._console, refresh_per_second=REFRESH_PER_S,
                         transient=False, redirect_stderr=True,
                         redirect_stdout=_same_terminal(sys.stdout, self.stream))
        self._bar.start()

    def _through_bar(self, console: Any) -> None:
        """Prefect's console handlers print through `console` (above the bar), at WARNING
        and above unless the user set their level; other handlers writing to our stream
        write to `sys.stderr`, which is rich's proxy while the bar is up."""
        from prefect.logging.handlers import PrefectConsoleHandler

        self._quiet()
        for handler in _handlers():
            if isinstance(handler, PrefectConsoleHandler):
                self._set(handler, "console", console)
                self._set(handler, "filters", [*handler.filters, _StoppedEcho(self)])
            elif isinstance(handler, logging.StreamHandler) and handler.stream in (
                    self.stream, sys.__stderr__):
                self._set(handler, "stream", _ProxyOf(self.stream))

    def _set(self, target: Any, name: str, value: Any) -> None:
        self._restore.append((target, name, getattr(target, name)))
        setattr(target, name, value)

    def stopping(self, interrupt: Interrupt) -> None:
        """Say what a stop request does, and what it is still waiting for."""
        self.stopped = True
        message = stop_message(interrupt, self._progress)
        if self._console is not None:
            self._console.print(message, soft_wrap=True)
        else:
            self.stream.write(message + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Take the bar down (its last state stays on screen) and give Prefect's handlers
        back what they had."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        for target, name, value in reversed(self._restore):
            setattr(target, name, value)
        self._restore.clear()
        if self._quieted:
            os.environ.pop(CONSOLE_LEVEL, None)
            self._quieted = False

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
            f"  {spent:<{width}}  ${result['spent_usd']:>6.2f}{in_all(result)}",
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


def in_all(result: dict[str, Any]) -> str:
    """"  this run; $8.05 in all on the target" when earlier runs spent on it too."""
    total = result.get("target_spent_usd")
    if total is None or total - result["spent_usd"] < 0.005:
        return ""
    return f"  this run; ${total:.2f} in all on the target"


class _Bar:
    """The bar as rich renders it: laid out anew for the width at each refresh."""

    def __init__(self, display: TerminalDisplay) -> None:
        self.display = display

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        progress = self.display._progress or Progress()
        # Two columns left free: the terminal's echo of ^C lands there instead of wrapping
        # to a line of its own (which would leave this line behind on screen).
        head, bar_width, tail = bar_parts(progress, options.max_width - ECHO_ROOM,
                                          stopping=self.display.stopped)
        grid = Table.grid(padding=(0, 1))
        cells: list[Any] = []
        if head:
            grid.add_column(no_wrap=True)
            cells.append(head)
        if bar_width:
            grid.add_column(width=bar_width, no_wrap=True)
            cells.append(ProgressBar(total=max(1, progress.total), completed=progress.done,
                                     width=bar_width))
        grid.add_column(no_wrap=True, overflow="ellipsis")
        cells.append(tail)
        grid.add_row(*cells)
        yield grid


def bar_parts(
    progress: Progress, width: int, *, stopping: bool = False
) -> tuple[str, int, str]:
    """(the job's name or "", the bar's width or 0, the figures) for a line of `width`
    cells: done/total, failed, the other final states, the cells not done (pending, skipped,
    not started), spend, rate, elapsed and ETA ("stopping"
    after a stop request), with the least useful left out first when they do not fit (the
    job, rate, elapsed, the bar); never wider than `width`."""
    if not progress.total:
        figures = [("reading the spec" if not progress.job else "no cells to run", 0)]
    else:
        ends = progress.other_done() + progress.not_done()
        eta = progress.eta_s()
        figures = [
            (f"{progress.done}/{progress.total}", 0),
            (f"{progress.failed} failed", 0),
            *((end, 1) for end in ends),
            (f"${progress.spent_usd:.2f}", 2),
            ("stopping" if stopping else f"ETA {clock(eta)}", 3),
            (f"{clock(progress.elapsed_s)} elapsed", 5),
            (f"{progress.per_min:.0f}/min", 7),
        ]
    head = (progress.job or "nbp")[:24]
    keep_head, keep_bar = True, True
    shown = list(figures)

    def length() -> int:
        text = len(SEPARATOR.join(f for f, _ in shown))
        return text + (len(head) + 1 if keep_head else 0) + (MIN_BAR + 1 if keep_bar else 0)

    # What goes first when it does not fit: rank 8 the job, 7 rate, 5 elapsed, 4 the bar,
    # 3 ETA, 2 spend, 1 the other counts; done/total and failed stay (cut at the width).
    for rank in range(8, 0, -1):
        if length() <= width:
            break
        if rank == 8:
            keep_head = False
        elif rank == 4:
            keep_bar = False
        else:
            shown = [(f, r) for f, r in shown if r < rank]
    tail = SEPARATOR.join(f for f, _ in shown)[: max(1, width)]
    bar_width = width - len(tail) - 1 - (len(head) + 1 if keep_head else 0) if keep_bar else 0
    return (head if keep_head else ""), max(0, bar_width), tail


class _StoppedEcho(logging.Filter):
    """Drops Prefect's "Finished in state Cancelled(...)" line, logged at ERROR, after a stop
    request on the terminal: the stop message and the summary say what happened; the line
    stays in the flow run's log in the UI."""

    def __init__(self, display: TerminalDisplay) -> None:
        super().__init__()
        self.display = display

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.display.stopped
                    and record.getMessage().startswith("Finished in state Cancelled"))


def _handlers() -> Iterator[logging.Handler]:
    """Every handler of every logger, once."""
    seen: set[int] = set()
    loggers: list[Any] = [logging.getLogger(),
                          *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if id(handler) not in seen:
                seen.add(id(handler))
                yield handler


def _same_terminal(one: Any, other: Any) -> bool:
    """Whether two streams are the same terminal (stdout's lines go above the bar then)."""
    try:
        return bool(one.isatty() and other.isatty()
                    and os.path.samestat(os.fstat(one.fileno()), os.fstat(other.fileno())))
    except (AttributeError, OSError, ValueError):
        return False


class _ProxyOf:
    """Writes to `sys.stderr` as it is at the time of writing (rich's proxy while the bar
    is up), for a logging handler that held `stream`."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


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
