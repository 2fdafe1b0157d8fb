"""Spec loading and validation: every problem, with file, line, column and JSON path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest
from PIL import Image

from nbp.flows.spec.cells import expand
from nbp.flows.spec.loader import Problem, SpecInvalid, load_job, load_spec, validate_spec_file
from nbp.flows.spec.model import GallerySpec, ProviderLimits
from nbp.providers.model import ASPECT_RATIOS, OUTPUT_FORMATS, RESOLUTIONS
from nbp.schemas import load_job_schema

REPO = Path(__file__).resolve().parents[3]


def write(folder: Path, text: str, name: str = "job.yaml") -> str:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def where(problems: list[Problem]) -> list[tuple[int, int, str]]:
    return [(p.line, p.column, p.path) for p in problems]


def only(problems: list[Problem], path: str) -> Problem:
    found = [p for p in problems if p.path == path]
    assert len(found) == 1, problems
    return found[0]


def photo(path: Path) -> None:
    Image.new("RGB", (16, 16), (90, 120, 150)).save(path, "PNG")


@pytest.mark.parametrize(
    "name", ["demo.yaml", "experiment.yaml", "experiment-channels.yaml", "experiment-axes.yaml",
             "catalog.yaml"])
def test_example_specs_are_valid(name: str) -> None:
    path = REPO / "specs" / name
    assert validate_spec_file(str(path)) == []
    assert path.read_text().startswith(
        "# yaml-language-server: $schema=../schemas/job.schema.json"
    )


def test_demo_writes_to_repo_demo_output() -> None:
    spec = load_spec(str(REPO / "specs" / "demo.yaml"))
    assert spec.output.target == str(REPO / "demo-output")
    assert spec.providers == ("kie",)


# -- YAML ------------------------------------------------------------------------------


def test_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        version: 1
        name: broken
        provider: kie
        matrix:
          prompt: ["a", "b"
          aspect_ratio: ["1:1"]
    """)
    [problem] = validate_spec_file(path)
    assert (problem.file, problem.line, problem.path) == (path, 6, "$")
    assert problem.message.startswith("YAML syntax error:")
    assert str(problem).startswith(f"{path}:6:")


def test_duplicate_key_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        version: 1
        name: dup
        provider: kie
        matrix: {prompt: ["a"]}
        name: dup2
    """)
    problem = only(validate_spec_file(path), "name")
    assert (problem.line, problem.column) == (5, 1)
    assert "first written at line 2" in problem.message


def test_unquoted_ratios_stay_ratios(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, """\
        version: 1
        name: ratios
        provider: kie
        matrix:
          prompt: [a cat]
          aspect_ratio: [16:9, 4:5, 21:9]
    """))
    assert [c.aspect_ratio for c in expand(spec)] == ["16:9", "4:5", "21:9"]


def test_missing_file_is_a_problem(tmp_path: Path) -> None:
    [problem] = validate_spec_file(str(tmp_path / "nope.yaml"))
    assert "cannot read" in problem.message


# -- every problem at once -------------------------------------------------------------

MANY_PROBLEMS = """\
version: 1
name: Spring Catalog
provider: [kie, kei]
matrix:
  prompt:
    - "Photo of {titel}"
  aspect_ratio: ["1:1", "7:3"]
  resolution: ["1K"]
references: ["missing.png"]
output:
  fromat: png
limits:
  kie: {rate: "20 per 10s", max_inflight: 4}
