"""`nbp status TARGET`: what a job's manifest says, in a few lines.

    summary = summarise(read_manifest(Sink(target)))
    print(render_status(summary))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from nbp.outputs.layout import HISTORY_DIR
from nbp.outputs.manifest import STATUSES, conform_lazy, is_key_column

MAX_FAILURE_GROUPS = 10
MAX_MESSAGE_CHARS = 200
EXAMPLE_CELLS = 3
PERCENTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class FailureGroup:
    """Cells that did not succeed for the same reason."""

    status: str
    error_code: str | None
    error_message: str | None
    count: int
    cell_ids: tuple[str, ...]  # a few examples


@dataclass(frozen=True)
class PendingBatch:
    """A batch job (gemini-batch) whose cells a run left pending: the next run collects it."""

    name: str               # its `task_group`: "batches/<id>"
    cells: int
    submitted_at: datetime | None  # its oldest cell's submission

    def age_s(self, now: datetime | None = None) -> float | None:
        if self.submitted_at is None:
            return None
        return ((now or datetime.now(UTC)) - self.submitted_at).total_seconds()


@dataclass(frozen=True)
class Summary:
    cells: int
    by_status: dict[str, int]  # every status in STATUSES (0 when absent), then any others
    spend_usd: float
    jobs: tuple[str, ...] = ()
    runs: int = 0
    by_provider: dict[str, int] = field(default_factory=dict)
    latency_s: dict[str, float] = field(default_factory=dict)  # "p50", "p90", "p99", "max"
    failures: tuple[FailureGroup, ...] = ()  # largest group first, at most MAX_FAILURE_GROUPS
    failure_groups: int = 0  # groups in total (more than `failures` holds when truncated)
    pending_batches: tuple[PendingBatch, ...] = ()  # oldest first
    emulated: int = 0  # cells that ran against the local emulators: placeholders, not paid
    stale: int = 0       # cells the job's spec no longer produces (their images are kept)
    superseded: int = 0  # cells whose path a newer cell took (their images are history)
    products: int = 0    # distinct dataset keys of the current cells (0: no dataset.key)
    complete: int = 0    # ... whose every current cell succeeded
    incomplete: tuple[tuple[str, int, int], ...] = ()  # a few: (key, succeeded, cells)

    @property
    def succeeded(self) -> int:
        return self.by_status.get("succeeded", 0)

    @property
    def failed(self) -> int:
        return self.by_status.get("failed", 0)

    def to_json(self) -> dict[str, Any]:
        """A JSON object of every field (`nbp status --json`)."""
        return {
            "cells": self.cells, "by_status": dict(self.by_status),
            "spend_usd": round(self.spend_usd, 6), "jobs": list(self.jobs), "runs": self.runs,
            "by_provider": dict(self.by_provider), "latency_s": dict(self.latency_s),
            "failures": [asdict(group) | {"cell_ids": list(group.cell_ids)}
                         for group in self.failures],
            "failure_groups": self.failure_groups,
            "pending_batches": [
                {"name": b.name, "cells": b.cells,
                 "submitted_at": b.submitted_at.isoformat() if b.submitted_at else None,
                 "age_s": _rounded(b.age_s())}
                for b in self.pending_batches
            ],
            "emulated": self.emulated, "stale": self.stale, "superseded": self.superseded,
            "products": self.products, "products_complete": self.complete,
            "products_incomplete": [{"key": k, "succeeded": ok, "cells": n}
                                    for k, ok, n in self.incomplete],
        }

    def products_line(self) -> str | None:
        """Completeness per product, when the cells have a dataset key."""
        if not self.products:
            return None
        line = f"products: {self.complete} of {self.products} complete"
        if self.incomplete:
            line += " (not: " + ", ".join(f"{key} {ok}/{cells}"
                                          for key, ok, cells in self.incomplete) + ")"
        return line


def summarise(manifest: pl.DataFrame | pl.LazyFrame) -> Summary:
    """Cells by status and provider, spend, latency percentiles of succeeded cells, and the
    reasons of every cell that did not succeed, grouped by (status, error_code, message).

    A lazy frame (a scanned Parquet file) is read only for the columns and aggregates these
    need: a run's gallery summarises a 100,000-row manifest without loading it."""
    df = conform_lazy(manifest.lazy())
    status_counts, providers, totals, latency, groups, batches = pl.collect_all([
        df.group_by("status").len(),
        df.filter(pl.col("provider").is_not_null()).group_by("provider").len(),
        df.select(
            pl.len().alias("cells"),
            pl.col("cost_usd").fill_null(0.0).sum().alias("spend"),
            pl.col("run_id").drop_nulls().n_unique().alias("runs"),
            pl.col("emulated").fill_null(False).sum().alias("emulated"),
            pl.col("stale").fill_null(False).sum().alias("stale"),
            pl.col("superseded_by").is_not_null().sum().alias("superseded"),
        ),
        _latency(df),
        _failure_groups(df),
        _pending_batches(df),
    ])
    products = _products(manifest.lazy())
    counts = dict(status_counts.iter_rows())
    by_status = {status: int(counts.pop(status, 0)) for status in STATUSES}
    by_status.update({str(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))})
    jobs = df.select(pl.col("job").drop_nulls().unique()).collect()["job"]
    failures = [
        FailureGroup(row["status"], row["error_code"], row["error_message"], row["count"],
                     tuple(row["cells"]))
        for row in groups.iter_rows(named=True)
    ]
    return Summary(
        cells=int(totals["cells"][0]),
        by_status=by_status,
        spend_usd=float(totals["spend"][0] or 0.0),
        jobs=tuple(sorted(jobs.to_list())),
        runs=int(totals["runs"][0]),
        by_provider=dict(sorted(providers.iter_rows())),
        latency_s=_latency_figures(latency),
        failures=tuple(failures[:MAX_FAILURE_GROUPS]),
        failure_groups=len(failures),
        pending_batches=tuple(PendingBatch(str(name), int(cells), since)
                              for name, cells, since in batches.iter_rows()),
        emulated=int(totals["emulated"][0] or 0),
        stale=int(totals["stale"][0] or 0),
        superseded=int(totals["superseded"][0] or 0),
        **products,
    )


