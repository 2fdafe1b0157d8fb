"""Batch lifetimes through the engine against the Gemini emulator: a batch that expires
(48 h pending or running, shrunk to a fraction of a second), results Google no longer serves
(kept 6 weeks), the batch's priority and its count of failed requests. The evidence is what
the emulator created (batches, generateContent calls) and each cell's manifest row."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from nbp.flows.spec.loader import validate_spec_file
from nbp.providers.emulator.core import FAIL_MARKER
from nbp.providers.emulator.gemini import GeminiEmulator
from nbp.providers.emulator.hub import EmulatorHub
from nbp.providers.gemini_facts import INITIAL_MARKUP
from tests.flows.engine.emulated import fresh_gemini, manifest, run, serving

LATENCY_S = 0.3
PROMPTS = ["a plum on slate", "a pear on slate", "a fig on slate"]


@pytest.fixture(scope="module")
def hub() -> Iterator[EmulatorHub]:
    with serving(["gemini"], LATENCY_S) as running:
        yield running


@pytest.fixture
def gemini(hub: EmulatorHub) -> GeminiEmulator:
    return fresh_gemini(hub, latency_s=LATENCY_S, fail_prob=0.0, submit_5xx_prob=0.0,
                        drop_after_create_prob=0.0, create_5xx_after_create_prob=0.0)


def write_spec(tmp_path: Path, provider: Any, **top: Any) -> Path:
    spec: dict[str, Any] = {
        "version": 1, "name": "lifetimes", "provider": provider, "retries": 0,
        "matrix": {"prompt": PROMPTS},
        "output": {"target": str(tmp_path / "out")},
        "limits": {"gemini-batch": {"poll_interval": 0.1}},
        **top,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def generated(gemini: GeminiEmulator) -> int:
    """generateContent calls that created an image (batches are counted apart)."""
    return len(gemini.creates) - len(gemini.batches)


def by_status(frame: pl.DataFrame) -> dict[str, int]:
    return dict(frame.group_by("status").len().iter_rows())


# -- a batch that expires ---------------------------------------------------------------------


def test_an_expired_batch_sends_its_cells_to_the_next_channel(
    gemini: GeminiEmulator, tmp_path: Path
) -> None:
    gemini.configure(expire_after_s=0.15)  # every batch expires before it could finish
    spec = write_spec(tmp_path, ["gemini-batch", "gemini"])
    assert run(spec).counts["succeeded"] == 3
    frame = manifest(tmp_path)
    assert set(frame["provider"]) == {"gemini"}
    assert (len(gemini.batches), generated(gemini)) == (1, 3)  # never a second batch
    assert run(spec).counts["succeeded"] == 3  # and nothing again after
    assert (len(gemini.batches), generated(gemini)) == (1, 3)


def test_a_batch_a_later_run_finds_expired_goes_to_the_next_channel(
    gemini: GeminiEmulator, tmp_path: Path
) -> None:
    """The common case: a run leaves its batch pending, the next one finds it expired."""
    gemini.configure(latency_s=30.0, expire_after_s=0.4)
    spec = write_spec(tmp_path, ["gemini-batch", "gemini"])
    assert run(spec, batch_wait_s=0.1).counts["pending"] == 3
    gemini.configure(latency_s=LATENCY_S)  # the batch keeps its own turnaround
    time.sleep(0.5)
    assert run(spec).counts["succeeded"] == 3
    assert set(manifest(tmp_path)["provider"]) == {"gemini"}
    assert (len(gemini.batches), generated(gemini)) == (1, 3)


def test_with_no_other_channel_an_expired_batch_leaves_its_cells_pending_then_creates_anew(
    gemini: GeminiEmulator, tmp_path: Path
) -> None:
    gemini.configure(expire_after_s=0.15)
    spec = write_spec(tmp_path, "gemini-batch")
    first = run(spec)
    assert first.counts["pending"] == 3 and first.outcome == "pending"  # exit 75: waiting
    frame = manifest(tmp_path)
    assert set(frame["error_code"]) == {"batch_expired"}
    assert frame["cost_usd"].sum() == 0.0  # nothing ran, nothing was billed
    assert frame["task_group"].null_count() == 3  # no live batch to collect
    assert "the next run creates it again" in frame["error_message"][0]
    assert len(gemini.batches) == 1
    gemini.configure(expire_after_s=None)
    assert run(spec).counts["succeeded"] == 3
    assert len(gemini.batches) == 2  # a new batch, once the provider said the first failed


def test_lines_an_expired_batch_ran_are_collected_the_rest_move_on(
    gemini: GeminiEmulator, tmp_path: Path
) -> None:
    """The [I] reading: Google serves results for the lines that ran before the expiry."""
    gemini.configure(expire_after_s=0.15, expired_results="partial")
    assert run(write_spec(tmp_path, ["gemini-batch", "gemini"])).counts["succeeded"] == 3
    frame = manifest(tmp_path).sort("prompt")
    ran = frame.filter(pl.col("provider") == "gemini-batch")
    assert len(ran) == 2 and all(0.06 < c < 0.07 for c in ran["cost_usd"])  # billed, half
    assert frame.filter(pl.col("provider") == "gemini").height == 1
    assert (len(gemini.batches), generated(gemini)) == (1, 1)


# -- results no longer served ---------------------------------------------------------------


def test_results_no_longer_served_fail_their_cells_billed_and_are_never_created_again(
    gemini: GeminiEmulator, tmp_path: Path
) -> None:
    gemini.configure(results_gone=True)
    spec = write_spec(tmp_path, ["gemini-batch", "gemini"])
    for _ in range(2):
        result = run(spec)
        assert result.counts["failed"] == 3 and result.exit_code == 1
        frame = manifest(tmp_path)
        assert set(frame["error_code"]) == {"results_expired"}
        # billed; their usage is gone: counted at what each line held
        assert all(cost == pytest.approx(0.067 * INITIAL_MARKUP) for cost in frame["cost_usd"])
        assert (len(gemini.batches), generated(gemini)) == (1, 0)  # nowhere again
    downloads = [p for _, p in gemini.requests if p.endswith(":download")]
    assert len(downloads) == 2  # one per run, however many cells


# -- priority and the failed count --------------------------------------------------------------


def test_the_priority_option_goes_with_the_batch(gemini: GeminiEmulator, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "gemini-batch", options={"gemini-batch": {"priority": 5}})
    assert run(spec).counts["succeeded"] == 3
    (batch,) = gemini.batches.values()
    assert batch.priority == 5
    assert gemini.creates[0].body["batch"]["priority"] == "5"  # int64: a string


def test_a_priority_that_is_not_an_integer_is_a_located_problem(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "gemini-batch", options={"gemini-batch": {"priority": "high"}})
    (problem,) = validate_spec_file(str(spec))
    assert problem.path == "options.gemini-batch.priority"


def test_a_failed_count_that_differs_from_the_results_is_a_warning_naming_both(
    gemini: GeminiEmulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gemini.configure(failed_count_skew=2)
    spec = write_spec(tmp_path, "gemini-batch",
                      matrix={"prompt": [*PROMPTS[:2], f"a quince {FAIL_MARKER}"]})
    with caplog.at_level(logging.WARNING, logger="nbp.batching"):
        result = run(spec)
    assert (result.counts["succeeded"], result.counts["failed"]) == (2, 1)
    (warning,) = [r.getMessage() for r in caplog.records if "failedRequestCount" in r.message]
    assert "reports 3 failed request(s)" in warning and "hold 1 error line(s)" in warning
