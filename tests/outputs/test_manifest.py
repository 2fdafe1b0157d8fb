"""The manifest: exact schema, plain-polars readable, merged across runs without duplicates;
and `nbp status`, its summary."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from nbp.outputs.manifest import (
    MANIFEST_COLUMNS,
    MANIFEST_DOC,
    MANIFEST_NAME,
    ManifestRow,
    key_columns,
    manifest_doc_markdown,
    merge_manifest,
    read_manifest,
    rows_to_frame,
    update_manifest,
    write_manifest,
)
from nbp.outputs.sink import Sink
from nbp.outputs.status import MAX_FAILURE_GROUPS, render_status, summarise

# design.md "Outputs (contract)", in its order
DESIGN_COLUMNS = [
    "cell_id", "job", "run_id", "provider", "model", "prompt", "aspect_ratio", "resolution",
    "output_format", "references", "vars", "replicate", "status", "remote_task_id", "attempts",
    "cost_usd", "submitted_at", "completed_at", "latency_s", "output_uri", "sha256", "bytes",
    "width", "height", "error_code", "error_message",
]  # fmt: skip


def row(cell_id: str, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "cell_id": cell_id, "job": "spring", "run_id": "run-1", "provider": "kie",
        "model": "nano-banana-pro", "prompt": f"photo of {cell_id}", "aspect_ratio": "4:5",
        "resolution": "1K", "output_format": "png", "references": ["s3://b/ref.png"],
        "vars": {"sku": cell_id, "title": "Shoe"}, "replicate": 0, "status": "succeeded",
        "remote_task_id": f"task-{cell_id}", "attempts": 1, "cost_usd": 0.09,
        "submitted_at": "2026-03-01T10:00:00+00:00", "completed_at": "2026-03-01T10:00:12+00:00",
        "latency_s": 12.0, "output_path": f"{cell_id}.png", "output_uri": f"/t/{cell_id}.png",
        "sha256": "ab" * 32, "bytes": 1234, "width": 928, "height": 1152, "dataset_row": 3,
    }  # fmt: skip
    return {**base, **values}


def fixed(frame: pl.DataFrame) -> dict[str, pl.DataType]:
    """The frame's columns but the key and variable ones (which depend on the rows)."""
    return {name: dtype for name, dtype in frame.schema.items()
            if not name.startswith(("key_", "var_"))}


def test_design_columns_present_with_exact_dtypes() -> None:
    frame = rows_to_frame([row("c1")])
    assert list(fixed(frame)) == list(MANIFEST_COLUMNS)
    assert fixed(frame) == MANIFEST_COLUMNS
    assert set(DESIGN_COLUMNS) <= set(frame.columns)
    assert {"output_path", "dataset_row", "updated_at"} <= set(frame.columns)
    assert frame.schema["references"] == pl.List(pl.String)
    for stamp in ("submitted_at", "completed_at", "updated_at"):
        assert frame.schema[stamp] == pl.Datetime("us", "UTC")


def test_missing_keys_are_null_and_updated_at_is_filled() -> None:
    frame = rows_to_frame([{"cell_id": "only-id", "status": "cancelled"}])
    values = frame.row(0, named=True)
    assert values["cell_id"] == "only-id" and values["status"] == "cancelled"
    assert values["references"] is None and values["cost_usd"] is None
    assert values["updated_at"] is not None
    assert datetime.now(UTC) - values["updated_at"] < timedelta(minutes=1)


def test_empty_rows_give_an_empty_frame_with_the_schema() -> None:
    frame = rows_to_frame([])
    assert frame.height == 0 and dict(frame.schema) == MANIFEST_COLUMNS


