"""`nbp run`'s flags are generated from the run options' declarations, and keep the spelling
and defaults users and scripts rely on (design.md "CLI"); a bad shard or input limit exits 2
before anything starts."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from nbp.flows.cli import EXIT_INVALID, _parser, main
from nbp.flows.orchestration.run_options import INPUT_OPTIONS, OPTIONS, RUN_OPTIONS

# The flags as they are spelled and what they default to: a contract, written out.
RUN_FLAGS = {
    "--target": None, "--emulate": False, "--force": False, "--max-usd": None,
    "--shard": None, "--shared-limits": False, "--own-accounts": False,
    "--retry-uncertain": False, "--run-id": None, "--patience": None, "--batch-wait": None,
    "--redo-rejected": False, "--archive-stale": False, "--succeed-with-failures": False,
    "--chunk-size": 200, "--allow-path": [], "--allow-private-hosts": False,
    "--dataset": None, "--max-cells": None, "--emulator-latency": None,
}
RUN_ONLY_FLAGS = ("--from", "--spec-dir", "--live")  # the CLI's own: which spec to run
INPUT_FLAGS = ("--allow-path", "--allow-private-hosts", "--dataset", "--max-cells")


def command(name: str) -> argparse.ArgumentParser:
    commands = next(a for a in _parser()._actions
                    if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = commands.choices[name]
    return found


def flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.option_strings[-1]: a for a in parser._actions
            if a.option_strings and a.option_strings[-1] != "--help"}


def test_run_keeps_every_flag_its_spelling_and_default() -> None:
    found = flags(command("run"))
    assert list(found) == [*RUN_ONLY_FLAGS, *RUN_FLAGS]  # `nbp run --help`'s order too
    parsed = vars(command("run").parse_args(["job.yaml"]))
    assert {flag: parsed[found[flag].dest] for flag in RUN_FLAGS} == RUN_FLAGS


def test_run_flags_are_generated_from_the_declarations() -> None:
    found = flags(command("run"))
    declared = [o for o in RUN_OPTIONS if o.flag]
    assert [o.flag for o in declared] == list(RUN_FLAGS)
    for option in declared:
        action = found[option.flag]
        assert (action.dest, action.help) == (option.name, option.help)
        assert action.metavar == option.metavar


@pytest.mark.parametrize("name", ["validate", "plan", "run"])
def test_every_command_that_reads_a_spec_takes_the_input_flags(name: str) -> None:
    found = flags(command(name))
    assert all(flag in found for flag in INPUT_FLAGS)
    assert [o.flag for o in INPUT_OPTIONS] == list(INPUT_FLAGS)


def test_a_parsed_command_line_names_the_flows_parameters() -> None:
    parsed = vars(command("run").parse_args([
        "job.yaml", "--patience", "30", "--batch-wait", "5", "--allow-path", "a",
        "--allow-path", "b", "--emulator-latency", "0.2", "--max-usd", "3",
    ]))
    assert (parsed["patience_s"], parsed["batch_wait_s"], parsed["emulator_latency_s"]) == (
        30.0, 5.0, 0.2)
    assert parsed["allow_paths"] == ["a", "b"] and parsed["max_usd"] == 3.0
    assert set(OPTIONS) - {"spec_source", "command"} <= set(parsed)  # both set by nbp itself


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "name": "cli", "provider": "kie", "matrix": {"prompt": ["a fig"]},
        "output": {"target": str(tmp_path / "out")},
    }))
    return path


@pytest.mark.parametrize(("args", "says"), [
    pytest.param(["--shard", "4/4"],
                 "nbp run: --shard: '4/4' is not of the form i/n with 0 <= i < n, e.g. 0/4",
                 id="shard-past-the-end"),
    pytest.param(["--shard", "x"], "nbp run: --shard: 'x' is not of the form i/n",
                 id="shard-not-a-shard"),
    pytest.param(["--max-cells", "0"], "nbp run: --max-cells 0: give a positive number",
                 id="no-cells"),
])
def test_a_value_that_cannot_be_used_exits_2_before_anything_starts(
    spec: Path, args: list[str], says: str, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", str(spec), "--emulate", *args]) == EXIT_INVALID
    assert says in capsys.readouterr().err
    assert not (spec.parent / "out").exists()


def test_validate_and_plan_show_an_include_that_overwrites_an_earlier_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "name": "cli", "output": {"target": str(tmp_path / "out")},
        "matrix": {"prompt": ["a {style} fig"], "style": ["ink", "oil"],
                   "provider": ["kie", "gemini"],
                   "include": [{"provider": "gemini", "model": "gemini-3-pro-image-preview"},
                               {"provider": "gemini", "model": "gemini-3-pro-image"}]},
    }, sort_keys=False))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: valid\n{path}:" in out
    assert ("matrix.include[1].model: note: this include entry overwrites model "
            "'gemini-3-pro-image-preview', which include[0] set, with 'gemini-3-pro-image' in "
            "2 combinations") in out
    assert main(["plan", str(path), "--offline"]) == 0
    plan = capsys.readouterr()
    assert "  gemini    gemini-3-pro-image " in plan.out  # the plan's row per model id
    assert "matrix.include[1].model: note: this include entry overwrites" in plan.err


# -- nbp gallery ---------------------------------------------------------------------------


GALLERY_SPEC = """version: 1
name: foxes
provider: kie
matrix:
  prompt: ["A {style} fox, {lighting} light"]
  style: [photo, ink]
  lighting: [soft, hard]
