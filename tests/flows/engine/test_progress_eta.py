"""The ETA's pace (`Progress.eta_s`): waves of tasks in flight end together, and the ETA
must follow the run's pace, not a burst's; and when a plain line is due (`Beat`)."""

from __future__ import annotations

import time

import pytest

from nbp.flows.engine.progress import Beat, Progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "monotonic", fake)  # progress.py reads time.monotonic()
    return fake


def wave(progress: Progress, clock: Clock, cells: int, seconds: float) -> None:
    """`cells` tasks that ran together end within 0.1 s, `seconds` after the last wave."""
    clock.now += seconds
    for _ in range(cells):
        clock.now += 0.1 / cells
        progress.finished("succeeded", 0.1)


def test_the_first_wave_is_paced_from_the_start_not_by_its_burst(clock: Clock) -> None:
    """160 cells, 50 in flight, 8 s each: after the first 19 ended (9 s in), ~1 min is left.
    Before: the pace came from the 19 ends alone (0.04 s), an ETA of 0.3 s."""
    run = Progress(total=160, started=clock.now)
    wave(run, clock, 19, 9.0)
    eta = run.eta_s()
    assert eta is not None and 55 < eta < 75


def test_a_long_run_follows_its_recent_pace(clock: Clock) -> None:
    """Waves of 50 every 8 s for minutes, then the provider slows to 16 s a wave: the ETA
    follows within a window of 30 s, and it never reads a single burst as the pace."""
    run = Progress(total=2000, started=clock.now)
    for _ in range(20):
        wave(run, clock, 50, 8.0)
        eta = run.eta_s()
        assert eta is not None
        left = 2000 - run.ended
        assert 0.6 * left * 8 / 50 < eta < 1.6 * left * 8 / 50
    for _ in range(6):
        wave(run, clock, 50, 16.0)
    eta = run.eta_s()
    left = 2000 - run.ended
    assert eta is not None and 0.8 * left * 16 / 50 < eta < 1.2 * left * 16 / 50


def test_no_beat_once_every_cell_has_ended(clock: Clock) -> None:
    """The flow's last line ("job: 18/18 done ...") says the end; a beat at the same moment
    printed it twice (seen in `make demo`)."""
    run, beat = Progress(total=18, started=clock.now), Beat()
    wave(run, clock, 17, 1.0)
    assert beat.due(run)                     # 17 of 18: a step of 10 % and more
    wave(run, clock, 1, 20.0)
    assert not beat.due(run)                 # 18 of 18, 20 s later: the last line's
