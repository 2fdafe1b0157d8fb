"""Untrusted input: where references and datasets may come from, and nbp's own files.

Each rule is pinned twice: on `check_location` itself, and through `nbp validate`, whose
problems name the spec line and JSON path (and the dataset row a value came from).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from nbp.flows.spec.cells import OWN_FILES, expand, own_file
from nbp.flows.spec.inputs import (
    DEFAULT_PROTOCOLS,
    InputPolicy,
    InputRefused,
    check_location,
    protocol_problem,
    split_protocol,
)
from nbp.flows.spec.loader import Problem, load_job, load_spec, validate_spec_file
from tests.conftest import run_nbp

POLICY = InputPolicy()


def write(folder: Path, text: str, name: str = "job.yaml") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def photo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (90, 120, 150)).save(path, "PNG")
    return path


def only(problems: list[Problem], path: str) -> Problem:
    found = [p for p in problems if p.path == path]
    assert len(found) == 1, problems
    return found[0]


def refs_spec(references: str, extra: str = "") -> str:
    return f"""\
        version: 1
        name: refs
        provider: kie
        matrix: {{prompt: ["a {{sku}} on marble"]}}
        references: {references}
        {extra}
    """


# -- check_location -------------------------------------------------------------------


@pytest.mark.parametrize(("uri", "expected"), [
    pytest.param("https://cdn.example.com/a.png", "https://cdn.example.com/a.png", id="https"),
    pytest.param("HTTP://cdn.example.com/a.png", "http://cdn.example.com/a.png", id="HTTP"),
    pytest.param("hTTpS://x/a.png?s=1::2", "https://x/a.png?s=1::2", id="mixed-case"),
    pytest.param("S3://bucket/a.png", "s3://bucket/a.png", id="S3"),
    pytest.param("memory://refs/a.png", "memory://refs/a.png", id="memory"),
])
def test_urls_pass_with_their_protocol_in_lower_case(uri: str, expected: str) -> None:
    assert check_location(uri, base_dir="/specs", policy=POLICY) == expected


def test_local_paths_under_the_spec_folder(tmp_path: Path) -> None:
    base = str(tmp_path / "specs")
    os.makedirs(base)
    assert check_location("data/a.png", base_dir=base, policy=POLICY) == f"{base}/data/a.png"
    assert check_location("data/../a.png", base_dir=base, policy=POLICY) == f"{base}/a.png"
    assert check_location(f"file://{base}/a.png", base_dir=base, policy=POLICY) == (
        f"{base}/a.png")


@pytest.mark.parametrize("uri", [
    pytest.param("/etc/passwd", id="absolute"),
    pytest.param("../outside.png", id="dotdot"),
    pytest.param("data/../../outside.png", id="dotdot-inside"),
    pytest.param("file:///etc/passwd", id="file-url"),
    pytest.param("FILE:///etc/passwd", id="FILE-url"),
    pytest.param("~/secret.png", id="home"),
])
def test_local_paths_outside_the_spec_folder_are_refused(tmp_path: Path, uri: str) -> None:
    base = tmp_path / "specs"
    base.mkdir()
    with pytest.raises(InputRefused, match="is outside the spec's folder") as caught:
        check_location(uri, base_dir=str(base), policy=POLICY)
    assert "--allow-path DIR" in str(caught.value)


def test_a_symlink_out_of_the_spec_folder_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "specs"
    base.mkdir()
    (base / "photo.png").symlink_to("/etc/passwd")
    with pytest.raises(InputRefused, match="resolves to '/etc/passwd'"):
        check_location("photo.png", base_dir=str(base), policy=POLICY)


def test_allowed_paths_extend_the_spec_folder(tmp_path: Path) -> None:
    base, photos = tmp_path / "specs", tmp_path / "photos"
    base.mkdir()
    photos.mkdir()
    policy = InputPolicy(allow_paths=(str(photos),))
    target = str(photos / "a.png")
    assert check_location(target, base_dir=str(base), policy=policy) == target
    with pytest.raises(InputRefused, match="and the allowed paths"):
        check_location(str(tmp_path / "photos-2" / "a.png"), base_dir=str(base), policy=policy)


@pytest.mark.parametrize("uri", [
    pytest.param("simplecache::http://127.0.0.1/latest/meta-data/", id="simplecache-http"),
    pytest.param("simplecache::/etc/passwd", id="simplecache-local"),
    pytest.param("zip://a.png::s3://bucket/x.zip", id="zip-s3"),
    pytest.param("data/a.png::memory://x", id="relative"),
])
def test_chained_urls_are_refused(uri: str) -> None:
    with pytest.raises(InputRefused, match="chains fsspec protocols"):
        check_location(uri, base_dir="/specs", policy=POLICY)


@pytest.mark.parametrize("uri", ["ftp://host/a.png", "sftp://host/a.png", "github://o:r@/a.png",
                                 "reference://x", "dir://x"])
def test_protocols_off_the_allow_list_are_refused(uri: str) -> None:
    with pytest.raises(InputRefused, match="is not allowed for inputs"):
        check_location(uri, base_dir="/specs", policy=POLICY)
    assert DEFAULT_PROTOCOLS == ("s3", "gs", "gcs", "az", "abfs", "memory")


def test_an_allowed_protocol_must_be_installed() -> None:
    # gcsfs is not installed in the test environment; s3fs is
    pytest.importorskip("s3fs")
    with pytest.raises(InputRefused, match=r"Please install gcsfs.*\(pip install gcsfs\)"):
        check_location("gs://bucket/a.png", base_dir="/specs", policy=POLICY)
    assert protocol_problem("s3") is None
    assert protocol_problem("memory") is None


def test_protocol_problem_names_the_package_or_the_typo() -> None:
    assert "pip install adlfs" in (protocol_problem("az") or "")
    assert (protocol_problem("nosuchfs") or "").startswith("unknown fsspec protocol 'nosuchfs'")
    assert "did you mean 'memory'" in (protocol_problem("memroy") or "")


def test_split_protocol() -> None:
    assert split_protocol("HTTPS://x/y") == ("https", "x/y")
    assert split_protocol("C://x") == (None, "C://x")  # a drive letter, not a protocol
    assert split_protocol("data/a.png") == (None, "data/a.png")


def test_input_policy_from_the_environment() -> None:
    assert InputPolicy.from_environ({}) == InputPolicy()
    assert InputPolicy.from_environ({"NBP_MAX_CELLS": "2_000"}).max_cells == 2000
    assert InputPolicy.from_environ({"NBP_MAX_CELLS": "5"}, max_cells=7).max_cells == 7
    with pytest.raises(ValueError, match="NBP_MAX_CELLS='lots' is not a positive integer"):
        InputPolicy.from_environ({"NBP_MAX_CELLS": "lots"})


def test_documented_defaults() -> None:
    policy = InputPolicy()
    assert (policy.max_cells, policy.max_spec_bytes, policy.max_yaml_values) == (
        1_000_000, 1_000_000, 100_000)
    assert (policy.max_dataset_rows, policy.max_reference_bytes) == (1_000_000, 20 << 20)
    assert policy.allow_paths == ()


# -- references through validate ----------------------------------------------------


def test_a_reference_outside_the_spec_folder_is_a_located_problem(tmp_path: Path) -> None:
    path = write(tmp_path / "specs", refs_spec('["/etc/passwd"]').replace("{sku}", "cat"))
    problem = only(validate_spec_file(path), "references[0]")
    assert (problem.line, problem.column) == (5, 14)
    assert problem.message.startswith("reference '/etc/passwd' is outside the spec's folder")


def test_dataset_values_that_leave_the_folder_name_their_row(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    photo(specs / "data" / "a.png")
    (specs / "rows.csv").parent.mkdir(parents=True, exist_ok=True)
    (specs / "rows.csv").write_text(
        "sku,image\n"
        "A,data/a.png\n"
        "B,/etc/passwd\n"
        "C,simplecache::http://127.0.0.1:9/latest/meta-data/\n"
        "D,https://cdn.example.com/d.png\n"
    )
    path = write(specs, refs_spec('["{image}"]', "dataset: {path: rows.csv}"))
    problems = validate_spec_file(path)
    assert {(p.line, p.column, p.path) for p in problems} == {(5, 14, "references[0]")}
    messages = sorted(p.message for p in problems)
    assert messages[0].startswith(  # rows are named by their line in the file
        "line 3 of rows.csv: reference '/etc/passwd' is outside the spec's folder")
    assert messages[1].startswith(
        "line 4 of rows.csv: reference 'simplecache::http://127.0.0.1:9/latest/meta-data/' "
        "chains")
    assert f"{path}:5:14: references[0]: line 3 of rows.csv:" in str(
        next(p for p in problems if "line 3" in p.message))


def test_references_from_an_axis_name_the_cell(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        version: 1
        name: refs
        provider: kie
        matrix: {prompt: ["a {img} cat"], img: ["../x.png"]}
        references: ["{img}"]
    """)
    problem = only(validate_spec_file(path), "references[0]")
    assert "is outside the spec's folder" in problem.message
    assert "(for prompt='a {img} cat'" in problem.message