output:
  target: ./out
  gallery: {rows: [style], columns: [lighting]}
"""


def fox_rows() -> list[dict[str, Any]]:
    return [
        {"cell_id": f"{style}-{light}", "job": "foxes", "run_id": "r1", "provider": "kie",
         "prompt": f"A {style} fox, {light} light", "aspect_ratio": "1:1", "resolution": "1K",
         "status": "succeeded", "output_path": f"{style}-{light}.png", "cost_usd": 0.09,
         "vars": {"prompt": "A {style} fox, {lighting} light", "style": style,
                  "lighting": light}}
        for style in ("photo", "ink") for light in ("soft", "hard")
    ]  # fmt: skip


def fox_target(target: str, storage_options: dict[str, Any] | None = None) -> Any:
    """A target as a run leaves it: manifest, images, and the run's record of its spec."""
    from nbp.outputs.manifest import rows_to_frame, write_manifest
    from nbp.outputs.runs import RunRecord, merge_record
    from nbp.outputs.sink import Sink

    sink = Sink(target, storage_options)
    write_manifest(sink, rows_to_frame(fox_rows()))
    for row in fox_rows():
        sink.write_bytes(row["output_path"], b"\x89PNG\r\n\x1a\n", overwrite=True)
    merge_record(sink, RunRecord.start(run_id="r1", job="foxes", spec_source="foxes.yaml",
                                       spec_text=GALLERY_SPEC))
    return sink


def caption(page: str) -> str | None:
    found = re.search(r"<caption>([^<]*)</caption>", page)
    return found[1] if found else None


def test_gallery_redraws_in_the_spec_s_pivot_or_the_one_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fox_target(str(tmp_path / "out"))
    page = tmp_path / "out" / "index.html"
    assert main(["gallery", str(tmp_path / "out")]) == 0
    assert caption(page.read_text()) == "rows: style; columns: lighting"  # the recorded one
    assert f"gallery: {page} (rows style; columns lighting)" in capsys.readouterr().out
    assert main(["gallery", str(tmp_path / "out"), "--rows", "lighting,style",
                 "--columns", "provider"]) == 0
    assert caption(page.read_text()) == "rows: lighting · style; columns: provider"
    assert main(["gallery", str(tmp_path / "out"), "--rows", "lighting"]) == 0
    assert caption(page.read_text()) == "rows: lighting; columns: aspect_ratio · resolution"


