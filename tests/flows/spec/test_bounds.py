"""`nbp validate` is bounded: a hostile spec is refused within 2 s using little memory.

Alias bombs, matrices of 10^8 cells, huge files and datasets each stop at a documented
limit of `InputPolicy`; the bombs run in a child process under a 1 GB address-space limit,
where the unbounded parser ran out of memory after ten seconds.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from nbp.flows.spec import yamlpos
from nbp.flows.spec.loader import MAX_PROBLEMS, Problem, check_job, load_job, validate_spec_file
from tests.bounded import memory_cap
from tests.conftest import ROOT, run_nbp

BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""
MERGE_BOMB = "l0: &l0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9, j: 10}\n" + "".join(
    f"l{k}: &l{k} {{<<: [{', '.join([f'*l{k - 1}'] * 10)}]}}\n" for k in range(1, 10)
)
# 10 x 10 x ... over eight axes: 10^8 cells from a few hundred bytes
HUGE_MATRIX = (
    'version: 1\nname: huge\nprovider: kie\nmatrix:\n  prompt: ["{a}{b}{c}{d}{e}{f}{g}{h}"]\n'
    + "".join(f"  {axis}: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\n" for axis in "abcdefgh")
)
# validate in a child limited to 1 GB of address space; report exit code, time, peak RSS.
# The peak is the child's own VmHWM: ru_maxrss would carry the parent's peak over fork+exec
# (a test process that once held 1 GB makes every child "peak" at 1 GB).
BOUNDED_VALIDATE = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from nbp.flows.cli import main
start = time.perf_counter()
code = main(["validate", *sys.argv[1:]])
seconds = time.perf_counter() - start
try:
    with open("/proc/self/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
except (OSError, StopIteration):  # not Linux: the rusage figure, inherited peak and all
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"code": code, "seconds": seconds, "peak_mb": kb / 1024}))
"""


def write(folder: Path, text: str, name: str = "job.yaml") -> str:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def only(problems: list[Problem], path: str) -> Problem:
    found = [p for p in problems if p.path == path]
    assert len(found) == 1, problems
    return found[0]


def bounded_validate(*args: str) -> tuple[dict[str, float], str]:
    done = subprocess.run([sys.executable, "-c", BOUNDED_VALIDATE, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def timed(path: str, **kwargs: object) -> tuple[list[Problem], float]:
    """Validate in this process, under a memory cap: a broken guard fails the test with
    MemoryError instead of expanding 10^8 cells."""
    start = time.perf_counter()
    with memory_cap():
        problems = validate_spec_file(path, **kwargs)
    return problems, time.perf_counter() - start


# -- YAML ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    pytest.param(BILLION_LAUGHS, id="billion-laughs"),
    pytest.param(MERGE_BOMB, id="merge-keys"),
])
def test_an_alias_bomb_is_refused_quickly_in_little_memory(tmp_path: Path, text: str) -> None:
    assert len(text.encode()) < 700
    path = write(tmp_path, text, "bomb.yaml")
    result, stderr = bounded_validate(path)
    assert result["code"] == 2
    assert result["seconds"] < 2.0
    assert result["peak_mb"] < 400
    assert "more than 100,000 YAML values (each use of an alias counts as a copy)" in stderr
    assert f"{path}:" in stderr


def test_the_bomb_names_where_it_expands() -> None:
    with pytest.raises(yamlpos.YamlTooLarge) as caught:
        yamlpos.load(BILLION_LAUGHS)
    shown = yamlpos.format_path(caught.value.path)
    top = shown.split("[")[0]
    assert top in "abcdefghi" and shown != top  # deep inside one key's expansion
    assert caught.value.position.line == "abcdefghi".index(top) + 1  # that key's line


def test_a_flow_list_of_half_a_million_values_is_refused_before_composing(
    tmp_path: Path,
) -> None:
    values = ",".join(["1"] * 490_000)
    path = write(tmp_path, f"version: 1\nname: x\nprovider: kie\nmatrix:\n  prompt: [a]\n"
                           f"  s: [{values}]\n")
    problems, seconds = timed(path)
    assert seconds < 2.0
    [problem] = problems
    assert problem.line == 6 and "more than 100,000 YAML values" in problem.message


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    text = "".join("  " * i + f"k{i}:\n" for i in range(80)) + "  " * 80 + "x\n"
    [problem] = validate_spec_file(write(tmp_path, text))
    assert "nested more than 64 deep" in problem.message and problem.line == 65


