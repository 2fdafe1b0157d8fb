"""`dataset.key` and `dataset.duplicates`: the columns that identify a product, typed on each
cell; a missing, repeated or case-only-different key is named by the file line its record
starts on; `first` / `last` keep one row and say so in a note."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from nbp.flows.spec.cells import expand
from nbp.flows.spec.dataset import read_dataset
from nbp.flows.spec.loader import Problem, check_job_file, load_job, validate_spec_file

# Line 4 starts a record whose quoted title spans lines 4-6; SNK-002 repeats on line 8.
PRODUCTS = (
    "sku,title,colour\n"                       # 1
    "SNK-001,canvas sneaker,red\n"             # 2
    "SNK-002,canvas sneaker,navy\n"            # 3
    'MUG-014,"stoneware mug\n'                 # 4
    "with a handle,\n"                         # 5
    'dishwasher ""safe""",sage\n'              # 6
    "BAG-220,backpack,ochre\n"                 # 7
    "SNK-002,canvas sneaker (new photo),navy\n"  # 8
    "LMP-031,desk lamp,teal\n"                 # 9
)


def spec(folder: Path, dataset: str, path: str = "{sku}/{aspect_ratio}.{ext}",
         prompt: str = "Photo of {title} in {colour}") -> str:
    file = folder / "job.yaml"
    file.write_text(textwrap.dedent(f"""\
        version: 1
        name: keyed
        provider: kie
        dataset: {dataset}
        matrix:
          prompt: ["{prompt}"]
          aspect_ratio: ["1:1", "4:5"]
        output: {{path: "{path}"}}
    """))
    return str(file)


def at(problems: list[Problem], path: str) -> list[Problem]:
    return [p for p in problems if p.path == path]


@pytest.fixture
def products(tmp_path: Path) -> Path:
    (tmp_path / "products.csv").write_text(PRODUCTS)
    return tmp_path


# -- the key on cells ------------------------------------------------------------------------


def test_each_cell_carries_its_rows_key(products: Path) -> None:
    (products / "products.csv").write_text(PRODUCTS.replace("SNK-002,canvas sneaker (new", "X,("))
    job = load_job(spec(products, "{path: products.csv, key: sku}"), keep_cells=True)
    cells = list(job.cells)
    assert [c.key for c in cells[::2]] == [
        {"sku": "SNK-001"}, {"sku": "SNK-002"}, {"sku": "MUG-014"}, {"sku": "BAG-220"},
        {"sku": "X"}, {"sku": "LMP-031"},
    ]
    assert all(c.vars["sku"] == c.key["sku"] for c in cells)  # vars stays as it is


