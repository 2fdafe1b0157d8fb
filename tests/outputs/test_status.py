"""`nbp status`'s pending batches come from the manifest's `task_group` column: the cells a
run left pending, by the remote job their tasks travel in. Task ids are never parsed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from nbp.outputs.manifest import ManifestRow, rows_to_frame
from nbp.outputs.status import PendingBatch, render_status, summarise

EARLY = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
LATE = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def row(cell: str, status: str, **values: Any) -> ManifestRow:
    fields: dict[str, Any] = {"job": "j", "run_id": "r", "provider": "gemini-batch", **values}
    return ManifestRow(cell_id=cell, status=status, **fields)


def test_pending_cells_are_counted_by_their_task_group_oldest_first() -> None:
    frame = rows_to_frame([
        row("a", "pending", task_group="batches/late", remote_task_id="batches/late/a",
            submitted_at=LATE),
        row("b", "pending", task_group="batches/early", remote_task_id="batches/early/b",
            submitted_at=EARLY),
        row("c", "pending", task_group="batches/early", remote_task_id="batches/early/c",
            submitted_at=LATE),
        row("d", "succeeded", task_group="batches/early", remote_task_id="batches/early/d"),
        row("e", "pending", provider="kie", remote_task_id="task-e"),  # a task of its own
    ])
    summary = summarise(frame)
    assert summary.pending_batches == (PendingBatch("batches/early", 2, EARLY),
                                       PendingBatch("batches/late", 1, LATE))
    text = render_status(summary)
    assert "pending batches (2;" in text
    assert "  batches/early: 2 cells" in text and "  batches/late: 1 cells" in text
    assert [b["name"] for b in summary.to_json()["pending_batches"]] == [
        "batches/early", "batches/late"]


def test_a_task_id_shaped_like_a_batch_is_not_a_group() -> None:
    """Only the engine's `task_group` names a group: a provider's task id that happens to
    read "batches/…" is a task of its own."""
    summary = summarise(rows_to_frame([
        row("a", "pending", provider="kie", remote_task_id="batches/x/a"),
    ]))
    assert summary.pending_batches == ()
    assert summary.by_status["pending"] == 1


def test_a_manifest_older_than_the_column_still_summarises(tmp_path: Path) -> None:
    frame = rows_to_frame([
        row("a", "pending", remote_task_id="batches/old/a", submitted_at=EARLY),
        row("b", "succeeded", cost_usd=0.067),
    ]).drop("task_group")
    frame.write_parquet(tmp_path / "manifest.parquet")
    summary = summarise(pl.scan_parquet(tmp_path / "manifest.parquet"))
    assert summary.cells == 2 and summary.by_status["pending"] == 1
    assert summary.spend_usd == 0.067
    assert summary.pending_batches == ()  # its groups were never recorded
