"""A spend cap through the engine, against the Gemini emulator enforcing one: Google's
rolling cap per billing account, miniaturised to $0.50 per 1.5 s (three images at
~$0.1375 each: the price $0.134 plus thinking and text tokens). The evidence is the
emulator's: creates it accepted and the 429s its cap answered."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nbp.flows.engine.job import RunOptions, run_job
from nbp.providers.emulator.gemini import GeminiEmulator
from nbp.providers.emulator.hub import EmulatorHub
from tests.flows.engine.emulated import fresh_gemini, manifest, run, serving

CAP_USD, WINDOW_S = 0.5, 1.5
LATENCY_S = 0.2
CELLS = 9


@pytest.fixture(scope="module")
def hub() -> Iterator[EmulatorHub]:
    with serving(["gemini"], LATENCY_S) as running:
        yield running


@pytest.fixture
def gemini(hub: EmulatorHub) -> GeminiEmulator:
    return fresh_gemini(hub, latency_s=LATENCY_S, spend_cap_usd=CAP_USD,
                        spend_cap_window_s=WINDOW_S)


def write_spec(tmp_path: Path, limits: dict[str, Any]) -> Path:
    spec = {
        "version": 1, "name": "capped", "provider": "gemini", "retries": 0,
        "matrix": {"prompt": [f"a plum number {i}" for i in range(CELLS)]},
        "output": {"target": str(tmp_path / "out")},
        "limits": {"gemini": limits},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_the_spend_window_keeps_every_create_under_the_cap(
    gemini: GeminiEmulator, tmp_path: Path
) -> None:
    started = time.monotonic()
    result = run(write_spec(tmp_path, {"spend": {"usd": CAP_USD, "window": WINDOW_S}}))
    elapsed = time.monotonic() - started
    assert result.counts["succeeded"] == CELLS
    assert len(gemini.creates) == CELLS            # each image created once
    assert gemini.billing.refusals == 0            # and never one past the cap
    assert gemini.billing.peak_usd <= CAP_USD
    assert elapsed >= 2 * WINDOW_S                 # three images a window: three windows
    costs = manifest(tmp_path)["cost_usd"].to_list()
    assert all(0.134 < cost < 0.14 for cost in costs)  # the token cost, above the price


def test_without_the_window_the_cap_answers_429s_that_create_nothing(
    gemini: GeminiEmulator, tmp_path: Path
) -> None:
    """The control: the same cells with no spend limit in the spec meet the cap; each 429
    pauses the account (RetryInfo), creates nothing, and the cells still finish."""
    result = run(write_spec(tmp_path, {}))
    assert gemini.billing.refusals > 0
    assert result.counts["succeeded"] == CELLS
    assert len(gemini.creates) == CELLS


def test_a_create_waits_for_the_window_before_its_intent_is_journalled(
    gemini: GeminiEmulator, tmp_path: Path
) -> None:
    """One image a window: the second cell waits with nothing journalled as sent (a stop
    then would leave it unsent, nothing to ask the provider about)."""
    gemini.configure(spend_cap_usd=None)
    spec = write_spec(tmp_path, {"spend": {"usd": 0.15, "window": 2.0}})
    data = yaml.safe_load(spec.read_text())
    data["matrix"]["prompt"] = ["a plum", "a pear"]
    spec.write_text(yaml.safe_dump(data))
    cells = tmp_path / "out" / ".nbp" / "cells"

    def states() -> list[str]:
        return [json.loads(p.read_text())["state"] for p in cells.glob("*.json")]

    async def go() -> list[list[str]]:
        task = asyncio.create_task(run_job(RunOptions(spec=str(spec))))
        seen: list[list[str]] = []
        while not task.done():
            seen.append(sorted(states()))
            await asyncio.sleep(0.05)
        await task
        return seen

    seen = asyncio.run(go())
    assert len(gemini.creates) == 2
    waiting = [s for s in seen if s == ["succeeded"]]
    assert len(waiting) > 10  # a second and more: one image done, the other not yet sent
    assert all(s.count("create_sent") + s.count("created") <= 1 for s in seen)
