"""After-write steps: the gallery is one, a new output format is another, names are distinct."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from nbp.outputs.manifest import ManifestRow, rows_to_frame
from nbp.outputs.sink import Sink
from nbp.outputs.steps import AFTER_WRITE, Gallery, Written, run_steps


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


def test_every_run_draws_the_gallery_as_its_first_step() -> None:
    assert [step.name for step in AFTER_WRITE] == ["gallery"]


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