def test_a_key_of_several_columns_and_csv_text_as_written(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("sku,colour,title\n007,red,a\n007,blue,b\n")
    cells = expand(load_job(spec(tmp_path, "{path: rows.csv, key: [sku, colour]}",
                                 path="{sku}_{colour}_{aspect_ratio}.{ext}")).spec)
    assert [c.key for c in cells[::2]] == [{"sku": "007", "colour": "red"},
                                           {"sku": "007", "colour": "blue"}]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_key_values_keep_the_files_types(tmp_path: Path, fmt: str) -> None:
    frame = pl.DataFrame({"sku": [7, 8], "ok": [True, False], "weight": [1.5, 2.0],
                          "title": ["a", "b"]})
    path = tmp_path / f"rows.{fmt}"
    frame.write_parquet(path) if fmt == "parquet" else frame.write_ndjson(path)
    data = read_dataset(str(path), key=("sku", "ok", "weight", "title"))
    assert data.key_of(0) == {"sku": 7, "ok": True, "weight": 1.5, "title": "a"}
    assert type(data.key_of(1)["sku"]) is int and data.rows[1]["sku"] == "8"


def test_a_key_column_that_does_not_exist_is_located_with_a_suggestion(products: Path) -> None:
    problems = validate_spec_file(spec(products, "{path: products.csv, key: skus}"))
    [problem] = at(problems, "dataset.key")
    assert problem.line == 4
    assert "'skus', which is not a column of products.csv; did you mean 'sku'?" in (
        problem.message)


def test_duplicates_without_a_key_is_a_problem(products: Path) -> None:
    problems = validate_spec_file(spec(products, "{path: products.csv, duplicates: first}",
                                       path="{cell_id}.{ext}"))
    assert [p.path for p in problems] == ["dataset.duplicates"]
    assert problems[0].message.startswith("dataset.duplicates needs dataset.key")


# -- duplicates ------------------------------------------------------------------------------


def test_a_repeated_key_fails_naming_both_file_lines(products: Path) -> None:
    """SNK-002's second record starts on line 8: the header is line 1 and MUG-014's quoted
    title spans lines 4-6 (a 0-based row count would say 5, a line count without quotes 6)."""
    problems = validate_spec_file(spec(products, "{path: products.csv, key: sku}"))
    [problem] = problems
    assert (problem.path, problem.line) == ("dataset.key", 4)
    assert problem.message == (
        "line 8 of products.csv (sku='SNK-002') repeats the key of line 3 (sku='SNK-002'); a "
        "key identifies one row (or set dataset.duplicates: first or last)"
    )


@pytest.mark.parametrize(("rule", "kept_title", "kept_row"), [
    pytest.param("first", "canvas sneaker", 1, id="first"),
    pytest.param("last", "canvas sneaker (new photo)", 4, id="last"),
])
def test_first_and_last_keep_one_row_and_say_how_many_were_dropped(
    products: Path, rule: str, kept_title: str, kept_row: int
) -> None:
    path = spec(products, f"{{path: products.csv, key: sku, duplicates: {rule}}}")
    job, problems = check_job_file(path, keep_cells=True)
    assert problems == [] and job is not None
    cells = [c for c in job.cells if c.key == {"sku": "SNK-002"}]
    assert len(cells) == 2 and {c.vars["title"] for c in cells} == {kept_title}
    assert {c.dataset_row for c in cells} == {kept_row}  # the file's row, not the kept index
    assert len(list(job.cells)) == 2 * 5
    [note] = job.notes
    dropped, kept = ("line 8", "line 3") if rule == "first" else ("line 3", "line 8")
    assert note.startswith(f"{path}:4:")
    assert (f"dataset.duplicates: note: 1 row of products.csv repeats the key of another row "
            f"and is left out (duplicates: {rule} keeps the {rule} row of each key), e.g. "
            f"{dropped} of products.csv (sku='SNK-002'; {kept} is kept)") in note


def test_jsonl_names_its_line_and_parquet_its_row_counted_from_0(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"sku": "A"}\n\n{"sku": "B"}\n{"sku": "A"}\n')
    [problem] = validate_spec_file(spec(tmp_path, "{path: rows.jsonl, key: sku}",
                                        prompt="{sku}"))
    assert problem.message.startswith("line 4 of rows.jsonl (sku='A') repeats the key of line 1")
    pl.DataFrame({"sku": [3, 4, 3]}).write_parquet(tmp_path / "rows.parquet")
    [problem] = validate_spec_file(spec(tmp_path, "{path: rows.parquet, key: sku}",
                                        prompt="{sku}"))
    assert problem.message.startswith(
        "row 2 of rows.parquet (counted from 0) (sku=3) repeats the key of row 0 (counted "
        "from 0) (sku=3)")


def test_a_row_without_a_key_is_named_by_its_line(products: Path) -> None:
    (products / "products.csv").write_text(
        PRODUCTS.replace("SNK-002,canvas sneaker (new photo)", ",no sku"))
    [problem] = validate_spec_file(spec(products, "{path: products.csv, key: sku}"))
    assert problem.path == "dataset.key"
    assert problem.message == "line 8 of products.csv has no sku; every row needs its key"


def test_blank_rows_are_no_products_left_out_with_a_note(products: Path) -> None:
    (products / "products.csv").write_text(
        PRODUCTS.replace("SNK-002,canvas sneaker (new photo),navy", ",,") + "\n")
    job, problems = check_job_file(spec(products, "{path: products.csv, key: sku}"))
    assert problems == [] and job is not None
    assert len(job.cells) == 5 * 2
    [note] = job.notes
    assert note.endswith("dataset.key: note: 2 blank rows of products.csv left out (no value "
                         "in any column), e.g. line 8 of products.csv")


def test_keys_that_differ_only_in_case_are_a_problem_naming_both(products: Path) -> None:
    (products / "products.csv").write_text(
        PRODUCTS.replace("SNK-002,canvas sneaker (new photo)", "snk-002,canvas sneaker"))
    for rule in ("fail", "first", "last"):  # not a duplicate: no rule keeps one of them
        [problem] = validate_spec_file(
            spec(products, f"{{path: products.csv, key: sku, duplicates: {rule}}}"))
        assert problem.path == "dataset.key"
        assert problem.message.startswith(
            "line 8 of products.csv (sku='snk-002') differs only in case from line 3 "
            "(sku='SNK-002')")


def test_many_key_problems_are_listed_up_to_ten_then_counted(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("sku\n" + "A\n" * 30)
    problems = at(validate_spec_file(spec(tmp_path, "{path: rows.csv, key: sku}",
                                          prompt="{sku}")), "dataset.key")
    assert len(problems) == 11
    assert "29 rows repeat the key of an earlier row in all (the first 10 are listed)" in (
        problems[-1].message)


# -- file lines in other dataset messages ------------------------------------------------------


def test_other_dataset_messages_name_the_file_line(products: Path) -> None:
    """The issue's "row 9 is CSV line 11": messages about a row say the line it starts on."""
    (products / "products.csv").write_text(
        PRODUCTS.replace("SNK-002,canvas sneaker (new photo)", "SNK-009,sneaker v9"))
    problems = validate_spec_file(spec(products, "{path: products.csv, key: sku}",
                                       path="{colour}_{aspect_ratio}.{ext}"))
    [problem] = at(problems, "output.path")
    assert problem.message.startswith("2 cells write to a path another cell writes")
    assert "(line 3 of products.csv, " in problem.message  # navy: SNK-002 and SNK-009
    assert "(line 8 of products.csv, " in problem.message


# -- case-only output paths --------------------------------------------------------------------


def test_output_paths_that_differ_only_in_case_are_a_problem(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("sku,colour\nA,Red\nB,red\n")
    problems = validate_spec_file(spec(tmp_path, "{path: rows.csv, key: sku}",
                                       path="{colour}/{aspect_ratio}.{ext}", prompt="{sku}"))
    [problem] = at(problems, "output.path")
    assert problem.message.startswith("2 cells write a path that differs only in case")
    assert "line 2 of rows.csv" in problem.message and "line 3 of rows.csv" in problem.message
    assert "'Red/1%3A1.png'" in problem.message and "'red/1%3A1.png'" in problem.message


def test_output_paths_that_differ_by_more_than_case_are_fine(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("sku\nA/1\nA%2F1\n../../etc\netc\n")
    job = load_job(spec(tmp_path, "{path: rows.csv, key: sku}", prompt="{sku}"),
                   keep_cells=True)
    assert [c.output_path for c in job.cells][::2] == [
        "A%2F1/1%3A1.png", "A%252F1/1%3A1.png", "%2E.%2F..%2Fetc/1%3A1.png", "etc/1%3A1.png"]


# -- bounded ---------------------------------------------------------------------------------


def test_a_duplicate_at_the_end_of_200000_quoted_rows_is_found_quickly(tmp_path: Path) -> None:
    rows = [f'S{n},"title {n},\nsecond line"\n' for n in range(200_000)]
    (tmp_path / "rows.csv").write_text("sku,title\n" + "".join(rows) + "S7,again\n")
    started = time.perf_counter()
    data = read_dataset(str(tmp_path / "rows.csv"), key=("sku",))
    assert time.perf_counter() - started < 10
    assert data.problems == (
        "line 400002 of rows.csv (sku='S7') repeats the key of line 16 (sku='S7'); a key "
        "identifies one row (or set dataset.duplicates: first or last)",)
