"""After-write steps: the gallery is one, the rows a run wrote another, a new output format is
another, names are distinct."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from nbp.outputs.layout import run_rows
from nbp.outputs.manifest import ManifestRow, rows_to_frame
from nbp.outputs.runs import RunRowsError, read_run_rows
from nbp.outputs.sink import Sink
from nbp.outputs.steps import AFTER_WRITE, Gallery, RunRows, Written, run_steps


def written(tmp_path: Path) -> Written:
    row = ManifestRow(cell_id="c1", job="steps", run_id="r", provider="kie", prompt="a crane",
                      aspect_ratio="1:1", resolution="1K", output_format="png", references=[],
                      vars={}, status="succeeded", output_path="c1.png")
    path = tmp_path / "manifest.parquet"
    rows_to_frame([row]).write_parquet(path)
    return Written(Sink(str(tmp_path / "out")), pl.scan_parquet(path), "Steps <job>")


class CsvCopy:
    """A format the project does not ship: the manifest's cells and paths as CSV."""

    name = "csv"

    def __call__(self, written: Written) -> str:
        text = written.manifest.select("cell_id", "output_path").collect().write_csv()
        return written.sink.write_bytes("manifest.csv", text.encode(), overwrite=True)


class Nothing:
    name = "nothing"

    def __call__(self, written: Written) -> None:
        return None


def test_every_run_draws_the_gallery_then_keeps_its_rows() -> None:
    assert [step.name for step in AFTER_WRITE] == ["gallery", "run_rows"]


def manifest_of(tmp_path: Path, rows: dict[str, str], name: str) -> pl.LazyFrame:
    """A manifest of cells (cell id -> the run that last wrote it), scanned."""
    frame = rows_to_frame([
        ManifestRow(cell_id=cell_id, job="steps", run_id=run_id, provider="kie",
                    prompt=f"{cell_id} in {run_id}", aspect_ratio="1:1", resolution="1K",
                    output_format="png", references=[], vars={}, status="succeeded")
        for cell_id, run_id in rows.items()])  # fmt: skip
    path = tmp_path / f"{name}.parquet"
    frame.write_parquet(path)
    return pl.scan_parquet(path)


def test_a_run_keeps_the_rows_it_wrote_and_no_others(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Only this run's rows (not a snapshot of the manifest), merged across its shards: a
    row a later run rewrote in the manifest stays in the rows file as this run wrote it."""
    sink = Sink(str(tmp_path / "out"))
    first = manifest_of(tmp_path, {"c1": "r1", "c2": "r2", "c3": "r2"}, "first")
    uri = RunRows()(Written(sink, first, "t", run_id="r2"))
    assert uri == sink.uri(run_rows("r2")) == str(tmp_path / "out/.nbp/runs/r2.parquet")
    kept = read_run_rows(sink, "r2")
    assert kept is not None and kept["cell_id"].to_list() == ["c2", "c3"]
    # A second shard of r2 ends after run r3 rewrote c2: c2 stays as r2 wrote it.
    second = manifest_of(tmp_path, {"c1": "r1", "c2": "r3", "c3": "r2", "c4": "r2"}, "second")
    RunRows()(Written(sink, second, "t", run_id="r2"))
    kept = read_run_rows(sink, "r2")
    assert kept is not None
    assert dict(kept.select("cell_id", "prompt").iter_rows()) == {
        "c2": "c2 in r2", "c3": "c3 in r2", "c4": "c4 in r2"}
    assert read_run_rows(sink, "r1") is None  # a run from before: no file
    assert RunRows()(Written(sink, second, "t")) is None  # not a run's write: nothing
    assert RunRows()(Written(sink, second, "t", run_id="r9")) is None  # no row of it
    assert not sink.exists(run_rows("r9"))
    sink.write_bytes(run_rows("r2"), b"not parquet", overwrite=True)
    with pytest.raises(RunRowsError, match=r"r2\.parquet is not the rows of a run"):
        read_run_rows(sink, "r2")
    RunRows()(Written(sink, second, "t", run_id="r2"))  # replaced, with a warning
    assert "replacing a rows file that cannot be read" in caplog.text
    kept = read_run_rows(sink, "r2")
    assert kept is not None and kept["cell_id"].to_list() == ["c3", "c4"]


def test_each_step_reads_the_written_manifest_and_says_what_it_wrote(tmp_path: Path) -> None:
    wrote = run_steps([Gallery(), CsvCopy(), Nothing()], written(tmp_path))
    assert set(wrote) == {"gallery", "csv"}  # a step that wrote nothing is not listed
    assert Path(wrote["gallery"]).name == "index.html"
    assert "Steps &lt;job&gt;" in Path(wrote["gallery"]).read_text("utf-8")
    assert Path(wrote["csv"]).read_text() == "cell_id,output_path\nc1,c1.png\n"


def test_two_steps_of_one_name_are_refused_before_either_runs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="distinct names"):
        run_steps([CsvCopy(), CsvCopy()], written(tmp_path))
    assert not (tmp_path / "out" / "manifest.csv").exists()