budjet: {max_usd: 3}
"""


def test_every_problem_is_listed_in_file_order(tmp_path: Path) -> None:
    path = write(tmp_path, MANY_PROBLEMS)
    problems = validate_spec_file(path)
    assert where(problems) == [
        (2, 7, "name"),
        (3, 17, "provider[1]"),
        (6, 7, "matrix.prompt[0]"),
        (7, 25, "matrix.aspect_ratio[1]"),
        (9, 14, "references[0]"),
        (11, 3, "output.fromat"),
        (13, 15, "limits.kie.rate"),
        (13, 29, "limits.kie.max_inflight"),
        (14, 1, "budjet"),
    ]
    messages = {p.path: p.message for p in problems}
    assert "not a valid job name" in messages["name"]
    assert "unknown provider 'kei'; did you mean 'kie'?" in messages["provider[1]"]
    assert "placeholder {titel}" in messages["matrix.prompt[0]"]
    assert "'7:3' is not one of" in messages["matrix.aspect_ratio[1]"]
    assert "missing.png' does not exist" in messages["references[0]"]
    assert "unknown key 'fromat'; did you mean 'format'?" in messages["output.fromat"]
    assert "is not a rate like '20/10s'" in messages["limits.kie.rate"]
    assert "did you mean 'max_in_flight'?" in messages["limits.kie.max_inflight"]
    assert "unknown key 'budjet'; did you mean 'budget'?" in messages["budjet"]
    assert all(p.file == path for p in problems)
    with pytest.raises(SpecInvalid) as caught:
        load_spec(path)
    assert caught.value.problems == problems
    assert str(problems[0]) == f"{path}:2:7: name: {problems[0].message}"


def test_missing_required_keys(tmp_path: Path) -> None:
    problems = validate_spec_file(write(tmp_path, "version: 1\nname: x\n"))
    assert [p.message for p in problems] == [
        "missing required key 'matrix'",
        "missing required key 'provider': name the provider (`provider: kie`, or a "
        "fallback list), or add a `provider` matrix axis that pins each cell to one",
    ]


def test_wrong_types_in_plain_words(tmp_path: Path) -> None:
    problems = validate_spec_file(write(tmp_path, """\
        version: 1
        name: types
        provider: 5
        matrix:
          prompt: [a]
          style: photo
        repeat: 0
    """))
    messages = {p.path: p.message for p in problems}
    assert messages["provider"] == (
        "expected a provider name or a list of provider names, got an integer"
    )
    assert messages["matrix.style"] == "expected a list, got a string"
    assert messages["repeat"] == "must be at least 1"


def test_a_fallback_list_item_of_the_wrong_type(tmp_path: Path) -> None:
    problem = only(validate_spec_file(write(tmp_path, """\
        version: 1
        name: list
        provider: [kie, 3]
        matrix: {prompt: [a]}
    """)), "provider[1]")
    assert (problem.line, problem.column, problem.message) == (
        3, 17, "expected a string, got an integer"
    )


# -- providers -------------------------------------------------------------------------


def limit_spec(provider: str, **parts: str) -> str:
    body = {
        "matrix": 'matrix:\n  prompt: ["a small red fox"]',
        "references": "",
        "output": "",
    }
    body.update(parts)
    return (
        f"version: 1\nname: limits\nprovider: {provider}\n"
        f"{body['matrix']}\n{body['references']}\n{body['output']}\n"
    )


def test_wiro_writes_png_only(tmp_path: Path) -> None:
    path = write(tmp_path, limit_spec("[kie, wiro]", output="output:\n  format: jpg"))
    problem = only(validate_spec_file(path), "output.format")
    assert (problem.line, problem.column) == (8, 11)
    assert problem.message.startswith("wiro does not write 'jpg'")


def test_apikley_caps_prompts_at_10000_characters(tmp_path: Path) -> None:
    long = "x" * 10_001
    ok = "y" * 10_000
    path = write(tmp_path, limit_spec(
        "[kie, apikley]", matrix=f'matrix:\n  prompt:\n    - "{ok}"\n    - "{long}"'
    ))
    problem = only(validate_spec_file(path), "matrix.prompt[1]")
    assert problem.line == 7
    assert "apikley accepts prompts of at most 10000 characters; this one has 10001" in (
        problem.message
    )


def test_prompt_length_after_templating_names_an_example_row(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text(f"sku,title\nA,short\nB,{'t' * 10_000}\n")
    path = write(tmp_path, """\
        version: 1
        name: long-titles
        provider: apikley
        dataset: {path: rows.csv}
        matrix: {prompt: ["Photo of {title}"], resolution: ["1K", "2K"]}
    """)
    problem = only(validate_spec_file(path), "matrix.prompt[0]")
    assert "this one has 10009" in problem.message and "line 3 of rows.csv" in problem.message


def test_hiapi_takes_references_as_urls_only(tmp_path: Path) -> None:
    photo(tmp_path / "local.png")
    path = write(tmp_path, limit_spec(
        "hiapi", references='references: ["https://cdn.example.com/a.png", "local.png"]'
    ))
    problem = only(validate_spec_file(path), "references[1]")
    assert "hiapi takes reference images as http(s) URLs only" in problem.message
    assert (problem.line, problem.column) == (6, 47)


def test_kie_takes_at_most_8_references(tmp_path: Path) -> None:
    refs = ", ".join(f'"https://cdn.example.com/{i}.png"' for i in range(9))
    path = write(tmp_path, limit_spec("[runware, kie]", references=f"references: [{refs}]"))
    problem = only(validate_spec_file(path), "references[8]")
    assert problem.message == (
        "kie takes at most 8 reference images; this request has 9"
    )


def test_each_problem_is_reported_once_not_per_cell(tmp_path: Path) -> None:
    path = write(tmp_path, limit_spec(
        "wiro",
        matrix='matrix:\n  prompt: [a, b, c]\n  aspect_ratio: ["1:1", "4:5"]',
        output="output: {format: webp}",
    ))
    assert len(validate_spec_file(path)) == 1


def test_unknown_provider_everywhere_it_is_named(tmp_path: Path) -> None:
    problems = validate_spec_file(write(tmp_path, """\
        version: 1
        name: who
        provider: runwere
        matrix: {prompt: [a]}
        limits:
          kei: {rate: "5/s"}
        prices:
          wirro: {1K: 0.1}
    """))
    assert where(problems) == [(3, 11, "provider"), (6, 3, "limits.kei"), (8, 3, "prices.wirro")]
    assert "did you mean 'runware'?" in problems[0].message
    assert "known: apikley, gemini, gemini-batch, hiapi, kie, runware, wiro" in problems[0].message


def test_options_are_validated_against_each_providers_schema(tmp_path: Path) -> None:
    problems = validate_spec_file(write(tmp_path, """\
        version: 1
        name: opts
        provider: [runware, kie]
        matrix: {prompt: [a fox]}
        options:
          runware: {settings: {temperature: 3, topk: 1}}
          kie: {callBackUrl: 5}
    """))
    messages = {p.path: p.message for p in problems}
    assert set(messages) == {
        "options.runware.settings.temperature", "options.runware.settings.topk",
        "options.kie.callBackUrl",
    }
    assert "unknown key 'topk'" in messages["options.runware.settings.topk"]
    assert messages["options.kie.callBackUrl"].endswith("(kie options)")


def test_credentials_must_be_variables_the_providers_read(tmp_path: Path) -> None:
    problems = validate_spec_file(write(tmp_path, """\
        version: 1
        name: creds
        provider: kie
        matrix: {prompt: [a fox]}
        credentials:
          KIE_API_KEY: kie-api-key
          KEI_API_KEY: kei-api-key
    """))
    assert where(problems) == [(7, 3, "credentials.KEI_API_KEY")]


# -- templates, datasets, paths ----------------------------------------------------------


def test_placeholder_problems(tmp_path: Path) -> None:
    problems = validate_spec_file(write(tmp_path, """\
        version: 1
        name: holes
        provider: kie
        matrix:
          prompt: ["a {colour} fox {cell_id}", "a {{literal}} {bad.attr}"]
          include:
            - {prompt: "a {tint} fox", tint: blue}
            - {tint: red, prompt: "x"}
        output: {path: "{tint}/{cell_id}.{ext}"}
    """))
    messages = [(p.path, p.message) for p in problems]
    assert ("matrix.prompt[0]", messages[0][1]) == messages[0]
    assert "placeholder {colour}" in messages[0][1]
    assert "{cell_id} is only available in output.path" in messages[1][1]
    assert messages[2][0] == "matrix.prompt[1]" and "{bad.attr}" in messages[2][1]
    # {tint} exists only where include set it: output.path has no value for other cells
    assert messages[3][0] == "output.path" and "{tint} has no value in some cells" in (
        messages[3][1]
    )
    assert len(messages) == 4


def test_include_adding_a_combination_must_name_a_prompt_when_there_are_several(
    tmp_path: Path,
) -> None:
    problem = only(validate_spec_file(write(tmp_path, """\
        version: 1
        name: which
        provider: kie
        matrix:
          prompt: [a, b]
          include:
            - {aspect_ratio: "21:9"}
    """)), "matrix.include[0]")
    assert "without 'prompt'" in problem.message


def test_dataset_problems_point_at_the_dataset_path(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("sku,name,image\nA,x,a.png\nB,y,b.png\n")
    photo(tmp_path / "a.png")
    problems = validate_spec_file(write(tmp_path, """\
        version: 1
        name: rows
        provider: kie
        dataset:
          path: rows.csv
        matrix: {prompt: ["{sku}"]}
        references: ["{image}"]
    """))
    assert {(p.line, p.column, p.path) for p in problems} == {(5, 9, "dataset.path")}
    messages = sorted(p.message for p in problems)
    assert "column 'name' has the name of a built-in" in messages[0]


def test_missing_reference_from_a_dataset_row(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("sku,image\nA,a.png\nB,b.png\n")
    photo(tmp_path / "a.png")
    problem = only(validate_spec_file(write(tmp_path, """\
        version: 1
        name: rows
        provider: kie
        dataset: {path: rows.csv}
        matrix: {prompt: ["{sku}"]}
        references: ["{image}"]
    """)), "dataset.path")
    assert problem.message == (
        f"line 3 of rows.csv (column 'image'): reference image '{tmp_path / 'b.png'}' does "
        "not exist"
    )


def test_missing_dataset_file(tmp_path: Path) -> None:
    problem = only(validate_spec_file(write(tmp_path, """\
        version: 1
        name: rows
        provider: kie
        dataset: {path: nope.csv}
        matrix: {prompt: ["{sku}"]}
    """)), "dataset.path")
    assert "does not exist" in problem.message


def test_two_cells_with_one_output_path_name_both(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        version: 1
        name: clash
        provider: kie
        matrix:
          prompt: ["a {style} fox"]
          style: [ink, oil]
        output: {path: "fox.{ext}"}
    """)
    problem = only(validate_spec_file(path), "output.path")
    assert "add {style}" in problem.message and "'fox.png'" in problem.message
    # ids do not depend on the output path: the same spec with {cell_id} names them
    Path(path).write_text(Path(path).read_text().replace('"fox.{ext}"', '"{cell_id}.{ext}"'))
    ink, oil = expand(load_spec(path))
    assert f"{ink.cell_id} (" in problem.message and f"{oil.cell_id} (" in problem.message


