"""Templating, dataset rows and the expansion of a spec into cells with stable ids."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import fsspec
import polars as pl
import pytest
from PIL import Image

from nbp.flows.spec import cells as cellmod
from nbp.flows.spec.cells import cell_id, expand
from nbp.flows.spec.dataset import DatasetError, read_dataset
from nbp.flows.spec.loader import load_job, load_spec, validate_spec_file
from nbp.flows.spec.model import Cell, JobSpec, MatrixSpec, OutputSpec
from nbp.flows.spec.templating import MissingVariable, Template, TemplateError

REPO = Path(__file__).resolve().parents[3]


def write(folder: Path, text: str, name: str = "job.yaml") -> str:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def photo(path: Path, colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", (32, 32), colour).save(path, "PNG")
    return path


# -- templating ------------------------------------------------------------------------


def test_template_fills_placeholders_and_keeps_literal_braces() -> None:
    template = Template.parse("{title} in {colour}, {{not a var}} and {title}")
    assert template.names == ("title", "colour")
    assert template.render({"title": "mug", "colour": "sage"}) == (
        "mug in sage, {not a var} and mug"
    )


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a {b", id="unclosed"),
        pytest.param("a } b", id="single-close"),
        pytest.param("{}", id="positional"),
        pytest.param("{a.b}", id="attribute"),
        pytest.param("{a[0]}", id="index"),
        pytest.param("{a!r}", id="conversion"),
        pytest.param("{a:>5}", id="format-spec"),
        pytest.param("{0}", id="number"),
    ],
)
def test_template_refuses_what_is_not_a_plain_name(text: str) -> None:
    with pytest.raises(TemplateError):
        Template.parse(text)


def test_template_missing_variable_names_it() -> None:
    with pytest.raises(MissingVariable) as caught:
        Template.parse("{a} {b}").render({"a": "x"})
    assert caught.value.name == "b"


# -- datasets --------------------------------------------------------------------------

FRAME = pl.DataFrame({
    "sku": ["A-1", "B-2"],
    "price": [9.5, None],
    "count": [3, 4],
    "active": [True, False],
})
EXPECTED_ROWS = [
    {"sku": "A-1", "price": "9.5", "count": "3", "active": "true"},
    {"sku": "B-2", "price": "", "count": "4", "active": "false"},
]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_dataset_rows_as_text_from_typed_formats(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"rows.{fmt}"
    if fmt == "parquet":
        FRAME.write_parquet(path)
    else:
        FRAME.write_ndjson(path)
    data = read_dataset(str(path))
    assert data.columns == ("sku", "price", "count", "active")
    assert data.rows == EXPECTED_ROWS


def test_dataset_csv_keeps_values_as_written(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("sku,code,note\nA-1,007,\nB-2,1.50,hello\n")
    data = read_dataset(str(path))
    assert data.rows == [
        {"sku": "A-1", "code": "007", "note": ""},
        {"sku": "B-2", "code": "1.50", "note": "hello"},
    ]


def test_dataset_through_fsspec_url_with_explicit_format() -> None:
    with fsspec.open("memory://nbp-test/rows.data", "wb") as handle:
        handle.write(b'{"sku": "M-1"}\n{"sku": "M-2"}\n')
    data = read_dataset("memory://nbp-test/rows.data", format="jsonl")
    assert [row["sku"] for row in data.rows] == ["M-1", "M-2"]


def test_dataset_errors_are_plain(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(str(tmp_path / "nope.csv"))
    with pytest.raises(DatasetError, match="extension"):
        read_dataset(str(tmp_path / "rows.txt"))
    nested = tmp_path / "nested.jsonl"
    nested.write_text('{"tags": ["a", "b"]}\n')
    with pytest.raises(DatasetError, match="lists or records"):
        read_dataset(str(nested))


# -- expansion -------------------------------------------------------------------------


def test_dataset_rows_times_matrix_with_templates(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    photo(tmp_path / "data" / "red.png", (200, 0, 0))
    photo(tmp_path / "data" / "blue.png", (0, 0, 200))
    (tmp_path / "data" / "rows.csv").write_text(
        "sku,title,image\nS-1,red shoe,data/red.png\nS-2,blue shoe,data/blue.png\n"
    )
    spec = load_spec(write(tmp_path, """\
        version: 1
        name: shoes
        provider: kie
        dataset: {path: data/rows.csv}
        matrix:
          prompt: ["Photo of the {title} ({sku}), {aspect_ratio} at {resolution}, job {name}"]
          aspect_ratio: ["1:1", "4:5"]
        references: ["{image}", "https://cdn.example.com/logo.png"]
        output: {path: "{sku}/{aspect_ratio}_{resolution}.{ext}", format: jpg}
    """))
    cells = expand(spec)
    assert [(c.dataset_row, c.aspect_ratio) for c in cells] == [
        (0, "1:1"), (0, "4:5"), (1, "1:1"), (1, "4:5"),
    ]
    first = cells[0]
    assert first.prompt == "Photo of the red shoe (S-1), 1:1 at 1K, job shoes"
    assert first.references == (
        str(tmp_path / "data" / "red.png"), "https://cdn.example.com/logo.png",
    )
    assert first.output_path == "S-1/1%3A1_1K.jpg"
    assert first.output_format == "jpg"
    assert first.vars["sku"] == "S-1" and first.vars["aspect_ratio"] == "1:1"
    assert [c.index for c in cells] == [0, 1, 2, 3]
    assert len({c.cell_id for c in cells}) == 4


def test_repeat_seed_and_replicate(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, """\
        version: 1
        name: seeds
        provider: runware
        matrix: {prompt: ["a lighthouse"]}
        repeat: 3
        seed: 100
        output: {path: "r{replicate}.{ext}"}
    """))
    cells = expand(spec)
    assert [(c.replicate, c.seed, c.output_path) for c in cells] == [
        (0, 100, "r0.png"), (1, 101, "r1.png"), (2, 102, "r2.png"),
    ]
    assert len({c.cell_id for c in cells}) == 3


def test_a_jobs_cells_expand_again_on_each_pass_as_validation_saw_them(tmp_path: Path) -> None:
    """`load_job` holds no cells: each pass expands again, with the reference identities
    validation computed, and leaves out the cells it merged (same request and path)."""
    photo(tmp_path / "a.png", (1, 2, 3))
    path = write(tmp_path, """\
        version: 1
        name: lazy
        provider: kie
        matrix:
          prompt: ["a fox", "a cat"]
          style: [ink, oil]     # used by neither prompt nor path: merged
          aspect_ratio: ["1:1", "4:5"]
        references: [a.png]
        repeat: 2
    """)
    job = load_job(path)
    assert not isinstance(job.cells, list)
    expected = expand(job.spec)
    assert len(expected) == 8 and [c.index for c in expected] == list(range(8))
    photo(tmp_path / "a.png", (9, 9, 9))  # a change after validation changes no id
    first, second = list(job.cells), list(job.cells)
    assert first == expected and second == expected and len(job.cells) == 8
    assert list(load_job(path, keep_cells=True).cells) != expected  # validated again: new ids


def test_empty_reference_is_left_out(tmp_path: Path) -> None:
    photo(tmp_path / "a.png", (1, 2, 3))
    (tmp_path / "rows.jsonl").write_text('{"k": "1", "image": "a.png"}\n{"k": "2", "image": ""}\n')
    spec = load_spec(write(tmp_path, """\
        version: 1
        name: optional-refs
        provider: kie
        dataset: {path: rows.jsonl}
        matrix: {prompt: ["item {k}"]}
        references: ["{image}"]
    """))
    assert [len(c.references) for c in expand(spec)] == [1, 0]


def test_include_without_prompt_takes_the_only_prompt(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, """\
        version: 1
        name: design-example
        provider: kie
        matrix:
          prompt: ["Studio photo, {style}"]
          aspect_ratio: ["1:1", "4:5", "16:9"]
          resolution: ["1K", "2K"]
          style: [photo, watercolor]
          exclude:
            - {aspect_ratio: "16:9", resolution: "2K"}
          include:
            - {aspect_ratio: "21:9", resolution: "4K", style: photo}
    """))
    cells = expand(spec)
    assert len(cells) == 3 * 2 * 2 - 2 + 1
    added = cells[-1]
    assert (added.aspect_ratio, added.resolution, added.prompt) == (
        "21:9", "4K", "Studio photo, photo",
    )
    assert not [c for c in cells if c.aspect_ratio == "16:9" and c.resolution == "2K"]


# -- stable ids ------------------------------------------------------------------------

ID_SPEC = """\
version: 1
name: ids
provider: {provider}
matrix:
  {first}
  {second}
  prompt: ["A {{style}} fox"]
