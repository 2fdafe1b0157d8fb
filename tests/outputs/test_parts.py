"""A run's rows spilled to Parquet parts merge into the manifest exactly as
`merge_manifest` merges frames: one row per cell, the latest wins, first positions kept."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from nbp.outputs.manifest import merge_manifest, rows_to_frame
from nbp.outputs.parts import ManifestParts, merge_parts


def row(cell_id: str, **values: Any) -> dict[str, Any]:
    return {"cell_id": cell_id, "status": "succeeded", "prompt": f"p {cell_id}", **values}


def spill(folder: Path, frame: pl.DataFrame, size: int) -> ManifestParts:
    parts = ManifestParts(str(folder))
    for index, start in enumerate(range(0, frame.height, size)):
        parts.add(index, frame.slice(start, size))
    return parts


def merged(tmp_path: Path, old: pl.DataFrame | None, new: pl.DataFrame, *, size: int = 2,
           order: pl.DataFrame | None = None, slice_rows: int = 3) -> pl.DataFrame:
    old_path = None
    if old is not None:
        old_path = str(tmp_path / "old.parquet")
        old.write_parquet(old_path)
    parts = spill(tmp_path / "parts", new, size)
    out = tmp_path / "out.parquet"
    merge_parts(old_path, parts, str(out), order, slice_rows=slice_rows)
    return pl.read_parquet(out)


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    (tmp_path / "parts").mkdir()
    return tmp_path


def test_a_first_run_is_its_rows_in_cell_order(folders: Path) -> None:
    new = rows_to_frame([row(f"c{i}") for i in range(7)])
    assert merged(folders, None, new).equals(new)


def test_old_rows_are_replaced_in_place_and_new_cells_appended(folders: Path) -> None:
    old = rows_to_frame([row("a", run_id="1"), row("b", run_id="1", status="failed"),
                         row("c", run_id="1")])
    new = rows_to_frame([row("d", run_id="2"), row("b", run_id="2")])
    out = merged(folders, old, new)
    assert out.select("cell_id", "run_id", "status").rows() == [
        ("a", "1", "succeeded"), ("b", "2", "succeeded"), ("c", "1", "succeeded"),
        ("d", "2", "succeeded"),
    ]


def test_a_run_without_rows_leaves_the_manifest_as_it_was(folders: Path) -> None:
    old = rows_to_frame([row("a"), row("b")])
    assert merged(folders, old, rows_to_frame([])).equals(old)


def test_shards_are_sorted_into_spec_order_after_cells_the_spec_lost(folders: Path) -> None:
    old = rows_to_frame([row("gone"), row("c"), row("a")])   # shard 1 wrote c and a
    new = rows_to_frame([row("d"), row("b")])                # shard 0 ends later
    order = pl.DataFrame({"cell_id": ["a", "b", "c", "d"], "index": [0, 1, 2, 3]})
    assert merged(folders, old, new, order=order)["cell_id"].to_list() == [
        "gone", "a", "b", "c", "d"]


@pytest.mark.parametrize("ids", [
    pytest.param([f"c{i}" for i in range(30)], id="text-ids"),
    pytest.param([f"{(i * 0x9E3779B97F4A7C15) % 2**64:016x}" for i in range(30)],
                 id="nbp-hex-ids"),
])
def test_any_merge_is_the_frame_merge(tmp_path: Path, ids: list[str]) -> None:
    rng = random.Random(3)
    for trial in range(25):
        folder = tmp_path / str(trial)
        (folder / "parts").mkdir(parents=True)
        old_ids = rng.sample(ids, rng.randint(0, 20))
        new_ids = rng.sample(ids, rng.randint(0, 20))
        old = rows_to_frame([row(c, run_id="old", key={"sku": c}) for c in old_ids]
                            ) if old_ids else None
        new = rows_to_frame([row(c, run_id="new", attempts=i, key=rng.choice(
            [None, {"sku": c}, {"n": i if i % 3 else None}])) for i, c in enumerate(new_ids)])
        order = None
        if rng.random() < 0.5:
            order = pl.DataFrame({"cell_id": rng.sample(ids, 25), "index": list(range(25))})
        got = merged(folder, old, new, size=rng.randint(1, 5), order=order,
                     slice_rows=rng.randint(1, 7))
        want = merge_manifest(old, new)
        if order is not None:
            position = dict(zip(order["cell_id"], order["index"], strict=True))
            spec_order = pl.Series([position.get(c, -1) for c in want["cell_id"]])
            want = want.with_columns(spec_order.alias("_o")).sort("_o", maintain_order=True)
            want = want.drop("_o")
        assert got.equals(want), trial


def test_key_columns_merge_across_parts_runs_and_jobs(folders: Path) -> None:
    """Parts of one run whose key values are all null in one chunk, and an old manifest of
    another job with another key column: the frame merge's columns, types and nulls."""
    old = rows_to_frame([row("x", job="mugs", key={"mug": "M-1"})])
    new = rows_to_frame([row("a", key={"sku": 1, "colour": None}),
                         row("b", key={"sku": 2, "colour": None}),
                         row("c", key={"sku": 3, "colour": "red"})])
    got = merged(folders, old, new, size=2)
    assert got.equals(merge_manifest(old, new))
    assert got.select("cell_id", "key_mug", "key_sku", "key_colour").rows() == [
        ("x", "M-1", None, None), ("a", None, 1, None), ("b", None, 2, None),
        ("c", None, 3, "red")]
    assert (got.schema["key_sku"], got.schema["key_colour"]) == (pl.Int64, pl.String)
    columns = got.columns
    assert columns[columns.index("vars") + 1:columns.index("replicate")] == [
        "key_mug", "key_sku", "key_colour"]


def test_a_first_run_with_a_key_keeps_its_key_columns(folders: Path) -> None:
    new = rows_to_frame([row(f"c{i}", key={"sku": f"S-{i}"}) for i in range(5)])
    got = merged(folders, None, new, size=2)
    assert got.equals(new) and got["key_sku"].to_list() == [f"S-{i}" for i in range(5)]
