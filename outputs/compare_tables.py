"""`nbp compare`'s figures by axis: per value of each `--by` axis (and overall), per side.

    tables = axis_tables(a_cells, b_cells, pairs, by=("style",))
    print(render_tables(tables))

For each group of cells (one value of one axis on one side): its cells, cost per image (the
group's cost, every row's `cost_usd`, over its succeeded images), p50 and p95 latency of its
succeeded cells, failure rate (failed cells over cells); and for the value, over both sides,
how many of its pairs are changed (of the pairs in both sides: changed and same).

Figures from elsewhere (ratings: mean stars, pass rate, preference share) join by cell id:
each `CellFigures` adds columns to every group, aggregated by its own expressions:

    stars = CellFigures(pl.DataFrame({"cell_id": [...], "stars": [...]}),
                        {"mean stars": pl.col("stars").mean()})
    axis_tables(a_cells, b_cells, pairs, by=("style",), extra=[stars])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

OVERALL = "overall"  # the table of every cell: its one value is OVERALL too
# The columns a side's cells need (beside their axis values).
CELL_COLUMNS = ("cell_id", "status", "cost_usd", "latency_s")


@dataclass(frozen=True)
class CellFigures:
    """Per-cell figures from elsewhere, joined to each side's cells by `cell_id`: `frame`
    holds `cell_id` and the per-cell columns, `aggregations` names each table column and
    the expression that aggregates a group's cells into it. `b_frame`: side B's own figures
    when they come from another place than A's (each target keeps its own reviews); None:
    `frame` serves both sides."""

    frame: pl.DataFrame
    aggregations: Mapping[str, pl.Expr]
    b_frame: pl.DataFrame | None = None

    def of(self, side: int) -> pl.DataFrame:
        """Side A's (0) or B's (1) figures."""
        return self.b_frame if side == 1 and self.b_frame is not None else self.frame


@dataclass(frozen=True)
class Figures:
    """One side's cells of one group."""

    cells: int
    succeeded: int
    failed: int
    cost_usd: float                    # every row's cost_usd, nulls as 0
    cost_per_image: float | None       # cost_usd / succeeded (None: no image)
    p50_latency_s: float | None        # of succeeded cells
    p95_latency_s: float | None
    failure_rate: float | None         # failed / cells (None: no cell)
    extra: Mapping[str, Any] = field(default_factory=dict)  # CellFigures' columns

    def to_json(self) -> dict[str, Any]:
        return {"cells": self.cells, "succeeded": self.succeeded, "failed": self.failed,
                "cost_usd": round(self.cost_usd, 6),
                "cost_per_image": _rounded(self.cost_per_image, 6),
                "p50_latency_s": _rounded(self.p50_latency_s, 3),
                "p95_latency_s": _rounded(self.p95_latency_s, 3),
                "failure_rate": _rounded(self.failure_rate, 4), **self.extra}


NO_CELLS = Figures(0, 0, 0, 0.0, None, None, None, None)


@dataclass(frozen=True)
class TableRow:
    value: str | None       # the axis value (None: cells without it)
    a: Figures
    b: Figures
    paired: int             # pairs with this value in both sides (changed + same)
    changed: int

    @property
    def share_changed(self) -> float | None:
        return self.changed / self.paired if self.paired else None

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "a": self.a.to_json(), "b": self.b.to_json(),
                "paired": self.paired, "changed": self.changed,
                "share_changed": _rounded(self.share_changed, 4)}


@dataclass(frozen=True)
class AxisTable:
    axis: str                        # an axis of `--by`, or OVERALL
    rows: tuple[TableRow, ...]       # values in order of first appearance, A's then B's

    def to_json(self) -> dict[str, Any]:
        return {"axis": self.axis, "rows": [row.to_json() for row in self.rows]}


def axis_tables(
    a_cells: pl.DataFrame, b_cells: pl.DataFrame, pairs: pl.DataFrame, by: Sequence[str],
    extra: Sequence[CellFigures] = (),
) -> tuple[AxisTable, ...]:
    """The overall table, then one per axis of `by`. `a_cells` and `b_cells`: each side's
    rows (CELL_COLUMNS and a String column per axis of `by`); `pairs`: every pair's `kind`
    and, with `by`, its `key` (a struct of the axis values)."""
    sides = [_with_extra(cells, extra, side) for side, cells in enumerate((a_cells, b_cells))]
    aggregations = {name: expr for figures in extra for name, expr in figures.aggregations.items()}
    kinds = pairs.select(
        "kind", *(pl.col("key").struct.field(axis) for axis in by)
    ).filter(pl.col("kind").is_in(["changed", "same"]))
    overall = [cells.with_columns(pl.lit(OVERALL).alias(OVERALL)) for cells in sides]
    tables = [_table(OVERALL, overall, kinds.with_columns(pl.lit(OVERALL).alias(OVERALL)),
                     aggregations)]
    tables += [_table(axis, sides, kinds, aggregations) for axis in by]
    return tuple(tables)


