"""`references_required`: a row without its reference image is a located problem (`error`)
or left out and counted (`skip`), never a cell sent with the prompt alone; and the dataset
lines those messages name."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import polars as pl
import pytest

from nbp.flows.cli import main
from nbp.flows.spec.cells import expand
from nbp.flows.spec.loader import check_job_file, load_job, validate_spec_file
from nbp.flows.spec.records import place, places, record_lines

CATALOG = (
    "sku,title,image\n"                         # line 1
    "A,mug,https://cdn.example.com/a.png\n"     # line 2
    'B,"two\nlines, ""quoted""",\n'             # lines 3-4: empty image
    "C,cup,https://cdn.example.com/c.png\n"     # line 5
    "D,jar,\n"                                  # line 6: empty image
)


def spec(folder: Path, required: str | None, *, references: str = '["{image}"]',
         rows: str = CATALOG) -> str:
    (folder / "rows.csv").write_text(rows)
    key = f"references_required: {required}\n" if required else ""
    path = folder / "job.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: catalog
        provider: kie
        dataset: {{path: rows.csv}}
        matrix: {{prompt: ["a {{title}}"], aspect_ratio: ["1:1", "4:5"]}}
        references: {references}
    """) + key)
    return str(path)


def test_without_the_key_a_row_may_have_no_reference(tmp_path: Path) -> None:
    cells = list(load_job(spec(tmp_path, None)).cells)
    assert [len(c.references) for c in cells] == [1, 1, 0, 0, 1, 1, 0, 0]  # today's rule


def test_error_locates_the_rows_at_their_file_lines(tmp_path: Path) -> None:
    path = spec(tmp_path, "error")
    problems = validate_spec_file(path)
    assert [(p.line, p.column, p.path) for p in problems] == [(6, 14, "references[0]")]
    assert problems[0].message.startswith(
        "'{image}' renders empty for 2 of 4 dataset rows: rows.csv lines 3 and 6; "
        "references_required: error refuses a cell without its reference image")


def test_error_lists_at_most_ten_rows_and_counts_the_rest(tmp_path: Path) -> None:
    rows = "sku,title,image\n" + "".join(f"S{i},t{i},\n" for i in range(25))
    message = validate_spec_file(spec(tmp_path, "error", rows=rows))[0].message
    assert "25 of 25 dataset rows: rows.csv lines 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ... " \
           "(25 rows in all)" in message


def test_each_empty_template_is_reported_at_its_own_line(tmp_path: Path) -> None:
    path = spec(tmp_path, "error", references='["{image}", "{logo}"]',
                rows="sku,title,image,logo\nA,mug,https://x.example/a.png,\nB,cup,,\n")
    problems = validate_spec_file(path)
    assert [(p.line, p.column, p.path) for p in problems] == [(6, 14, "references[0]"),
                                                              (6, 25, "references[1]")]
    assert "for 1 of 2 dataset rows: rows.csv line 3" in problems[0].message
    assert "for 2 of 2 dataset rows: rows.csv lines 2 and 3" in problems[1].message


def test_skip_leaves_the_rows_out_and_says_so(tmp_path: Path) -> None:
    job, problems = check_job_file(spec(tmp_path, "skip"))
    assert problems == [] and job is not None
    cells = list(job.cells)
    assert [c.vars["sku"] for c in cells] == ["A", "A", "C", "C"]
    assert all(c.references for c in cells)
    assert job.skipped is not None
    assert (job.skipped.rows, job.skipped.cells) == (2, 4)
    assert job.skipped.message == (
        "2 of 4 dataset rows skipped (4 cells) by references_required: skip, for want of a "
        "reference image: '{image}' renders empty at rows.csv lines 3 and 6")
    assert [c.index for c in job.cells] == [0, 1, 2, 3]  # every pass, the same cells


def test_skip_is_reported_by_validate_and_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = spec(tmp_path, "skip")
    assert main(["validate", path]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith(f"{path}: 2 of 4 dataset rows skipped (4 cells)")
    assert main(["plan", path, "--json"]) == 0
    captured = capsys.readouterr()
    assert '"cells": 4' in captured.out and "2 of 4 dataset rows skipped" in captured.err


def test_a_template_that_renders_to_nothing_counts(tmp_path: Path) -> None:
    rows = "sku,title,image\nA,mug,  \nB,cup,https://x.example/b.png\n"  # blank, not empty
    path = spec(tmp_path, "skip", rows=rows)
    cells = list(load_job(path).cells)
    assert {c.vars["sku"] for c in cells} == {"B"}


def test_without_a_dataset_the_cells_are_named(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent("""\
        version: 1
        name: axis
        provider: kie
        matrix: {prompt: ["a {ref} cat"], ref: ["https://x.example/a.png", ""]}
        references: ["{ref}"]
        references_required: error
    """))
    problem = validate_spec_file(str(path))[0]
    assert problem.path == "references[0]"
    assert "renders empty for 1 cell: (prompt='a {ref} cat'" in problem.message


def test_required_references_need_references(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent("""\
        version: 1
        name: none
        provider: kie
        matrix: {prompt: ["a cat"]}
        references_required: skip
    """))
    problems = validate_spec_file(str(path))
    assert [(p.line, p.path) for p in problems] == [(5, "references_required")]
    assert problems[0].message.startswith("references_required needs references")


def test_only_error_or_skip(tmp_path: Path) -> None:
    problems = validate_spec_file(spec(tmp_path, "always"))
    assert [p.path for p in problems] == ["references_required"]
    assert "'always' is not one of 'error', 'skip'" in problems[0].message


def test_expand_never_makes_a_cell_without_required_references(tmp_path: Path) -> None:
    job = load_job(spec(tmp_path, "skip"))
    assert all(len(c.references) == 1 for c in expand(job.spec))


# -- dataset lines ----------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "lines"), [
    pytest.param(CATALOG, [2, 3, 5, 6], id="quoted-field-spans-lines"),
    pytest.param("a,b\r\n1,x\r\n2,\"q\r\nq\"\r\n3,y\r\n", [2, 3, 5], id="crlf"),
    pytest.param("\ufeffa,b\n1,x\n2,y", [2, 3], id="bom-no-final-newline"),
    pytest.param("a,b\n1,x\n\n2,y\n", [2, 3, 4], id="blank-line-is-a-row"),
])
def test_csv_record_lines_match_the_rows_polars_reads(data: str, lines: list[int]) -> None:
    raw = data.encode()
    rows = pl.read_csv(io.BytesIO(raw), infer_schema=False).height
    assert record_lines(raw, "csv", rows) == lines


def test_jsonl_lines_skip_blank_lines_and_other_counts_give_no_lines() -> None:
    raw = b'{"a": 1}\n\n{"a": 2}\n'
    assert record_lines(raw, "jsonl", 2) == [1, 3]
    assert record_lines(raw, "jsonl", 3) is None  # not what was read: no line is better
    assert record_lines(b"", "parquet", 0) is None


def test_places_fall_back_to_record_numbers() -> None:
    assert place(1, [2, 4], "rows.csv") == "rows.csv line 4"
    assert place(1, None, "rows.parquet") == "rows.parquet record 2"
    assert places([0, 2], 2, None, "rows.parquet") == "rows.parquet records 1 and 3"
