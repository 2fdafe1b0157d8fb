"""What a person sees: on a terminal one bar that fits its width, every log line above it;
elsewhere a few plain lines; a summary at the end. The terminal tests run the real CLI under
a pseudo-terminal and replay what it wrote on a small terminal model (`Screen`)."""

from __future__ import annotations

import fcntl
import io
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from nbp.flows.display import TerminalDisplay, bar_parts
from nbp.flows.engine.progress import Progress
from tests.conftest import ROOT

BAR = re.compile(r"\d+/\d+ · \d+ failed")          # done/total · failed: the bar's figures
LOG = re.compile(r"\d\d:\d\d:\d\d\.\d{3} \| |^nbp: ")  # a Prefect log line, an nbp line


class Terminal(io.StringIO):
    """A text stream that says it is a terminal, as sys.stderr does in a shell."""

    def isatty(self) -> bool:
        return True


def counted(total: int, ok: int = 0, failed: int = 0, pending: int = 0) -> Progress:
    progress = Progress(total=total, job="cup-axes", started=time.monotonic() - 60)
    for status, n in (("succeeded", ok), ("failed", failed), ("pending", pending)):
        for _ in range(n):
            progress.finished(status, 0.09)
    return progress


@pytest.mark.parametrize("pending", [0, 6])
@pytest.mark.parametrize("width", [160, 80, 60, 40, 24])
def test_the_bar_fits_the_width_and_keeps_done_and_failed(width: int, pending: int) -> None:
    head, bar, tail = bar_parts(counted(300, ok=120, failed=3, pending=pending), width)
    used = (len(head) + 1 if head else 0) + (bar + 1 if bar else 0) + len(tail)
    assert used <= width
    assert tail.startswith("123/300 · 3 failed")  # pending cells are not done
    if width == 160:
        assert head == "cup-axes" and bar >= 10 and "· elapsed" not in tail
        assert tail.endswith("/min") and " · ETA " in tail and " elapsed · " in tail
    if width == 80:  # the job's name goes first, then the rate
        assert bar >= 10 and f" · ${(123 + pending) * 0.09:.2f} · ETA " in tail
        assert " elapsed" in tail
        assert ("/min" in tail) == (not pending)


def test_pending_cells_are_their_own_count_never_success_nor_done() -> None:
    progress = counted(6, pending=6)
    assert progress.line().startswith("0/6 done: 0 ok, 0 failed · 6 pending ·")
    assert bar_parts(progress, 120)[2].startswith("0/6 · 0 failed · 6 pending · ")


def test_after_a_stop_done_counts_only_cells_in_a_final_state() -> None:
    """Seen before: 64/64 done with 10 ok after a Ctrl-C (pending and skipped cells counted
    as done, the cells never reached not shown at all)."""
    progress = counted(64, ok=10, failed=1, pending=3)
    for _ in range(40):
        progress.finished("skipped", 0.0)
    progress.finished("uncertain", 0.09)
    progress.in_flight = 2
    assert "not started" not in progress.line()  # before a stop: queued, not "not started"
    progress.stop()
    assert (progress.done, progress.not_started) == (12, 7)
    assert progress.line().startswith(
        "12/64 done: 10 ok, 1 failed, 1 uncertain · 3 pending · 40 skipped · 7 not started · "
        "2 in flight · ")
    counts = "12/64 · 1 failed · 1 uncertain · 3 pending · 40 skipped · 7 not started"
    assert bar_parts(progress, 120, stopping=True)[2].startswith(counts + " · $1.35 · stopping")
    head, bar, tail = bar_parts(progress, 78, stopping=True)  # 80 columns: the counts stay
    assert (head, bar, tail) == ("", 0, counts)


def test_a_pipe_gets_no_bar() -> None:
    stream = io.StringIO()
    display = TerminalDisplay(stream)
    progress = Progress(total=1, listeners=[display.update])
    progress.finished("succeeded", 0.09)
    display.close()
    assert stream.getvalue() == ""