def test_identical_requests_would_be_paid_twice(tmp_path: Path) -> None:
    problem = only(validate_spec_file(write(tmp_path, """\
        version: 1
        name: twice
        provider: kie
        matrix:
          prompt: ["a fox"]
          style: [ink, oil]
        output: {path: "{style}.{ext}"}
    """)), "matrix.style")
    assert "same request" in problem.message and "differ only in style" in problem.message


def test_matrix_without_combinations(tmp_path: Path) -> None:
    problem = only(validate_spec_file(write(tmp_path, """\
        version: 1
        name: empty
        provider: kie
        matrix: {prompt: [a], exclude: [{prompt: a}]}
    """)), "matrix")
    assert "no combinations" in problem.message


def test_reserved_axis_name(tmp_path: Path) -> None:
    problem = only(validate_spec_file(write(tmp_path, """\
        version: 1
        name: reserved
        provider: kie
        matrix: {prompt: ["{name}"], name: [a, b]}
    """)), "matrix.name")
    assert "built-in template variable" in problem.message


# -- the JobSpec ------------------------------------------------------------------------

DESIGN_EXAMPLE = """\
version: 1
name: spring-catalog
provider: [kie, runware]
matrix:
  prompt:
    - "Studio photo of {title} on white marble, soft shadow"
  aspect_ratio: ["1:1", "4:5", "16:9"]
  resolution: ["1K", "2K"]
  style: [photo, watercolor]
  exclude:
    - {aspect_ratio: "16:9", resolution: "2K"}
  include:
    - {aspect_ratio: "21:9", resolution: "4K", style: photo}
dataset:
  path: data/products.csv
references: ["{image_url}"]
repeat: 1
retries: 4
fail_fast: true
seed: 7
output:
  target: ./runs/{name}
  format: png
  path: "{sku}/{aspect_ratio}_{resolution}.{ext}"
  storage_options: {anon: true}
limits:
  kie: {rate: "20/10s", max_in_flight: 100, poll_interval: 2.5}
budget:
  max_usd: 25.0
options:
  runware: {settings: {temperature: 0.7}}
prices:
  kie: {1K: 0.1, 2K: 0.1, 4K: 0.15}
base_urls:
  kie: http://127.0.0.1:9999/kie
credentials:
  KIE_API_KEY: kie-api-key
"""


