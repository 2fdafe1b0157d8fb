"""`nbp compare`'s figures by axis: cost per image, latency percentiles, failure rate, share
changed, per value and side, and columns from elsewhere joined by cell id."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from nbp.outputs.compare_tables import (
    OVERALL,
    CellFigures,
    axis_tables,
    render_tables,
)


def cells(*rows: tuple[str, str, str, float | None, float | None]) -> pl.DataFrame:
    """(cell_id, style, status, cost_usd, latency_s) rows."""
    return pl.DataFrame(rows, schema={"cell_id": pl.String, "style": pl.String,
                                      "status": pl.String, "cost_usd": pl.Float64,
                                      "latency_s": pl.Float64}, orient="row")


A = cells(("a1", "ink", "succeeded", 0.10, 1.0), ("a2", "ink", "succeeded", 0.10, 3.0),
          ("a3", "ink", "failed", 0.05, None), ("a4", "photo", "succeeded", 0.10, 2.0))
B = cells(("b1", "ink", "succeeded", 0.20, 4.0), ("b2", "ink", "failed", None, None),
          ("b3", "ink", "failed", None, None), ("b5", "mood", "skipped", None, None))
PAIRS = pl.DataFrame({
    "kind": ["changed", "changed", "same", "only_a", "only_b"],
    "key": [{"style": "ink"}, {"style": "ink"}, {"style": "ink"}, {"style": "photo"},
            {"style": "mood"}],
})


def by_value(table: Any) -> dict[str | None, Any]:
    return {row.value: row for row in table.rows}


def test_figures_per_value_and_side() -> None:
    overall, style = axis_tables(A, B, PAIRS, ["style"])
    assert (overall.axis, style.axis) == (OVERALL, "style")
    assert list(by_value(style)) == ["ink", "photo", "mood"]  # A's order, then B's
    ink = by_value(style)["ink"]
    assert (ink.a.cells, ink.a.succeeded, ink.a.failed) == (3, 2, 1)
    assert ink.a.cost_per_image == pytest.approx(0.25 / 2)  # the failure's cost counts
    assert (ink.a.p50_latency_s, ink.a.p95_latency_s) == (2.0, pytest.approx(2.9))
    assert ink.a.failure_rate == pytest.approx(1 / 3)
    assert (ink.b.cost_per_image, ink.b.failure_rate) == (0.2, pytest.approx(2 / 3))
    assert (ink.paired, ink.changed, ink.share_changed) == (3, 2, pytest.approx(2 / 3))
    photo, mood = by_value(style)["photo"], by_value(style)["mood"]
    assert (photo.b.cells, photo.b.cost_per_image, photo.paired, photo.share_changed) == (
        0, None, 0, None)
    assert (mood.b.cells, mood.b.cost_per_image, mood.b.failure_rate) == (1, None, 0.0)
    (whole,) = overall.rows
    assert (whole.a.cells, whole.b.cells, whole.paired, whole.changed) == (4, 4, 3, 2)
    assert whole.to_json()["a"]["cost_per_image"] == pytest.approx(0.35 / 3, abs=1e-6)


def test_columns_from_elsewhere_join_by_cell_id() -> None:
    """The place ratings go: per-cell figures, aggregated per group by their own
    expressions."""
    stars = CellFigures(pl.DataFrame({"cell_id": ["a1", "a2", "b1"], "stars": [5, 3, 1]}),
                        {"mean stars": pl.col("stars").mean()})
    _, style = axis_tables(A, B, PAIRS, ["style"], extra=[stars])
    ink = by_value(style)["ink"]
    assert (ink.a.extra, ink.b.extra) == ({"mean stars": 4.0}, {"mean stars": 1.0})
    assert by_value(style)["photo"].a.extra == {"mean stars": None}
    assert ink.to_json()["a"]["mean stars"] == 4.0
    text = render_tables([style])
    assert "mean stars" in text.splitlines()[0]
    assert "4.00 → 1.00" in text


def test_the_tables_as_text() -> None:
    text = render_tables(axis_tables(A, B, PAIRS, ["style"]))
    overall, style = text.split("\n\n")
    assert overall.splitlines()[1].split("  ")[0].strip() == ""
    lines = style.splitlines()
    assert lines[0].split() == ["by", "style", "cells", "$/image", "p50", "latency", "p95",
                                "latency", "failed", "changed"]
    assert lines[1].split() == ["ink", "3", "→", "3", "$0.125", "→", "$0.200", "2.0", "s",
                                "→", "4.0", "s", "2.9", "s", "→", "4.0", "s", "33%", "→",
                                "67%", "2", "of", "3"]
    assert lines[2].split()[:4] == ["photo", "1", "→", "–"] and lines[2].endswith("–")