def test_a_terminal_gets_the_bar_and_prefect_its_console_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bar puts Prefect's console handlers through its own console at WARNING; closing
    gives them back their console and level."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    monkeypatch.delenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", raising=False)
    handler = PrefectConsoleHandler(stream=io.StringIO())
    logging.getLogger("nbp-test-display").addHandler(handler)
    before = handler.console
    try:
        stream = Terminal()
        display = TerminalDisplay(stream)
        assert os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] == "WARNING"
        progress = Progress(total=3, job="demo", listeners=[display.update])
        progress.finished("succeeded", 0.09)
        assert handler.console is not before and handler.level == logging.WARNING
        progress.finished("failed", 0.0)
        progress.finished("succeeded", 0.09)
        display.close()
        assert handler.console is before and handler.level == logging.NOTSET
        assert "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL" not in os.environ
        assert "3/3 · 1 failed · $0.18" in stream.getvalue()
    finally:
        logging.getLogger("nbp-test-display").removeHandler(handler)


def test_the_summary_table_names_counts_spend_and_where_things_are() -> None:
    summary = TerminalDisplay.summary({
        "job": "demo", "run_id": "abc", "counts": {"succeeded": 17, "failed": 1},
        "spent_usd": 1.53, "manifest": "/t/manifest.parquet", "gallery": "/t/index.html",
        "stop_reason": "budget of $1.60 reached",
    })
    assert "succeeded       17" in summary and "failed           1" in summary
    assert "$  1.53" in summary and "/t/index.html" in summary and "budget" in summary
    assert "in all" not in summary  # no figure for the target: nothing more to say


def test_the_summary_names_the_target_s_spend_when_earlier_runs_spent_too() -> None:
    result = {"job": "demo", "run_id": "abc", "counts": {"succeeded": 64}, "spent_usd": 3.02,
              "target_spent_usd": 8.05, "manifest": "m", "gallery": "g"}
    assert "  spent      $  3.02  this run; $8.05 in all on the target\n" in (
        TerminalDisplay.summary(result))
    alone = TerminalDisplay.summary({**result, "target_spent_usd": 3.02})
    assert "  spent      $  3.02\n" in alone and "in all" not in alone


# -- the real CLI ---------------------------------------------------------------------------


class Screen:
    """Just enough of a VT100 to see what a person would see: text that wraps at `width`
    (xterm's pending wrap), CR, LF, backspace, cursor up, erase in line; colours and other
    controls ignored. `lines()`: the scrollback and the screen, top to bottom."""

    TOKEN = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])|\x1b.|[\r\n\b]|[^\x1b\r\n\b]")

    def __init__(self, width: int) -> None:
        self.width = width
        self.rows: list[list[str]] = [[]]
        self.row = self.col = 0

    def feed(self, text: str) -> None:
        for token in self.TOKEN.finditer(text):
            char, (params, final) = token.group(0), token.group(1, 2)
            if final:
                self._control(params, final)
            elif char == "\r":
                self.col = 0
            elif char == "\n":
                self._down()
            elif char == "\b":
                self.col = max(0, self.col - 1)
            elif not char.startswith("\x1b") and char.isprintable():
                self._put(char)

    def _control(self, params: str, final: str) -> None:
        n = int(params) if params.isdigit() else None
        if final == "A":
            self.row = max(0, self.row - (n or 1))
        elif final == "K":
            line = self.rows[self.row]
            del line[(0 if n == 2 else self.col if not n else 0):]
            if n == 1:
                self.rows[self.row] = [" "] * self.col + line[self.col:]
        elif final == "G":
            self.col = (n or 1) - 1

    def _down(self) -> None:
        self.row += 1
        if self.row == len(self.rows):
            self.rows.append([])

    def _put(self, char: str) -> None:
        if self.col >= self.width:  # the pending wrap
            self._down()
            self.col = 0
        line = self.rows[self.row]
        line.extend(" " * (self.col + 1 - len(line)))
        line[self.col] = char
        self.col += 1

    def lines(self) -> list[str]:
        return ["".join(row).rstrip() for row in self.rows]