def test_design_example_every_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "specs" / "data").mkdir(parents=True)
    (tmp_path / "specs" / "data" / "products.csv").write_text(
        "sku,title,image_url\n"
        "S1,a linen shirt,https://cdn.example.com/s1.jpg\n"
        "S2,a wool scarf,https://cdn.example.com/s2.jpg\n"
    )
    path = write(tmp_path / "specs", DESIGN_EXAMPLE)
    monkeypatch.chdir("/")  # relative paths follow the spec, not the working directory
    spec = load_spec(path)
    assert spec.name == "spring-catalog" and spec.providers == ("kie", "runware")
    assert spec.output.target == str(tmp_path / "specs" / "runs" / "spring-catalog")
    assert spec.output.storage_options == {"anon": True}
    assert (spec.repeat, spec.retries, spec.fail_fast, spec.seed) == (1, 4, True, 7)
    assert spec.max_usd == 25.0
    assert spec.limits == {"kie": ProviderLimits("20/10s", 100, 2.5)}
    assert spec.options == {"runware": {"settings": {"temperature": 0.7}}}
    assert spec.prices == {"kie": {"1K": 0.1, "2K": 0.1, "4K": 0.15}}
    assert spec.base_urls == {"kie": "http://127.0.0.1:9999/kie"}
    assert spec.credentials == {"KIE_API_KEY": "kie-api-key"}
    cells = expand(spec)
    # design.md's prompt and path do not use {style}: photo and watercolor cells are the
    # same request written to the same file, so each is kept once
    assert len(cells) == 2 * (3 * 2 - 1 + 1)
    assert cells[0].references == ("https://cdn.example.com/s1.jpg",)
    assert cells[0].output_path == "S1/1%3A1_1K.png"
    assert cells[-1].output_path == "S2/21%3A9_4K.png"
    assert cells[-1].vars["style"] == "photo"


def test_design_example_with_style_in_prompt_and_path(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "products.csv").write_text("sku,title,image_url\nS1,a shirt,\n")
    text = DESIGN_EXAMPLE.replace("soft shadow", "soft shadow, {style}").replace(
        '"{sku}/{aspect_ratio}', '"{sku}/{style}/{aspect_ratio}'
    )
    cells = expand(load_spec(write(tmp_path, text)))
    assert len(cells) == 3 * 2 * 2 - 2 + 1
    assert cells[-1].output_path == "S1/photo/21%3A9_4K.png"
    assert cells[-1].prompt.endswith("soft shadow, photo")


def test_validation_writes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, limit_spec("wiro", output="output: {format: jpg, target: out}"))
    before = sorted(tmp_path.rglob("*"))
    assert validate_spec_file(path)
    assert sorted(tmp_path.rglob("*")) == before