def _with_extra(cells: pl.DataFrame, extra: Sequence[CellFigures], side: int) -> pl.DataFrame:
    for figures in extra:
        cells = cells.join(figures.of(side), on="cell_id", how="left")
    return cells


def _table(axis: str, sides: Sequence[pl.DataFrame], kinds: pl.DataFrame,
           aggregations: Mapping[str, pl.Expr]) -> AxisTable:
    figures = [_figures(cells, axis, aggregations) for cells in sides]
    counted = kinds.group_by(axis).agg(paired=pl.len(),
                                       changed=(pl.col("kind") == "changed").sum())
    by_value = {value: (int(paired), int(changed)) for value, paired, changed in
                counted.iter_rows()}
    values = list(dict.fromkeys([*figures[0], *figures[1], *by_value]))
    rows = tuple(
        TableRow(value, figures[0].get(value, NO_CELLS), figures[1].get(value, NO_CELLS),
                 *by_value.get(value, (0, 0)))
        for value in values
    )
    return AxisTable(axis, rows)


def _figures(cells: pl.DataFrame, axis: str,
             aggregations: Mapping[str, pl.Expr]) -> dict[str | None, Figures]:
    succeeded = pl.col("status") == "succeeded"
    latency = pl.col("latency_s").filter(succeeded)
    grouped = cells.group_by(axis, maintain_order=True).agg(
        pl.len().alias("_cells"), succeeded.sum().alias("_succeeded"),
        (pl.col("status") == "failed").sum().alias("_failed"),
        pl.col("cost_usd").fill_null(0.0).sum().alias("_cost"),
        latency.quantile(0.5, "linear").alias("_p50"),
        latency.quantile(0.95, "linear").alias("_p95"),
        *(expr.alias(name) for name, expr in aggregations.items()),
    )
    found = {}
    for row in grouped.iter_rows(named=True):
        n, ok, cost = int(row["_cells"]), int(row["_succeeded"]), float(row["_cost"])
        found[row[axis]] = Figures(
            cells=n, succeeded=ok, failed=int(row["_failed"]), cost_usd=cost,
            cost_per_image=cost / ok if ok else None,
            p50_latency_s=row["_p50"], p95_latency_s=row["_p95"],
            failure_rate=row["_failed"] / n if n else None,
            extra={name: row[name] for name in aggregations},
        )
    return found


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# -- text --------------------------------------------------------------------------------------


def render_tables(tables: Iterable[AxisTable]) -> str:
    """The tables as aligned plain text, each figure as `A → B` (– where a side has no
    cell or no such figure)."""
    blocks = []
    for table in tables:
        extra = list(table.rows[0].a.extra) if table.rows else []
        header = [f"by {table.axis}" if table.axis != OVERALL else OVERALL, "cells", "$/image",
                  "p50 latency", "p95 latency", "failed", *extra, "changed"]
        lines = [header]
        for row in table.rows:
            lines.append([
                value_text(row.value) if table.axis != OVERALL else "",
                _both(row, lambda f: str(f.cells)),
                _both(row, lambda f: usd(f.cost_per_image, 3)),
                _both(row, lambda f: seconds(f.p50_latency_s)),
                _both(row, lambda f: seconds(f.p95_latency_s)),
                _both(row, lambda f: percent(f.failure_rate)),
                *(_both(row, lambda f, n=name: figure(f.extra.get(n))) for name in extra),
                f"{row.changed} of {row.paired}" if row.paired else "–",
            ])
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        blocks.append("\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths,
                                                                           strict=True)).rstrip()
                                for line in lines))
    return "\n\n".join(blocks)


def _both(row: TableRow, text: Any) -> str:
    a, b = text(row.a) if row.a.cells else "–", text(row.b) if row.b.cells else "–"
    return f"{a} → {b}"


def value_text(value: str | None, limit: int = 40) -> str:
    """An axis value as a table shows it: cut to `limit` characters; – for none."""
    if value is None:
        return "–"
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def usd(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"${value:.{digits}f}"


def seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} s"


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def figure(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if isinstance(value, float) else str(value)