def test_limits_are_the_policys(tmp_path: Path) -> None:
    from nbp.flows.spec.inputs import InputPolicy

    path = write(tmp_path, """\
        version: 1
        name: small
        provider: kie
        matrix: {prompt: [a, b, c]}
    """)
    assert validate_spec_file(path) == []
    [problem] = validate_spec_file(path, policy=InputPolicy(max_yaml_values=5))
    assert "more than 5 YAML values" in problem.message


def test_a_merged_key_overridden_is_not_a_duplicate() -> None:
    doc = yamlpos.load("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  x: 3\n  y: 4\n  y: 5\n")
    assert doc.value["m"] == {"x": 3, "y": 5}
    assert [(d.path, d.position.line, d.first.line) for d in doc.duplicates] == [
        (("m", "y"), 6, 5)]
    assert doc.position(("m", "x")) == yamlpos.Position(4, 6)


def test_merge_sources_keep_yaml_precedence() -> None:
    doc = yamlpos.load("a: &a {k: 1}\nb: &b {k: 2, l: 2}\nc: {<<: [*a, *b]}\n")
    assert doc.value["c"] == {"k": 1, "l": 2}  # the first source wins
    assert doc.duplicates == []


@pytest.mark.parametrize("text", ["a: &a {<<: *a}", "a: &a [*a]", "a: &a {b: *a}"])
def test_recursive_aliases_are_syntax_errors(text: str) -> None:
    with pytest.raises(yamlpos.YamlSyntaxError, match="refers to itself"):
        yamlpos.load(text)


# -- cells -----------------------------------------------------------------------------


def test_a_matrix_of_ten_to_the_eight_cells_is_refused_before_expanding(tmp_path: Path) -> None:
    assert len(HUGE_MATRIX) < 600
    path = write(tmp_path, HUGE_MATRIX)
    problems, seconds = timed(path)
    assert seconds < 2.0
    problem = only(problems, "matrix")
    assert (problem.line, problem.column) == (5, 3)
    assert "this job would have up to 100,000,000 cells (10 a x 10 b x" in problem.message
    assert "nbp expands at most 1,000,000" in problem.message
    assert "--max-cells N or NBP_MAX_CELLS" in problem.message


def test_the_bomb_spec_is_refused_by_the_command_line_in_bounded_memory(
    tmp_path: Path,
) -> None:
    result, stderr = bounded_validate(write(tmp_path, HUGE_MATRIX))
    assert (result["code"], "100,000,000 cells" in stderr) == (2, True)
    assert result["seconds"] < 2.0 and result["peak_mb"] < 400


def test_max_cells_from_the_flag_and_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        version: 1
        name: twelve
        provider: kie
        matrix: {prompt: ["{n}"], n: [1, 2, 3, 4, 5, 6], aspect_ratio: ["1:1", "4:5"]}
    """)
    assert run_nbp("validate", path).returncode == 0
    flag = run_nbp("validate", path, "--max-cells", "10")
    assert flag.returncode == 2 and "up to 12 cells" in flag.stderr and "at most 10" in (
        flag.stderr)
    env = run_nbp("plan", path, env={**os.environ, "NBP_MAX_CELLS": "11"})
    assert env.returncode == 2 and "at most 11" in env.stderr
    both = run_nbp("validate", path, "--max-cells", "12",
                   env={**os.environ, "NBP_MAX_CELLS": "11"})
    assert both.returncode == 0, both.stderr  # the flag wins
    bad = run_nbp("validate", path, env={**os.environ, "NBP_MAX_CELLS": "many"})
    assert bad.returncode == 2 and "NBP_MAX_CELLS='many' is not a positive integer" in (
        bad.stderr)


def test_dataset_rows_and_repeat_count(tmp_path: Path) -> None:
    from nbp.flows.spec.inputs import InputPolicy

    (tmp_path / "rows.csv").write_text("sku\n" + "".join(f"S{i}\n" for i in range(30)))
    path = write(tmp_path, """\
        version: 1
        name: rows
        provider: kie
        dataset: {path: rows.csv}
        matrix: {prompt: ["{sku}"], aspect_ratio: ["1:1", "4:5"]}
        repeat: 2
    """)
    assert len(load_job(path).cells) == 120
    problem = only(validate_spec_file(path, policy=InputPolicy(max_cells=100)), "matrix")
    assert "up to 120 cells (2 aspect_ratio = 2 combinations before exclude, x 30 dataset " \
           "rows, x repeat 2)" in problem.message


def test_a_huge_repeat_is_refused_without_reading_the_dataset(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        version: 1
        name: rows
        provider: kie
        dataset: {path: missing.csv}
        matrix: {prompt: ["{sku}"]}
        repeat: 100000000000
    """)
    problems, seconds = timed(path)
    assert seconds < 2.0
    assert [p.path for p in problems] == ["matrix"]  # the missing file was not looked at
    assert "x repeat 100,000,000,000" in problems[0].message


