"""What a person sees: a live line on a terminal, nothing extra elsewhere, a summary at the end."""

from __future__ import annotations

import io

from nbp.flows.display import TerminalDisplay
from nbp.flows.engine.progress import Progress


class Terminal(io.StringIO):
    """A text stream that says it is a terminal, as sys.stderr does in a shell."""

    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_live_line_with_counts_and_spend() -> None:
    stream = Terminal()
    display = TerminalDisplay(stream)
    progress = Progress(total=3, listeners=[display.update])
    progress.in_flight = 1
    progress.finished("succeeded", 0.09)
    progress.finished("failed", 0.0)
    progress.finished("succeeded", 0.09)
    display.close()
    text = stream.getvalue()
    assert "\r[" in text and text.endswith("\n")
    assert "3/3 done (2 ok, 1 failed, 0 skipped)" in text and "$0.18 spent" in text


def test_a_pipe_gets_no_live_line() -> None:
    stream = io.StringIO()
    display = TerminalDisplay(stream)
    progress = Progress(total=1, listeners=[display.update])
    progress.finished("succeeded", 0.09)
    display.close()
    assert stream.getvalue() == ""


def test_the_summary_table_names_counts_spend_and_where_things_are() -> None:
    summary = TerminalDisplay.summary({
        "job": "demo", "run_id": "abc", "counts": {"succeeded": 17, "failed": 1},
        "spent_usd": 1.53, "manifest": "/t/manifest.parquet", "gallery": "/t/index.html",
        "stop_reason": "budget of $1.60 reached",
    })
    assert "succeeded       17" in summary and "failed           1" in summary
    assert "$  1.53" in summary and "/t/index.html" in summary and "budget" in summary
