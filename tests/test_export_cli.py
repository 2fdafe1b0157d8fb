"""`nbp export` through the real command line: what a catalog team runs after a refresh to
write the images back to its product database, and the exit code 2 for everything it refuses."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from nbp.outputs.manifest import MANIFEST_NAME, rows_to_frame
from tests.conftest import ROOT, run_nbp
from tests.outputs.test_export import COLUMNS, PREFIX, catalog, cell, manifest

INJECTION = '=HYPERLINK("http://evil.example/","invoice")'


def target_with(tmp_path: Path, frame: pl.DataFrame) -> Path:
    target = tmp_path / "target"
    target.mkdir()
    frame.write_parquet(target / MANIFEST_NAME)
    return target


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def test_csv_on_stdout_with_key_columns_prefixed_urls_and_no_formula(tmp_path: Path) -> None:
    hostile = manifest([cell("c9", "evil/1_1_1K.png")],
                       key_sku=pl.Series([INJECTION]), key_variant=pl.Series([-1]))
    target = target_with(tmp_path, pl.concat([catalog(), hostile]))
    done = run_nbp("export", str(target), "--url-prefix", PREFIX + "/")
    assert done.returncode == 0, done.stderr
    table = rows(done.stdout)
    assert table[0] == COLUMNS
    assert [row[0] for row in table[1:]] == ["'" + INJECTION, *["TSH/RED XL"] * 3,
                                             *["ÉTÉ-Ünï"] * 2]
    assert table[1][1] == "-1"  # a typed number stays a number
    assert table[2][4] == f"{PREFIX}/TSH%252FRED%20XL/1_1_1K.png"
    assert table[5][4] == f"{PREFIX}/%C3%89T%C3%89-%C3%9Cn%C3%AF/1_1_2K.png"
    assert done.stderr == "nbp export: 2 superseded or stale row(s) left out (--all keeps them)\n"


def test_parquet_written_atomically_to_out_with_every_row(tmp_path: Path) -> None:
    target = target_with(tmp_path, catalog())
    out = tmp_path / "exports" / "week-12.parquet"  # .parquet: the format without --format
    done = run_nbp("export", str(target), "--out", str(out), "--all")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"export: {out} (7 rows, parquet)\n"
    table = pl.read_parquet(out)
    assert table.columns == [*COLUMNS, "superseded_by", "stale"]
    assert table.schema["key_variant"] == pl.Int64
    assert table.filter(pl.col("cell_id") == "c1")["image_url"].item() == (
        "/t/TSH%2FRED XL/1_1_1K.png")  # no prefix: the manifest's output_uri
    assert os.listdir(out.parent) == ["week-12.parquet"]  # no temporary file left


def test_parquet_goes_to_export_parquet_in_the_current_folder_by_default(tmp_path: Path) -> None:
    target = target_with(tmp_path, catalog())
    done = subprocess.run(
        [sys.executable, "-m", "nbp.flows.cli", "export", str(target), "--format", "parquet"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert pl.read_parquet(tmp_path / "export.parquet").height == 5


def test_a_manifest_without_key_columns_is_keyed_by_cell_id_and_says_so(tmp_path: Path) -> None:
    target = target_with(tmp_path, rows_to_frame([cell("a", "a.png")]))
    done = run_nbp("export", str(target), "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert rows(done.stdout)[0][:2] == ["cell_id", "aspect_ratio"]
    assert "no key_* columns" in done.stderr and "keyed by cell_id" in done.stderr


@pytest.mark.parametrize(("case", "args", "says"), [
    pytest.param("missing", [], "no manifest.parquet at", id="missing-target"),
    pytest.param("empty", [], "no manifest.parquet at", id="no-manifest"),
    pytest.param("garbage", [], "is not a manifest nbp can read", id="unreadable-manifest"),
    pytest.param("ok", ["--url-prefix", "javascript:alert(document.cookie)//"],
                 "not an http(s) URL", id="javascript-prefix"),
    pytest.param("ok", ["--url-prefix", "ftp://files.example.com/img"], "not an http(s) URL",
                 id="ftp-prefix"),
    pytest.param("ok", ["--url-prefix", "https://bob:hunter2@cdn.example.com"],
                 "user or password", id="prefix-with-password"),
    pytest.param("ok", ["--url-prefix", "www.example.com/img"], "not an http(s) URL",
                 id="prefix-without-scheme"),
    pytest.param("ok", ["--format", "parquet", "--out", "{target}/manifest.parquet"],
                 "target's own manifest.parquet", id="out-over-the-manifest"),
])
def test_exit_2_and_nothing_written(tmp_path: Path, case: str, args: list[str],
                                    says: str) -> None:
    target = tmp_path / "target"
    if case != "missing":
        target.mkdir()
    if case == "garbage":
        (target / MANIFEST_NAME).write_bytes(b"PAR1 not really")
    if case == "ok":
        catalog().write_parquet(target / MANIFEST_NAME)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    manifest_bytes = (target / MANIFEST_NAME).read_bytes() if case == "ok" else None
    done = run_nbp("export", str(target), *(a.format(target=target) for a in args))
    assert done.returncode == 2, done.stdout
    assert done.stderr.startswith("nbp export: ") and says in done.stderr
    assert "hunter2" not in done.stderr
    assert done.stdout == ""
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    if manifest_bytes is not None:
        assert (target / MANIFEST_NAME).read_bytes() == manifest_bytes


def test_exit_1_when_the_export_cannot_be_written(tmp_path: Path) -> None:
    target = target_with(tmp_path, catalog())
    (tmp_path / "a-file").write_text("")
    done = run_nbp("export", str(target), "--out", str(tmp_path / "a-file" / "x.csv"))
    assert done.returncode == 1
    assert "nbp export: could not write the export to " in done.stderr
    assert done.stdout == ""