def test_no_prefect_import_for_validate_expand_plan() -> None:
    code = (
        "import sys; from nbp.flows.spec.loader import load_spec; "
        "from nbp.flows.spec.cells import expand; "
        "from nbp.flows.spec.plan import make_plan; s = load_spec('specs/catalog.yaml'); "
        "make_plan(s, expand(s)).to_json(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == []


# -- the schema -------------------------------------------------------------------------


def test_schema_ships_as_package_data_and_is_valid_2020_12() -> None:
    schema = load_job_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    for key, prop in schema["properties"].items():
        assert prop.get("title"), key


def test_schema_enums_follow_the_model_facts() -> None:
    defs = load_job_schema()["$defs"]
    assert tuple(defs["aspectRatio"]["enum"]) == ASPECT_RATIOS
    assert tuple(defs["resolution"]["enum"]) == RESOLUTIONS
    assert tuple(load_job_schema()["properties"]["output"]["properties"]["format"]["enum"]) == (
        OUTPUT_FORMATS
    )


def test_collision_messages_name_both_cells_at_scale(tmp_path: Path) -> None:
    """10,000 cells, 9,900 of them writing a path an earlier cell writes: the message counts
    them and names the first pair, as when validation held every cell."""
    styles = ", ".join(f"s{i:02d}" for i in range(100))
    text = f"""\
        version: 1
        name: clash
        provider: kie
        repeat: 100
        matrix:
          prompt: ["a {{style}} fox"]
          style: [{styles}]
        output: {{path: "{{replicate}}.{{ext}}"}}
    """
    problem = only(validate_spec_file(write(tmp_path, text)), "output.path")
    assert (problem.line, problem.column) == (8, 16)  # the path template
    named = write(tmp_path, text.replace('"{replicate}.{ext}"', '"{cell_id}.{ext}"'), "ids.yaml")
    cells = expand(load_spec(named))
    first, second = cells[0], cells[100]  # style s00 and s01, replicate 0 both

    def described(style: str) -> str:
        return f"prompt='a {{style}} fox', style='{style}', aspect_ratio='1:1', resolution='1K'"

    assert problem.message == (
        f"9900 cells write to a path another cell writes, e.g. {first.cell_id} "
        f"({described('s00')}) and {second.cell_id} ({described('s01')}) both write '0.png'; "
        "add {style} or {cell_id} to output.path"
    )


# -- provider and model axes ----------------------------------------------------------------

LONG_PROMPT = "x" * 10_001  # apikley's documented limit is 10,000 characters


def pinned_spec(providers: str, exclude: str = "") -> str:
    return (
        "version: 1\nname: pins\n"
        f"matrix:\n  prompt: [short, \"{LONG_PROMPT}\"]\n  provider: {providers}\n{exclude}"
    )


def test_a_pinned_cell_is_checked_against_its_own_provider_only(tmp_path: Path) -> None:
    excluded = f"  exclude:\n    - {{provider: apikley, prompt: \"{LONG_PROMPT}\"}}\n"
    # valid: the long prompt runs on kie only, which takes it
    assert validate_spec_file(write(tmp_path, pinned_spec("[kie, apikley]", excluded))) == []
    problem = only(validate_spec_file(write(tmp_path, pinned_spec("[kie, apikley]"))),
                   "matrix.prompt[1]")
    assert "apikley accepts prompts of at most 10000 characters" in problem.message


def test_a_provider_axis_value_is_checked_where_it_is_written(tmp_path: Path) -> None:
    problems = validate_spec_file(write(tmp_path, pinned_spec("[kie, kei]")))
    problem = only(problems, "matrix.provider[1]")
    assert (problem.line, problem.column) == (5, 19)
    assert "unknown provider 'kei'; did you mean 'kie'?" in problem.message


def test_a_model_id_the_pinned_provider_does_not_offer(tmp_path: Path) -> None:
    text = ("version: 1\nname: pins\nmatrix:\n  prompt: [a fig]\n  provider: [kie, gemini]\n"
            "  model: [gemini-3-pro-image]\n")
    problem = only(validate_spec_file(write(tmp_path, text)), "matrix.model[0]")
    assert problem.message == (
        "model 'gemini-3-pro-image' is not a model id of kie: it runs one model and takes no "
        "model id; exclude {provider: kie, model: gemini-3-pro-image} in the matrix")
    fixed = text + "  exclude:\n    - {provider: kie, model: gemini-3-pro-image}\n"
    assert validate_spec_file(write(tmp_path, fixed)) == []


MAPPED = ("version: 1\nname: pins\nmatrix:\n  prompt: [a fig]\n  provider: [kie, gemini-batch]\n"
          "  model: {{{models}}}\n")


def test_model_ids_per_provider_name_providers_of_the_provider_axis(tmp_path: Path) -> None:
    problems = validate_spec_file(write(tmp_path, MAPPED.format(
        models="gemini: [gemini-3-pro-image], gemnii: [default]")))
    assert [(p.line, p.column, p.path, p.message) for p in problems] == [
        (6, 11, "matrix.model.gemini",
         "'gemini' is not in matrix.provider (kie, gemini-batch): no cell of it would ask for "
         "these model ids; did you mean 'gemini-batch'? add it to matrix.provider or remove it "
         "here"),
        (6, 41, "matrix.model.gemnii",
         "unknown provider 'gemnii'; did you mean 'gemini'? known: apikley, gemini, "
         "gemini-batch, hiapi, kie, runware, wiro"),
    ]


def test_a_model_id_per_provider_is_one_that_provider_offers(tmp_path: Path) -> None:
    problems = validate_spec_file(write(tmp_path, MAPPED.format(
        models="gemini-batch: [gemini-3-pro-image, default], kie: [default, nano]")))
    assert [(p.line, p.column, p.path, p.message) for p in problems] == [
        (6, 71, "matrix.model.kie[1]",
         "model 'nano' is not a model id of kie: it runs one model and takes no model id; "
         "list only kie's own model ids under matrix.model.kie, or `default` (its default "
         "model id)"),
    ]
    fixed = MAPPED.format(models="gemini-batch: [gemini-3-pro-image, default]")
    assert validate_spec_file(write(tmp_path, fixed)) == []


def test_without_a_provider_axis_the_model_mapping_names_the_providers(tmp_path: Path) -> None:
    text = ("version: 1\nname: pins\nmatrix:\n  prompt: [a fig]\n"
            "  model: {gemini: [gemini-3-pro-image], runware: [default]}\n")
    spec = load_spec(write(tmp_path, text))  # no `provider:` needed: every cell is pinned
    assert spec.providers == ("gemini", "runware") and spec.routed == ()
    assert spec.matrix.axes["provider"] == ("gemini", "runware")
    assert spec.matrix.axes["model"] == ("gemini-3-pro-image", "default")


def test_an_include_entry_that_overwrites_an_earlier_one_is_a_note(tmp_path: Path) -> None:
    # the README's old pattern: both entries match every gemini cell; the second wins
    text = ("version: 1\nname: pins\nmatrix:\n  prompt: [\"a {style} fig\"]\n"
            "  style: [ink, oil]\n  provider: [kie, gemini]\n  include:\n"
            "    - {provider: gemini, model: gemini-3-pro-image-preview}\n"
            "    - {provider: gemini, model: gemini-3-pro-image}\n")
    path = write(tmp_path, text)
    job = load_job(path)
    assert job.notes == (
        f"{path}:9:33: matrix.include[1].model: note: this include entry overwrites model "
        "'gemini-3-pro-image-preview', which include[0] set, with 'gemini-3-pro-image' in 2 "
        "combinations, so they lose 'gemini-3-pro-image-preview' (GitHub Actions semantics: "
        "an entry merges into every combination it matches, over what earlier entries "
        "added); to ask for both, give the provider its model ids: `model: {gemini: "
        "[gemini-3-pro-image-preview, gemini-3-pro-image]}`",)
    assert {c.model for c in job.cells if c.provider == "gemini"} == {"gemini-3-pro-image"}
    other = text.replace("model: gemini-3-pro-image-preview", "size: big").replace(
        "model: gemini-3-pro-image}", "size: small}")
    note, = load_job(write(tmp_path, other)).notes
    assert note.endswith("to have both, make it a list axis: `size: [big, small]`")


@pytest.mark.parametrize(
    ("prompt", "path", "message"),
    [
        pytest.param('{"a b": x}', "matrix.prompt['a b']",
                     "'a b' is not a template name: 1 to 64 letters, digits, '_', '.' and '-'",
                     id="name"),
        pytest.param(f'{{{"t" * 65}: x}}', f"matrix.prompt.{'t' * 65}",
                     f"'{'t' * 65}' is not a template name: 1 to 64 letters, digits, '_', "
                     "'.' and '-'", id="long-name"),
        pytest.param('{t1: x, t2: x}', "matrix.prompt.t2",
                     "template 't2' has the same text as 't1': one request under two names; "
                     "remove one of them", id="same-text"),
        pytest.param('{t1: ""}', "matrix.prompt.t1", "must not be empty", id="empty"),
        pytest.param("{}", "matrix.prompt", "must not be empty", id="no-templates"),
        pytest.param("a fig", "matrix.prompt",
                     "expected a list of prompts or a mapping template name -> prompt, got a "
                     "string", id="type"),
    ],
)
def test_named_prompts_schema_problems(
    tmp_path: Path, prompt: str, path: str, message: str
) -> None:
    text = f"version: 1\nname: named\nprovider: kie\nmatrix:\n  prompt: {prompt}\n"
    assert only(validate_spec_file(write(tmp_path, text)), path).message == message


def test_template_needs_named_prompts(tmp_path: Path) -> None:
    text = ("version: 1\nname: named\nprovider: kie\nmatrix:\n  prompt: [\"a {style} fig\"]\n"
            "  style: [ink]\noutput: {path: \"{template}/{style}.{ext}\"}\n")
    problem = only(validate_spec_file(write(tmp_path, text)), "output.path")
    assert problem.message.startswith(
        "placeholder {template} in this output path is the name of the cell's prompt "
        "template: name the prompts to use it (matrix.prompt as a mapping")
    named = text.replace('[\"a {style} fig\"]', '{fig: \"a {style} fig\"}')
    assert validate_spec_file(write(tmp_path, named)) == []


def test_an_include_or_exclude_entry_may_name_a_template(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, """\
        version: 1
        name: named
        provider: kie
        matrix:
          prompt: {fig: "a {style} fig", pear: "a {style} pear"}
          style: [ink, oil]
          exclude: [{prompt: pear, style: oil}]
          include: [{prompt: fig, mood: calm}]
        """))
    assert spec.matrix.exclude == ({"prompt": "a {style} pear", "style": "oil"},)
    assert spec.matrix.include == ({"prompt": "a {style} fig", "mood": "calm"},)
    assert [c.template for c in expand(spec)] == ["fig", "fig", "pear"]