MAX_INCOMPLETE = 5


def _products(raw: pl.LazyFrame) -> dict[str, Any]:
    """Completeness per product (the manifest's `key_*` columns): a product is complete when
    every one of its current cells (not superseded, not stale) succeeded."""
    names = raw.collect_schema().names()
    keys = [name for name in names if is_key_column(name)]
    if not keys:
        return {}
    current = pl.lit(True)
    if "superseded_by" in names:
        current = current & pl.col("superseded_by").is_null()
    if "stale" in names:
        current = current & ~pl.col("stale").fill_null(False)
    per = (raw.filter(current & pl.all_horizontal(pl.col(k).is_not_null() for k in keys))
           .group_by(keys)
           .agg(pl.len().alias("cells"), (pl.col("status") == "succeeded").sum().alias("ok"))
           .collect())
    partial = per.filter(pl.col("ok") < pl.col("cells")).sort(keys).head(MAX_INCOMPLETE)
    return {
        "products": per.height,
        "complete": int((per["ok"] == per["cells"]).sum()),
        "incomplete": tuple(
            (" ".join(str(row[k]) for k in keys), int(row["ok"]), int(row["cells"]))
            for row in partial.iter_rows(named=True)),
    }


def _latency(df: pl.LazyFrame) -> pl.LazyFrame:
    values = pl.col("latency_s").filter(pl.col("status") == "succeeded").drop_nulls()
    return df.select(
        *(values.quantile(q, "linear").alias(f"p{round(q * 100)}") for q in PERCENTILES),
        values.max().alias("max"), values.len().alias("_n"),
    )


def _latency_figures(latency: pl.DataFrame) -> dict[str, float]:
    if not latency["_n"][0]:
        return {}
    return {name: _number(latency[name][0]) for name in latency.columns if name != "_n"}


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _pending_batches(df: pl.LazyFrame) -> pl.LazyFrame:
    """Pending cells whose task travels in a remote job (`task_group`: a batch), by job; a
    manifest older than the column has none."""
    group = pl.col("task_group")
    return (
        df.filter((pl.col("status") == "pending") & group.is_not_null())
        .group_by(group.alias("batch"))
        .agg(pl.len().alias("cells"), pl.col("submitted_at").min())
        .sort("submitted_at", "batch", nulls_last=True)
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _failure_groups(df: pl.LazyFrame) -> pl.LazyFrame:
    keys = ["status", "error_code", "error_message"]
    return (
        df.filter(pl.col("status") != "succeeded")
        .group_by(keys)
        .agg(pl.len().alias("count"), pl.col("cell_id").head(EXAMPLE_CELLS).alias("cells"))
        .sort(["count", *keys], descending=[True, False, False, False], nulls_last=True)
    )


def render_status(summary: Summary) -> str:
    """Plain text for a terminal: one fact per line, reasons indented under their count."""
    statuses = ", ".join(f"{n} {status}" for status, n in summary.by_status.items() if n)
    lines = [f"{summary.cells} cells: {statuses or 'none'}"]
    if summary.jobs:
        lines.append(f"job: {', '.join(summary.jobs)} ({summary.runs} run(s))")
    lines.append(f"spend: ${summary.spend_usd:.2f}")
    if (products := summary.products_line()) is not None:
        lines.append(products)
    if summary.superseded or summary.stale:
        lines.append(f"refreshed: {summary.superseded} superseded (their images kept under "
                     f"{HISTORY_DIR}/), {summary.stale} stale (no longer in the spec; kept)")
    if summary.emulated:
        lines.append(f"emulated: {summary.emulated} cell(s) ran against the local emulators "
                     "(placeholder images; nothing was paid, spend is what it would cost)")
    if summary.by_provider:
        lines.append("providers: " + ", ".join(f"{p} {n}" for p, n in summary.by_provider.items()))
    if summary.latency_s:
        lines.append("latency: " + ", ".join(f"{k} {v:.1f}s" for k, v in summary.latency_s.items()))
    if summary.pending_batches:
        lines.append(f"pending batches ({len(summary.pending_batches)}; the next run collects "
                     "them):")
        for batch in summary.pending_batches:
            age = batch.age_s()
            old = f", {_age(age)} old" if age is not None else ""
            lines.append(f"  {batch.name}: {batch.cells} cells{old}")
    if summary.failures:
        lines.append("not succeeded:")
        for group in summary.failures:
            reason = ": ".join(x for x in (group.error_code, group.error_message) if x)
            if len(reason) > MAX_MESSAGE_CHARS:
                reason = reason[: MAX_MESSAGE_CHARS - 1] + "…"
            lines.append(f"  {group.count:>6} {group.status}  {reason or '(no reason recorded)'}")
            lines.append(f"         e.g. {', '.join(group.cell_ids)}")
        hidden = summary.failure_groups - len(summary.failures)
        if hidden > 0:
            lines.append(f"  ... and {hidden} more reason(s)")
    return "\n".join(lines)


def _age(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"