def test_timestamps_are_converted_to_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    frame = rows_to_frame([
        row("a", submitted_at=datetime(2026, 3, 1, 12, 0, tzinfo=plus2),
            completed_at="2026-03-01T12:00:30+02:00", updated_at=1_772_359_200.0),
        row("b", submitted_at=datetime(2026, 3, 1, 10, 0)),  # naive: taken as UTC
    ])  # fmt: skip
    expected = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    assert frame["submitted_at"].to_list() == [expected, expected]
    assert frame["completed_at"][0] == expected + timedelta(seconds=30)
    assert frame["updated_at"][0] == datetime.fromtimestamp(1_772_359_200, UTC)


def test_vars_are_a_json_object_queryable_with_plain_polars() -> None:
    frame = rows_to_frame([row("a", vars={"sku": "A-1", "title": 'Quote " é'}), row("b")])
    assert json.loads(frame["vars"][0]) == {"sku": "A-1", "title": 'Quote " é'}
    skus = frame.select(pl.col("vars").str.json_path_match("$.sku"))["vars"].to_list()
    assert skus == ["A-1", "b"]


@pytest.mark.parametrize(
    ("values", "error"),
    [
        pytest.param({"colour": "red"}, ValueError, id="unknown-column"),
        pytest.param({"status": "done"}, ValueError, id="unknown-status"),
        pytest.param({"cell_id": None}, ValueError, id="no-cell-id"),
        pytest.param({"replicate": "zero"}, TypeError, id="wrong-type"),
    ],
)
def test_bad_rows_are_refused(values: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        rows_to_frame([{**row("a"), **values}])


def test_rerun_updates_rows_and_never_duplicates() -> None:
    first = rows_to_frame([row("a"), row("b", status="failed", error_code="TaskFailed"),
                           row("c")])  # fmt: skip
    second = rows_to_frame([row("b", run_id="run-2", attempts=2), row("d", run_id="run-2")])
    merged = merge_manifest(first, second)
    assert merged["cell_id"].to_list() == ["a", "b", "c", "d"]  # old order kept, new appended
    by_id = {r["cell_id"]: r for r in merged.iter_rows(named=True)}
    assert by_id["b"]["run_id"] == "run-2" and by_id["b"]["status"] == "succeeded"
    assert by_id["b"]["attempts"] == 2 and by_id["b"]["error_code"] is None
    assert by_id["a"]["run_id"] == "run-1"  # not in the rerun: kept as it was
    again = merge_manifest(merged, second)
    assert again.equals(merged)
    assert fixed(merged) == MANIFEST_COLUMNS


def test_last_row_of_a_cell_within_one_run_wins() -> None:
    new = rows_to_frame([row("a", status="failed"), row("b"), row("a", attempts=3)])
    merged = merge_manifest(None, new)
    assert merged["cell_id"].to_list() == ["a", "b"]
    assert merged.row(0, named=True)["attempts"] == 3


def test_merge_accepts_a_manifest_of_an_older_schema() -> None:
    old = rows_to_frame([row("a")]).drop("updated_at", "seed").with_columns(
        pl.lit("gone").alias("column_we_no_longer_write"), pl.col("replicate").cast(pl.Int64)
    )
    merged = merge_manifest(old, rows_to_frame([row("b")]))
    assert fixed(merged) == MANIFEST_COLUMNS
    assert merged["cell_id"].to_list() == ["a", "b"]
    assert merged["updated_at"][0] is None


def test_written_manifest_is_plain_parquet(tmp_path: Path) -> None:
    sink = Sink(str(tmp_path))
    assert read_manifest(sink) is None
    frame = rows_to_frame([row("a"), row("b", status="failed", error_message="<nope>")])
    uri = write_manifest(sink, frame)
    assert uri == str(tmp_path / MANIFEST_NAME)
    assert os.listdir(tmp_path) == [MANIFEST_NAME]  # no temp file left behind
    plain = pl.read_parquet(tmp_path / MANIFEST_NAME)  # no nbp code involved
    assert plain.equals(frame)
    assert fixed(plain) == MANIFEST_COLUMNS
    assert plain.filter(pl.col("status") == "failed")["error_message"].to_list() == ["<nope>"]
    lazy = pl.scan_parquet(tmp_path / MANIFEST_NAME).select(pl.col("references").list.len())
    assert lazy.collect()["references"].to_list() == [1, 1]
    read = read_manifest(sink)
    assert read is not None and read.equals(frame)


def test_update_manifest_twice_keeps_one_row_per_cell(tmp_path: Path) -> None:
    sink = Sink(str(tmp_path))
    update_manifest(sink, rows_to_frame([row("a"), row("b", status="failed")]))
    update_manifest(sink, rows_to_frame([row("b", run_id="run-2")]))
    final = pl.read_parquet(tmp_path / MANIFEST_NAME)
    assert final["cell_id"].to_list() == ["a", "b"]
    assert final["status"].to_list() == ["succeeded", "succeeded"]
    assert final["run_id"].to_list() == ["run-1", "run-2"]


def test_schema_documentation_covers_every_column() -> None:
    documented = [name for name, _, _ in MANIFEST_DOC]
    dynamic = ["key_*", "var_*"]
    assert [name for name in documented if name not in dynamic] == list(MANIFEST_COLUMNS)
    at = documented.index("vars") + 1
    assert documented[at:at + 2] == dynamic  # where key and variable columns go
    assert not [name for name in MANIFEST_COLUMNS if name.startswith(("key_", "var_"))]
    assert all(kind and meaning for _, kind, meaning in MANIFEST_DOC)
    table = manifest_doc_markdown()
    assert table.count("\n") == len(MANIFEST_COLUMNS) + 3
    assert "| `references` | `list[str]` |" in table
    assert "| `submitted_at` | `datetime[us, UTC]` |" in table


# -- nbp status: the summary of a manifest ---------------------------------------------------


def test_status_summarises_cells_spend_latency_and_reasons() -> None:
    rows = [row(f"ok{n}", latency_s=float(n), cost_usd=0.1) for n in range(1, 11)]
    rows += [
        row("f1", status="failed", error_code="TaskFailed", error_message="content policy"),
        row("f2", status="failed", error_code="TaskFailed", error_message="content policy"),
        row("f3", status="failed", error_code="Timeout", error_message="no result in 600 s",
            cost_usd=None),
        row("s1", status="skipped", error_code="Budget", error_message="max_usd reached",
            cost_usd=None, provider="runware", run_id="run-2"),
    ]  # fmt: skip
    summary = summarise(rows_to_frame(rows))
    assert summary.cells == 14
    assert summary.by_status == {"succeeded": 10, "failed": 3, "skipped": 1, "cancelled": 0,
                                 "pending": 0, "uncertain": 0}
    assert summary.spend_usd == pytest.approx(1.18)  # billed failures count too
    assert summary.by_provider == {"kie": 13, "runware": 1}
    assert summary.runs == 2 and summary.jobs == ("spring",)
    assert summary.latency_s["p50"] == pytest.approx(5.5)
    assert summary.latency_s["max"] == 10.0
    first = summary.failures[0]
    assert (first.status, first.error_code, first.count) == ("failed", "TaskFailed", 2)
    assert first.cell_ids == ("f1", "f2")
    text = render_status(summary)
    assert "14 cells: 10 succeeded, 3 failed, 1 skipped" in text
    assert "spend: $1.18" in text
    assert "TaskFailed: content policy" in text and "Timeout: no result in 600 s" in text
    assert "Budget: max_usd reached" in text
    assert "p50 5.5s" in text


def test_status_of_a_scanned_manifest_reads_the_same(tmp_path: Path) -> None:
    """A run summarises the manifest it wrote without loading it: the same figures."""
    rows = [row(f"c{i}", latency_s=float(i)) for i in range(5)] + [
        row("f", status="failed", error_code="TaskFailed", error_message="x"),
        row("s", status="skipped", cost_usd=None, run_id=None, job=None),
    ]
    frame = rows_to_frame(rows)
    frame.write_parquet(tmp_path / "m.parquet")
    assert summarise(pl.scan_parquet(tmp_path / "m.parquet")) == summarise(frame)


def test_status_of_an_empty_manifest() -> None:
    summary = summarise(rows_to_frame([]))
    assert summary.cells == 0 and summary.spend_usd == 0 and summary.failures == ()
    assert render_status(summary).startswith("0 cells")


def test_status_keeps_the_largest_failure_groups() -> None:
    rows = [row(f"f{n}-{k}", status="failed", error_code=f"E{n}", error_message="x")
            for n in range(MAX_FAILURE_GROUPS + 5) for k in range(n + 1)]  # fmt: skip
    summary = summarise(rows_to_frame(rows))
    assert len(summary.failures) == MAX_FAILURE_GROUPS
    assert summary.failures[0].error_code == f"E{MAX_FAILURE_GROUPS + 4}"
    assert "... and 5 more reason(s)" in render_status(summary)


# -- key columns -------------------------------------------------------------------------------


def test_a_rows_key_becomes_typed_key_columns_after_vars() -> None:
    frame = rows_to_frame([row("a", key={"sku": 7, "colour": "red", "ok": True, "w": 1.5}),
                           row("b", key={"sku": 8, "colour": None, "ok": False, "w": 2})])
    columns = list(frame.columns)
    assert columns[columns.index("vars") + 1:columns.index("vars") + 5] == [
        "key_sku", "key_colour", "key_ok", "key_w"]
    assert list(fixed(frame)) == list(MANIFEST_COLUMNS)
    assert {name: frame.schema[name] for name in columns if name.startswith("key_")} == {
        "key_sku": pl.Int64, "key_colour": pl.String, "key_ok": pl.Boolean,
        "key_w": pl.Float64}
    assert frame.select(pl.col("^key_.*$")).rows() == [(7, "red", True, 1.5),
                                                       (8, None, False, 2.0)]
    assert json.loads(frame["vars"][0]) == {"sku": "a", "title": "Shoe"}  # vars as it was


def test_key_columns_are_prefixed_so_no_key_clashes_with_a_fixed_column() -> None:
    assert key_columns({"status": "x", "cell_id": "y"}) == {"key_status": "x",
                                                           "key_cell_id": "y"}
    frame = rows_to_frame([row("a", key={"status": "discontinued"})])
    assert frame["status"][0] == "succeeded" and frame["key_status"][0] == "discontinued"


def test_a_key_travels_through_the_journal_and_back_from_manifest_columns() -> None:
    """A journal entry holds `ManifestRow.to_json()`; a manifest row read back as a mapping
    has `key_*` columns: both give the same row."""
    first = ManifestRow.from_mapping(row("a", key={"sku": 7, "colour": "red"}))
    again = ManifestRow.from_mapping(json.loads(json.dumps(first.to_json())))
    assert again.key == {"sku": 7, "colour": "red"}
    as_read = rows_to_frame([first]).to_dicts()[0]
    assert ManifestRow.from_mapping(as_read).key == {"sku": 7, "colour": "red"}
    assert rows_to_frame([again]).drop("updated_at").equals(
        rows_to_frame([first]).drop("updated_at"))


def test_jobs_with_other_keys_merge_into_one_manifest_with_nulls(tmp_path: Path) -> None:
    sink = Sink(str(tmp_path))
    update_manifest(sink, rows_to_frame([row("a", job="shoes", key={"sku": "S-1"})]))
    update_manifest(sink, rows_to_frame([row("b", job="mugs", key={"sku": "M-1", "size": 2})]))
    update_manifest(sink, rows_to_frame([row("c", job="art")]))  # no key at all
    final = pl.read_parquet(tmp_path / MANIFEST_NAME)  # plain polars, no nbp code
    assert final.select("cell_id", "key_sku", "key_size").rows() == [
        ("a", "S-1", None), ("b", "M-1", 2), ("c", None, None)]
    assert final.schema["key_size"] == pl.Int64
    stored = read_manifest(sink)
    assert stored is not None and stored.columns == final.columns


@pytest.mark.parametrize(("old", "new", "dtype", "values"), [
    pytest.param([1], ["A-1"], pl.String, ["1", "A-1"], id="int-then-text"),
    pytest.param([1], [2.5], pl.Float64, [1.0, 2.5], id="int-then-float"),
    pytest.param([None], [3], pl.Int64, [None, 3], id="null-then-int"),
    pytest.param([True], [None], pl.Boolean, [True, None], id="bool-then-null"),
])
def test_one_key_column_of_two_types_gets_one_type(
    old: list[Any], new: list[Any], dtype: pl.DataType, values: list[Any]
) -> None:
    first = rows_to_frame([row(f"o{i}", key={"sku": v}) for i, v in enumerate(old)])
    second = rows_to_frame([row(f"n{i}", key={"sku": v}) for i, v in enumerate(new)])
    merged = merge_manifest(first, second)
    assert merged.schema["key_sku"] == dtype
    assert merged["key_sku"].to_list() == values


# -- variable columns --------------------------------------------------------------------------


def test_each_variable_is_a_typed_column_after_the_key_columns() -> None:
    values = [
        {"style": "photo", "n": "2", "w": "1.5", "ok": "true", "code": "007", "note": "",
         "prompt": "t1", "aspect_ratio": "4:5", "resolution": "1K", "provider": "kie",
         "model": "nano-banana-pro"},
        {"style": "ink", "n": "-10", "w": "3", "ok": "FALSE", "code": "12", "note": ""},
    ]  # fmt: skip
    frame = rows_to_frame([row(f"c{i}", vars=v, key={"sku": i}) for i, v in enumerate(values)])
    columns = list(frame.columns)
    at = columns.index("vars") + 1
    assert columns[at:at + 7] == ["key_sku", "var_style", "var_n", "var_w", "var_ok",
                                  "var_code", "var_note"]
    assert list(fixed(frame)) == list(MANIFEST_COLUMNS)  # nothing else moved
    assert {name: frame.schema[name] for name in columns[at + 1:at + 7]} == {
        "var_style": pl.String, "var_n": pl.Int64, "var_w": pl.Float64, "var_ok": pl.Boolean,
        "var_code": pl.String, "var_note": pl.Null}  # "007" is an id, not a number
    assert frame.select(pl.col("^var_.*$")).rows() == [
        ("photo", 2, 1.5, True, "007", None), ("ink", -10, 3.0, False, "12", None)]
    assert json.loads(frame["vars"][0]) == values[0]  # `vars` as it was, fixed names too


def test_variable_names_become_unique_plain_column_names() -> None:
    values = {"Product Title": "Shoe", "colour": "red", "Colour": "Red", "colour_2": "x",
              "Größe (cm)": "42", "#": "y", "status": "new"}
    frame = rows_to_frame([row("a", vars=values)])
    assert frame.select(pl.col("^var_.*$")).row(0, named=True) == {
        "var_product_title": "Shoe", "var_colour": "red", "var_colour_3": "Red",
        "var_colour_2": "x", "var_größe_cm": 42, "var_x": "y", "var_status": "new"}
    assert frame["status"][0] == "succeeded"  # a variable never takes a fixed column
    again = rows_to_frame([row("b", vars=dict(reversed(values.items())))])
    assert set(again.columns) == set(frame.columns)  # the same names in any order


def test_variable_columns_merge_across_runs_of_other_types(tmp_path: Path) -> None:
    """Three runs into one target: a column of ints, then a run that adds text to it (it
    becomes text, the old values kept), then a rerun that replaces the text (ints again);
    rows of a run without a variable hold null there."""
    sink = Sink(str(tmp_path))
    update_manifest(sink, rows_to_frame([row("a", vars={"size": "1"}),
                                         row("b", vars={"size": "2"})]))
    update_manifest(sink, rows_to_frame([row("c", vars={"size": "XL", "style": "ink"}),
                                         row("d", vars={"style": "photo"})]))
    final = pl.read_parquet(tmp_path / MANIFEST_NAME)  # plain polars, no nbp code
    assert final.schema["var_size"] == pl.String and final.schema["var_style"] == pl.String
    assert final.select("cell_id", "var_size", "var_style").rows() == [
        ("a", "1", None), ("b", "2", None), ("c", "XL", "ink"), ("d", None, "photo")]
    update_manifest(sink, rows_to_frame([row("c", vars={"size": "3", "style": "ink"})]))
    final = pl.read_parquet(tmp_path / MANIFEST_NAME)
    assert final.schema["var_size"] == pl.Int64
    assert final["var_size"].to_list() == [1, 2, 3, None]
    assert json.loads(final["vars"][2]) == {"size": "3", "style": "ink"}


@pytest.mark.parametrize(("old", "new", "dtype", "values"), [
    pytest.param(["1"], ["2.5"], pl.Float64, [1.0, 2.5], id="int-then-float"),
    pytest.param(["1"], ["true"], pl.String, ["1", "true"], id="int-then-bool"),
    pytest.param([""], ["3"], pl.Int64, [None, 3], id="empty-then-int"),
    pytest.param(["true"], [""], pl.Boolean, [True, None], id="bool-then-empty"),
    pytest.param(["1e3"], ["x"], pl.String, ["1000.0", "x"], id="number-then-text"),
])
def test_one_variable_of_two_types_gets_one_type(
    old: list[str], new: list[str], dtype: pl.DataType, values: list[Any]
) -> None:
    first = rows_to_frame([row(f"o{i}", vars={"v": v}) for i, v in enumerate(old)])
    second = rows_to_frame([row(f"n{i}", vars={"v": v}) for i, v in enumerate(new)])
    merged = merge_manifest(first, second)
    assert merged.schema["var_v"] == dtype
    assert merged["var_v"].to_list() == values


def test_an_analysis_by_axis_is_one_expression(tmp_path: Path) -> None:
    rows = [row(f"{style}{n}", vars={"style": style, "steps": str(n)}, cost_usd=cost)
            for style, cost in (("photo", 0.09), ("ink", 0.134)) for n in (1, 2)]
    write_manifest(Sink(str(tmp_path)), rows_to_frame(rows))
    by_style = (pl.read_parquet(tmp_path / MANIFEST_NAME)
                .group_by("var_style").agg(pl.col("cost_usd").mean()).sort("var_style"))
    assert by_style.rows() == [("ink", 0.134), ("photo", 0.09)]
    steps = pl.scan_parquet(tmp_path / MANIFEST_NAME).filter(pl.col("var_steps") > 1)
    assert steps.select(pl.len()).collect().item() == 2  # typed: compared as numbers


def test_variable_columns_come_from_vars_when_a_row_is_read_back() -> None:
    first = rows_to_frame([row("a", vars={"style": "ink", "n": "2"})])
    as_read = first.to_dicts()[0]
    assert as_read["var_n"] == 2
    again = rows_to_frame([ManifestRow.from_mapping(as_read)])
    assert again.drop("updated_at").equals(first.drop("updated_at"))


def test_template_seed_sent_and_provider_times_are_columns() -> None:
    frame = rows_to_frame([
        row("a", template="t1", seed=7, seed_sent=True, queue_s=1.25, generation_s=20.5),
        row("b"),
    ])
    assert frame.schema["template"] == pl.String and frame.schema["seed_sent"] == pl.Boolean
    assert frame.schema["queue_s"] == pl.Float64 and frame.schema["generation_s"] == pl.Float64
    assert frame.select("template", "seed", "seed_sent", "queue_s", "generation_s").rows() == [
        ("t1", 7, True, 1.25, 20.5), (None, None, None, None, None)]
