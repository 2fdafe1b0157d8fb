"""What Prefect's UI shows of a run: the flow run's name, the progress artifact at the end,
the summary table and the result markdown, each job under its own keys. The flow runs on the
session's real Prefect server against the emulators; the evidence is read back from the API."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from nbp.flows.engine.job import RunResult
from nbp.flows.orchestration.flow import (
    artifact_key,
    build_flow,
    location,
    result_markdown,
    run_name,
    slug,
    summary_table,
)


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("cup-axes", "cup-axes", id="as-is"),
    pytest.param("Cup_Axes.v2", "cup-axes-v2", id="upper-underscore-dot"),
    pytest.param("..", "job", id="nothing-left"),
])
def test_slugs_are_what_prefect_takes_as_artifact_keys(text: str, expected: str) -> None:
    assert slug(text) == expected
    assert artifact_key("progress", text) == f"nbp-progress-{expected}"


def test_a_flow_run_is_named_after_the_job_and_the_run_id() -> None:
    assert run_name("cup-axes", "ff93f32c-1a2") == "cup-axes-ff93f32c"
    assert run_name("catalog.v2", "ab12cd34ef56", "2/4") == "catalog-v2-ab12cd34-shard-2-4"


def test_only_an_http_url_is_a_link_a_path_is_code() -> None:
    assert location("https://cdn.example.com/run/index.html") == (
        "[https://cdn.example.com/run/index.html](<https://cdn.example.com/run/index.html>)")
    assert location("/srv/out/index.html") == "`/srv/out/index.html`"
    assert location("s3://bucket/out/index.html") == "`s3://bucket/out/index.html`"


def finished(**changes: Any) -> RunResult:
    values: dict[str, Any] = {
        "job": "cup-axes", "run_id": "ff93f32c-1a2", "target": "/srv/out",
        "manifest_uri": "/srv/out/manifest.parquet", "gallery_uri": "/srv/out/index.html",
        "counts": {"succeeded": 10, "failed": 1, "pending": 0}, "spent_usd": 0.99,
        "failures": ({"status": "failed", "count": 1, "error_code": "content_policy",
                      "error_message": "refused | a [statue]"},),
    }
    values.update(changes)
    return RunResult(**values)


def test_the_summary_is_one_row_with_a_column_per_count_and_the_money_in_its_own() -> None:
    (row,) = summary_table(finished(counts={"succeeded": 4, "pending": 2, "busy": 1}))
    assert row == {"run_id": "ff93f32c-1a2", "outcome": "failed", "cells": 7,
                   "succeeded": 4, "failed": 0, "pending": 2, "skipped": 0, "busy": 1,
                   "spent_usd": 0.99}
    (emulated,) = summary_table(finished(emulated=True))
    assert "would_cost_usd" in emulated and "spent_usd" not in emulated
    (rerun,) = summary_table(finished(spent_usd=3.02, target_spent_usd=8.05))
    assert (rerun["spent_usd"], rerun["target_spent_usd"]) == (3.02, 8.05)
    assert "- **spent**: $3.02 this run, $8.05 in all on the target" in result_markdown(
        finished(spent_usd=3.02, target_spent_usd=8.05))


def test_the_result_is_markdown_with_paths_as_code_and_reasons_in_a_table() -> None:
    text = result_markdown(finished())
    assert text.startswith("### cup-axes · run `ff93f32c-1a2` · failed")
    assert "- **cells**: 10 succeeded, 1 failed (of 11)" in text
    assert "- **gallery**: `/srv/out/index.html`" in text and "](/srv" not in text
    assert "| 1 | failed | content_policy: refused \\| a \\[statue\\] |" in text
    assert "{" not in text  # no Python dict


# -- on the Prefect server ------------------------------------------------------------------


def spec_file(tmp_path: Path, file_name: str, **changes: Any) -> Path:
    spec: dict[str, Any] = {
        "version": 1, "name": "cup_axes.v2", "provider": "kie",
        "matrix": {"prompt": ["a cup", "a bowl", "a jug"], "aspect_ratio": ["1:1", "4:5"]},
        "output": {"target": str(tmp_path / "out")},
        "limits": {"kie": {"poll_interval": 0.1}},
        **changes,
    }
    path = tmp_path / file_name
    path.write_text(yaml.safe_dump(spec))
    return path


def flow_run_and_artifacts(spec: Path) -> tuple[Any, dict[str, Any]]:
    """The newest flow run of `spec` and its artifacts by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    async def read() -> tuple[Any, dict[str, Any]]:
        async with get_client() as client:
            runs = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=50)
            run = next(r for r in runs if r.parameters.get("spec") == str(spec))
            artifacts = await client.read_artifacts(limit=200)
        return run, {str(a.key): a for a in artifacts if a.flow_run_id == run.id}

    return asyncio.run(read())