class PseudoTerminal:
    """`nbp` on a pseudo-terminal of `width` columns that is its controlling terminal (as in
    a shell: ^C typed there is SIGINT to it); everything it writes is kept."""

    def __init__(self, args: list[str], env: dict[str, str], width: int = 80) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, width, 0, 0))
        self.master, self.width = master, width
        self.child = subprocess.Popen(
            [sys.executable, "-m", "nbp.flows.cli", *args], cwd=ROOT, env=env,
            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.output: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the child and its terminal are gone
                return
            if not data:
                return
            self.output.append(data.decode("utf-8", "replace"))

    def text(self) -> str:
        return "".join(self.output)

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self, timeout: float = 120) -> int:
        code = self.child.wait(timeout=timeout)
        self.reader.join(timeout=10)
        os.close(self.master)
        return code

    def screen(self) -> list[str]:
        screen = Screen(self.width)
        screen.feed(self.text())
        return screen.lines()


def cli_env(prefect_api_url: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "TERM": "xterm-256color",
           "PREFECT_LOGGING_LEVEL": "INFO", **extra}
    for name in ("PYTEST_CURRENT_TEST", "COLUMNS", "LINES",
                 "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"):
        env.pop(name, None)
    return env


def spec_file(tmp_path: Path, cells: int, **changes: Any) -> Path:
    spec: dict[str, Any] = {
        "version": 1, "name": "cup-axes", "provider": "kie",
        "matrix": {"prompt": ["a cup {n}"], "n": list(range(cells))},
        "output": {"target": str(tmp_path / "out")},
        "budget": {"max_usd": 100},
        **changes,
    }
    path = tmp_path / "cup-axes.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def bar_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if BAR.search(line)]


@pytest.mark.prefect
def test_on_an_80_column_terminal_the_bar_is_one_line_and_logs_stay_above_it(
    prefect_api_url: str, tmp_path: Path
) -> None:
    """Before: every redraw wrapped and scrolled at 80 columns (133 bar lines for 300
    cells), and Prefect's lines were appended to the bar's line at 160."""
    spec = spec_file(tmp_path, 40, limits={"kie": {"rate": "20/2s"}})
    term = PseudoTerminal(["run", str(spec), "--emulate", "--emulator-latency", "0.3",
                           "--chunk-size", "10"], cli_env(prefect_api_url))
    assert term.wait() == 0, term.text()[-3000:]
    lines = term.screen()
    assert len(bar_lines(lines)) == 1, "\n".join(lines)  # redrawn in place, never scrolled
    (bar,) = bar_lines(lines)
    assert "40/40 · 0 failed · $3.60" in bar
    assert len(bar) <= 78 and "ETA" in bar and "elapsed" in bar
    assert term.text().count("\r") > 3  # it was redrawn as the run went
    assert not [line for line in lines if BAR.search(line) and LOG.search(line)]
    assert "Beginning flow run" not in term.text()  # Prefect's routine INFO stays in the UI
    assert any(line.startswith("job cup-axes  run ") for line in lines)


@pytest.mark.prefect
def test_ctrl_c_on_the_terminal_stops_with_130_and_prints_above_the_bar(
    prefect_api_url: str, tmp_path: Path
) -> None:
    """^C typed on the terminal (SIGINT to nbp, and the terminal echoes "^C"): the stop
    message and Prefect's Cancelled line go above the bar, the bar is one line, the run
    exits 130 with its manifest written. The bar's done counts only the cells that reached
    a final state (it said 60/60 with 10 ok before): the created tasks left running are
    pending, the cells never reached not started, each a count of its own."""
    spec = spec_file(tmp_path, 60, limits={"kie": {"rate": "6/1s"}})
    term = PseudoTerminal(["run", str(spec), "--emulate", "--emulator-latency", "2"],
                          cli_env(prefect_api_url))
    deadline = time.monotonic() + 90
    while not re.search(r"\b([3-9]|\d\d)/60 · ", term.text()):
        assert time.monotonic() < deadline and term.child.poll() is None, term.text()[-2000:]
        time.sleep(0.1)
    term.type(b"\x03")
    assert term.wait() == 130, term.text()[-3000:]
    lines = term.screen()
    assert len(bar_lines(lines)) == 1, "\n".join(lines)
    assert not [line for line in lines if BAR.search(line) and LOG.search(line)]
    stop = next(i for i, line in enumerate(lines) if line.startswith("nbp: SIGINT: stopping"))
    assert stop < lines.index(bar_lines(lines)[0])
    (bar,) = bar_lines(lines)
    assert "stopping" in bar and len(bar) <= 78
    frame = pl.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert frame.height == 60 and set(frame["status"]) <= {"succeeded", "pending", "skipped"}
    ok, pending, skipped = (frame.filter(pl.col("status") == status).height
                            for status in ("succeeded", "pending", "skipped"))
    assert pending, "a stop leaves created tasks running: the test needs some"
    counts = [f"{ok}/60", "0 failed", f"{pending} pending"]
    counts += [f"{skipped} skipped"] if skipped else []  # queued: nothing was sent
    left = 60 - ok - pending - skipped
    counts += [f"{left} not started"] if left else []
    assert " · ".join(counts) + " · " in bar
    assert "Finished in state Cancelled" not in term.text()  # Prefect's ERROR line: the UI's
    assert "Traceback" not in term.text()


