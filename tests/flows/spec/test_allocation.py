"""The plan's estimate of where each routing sends the cells."""

from __future__ import annotations

import pytest

from nbp.flows.spec.allocation import LaneEstimate, allocate, meets
from nbp.flows.spec.rate import Rate

KIE = LaneEstimate("kie", 0.09, Rate(20, 10.0), 100, 20.0)         # 2 cells/s
KIE_2 = LaneEstimate("kie:KIE_API_KEY_2", 0.09, Rate(20, 10.0), 100, 20.0)
RUNWARE = LaneEstimate("runware", 0.138, None, 50, 20.0)          # 2.5 cells/s
LANES = [RUNWARE, KIE, KIE_2]


def test_fallback_puts_every_cell_on_the_first_channel() -> None:
    assert allocate("fallback", LANES, 1000) == [1000, 0, 0]


def test_spread_shares_by_throughput_and_loses_no_cell() -> None:
    counts = allocate("spread", LANES, 1001)
    assert sum(counts) == 1001
    assert counts[1] == pytest.approx(counts[2], abs=1)
    assert counts[0] == pytest.approx(1001 * 2.5 / 6.5, abs=1)


def test_cheapest_without_a_deadline_is_the_cheapest_channel_alone() -> None:
    assert allocate("cheapest", LANES, 1000) == [0, 1000, 0]


def test_cheapest_by_a_deadline_fills_the_cheap_channels_first() -> None:
    roomy = allocate("cheapest", LANES, 1000, deadline_s=3600)
    assert roomy == [0, 1000, 0]
    # 1000 cells at 2/s need ~510 s on one Kie account; 300 s: the second account joins
    counts = allocate("cheapest", LANES, 1000, deadline_s=300)
    assert counts[0] == 0 and sum(counts) == 1000 and counts[2] > 0
    assert meets(LANES, counts, 300)
    # 120 s: even both Kie accounts cannot; Runware takes the rest
    tight = allocate("cheapest", LANES, 1000, deadline_s=160)
    assert tight[0] > 0 and sum(tight) == 1000 and meets(LANES, tight, 160)


def test_an_impossible_deadline_spreads_as_fast_as_it_can() -> None:
    assert allocate("cheapest", LANES, 10_000, deadline_s=60) == allocate("spread", LANES, 10_000)