def test_allow_paths_admit_references_and_datasets_elsewhere(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    ref = photo(shared / "a.png")
    (shared / "rows.csv").write_text(f"sku,image\nA,{ref}\n")
    path = write(tmp_path / "specs",
                 refs_spec('["{image}"]', f"dataset: {{path: {shared / 'rows.csv'}}}"))
    refused = validate_spec_file(path)
    assert [p.path for p in refused] == ["dataset.path"]
    assert "dataset" in refused[0].message and "is outside the spec's folder" in (
        refused[0].message)
    job = load_job(path, policy=InputPolicy(allow_paths=(str(shared),)))
    assert [c.references for c in job.cells] == [(str(ref),)]
    assert job.spec.policy.allow_paths == (str(shared),)


def test_http_references_in_any_case_become_lower_case_urls(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, refs_spec(
        '["HTTP://cdn.example.com/a.png", "Https://cdn.example.com/b.png"]'
    ).replace("{sku}", "cat")))
    [cell] = expand(spec)
    assert cell.references == ("http://cdn.example.com/a.png", "https://cdn.example.com/b.png")


def test_a_reference_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(b"\0" * 2048)
    photo(tmp_path / "small.png")
    path = write(tmp_path, refs_spec('["small.png", "big.png"]').replace("{sku}", "cat"))
    problems = validate_spec_file(path, policy=InputPolicy(max_reference_bytes=1024))
    problem = only(problems, "references[1]")
    assert "is 2,048 bytes, more than the 1,024 nbp reads" in problem.message
    assert validate_spec_file(path) == []