def test_an_added_combination_without_a_provider_needs_the_provider_list(
    tmp_path: Path,
) -> None:
    text = ("version: 1\nname: pins\nmatrix:\n  prompt: [a fig]\n  provider: [kie, runware]\n"
            "  include:\n    - {prompt: a pear}\n")
    problem = only(validate_spec_file(write(tmp_path, text)), "matrix.include[0]")
    assert "names no provider" in problem.message
    assert validate_spec_file(write(tmp_path, "provider: kie\n" + text)) == []


# -- output.gallery ---------------------------------------------------------------------

GALLERY_SPEC = """\
    version: 1
    name: looks
    provider: kie
    dataset: {path: rows.csv}
    matrix:
      prompt: ["{title} in {style} style, {lighting} light"]
      style: [photo, watercolor]
      lighting: [soft, hard]
      include: [{style: ink, lighting: soft, mood: calm}]
    output:
      gallery:
        rows: [style, sku]
        columns: [lighting, provider, mood]
"""


def test_output_gallery_names_the_axes_of_rows_and_columns(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("sku,title\nA,boot\nB,shoe\n")
    spec = load_spec(write(tmp_path, GALLERY_SPEC))
    assert spec.output.gallery == GallerySpec(("style", "sku"), ("lighting", "provider", "mood"))
    one_side = GALLERY_SPEC.replace("rows: [style, sku]", "").replace(
        "columns: [lighting, provider, mood]", "columns: [replicate, run, status]")
    assert load_spec(write(tmp_path, one_side, "one.yaml")).output.gallery == GallerySpec(
        (), ("replicate", "run", "status"))
    plain = GALLERY_SPEC.split("    output:")[0]
    assert load_spec(write(tmp_path, plain, "plain.yaml")).output.gallery is None


def test_a_gallery_axis_the_job_does_not_have_is_located(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("sku,title\nA,boot\nB,shoe\n")
    text = GALLERY_SPEC.replace("rows: [style, sku]", "rows: [stlye, sku, name]")
    problems = validate_spec_file(write(tmp_path, text))
    assert where(problems) == [(12, 12, "output.gallery.rows[0]"),
                               (12, 24, "output.gallery.rows[2]")]
    axes = ("prompt, style, lighting, aspect_ratio, resolution, mood, sku, title, replicate, "
            "run, provider, model, account, status")
    assert problems[0].message == (
        f"'stlye' is not an axis of this job; did you mean 'style'? axes: {axes}"
    )
    assert problems[1].message == f"'name' is not an axis of this job; axes: {axes}"


def test_named_prompts_make_template_a_gallery_axis(tmp_path: Path) -> None:
    named = """version: 1
name: g
provider: kie
matrix:
  prompt: {t1: "a {style} cup", t2: "a {style} mug"}
  style: [glass, clay]
output: {target: out, gallery: {rows: [template], columns: [style]}}
"""
    assert load_spec(write(tmp_path, named)).output.gallery == GallerySpec(
        ("template",), ("style",))
    listed = named.replace('{t1: "a {style} cup", t2: "a {style} mug"}',
                           '["a {style} cup", "a {style} mug"]')
    problems = validate_spec_file(write(tmp_path, listed, "listed.yaml"))
    assert [p.message.split(";")[0] for p in problems] == [
        "'template' is not an axis of this job"]


def test_a_gallery_axis_in_rows_and_columns_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("sku,title\nA,boot\nB,shoe\n")
    text = GALLERY_SPEC.replace("columns: [lighting, provider, mood]",
                                "columns: [lighting, sku]")
    problem = only(validate_spec_file(write(tmp_path, text)), "output.gallery.columns[1]")
    assert (problem.line, problem.column) == (13, 25)
    assert problem.message == ("'sku' is in output.gallery.rows too; an axis makes rows or "
                               "columns, not both")


def test_gallery_names_are_not_judged_without_the_dataset_columns(tmp_path: Path) -> None:
    """An unreadable dataset is its own problem: its columns are unknown, so a gallery axis
    that may be one of them is not reported."""
    problems = validate_spec_file(write(tmp_path, GALLERY_SPEC))
    assert [p.path for p in problems] == ["dataset.path"]


@pytest.mark.parametrize(("gallery", "path", "message"), [
    pytest.param("{rows: style}", "output.gallery.rows", "expected a list, got a string",
                 id="not-a-list"),
    pytest.param("{rows: [style, style]}", "output.gallery.rows", "lists the same value twice",
                 id="twice"),
    pytest.param("{rows: []}", "output.gallery.rows", "must not be empty", id="empty"),
    pytest.param("{rows: [style], colums: [lighting]}", "output.gallery.colums",
                 "unknown key 'colums'; did you mean 'columns'? allowed here: rows, columns",
                 id="unknown-key"),
])
def test_gallery_schema_problems(tmp_path: Path, gallery: str, path: str, message: str) -> None:
    problems = validate_spec_file(write(tmp_path, f"""\
        version: 1
        name: looks
        provider: kie
        matrix: {{prompt: ["a {{style}} fox"], style: [photo, ink], lighting: [soft]}}
        output: {{gallery: {gallery}}}
    """))
    assert only(problems, path).message == message


def test_a_seed_a_provider_cannot_take_is_located_at_seed(tmp_path: Path) -> None:
    """Gemini takes int32 seeds: seed + the last replicate past it is a problem at `seed`
    (the adapter would refuse every such cell); a provider that sends no seed does not mind."""
    text = """version: 1
name: s
provider: {provider}
repeat: 3
seed: 2147483646
matrix: {{prompt: [a cup]}}
output: {{target: out}}
"""
    problems = validate_spec_file(write(tmp_path, text.format(provider="gemini")))
    assert [(p.line, p.path, p.message) for p in problems] == [
        (5, "seed", "gemini takes seeds from 0 to 2147483647; this one is 2147483648 "
                    "(seed + replicate 2)")]
    assert validate_spec_file(write(tmp_path, text.format(provider="kie"), "kie.yaml")) == []


# -- spend windows ---------------------------------------------------------------------


def test_a_spend_window_is_read_for_its_provider(tmp_path: Path) -> None:
    from nbp.flows.spec.rate import SpendLimit

    spec = load_spec(write(tmp_path, """\
        version: 1
        name: capped
        provider: gemini
        matrix: {prompt: [a fox]}
        limits:
          gemini: {spend: {usd: 10, window: 600}, max_in_flight: 4}
    """))
    assert spec.limits == {"gemini": ProviderLimits(max_in_flight=4,
                                                    spend=SpendLimit(10.0, 600.0))}


def test_a_spend_window_out_of_bounds_or_below_one_image_is_a_located_problem(
    tmp_path: Path,
) -> None:
    problems = validate_spec_file(write(tmp_path, """\
        version: 1
        name: capped
        provider: [gemini, kie]
        matrix: {prompt: [a fox], resolution: ["1K", "4K"]}
        limits:
          gemini: {spend: {usd: 0.2, window: 600}}
          kie: {spend: {usd: 0, window: 90000}}
          runware: {spend: {usd: 5}}
    """))
    assert where(problems) == [
        (6, 25, "limits.gemini.spend.usd"),
        (7, 22, "limits.kie.spend.usd"),
        (7, 33, "limits.kie.spend.window"),
        (8, 20, "limits.runware.spend.window"),
    ]
    messages = {p.path: p.message for p in problems}
    assert messages["limits.gemini.spend.usd"].startswith(
        "a 4K image costs $0.240 on gemini, more than the $0.2 this window allows: it could "
        "never be sent")
    assert "greater than 0" in messages["limits.kie.spend.usd"]
    assert "at most 86400" in messages["limits.kie.spend.window"]
    assert "'window'" in messages["limits.runware.spend.window"]


@pytest.mark.parametrize(("where_", "path", "prompt"), [
    pytest.param("output.path", "{stlye}/{cell_id}.png", "a cup", id="in-the-path"),
    pytest.param("matrix.prompt[0]", "{cell_id}.png", "a cup in {stlye}", id="in-the-prompt"),
    pytest.param("matrix.prompt[0]", "{prompt}.png", "a cup in {stlye}", id="prompt-in-path"),
])
def test_a_template_typo_is_reported_as_the_typo_not_as_a_collision(
    tmp_path: Path, where_: str, path: str, prompt: str
) -> None:
    """`{stlye}` makes the prompt plain text (or the path `{cell_id}.{ext}`): every style
    then has one id and one path. That stand-in is no collision of the spec's: the typo is
    the one problem, with its "did you mean", even when output comes first in the file."""
    problems = validate_spec_file(write(tmp_path, f"""\
        version: 1
        name: typo
        provider: kie
        output:
          target: out
          path: "{path}"
        matrix:
          prompt: ["{prompt}"]
          style: [ink, oil]
    """))
    assert [(p.path, p.message.rpartition("; ")[2]) for p in problems] == [
        (where_, "did you mean {style}?")], problems


def test_a_real_collision_beside_a_typo_is_still_reported(tmp_path: Path) -> None:
    """Two prompts writing one `{style}` path collide whatever the typo in them says."""
    problems = validate_spec_file(write(tmp_path, """\
        version: 1
        name: typo
        provider: kie
        matrix:
          prompt: ["a cup in {stlye}", "a bowl in {stlye}"]
          style: [ink, oil]
        output: {target: out, path: "{style}.png"}
    """))
    assert [p.path for p in problems] == ["matrix.prompt[0]", "matrix.prompt[1]", "output.path"]
    assert "both write 'ink.png'" in problems[2].message