def test_include_and_exclude_work_is_bounded(tmp_path: Path) -> None:
    excludes = ", ".join(f"{{a: {i}}}" for i in range(3000))
    axis = ", ".join(str(i) for i in range(200))
    path = write(tmp_path, f"""\
        version: 1
        name: rows
        provider: kie
        matrix:
          prompt: ["{{a}} {{b}}"]
          a: [{axis}]
          b: [{axis}]
          exclude: [{excludes}]
    """)
    problems, seconds = timed(path)
    assert seconds < 2.0
    problem = only(problems, "matrix")
    assert "40,000 combinations x 3,000 entries = 120,000,000 checks" in problem.message


def test_many_prompts_validate_in_linear_time(tmp_path: Path) -> None:
    prompts = ", ".join(f"p{i}" for i in range(20_000))
    path = write(tmp_path,
                 f"version: 1\nname: many\nprovider: kie\nmatrix:\n  prompt: [{prompts}]\n")
    problems, seconds = timed(path)
    assert problems == [] and seconds < 10  # quadratic location lookups took minutes


# -- files -----------------------------------------------------------------------------


def test_a_spec_file_over_the_size_limit_is_not_parsed(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("version: 1\n# " + "x" * 1_000_000 + "\n")
    [problem] = validate_spec_file(str(path))
    assert (problem.line, problem.path) == (1, "$")
    assert "larger than 1,000,000 bytes" in problem.message
    _, [same] = check_job(path.read_text())
    assert same.message == problem.message.replace(str(path), "<memory>")


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_dataset_rows_are_capped(tmp_path: Path, fmt: str) -> None:
    from nbp.flows.spec.inputs import InputPolicy

    frame = pl.DataFrame({"sku": [f"S{i}" for i in range(11)]})
    buffer = io.BytesIO()
    {"csv": frame.write_csv, "parquet": frame.write_parquet, "jsonl": frame.write_ndjson}[fmt](
        buffer)
    (tmp_path / f"rows.{fmt}").write_bytes(buffer.getvalue())
    path = write(tmp_path, f"""\
        version: 1
        name: rows
        provider: kie
        dataset: {{path: rows.{fmt}}}
        matrix: {{prompt: ["{{sku}}"]}}
    """)
    assert validate_spec_file(path, policy=InputPolicy(max_dataset_rows=11)) == []
    problem = only(validate_spec_file(path, policy=InputPolicy(max_dataset_rows=10)),
                   "dataset.path")
    assert "has 11 rows; nbp reads at most 10" in problem.message
    small = InputPolicy(max_dataset_bytes=len(buffer.getvalue()) - 1)
    problem = only(validate_spec_file(path, policy=small), "dataset.path")
    assert "the most nbp reads (InputPolicy.max_dataset_bytes)" in problem.message


def test_every_problem_up_to_a_cap(tmp_path: Path) -> None:
    ratios = ", ".join(["'7:3'", "'8:3'", "'9:3'"] * 2000)
    path = write(tmp_path, f"version: 1\nname: x\nprovider: kie\nmatrix:\n  prompt: [a]\n"
                           f"  aspect_ratio: [{ratios}]\n")
    problems, seconds = timed(path)
    assert seconds < 2.0
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1].message.startswith(f"more than {MAX_PROBLEMS} problems")