references: ["ref.png"]
output: {{path: "{{style}}_{{aspect_ratio}}.{{ext}}"}}
"""


def ids_by_path(cells: list[Cell]) -> dict[str, str]:
    return {c.output_path: c.cell_id for c in cells}


def test_ids_do_not_depend_on_order_or_provider(tmp_path: Path) -> None:
    photo(tmp_path / "ref.png", (10, 20, 30))
    ratio, style = 'aspect_ratio: ["1:1", "16:9"]', "style: [pencil, oil]"
    one = tmp_path / "one"
    two = tmp_path / "two"
    for folder in (one, two):
        folder.mkdir()
        photo(folder / "ref.png", (10, 20, 30))
    a = expand(load_spec(write(one, ID_SPEC.format(provider="kie", first=ratio, second=style))))
    b = expand(load_spec(write(
        two, ID_SPEC.format(provider="[runware, kie]", first=style, second=ratio)
    )))
    assert [c.output_path for c in a] != [c.output_path for c in b]  # order did change
    assert ids_by_path(a) == ids_by_path(b)


def test_ids_follow_reference_content_not_its_path(tmp_path: Path) -> None:
    photo(tmp_path / "ref.png", (10, 20, 30))
    text = ID_SPEC.format(provider="kie", first='aspect_ratio: ["1:1"]', second="style: [ink]")
    before = expand(load_spec(write(tmp_path, text)))[0].cell_id
    photo(tmp_path / "ref.png", (99, 20, 30))
    assert expand(load_spec(write(tmp_path, text)))[0].cell_id != before


def test_each_expansion_hashes_each_reference_file_once_and_keeps_the_hashes_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    photo(tmp_path / "a.png", (1, 2, 3))
    (tmp_path / "rows.csv").write_text("sku,image\n1,a.png\n2,./a.png\n3,a.png\n")
    spec = load_spec(write(tmp_path, """\
        version: 1
        name: hashed
        provider: kie
        dataset: {path: rows.csv}
        matrix: {prompt: ["fox {sku}"]}
        references: ["{image}"]
    """))
    hashed: list[str] = []
    real = cellmod._sha256

    def counted(path: str) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(cellmod, "_sha256", counted)
    first, second = cellmod.Expansion(spec), cellmod.Expansion(spec)
    ids = [[c.references for c in expansion.run(keep=True)] for expansion in (first, second)]
    assert ids[0] == ids[1] and len(ids[0]) == 3
    assert len(hashed) == 2            # once per expansion, whichever way a row spells it
    assert len(first.identities) == len(second.identities) == 1


def test_same_ids_in_another_process(tmp_path: Path) -> None:
    photo(tmp_path / "ref.png", (10, 20, 30))
    path = write(tmp_path, ID_SPEC.format(
        provider="kie", first='aspect_ratio: ["1:1", "4:5"]', second="style: [ink, chalk]"
    ))
    here = [c.cell_id for c in expand(load_spec(path))]
    code = (
        "import json, sys; from nbp.flows.spec.loader import load_spec; "
        "from nbp.flows.spec.cells import expand; "
        "print(json.dumps([c.cell_id for c in expand(load_spec(sys.argv[1]))]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, path], cwd=REPO, capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert json.loads(out.stdout) == here


def test_cell_id_is_sha256_of_the_canonical_request() -> None:
    import hashlib

    canonical = json.dumps(
        ["a fox", "1:1", "1K", "png", ["https://x.example/r.png"], None, 0],
        ensure_ascii=False, separators=(",", ":"),
    )
    expected = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert cell_id("a fox", "1:1", "1K", "png", ["https://x.example/r.png"], None, 0) == expected
    assert cell_id("a fox", "1:1", "1K", "png", [], None, 1) != cell_id(
        "a fox", "1:1", "1K", "png", [], None, 0
    )


# -- the example specs -----------------------------------------------------------------


def test_example_specs_expand() -> None:
    demo = expand(load_spec(str(REPO / "specs" / "demo.yaml")))
    assert 12 <= len(demo) <= 18
    catalog = load_spec(str(REPO / "specs" / "catalog.yaml"))
    cells = expand(catalog)
    rows = len((REPO / "specs" / "data" / "products.csv").read_text().splitlines()) - 1
    assert len(cells) == rows * 3 * 2
    assert all(Path(c.references[0]).is_file() for c in cells)
    assert cells[0].output_path == "SNK-001/1%3A1_1K.png"
    assert cells[0].key == {"sku": "SNK-001"}
    experiment = expand(load_spec(str(REPO / "specs" / "experiment.yaml")))
    assert {c.aspect_ratio for c in experiment} == {"1:1", "16:9", "21:9", "3:2"}
    assert not [c for c in experiment
                if c.vars["style"] == "claymation diorama" and c.resolution == "2K"]
    channels = expand(load_spec(str(REPO / "specs" / "experiment-channels.yaml")))
    assert len(channels) == 18
    assert {c.model for c in channels if c.provider == "gemini"} == {
        "gemini-3-pro-image-preview"}
    assert {c.model for c in channels if c.provider != "gemini"} == {None}


def test_a_pinned_cell_has_its_provider_and_model_in_its_id() -> None:
    unpinned = cell_id("a fox", "1:1", "1K", "png", [], None, 0)
    on_kie = cell_id("a fox", "1:1", "1K", "png", [], None, 0, "kie")
    assert len({unpinned, on_kie, cell_id("a fox", "1:1", "1K", "png", [], None, 0, "wiro"),
                cell_id("a fox", "1:1", "1K", "png", [], None, 0, "kie", "m2")}) == 4
    assert unpinned == cell_id("a fox", "1:1", "1K", "png", [], None, 0, None, None)


def test_a_provider_axis_makes_one_cell_per_provider(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, """\
        version: 1
        name: pins
        matrix:
          prompt: ["a {style} fox"]
          style: [ink, oil]
          provider: [kie, runware]
          exclude:
            - {provider: runware, style: oil}
        output:
          path: "{provider}/{style}.{ext}"
        """))
    cells = expand(spec)
    assert [(c.provider, c.vars["style"], c.output_path) for c in cells] == [
        ("kie", "ink", "kie/ink.png"), ("runware", "ink", "runware/ink.png"),
        ("kie", "oil", "kie/oil.png"),
    ]
    assert len({c.cell_id for c in cells}) == 3
    assert spec.routed == () and spec.providers == ("kie", "runware")


# -- model ids per provider and named prompts (issue 23) ----------------------------------

AXES = """\
version: 1
name: axes
matrix:
  prompt: {prompt}
  style: [ink, oil]
{matrix}
output: {output}
"""
PREVIEW, GA = "gemini-3-pro-image-preview", "gemini-3-pro-image"


def cells_of(folder: Path, matrix: str, prompt: str = '["a {style} fox"]',
             output: str = '{path: "{cell_id}.{ext}"}', **more: str) -> list[Cell]:
    text = AXES.format(prompt=prompt, matrix=textwrap.indent(textwrap.dedent(matrix), "  "),
                       output=output)
    return expand(load_spec(write(folder, text + "".join(f"{k}: {v}\n"
                                                         for k, v in more.items()))))


def pins(cells: list[Cell]) -> dict[tuple[str | None, str | None, str], str]:
    return {(c.provider, c.model, c.vars["style"]): c.cell_id for c in cells}


def test_model_ids_per_provider_cross_each_provider_with_its_own(tmp_path: Path) -> None:
    crossed = cells_of(tmp_path, f"""\
        provider: [kie, runware, gemini]
        model: {{gemini: [{PREVIEW}, {GA}], runware: [default]}}
        """)
    assert [(c.provider, c.model, c.vars["model"]) for c in crossed[:4]] == [
        ("kie", None, "default"), ("runware", None, "default"),
        ("gemini", PREVIEW, PREVIEW), ("gemini", GA, GA),
    ]
    assert len(crossed) == 8
    # the same cells, written as today: one spec per model id with include entries
    by_include = {**pins(cells_of(tmp_path, f"""\
        provider: [kie, runware, gemini]
        include: [{{provider: gemini, model: {PREVIEW}}}]
        """)), **pins(cells_of(tmp_path, f"""\
        provider: [gemini]
        include: [{{provider: gemini, model: {GA}}}]
        """))}
    assert pins(crossed) == by_include


def test_without_a_provider_axis_the_mappings_pairs_are_the_axis(tmp_path: Path) -> None:
    crossed = cells_of(tmp_path, f"model: {{gemini: [{GA}, default], runware: [default]}}")
    assert [(c.provider, c.model) for c in crossed[:3]] == [
        ("gemini", GA), ("gemini", None), ("runware", None)]
    by_include = cells_of(tmp_path, f"""\
        provider: [gemini, runware]
        include: [{{provider: gemini, model: {GA}}}]
        """)
    assert pins(crossed) == {**pins(by_include), **pins(cells_of(tmp_path, "provider: [gemini]"))}


def test_a_model_list_crosses_as_before_and_default_pins_no_model(tmp_path: Path) -> None:
    listed = cells_of(tmp_path, f"model: [{GA}, default]", provider="gemini")
    assert [(c.provider, c.model) for c in listed[:2]] == [(None, GA), (None, None)]
    unpinned = cells_of(tmp_path, "", provider="gemini")
    assert [c.cell_id for c in listed if c.model is None] == [c.cell_id for c in unpinned]


def test_named_prompts_keep_the_ids_of_the_same_texts_in_a_list(tmp_path: Path) -> None:
    listed = cells_of(tmp_path, "", prompt='["a {style} fox", "an {style} owl"]', provider="kie")
    named = cells_of(tmp_path, "", prompt='{t1: "a {style} fox", t2: "an {style} owl"}',
                     provider="kie")
    assert [c.cell_id for c in named] == [c.cell_id for c in listed]
    assert [c.template for c in named] == ["t1", "t1", "t2", "t2"]
    assert {c.template for c in listed} == {None}
    assert "template" not in named[0].vars  # a built-in, like {replicate}


def test_template_names_the_prompt_in_paths_unless_the_spec_has_its_own(
    tmp_path: Path,
) -> None:
    text = """\
        version: 1
        name: named
        provider: kie
        matrix:
          prompt: {t1: "a {style} fox", t2: "an {style} owl"}
          style: [ink]
          include:
            - {prompt: t2, style: oil}         # a name: that template's text
            - {prompt: "a {style} hen", style: ink}
        output: {path: "{template}/{style}.{ext}"}
    """
    problems = validate_spec_file(write(tmp_path, text))
    assert [p.message for p in problems] == [
        "placeholder {template} has no value in some cells, e.g. prompt='a {style} hen', "
        "style='ink', aspect_ratio='1:1', resolution='1K': their prompt is an include "
        "entry's own text, not a named template; name it in matrix.prompt and give the "
        "include entry its name"]
    cells = expand(load_spec(write(tmp_path, text.replace("{template}/", "{cell_id}/"))))
    assert [(c.template, c.prompt) for c in cells] == [
        ("t1", "a ink fox"), ("t2", "an ink owl"), ("t2", "an oil owl"), (None, "a ink hen")]
    # the spec's own variable `template` wins (an axis here), for every cell
    own = cells_of(tmp_path, "template: [house]", prompt='{t1: "a {style} fox"}',
                   provider="kie", output='{path: "{template}/{style}.{ext}"}')
    assert [(c.template, c.output_path) for c in own] == [
        ("t1", "house/ink.png"), ("t1", "house/oil.png")]


def expand_matrix(matrix: MatrixSpec) -> list[Cell]:
    spec = JobSpec(name="m", providers=("kie", "gemini", "gemini-batch"), listed=(),
                   output=OutputSpec(target="memory://m"), matrix=matrix)
    return expand(spec)


def test_the_cell_count_bound_counts_each_providers_own_model_ids() -> None:
    matrix = MatrixSpec(
        {"prompt": ("p",), "aspect_ratio": ("1:1",), "resolution": ("1K",),
         "provider": ("kie", "gemini", "gemini-batch"),
         "model": ("default", PREVIEW, GA)},
        models={"gemini": (PREVIEW, GA), "gemini-batch": (PREVIEW, GA)})
    assert len(expand_matrix(matrix)) == 5  # kie default, two ids each for the geminis
    assert cellmod.cell_count_problem(matrix, 1, None, 5) is None
    problem = cellmod.cell_count_problem(matrix, 2, None, 9)
    assert problem is not None and problem.startswith(
        "this job would have up to 10 cells (5 provider x model = 5 combinations before "
        "exclude, x repeat 2)")