@pytest.mark.prefect
def test_output_that_is_not_a_terminal_gets_a_few_plain_lines(
    prefect_api_url: str, tmp_path: Path
) -> None:
    """A pipe (CI, `| tee`): no bar, no control characters; the flow's progress line every
    10 s or 10 % of the cells, not one per cell."""
    spec = spec_file(tmp_path, 100, limits={"kie": {"rate": "50/1s"}})  # not Kie's 20/10 s
    done = subprocess.run(
        [sys.executable, "-m", "nbp.flows.cli", "run", str(spec), "--emulate",
         "--emulator-latency", "0.2"],
        cwd=ROOT, env=cli_env(prefect_api_url), capture_output=True, text=True, timeout=180,
        start_new_session=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "\r" not in done.stderr and "\x1b[" not in done.stderr
    progress = [line for line in done.stderr.splitlines() if "/100 done: " in line]
    assert 1 <= len(progress) <= 12, done.stderr
    assert "100/100 done: 100 ok, 0 failed · 0 in flight · $9.00 would cost" in progress[-1]
    assert [line for line in progress if "100/100 done" in line] == progress[-1:]  # said once
    assert len(done.stderr.splitlines()) <= 20, done.stderr



@pytest.mark.prefect
def test_after_ctrl_c_the_plain_lines_and_the_progress_artifact_count_only_final_cells(
    prefect_api_url: str, tmp_path: Path
) -> None:
    """Output piped, Ctrl-C: the last plain line and Prefect's progress artifact say how
    many cells are done (a final state), and pending, skipped and not started apart; the
    artifact's share is of the cells done (it was 100 % with most cells pending before)."""
    from tests.flows.orchestration.test_flow import flow_run_and_artifacts

    spec = spec_file(tmp_path, 60, limits={"kie": {"rate": "6/1s"}})
    child = subprocess.Popen(
        [sys.executable, "-m", "nbp.flows.cli", "run", str(spec), "--emulate",
         "--emulator-latency", "2"],
        cwd=ROOT, env=cli_env(prefect_api_url), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    err: list[str] = []
    stderr = child.stderr
    assert stderr is not None
    reader = threading.Thread(target=lambda: err.extend(stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 90
    while not any("/60 done: " in line for line in err):  # the first plain line
        assert time.monotonic() < deadline and child.poll() is None, "".join(err)[-2000:]
        time.sleep(0.1)
    os.killpg(child.pid, signal.SIGINT)  # as a terminal's ^C does
    assert child.wait(timeout=90) == 130, "".join(err)[-3000:]
    reader.join(timeout=10)
    frame = pl.read_parquet(tmp_path / "out" / "manifest.parquet")
    ok, pending, skipped = (frame.filter(pl.col("status") == status).height
                            for status in ("succeeded", "pending", "skipped"))
    assert pending, "a stop leaves created tasks running: the test needs some"
    left = 60 - ok - pending - skipped
    counts = [f"{ok}/60 done: {ok} ok, 0 failed", f"{pending} pending"]
    counts += [f"{skipped} skipped"] if skipped else []
    counts += [f"{left} not started"] if left else []
    expected = " · ".join(counts) + " · 0 in flight · "
    last = [line for line in err if "/60 done: " in line][-1]
    assert expected in last, last
    _, artifacts = flow_run_and_artifacts(spec)
    progress = artifacts["nbp-progress-cup-axes"]
    assert progress.description.startswith(f"stopped by SIGINT: {expected}")
    assert progress.data == pytest.approx(100.0 * ok / 60)