@pytest.mark.parametrize("args, says", [
    pytest.param(["--rows", "colour"], "nbp gallery: --rows: 'colour' is not an axis of this "
                 "target; axes: style, lighting, prompt, aspect_ratio,", id="unknown-axis"),
    pytest.param(["--rows", "styl", "--columns", "lightning"], "--rows: 'styl' is not an "
                 "axis of this target (did you mean 'style'?); --columns: 'lightning' is not",
                 id="two-misspelt"),
    pytest.param(["--rows", "style", "--columns", "style"], "'style' is in --rows and "
                 "--columns", id="both-sides"),
    pytest.param(["--out", "elsewhere/x.html"], "by relative path", id="out-beside"),
    pytest.param(["--out", "out/A1.png"], "the page is an .html file", id="out-not-a-page"),
])  # fmt: skip
def test_gallery_refuses_what_it_cannot_draw_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    args: list[str], says: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    fox_target("out")
    assert main(["gallery", "out", *args]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1  # one line
    assert not (tmp_path / "out" / "index.html").exists()


def test_gallery_of_a_target_without_a_manifest_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gallery", str(tmp_path / "nothing")]) == EXIT_INVALID
    assert "no manifest.parquet at" in capsys.readouterr().err


def test_a_recorded_pivot_that_no_longer_fits_draws_the_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nbp.outputs.manifest import rows_to_frame, write_manifest
    from nbp.outputs.sink import Sink

    sink = fox_target(str(tmp_path / "out"))
    rows = [{**row, "vars": {"style": "ink"}} for row in fox_rows()]  # no lighting any more
    write_manifest(sink, rows_to_frame(rows))
    assert main(["gallery", str(tmp_path / "out")]) == 0
    assert "the newest run's output.gallery does not fit" in capsys.readouterr().err
    assert caption((tmp_path / "out" / "index.html").read_text()) is None
    assert Sink(str(tmp_path / "out")).exists("index.html")


def test_gallery_out_writes_a_page_above_the_target(tmp_path: Path) -> None:
    fox_target(str(tmp_path / "runs" / "out"))
    assert main(["gallery", str(tmp_path / "runs" / "out"), "--rows", "lighting", "--out",
                 str(tmp_path / "foxes.html")]) == 0
    page = (tmp_path / "foxes.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == 4 and all((tmp_path / src).is_file() for src in srcs)
    assert all(src.startswith("runs/out/") for src in srcs)
    assert not (tmp_path / "runs" / "out" / "index.html").exists()  # the target's: untouched


def test_gallery_redraws_a_target_in_a_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    """On S3 (moto's server on loopback), configured the way a user configures fsspec for
    the command line; the page is read back with a fresh client."""
    import uuid

    import fsspec.config

    from tests.s3server import s3_server

    with s3_server() as s3:
        monkeypatch.setitem(fsspec.config.conf, "s3", dict(s3.storage_options))
        prefix = f"runs/foxes-{uuid.uuid4().hex[:8]}"
        fox_target(s3.url(prefix), s3.storage_options)
        assert main(["gallery", s3.url(prefix), "--rows", "lighting"]) == 0
        assert main(["gallery", s3.url(prefix), "--out", s3.url("runs/foxes.html")]) == 0
        assert main(["gallery", s3.url(prefix), "--out", s3.url("x/foxes.html")]) == (
            EXIT_INVALID)
        fresh = s3.fresh_fs()
        page = fresh.cat_file(f"{s3.bucket}/{prefix}/index.html").decode()
        assert caption(page) == "rows: lighting; columns: aspect_ratio · resolution"
        above = fresh.cat_file(f"{s3.bucket}/runs/foxes.html").decode()
        assert caption(above) == "rows: style; columns: lighting"
        srcs = re.findall(r'<img src="([^"]+)"', above)
        assert len(srcs) == 4 and all(
            fresh.exists(f"{s3.bucket}/runs/{src}") for src in srcs)