@pytest.mark.prefect
def test_the_ui_shows_the_run_by_its_name_and_its_artifacts_say_how_it_ended(
    prefect_api_url: str, tmp_path: Path
) -> None:
    """A deployment's run (no job name given): named by the spec's file until the spec is
    read, then after the job; progress at 100 % at the end (it stayed at 44 % before), a
    real table, markdown whose paths are code, every key the job's own."""
    spec = spec_file(tmp_path, "catalog.yaml")
    result = asyncio.run(build_flow()(spec=str(spec), emulate=True, emulator_latency_s=0.1))
    assert result["exit_code"] == 0
    run, artifacts = flow_run_and_artifacts(spec)
    assert run.name == f"cup-axes-v2-{result['run_id'][:8]}"
    assert set(artifacts) == {"nbp-progress-cup-axes-v2", "nbp-summary-cup-axes-v2",
                              "nbp-result-cup-axes-v2"}
    progress = artifacts["nbp-progress-cup-axes-v2"]
    assert progress.data == 100.0 and progress.description.startswith("succeeded: 6/6 done")
    (row,) = json.loads(artifacts["nbp-summary-cup-axes-v2"].data)  # a table: rows
    assert row["succeeded"] == 6 and row["cells"] == 6 and row["would_cost_usd"] == 0.54
    markdown = artifacts["nbp-result-cup-axes-v2"].data
    assert f"`{tmp_path / 'out' / 'index.html'}`" in markdown
    assert f"`{tmp_path / 'out' / 'manifest.parquet'}`" in markdown


@pytest.mark.prefect
def test_a_run_named_by_the_cli_and_a_pending_batch_shows_as_pending(
    prefect_api_url: str, tmp_path: Path
) -> None:
    """The CLI gives the job's name from the start; cells whose Google batch is still
    running are pending in the progress artifact, the table and the result, not success."""
    spec = spec_file(tmp_path, "batch.yaml", provider="gemini-batch", limits={})
    flow = build_flow(job="cup_axes.v2")
    result = asyncio.run(flow(spec=str(spec), emulate=True, emulator_latency_s=30.0,
                              batch_wait_s=1.0))
    assert result["outcome"] == "pending" and result["counts"]["pending"] == 6
    run, artifacts = flow_run_and_artifacts(spec)
    assert run.name == f"cup-axes-v2-{result['run_id'][:8]}"
    progress = artifacts["nbp-progress-cup-axes-v2"]
    assert progress.data == 0.0  # no cell is done: each waits to be collected
    assert "0/6 done: 0 ok, 0 failed · 6 pending" in progress.description
    (row,) = json.loads(artifacts["nbp-summary-cup-axes-v2"].data)
    assert (row["outcome"], row["succeeded"], row["pending"]) == ("pending", 0, 6)
    assert "- **pending**: 6 cell(s) keep their task for the next run" in (
        artifacts["nbp-result-cup-axes-v2"].data)