def test_a_dataset_outside_the_spec_folder_is_not_read(tmp_path: Path) -> None:
    path = write(tmp_path / "specs", refs_spec("[]", "dataset: {path: /etc/passwd.csv}"))
    problem = only(validate_spec_file(path), "dataset.path")
    assert problem.message.startswith("dataset '/etc/passwd.csv' is outside the spec's folder")


@pytest.mark.parametrize(("dataset", "message"), [
    pytest.param("gs://bucket/rows.csv", "pip install gcsfs", id="gs-not-installed"),
    pytest.param("ftp://host/rows.csv", "protocol 'ftp' is not allowed", id="ftp"),
    pytest.param("simplecache::s3://b/rows.csv", "chains fsspec protocols", id="chained"),
])
def test_dataset_urls_follow_the_reference_rules(
    tmp_path: Path, dataset: str, message: str
) -> None:
    path = write(tmp_path, refs_spec("[]", f"dataset: {{path: '{dataset}'}}"))
    problem = only(validate_spec_file(path), "dataset.path")
    assert message in problem.message


def test_a_memory_dataset_is_allowed(tmp_path: Path) -> None:
    import fsspec

    with fsspec.open("memory://nbp-inputs/rows.csv", "w") as handle:
        handle.write("sku\nA\nB\n")
    path = write(tmp_path, refs_spec("[]", "dataset: {path: 'memory://nbp-inputs/rows.csv'}"))
    assert len(load_job(path).cells) == 2


# -- output targets and nbp's own files ---------------------------------------------


@pytest.mark.parametrize(("target", "message"), [
    pytest.param("gs://bucket/x", "Please install gcsfs to access Google Storage "
                 "(pip install gcsfs)", id="gs"),
    pytest.param("abfs://c/x", "pip install adlfs", id="abfs"),
    pytest.param("nosuchfs://c/x", "unknown fsspec protocol 'nosuchfs'", id="unknown"),
])
def test_a_target_protocol_that_is_not_installed(
    tmp_path: Path, target: str, message: str
) -> None:
    path = write(tmp_path, refs_spec("[]", f"output: {{target: '{target}'}}"
                                     ).replace("{sku}", "cat"))
    problem = only(validate_spec_file(path), "output.target")
    assert (problem.line, problem.column) == (6, 18)
    assert message in problem.message


@pytest.mark.parametrize("rendered", [
    "manifest.parquet", "Manifest.PARQUET", "index.html", "INDEX.html", ".nbp/cells/x.json",
    "x.nbp-tmp-1.png",
])
def test_own_files(rendered: str) -> None:
    assert own_file(rendered)
    assert own_file("sub/manifest.parquet") is None and own_file("index.html.png") is None


@pytest.mark.parametrize(("output_path", "shown"), [
    pytest.param("manifest.parquet", "manifest.parquet", id="manifest"),
    pytest.param("Index.HTML", "Index.HTML", id="gallery-any-case"),
    pytest.param("{sku}", "index.html", id="from-data"),
    pytest.param("{sku}.parquet", "manifest.parquet", id="text-and-data"),
])
def test_output_paths_may_not_be_nbps_own_files(
    tmp_path: Path, output_path: str, shown: str
) -> None:
    (tmp_path / "rows.csv").write_text("sku\nshoe\nindex.html\nmanifest\n")
    path = write(tmp_path, refs_spec("[]", "dataset: {path: rows.csv}\n        "
                                     f"output: {{path: '{output_path}'}}"))
    problem = only(validate_spec_file(path), "output.path")
    assert f"output path '{shown}'" in problem.message
    assert "is nbp's own" in problem.message and "change output.path" in problem.message


def test_own_file_names_follow_the_outputs_package() -> None:
    from nbp.outputs.gallery import GALLERY_NAME
    from nbp.outputs.manifest import MANIFEST_NAME

    assert OWN_FILES == (MANIFEST_NAME, GALLERY_NAME)


# -- the command line ---------------------------------------------------------------


def test_validate_allow_path_flag(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    ref = photo(shared / "a.png")
    spec = write(tmp_path / "specs", refs_spec(f'["{ref}"]').replace("{sku}", "cat"))
    refused = run_nbp("validate", spec)
    assert refused.returncode == 2
    assert f"{spec}:5:14: references[0]: reference '{ref}' is outside" in refused.stderr
    allowed = run_nbp("validate", spec, "--allow-path", str(shared), "--allow-path", "/nope")
    assert allowed.returncode == 0, allowed.stderr
    planned = run_nbp("plan", spec, "--allow-path", str(shared), "--json")
    assert planned.returncode == 0, planned.stderr
