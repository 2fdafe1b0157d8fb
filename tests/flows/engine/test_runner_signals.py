"""What the runner does with a channel's signals beyond one cell, against Google's emulator
(no Prefect): an overloaded model is waited out on its channel, then left for another channel
after the run's patience; a 503 without Google's body stays a create that may exist; a model
id Google does not serve is dropped on that channel for the run. The evidence is what the
emulators received (creates, requests) and what the manifest counts as spent."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from nbp.flows.engine.policy import RetryPolicy
from nbp.providers.emulator.hub import EmulatorHub
from nbp.providers.gemini_facts import INITIAL_MARKUP
from tests.flows.engine.emulated import manifest, run, serving

LATENCY_S = 0.1
PROVIDERS = ("gemini", "kie")
GA, PREVIEW = "gemini-3-pro-image", "gemini-3-pro-image-preview"
QUICK = RetryPolicy(base_s=0.01, cap_s=0.05)


@pytest.fixture(scope="module")
def hub() -> Iterator[EmulatorHub]:
    with serving(list(PROVIDERS), LATENCY_S) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(hub: EmulatorHub) -> None:
    hub.reset()
    for name in PROVIDERS:
        hub[name].configure(latency_s=LATENCY_S, fail_prob=0.0)


def write_spec(tmp_path: Path, provider: Any, *, in_flight: int = 10,
               matrix: dict[str, Any] | None = None, **top: Any) -> Path:
    spec: dict[str, Any] = {
        "version": 1, "name": "signals", "provider": provider,
        "matrix": {"prompt": ["a {style} lamp"], "style": ["brass", "glass", "paper"],
                   **(matrix or {})},
        "output": {"target": str(tmp_path / "out")},
        "limits": {name: {"poll_interval": 0.05, "max_in_flight": in_flight}
                   for name in PROVIDERS},
        **top,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def seen(counts: dict[str, int]) -> dict[str, int]:
    return {status: n for status, n in counts.items() if n}


def generate_calls(hub: EmulatorHub, model: str) -> int:
    """generateContent requests the Gemini emulator received for `model` (answered or not)."""
    path = f"/gemini/v1beta/models/{model}:generateContent"
    return sum(1 for request in hub["gemini"].requests if request == ("POST", path))


# -- overload ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["unavailable", "high_demand"])
@pytest.mark.parametrize("retry_s", [0.05, None], ids=["retry-info", "no-retry-info"])
def test_an_overload_is_waited_out_and_each_cell_is_created_and_paid_once(
    hub: EmulatorHub, tmp_path: Path, kind: str, retry_s: float | None
) -> None:
    """503 UNAVAILABLE or 429 "high demand" with Google's body: nothing was generated, so
    the same cell is sent again on the same channel (RetryInfo's wait, else backoff) until
    the model answers: one create and one image's cost per cell, none uncertain."""
    gemini = hub["gemini"]
    gemini.configure(overload=kind, overload_retry_s=retry_s)
    calm = threading.Timer(0.6, lambda: gemini.configure(overload="none"))
    calm.start()
    try:
        result = run(write_spec(tmp_path, "gemini"), retry=QUICK)
    finally:
        calm.cancel()
    frame = manifest(tmp_path)
    assert seen(result.counts) == {"succeeded": 3}
    assert len(gemini.creates) == 3  # one per cell: none was made twice
    assert generate_calls(hub, GA) > 3  # the overloaded answers were sent again
    one_image = frame["cost_usd"][0]
    assert 0.13 < one_image < 0.14 and frame["cost_usd"].to_list() == [one_image] * 3
    assert result.spent_usd == pytest.approx(3 * one_image)
    assert set(frame["service_tier"]) == {"standard"}


def test_a_channel_that_stays_overloaded_hands_its_cells_on_after_patience(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    """Fallback [gemini, kie]: Gemini answers every create 503 UNAVAILABLE; once a cell has
    waited the run's patience there it goes to Kie. Gemini made and billed nothing."""
    hub["gemini"].configure(overload="unavailable", overload_retry_s=0.05)
    patience = RetryPolicy(base_s=0.01, cap_s=0.05, patience_s=0.4)
    result = run(write_spec(tmp_path, ["gemini", "kie"]), retry=patience)
    frame = manifest(tmp_path)
    assert seen(result.counts) == {"succeeded": 3}
    assert (len(hub["gemini"].creates), len(hub["kie"].creates)) == (0, 3)
    assert generate_calls(hub, GA) >= 3 * 2  # each cell was sent to Gemini more than once
    assert set(frame["provider"]) == {"kie"} and frame["service_tier"].is_null().all()
    assert result.spent_usd == pytest.approx(frame["cost_usd"].sum())


def test_with_no_other_channel_an_overloaded_cell_stays_until_the_rate_limit_budget(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    """No channel to move to: patience does not end the cell; when even the rate-limit
    retries are used up it fails, unpaid and never uncertain (the next run sends it)."""
    hub["gemini"].configure(overload="high_demand", overload_retry_s=0.01)
    policy = RetryPolicy(base_s=0.01, cap_s=0.05, patience_s=0.0, max_rate_limited=4)
    result = run(write_spec(tmp_path, "gemini", in_flight=3), retry=policy)
    frame = manifest(tmp_path)
    assert seen(result.counts) == {"failed": 3}
    assert hub["gemini"].creates == [] and generate_calls(hub, GA) == 3 * 5
    assert set(frame["error_code"]) == {"RESOURCE_EXHAUSTED"}
    assert frame["cost_usd"].to_list() == [0.0] * 3 and result.spent_usd == 0.0


def test_a_503_without_googles_body_stays_uncertain_and_is_never_sent_again(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    """The emulator made each image, then lost its answer (an empty 503): the cell may be
    billed, so it is uncertain at what it held (the price times Gemini's markup: tokens on
    top of the image), and neither this run nor the next sends it."""
    hub["gemini"].configure(bare_503=True)
    spec = write_spec(tmp_path, ["gemini", "kie"])
    first = run(spec, retry=QUICK)
    again = run(spec, retry=QUICK)
    frame = manifest(tmp_path)
    assert seen(first.counts) == seen(again.counts) == {"uncertain": 3}
    assert len(hub["gemini"].creates) == 3 and hub["kie"].creates == []
    assert frame["cost_usd"].to_list() == [pytest.approx(0.134 * INITIAL_MARKUP)] * 3


# -- a model id Google does not serve -----------------------------------------------------------


def test_a_retired_model_is_dropped_on_its_channel_and_the_model_axis_goes_on(
    hub: EmulatorHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A model axis [preview, GA] on Gemini with the preview id retired: one 404, said once;
    the cells pinned to the preview fail `model_not_found` at no cost without another
    request; the GA cells run."""
    hub["gemini"].configure(retired_models=(PREVIEW,))
    spec = write_spec(tmp_path, "gemini", in_flight=1, matrix={"model": [PREVIEW, GA]})
    with caplog.at_level(logging.WARNING, logger="nbp.runner"):
        result = run(spec, retry=QUICK)
    frame = manifest(tmp_path)
    assert seen(result.counts) == {"succeeded": 3, "failed": 3}
    assert generate_calls(hub, PREVIEW) == 1 and len(hub["gemini"].creates) == 3
    gone = frame.filter(pl.col("model") == PREVIEW)
    assert set(gone["status"]) == {"failed"} and set(gone["error_code"]) == {"model_not_found"}
    assert gone["cost_usd"].to_list() == [0.0] * 3
    assert all(GA in message for message in gone["error_message"])  # the id that exists
    assert set(frame.filter(pl.col("model") == GA)["status"]) == {"succeeded"}
    said = [r for r in caplog.records if "is dropped on this channel" in r.getMessage()]
    assert len(said) == 1 and PREVIEW in said[0].getMessage()


def test_a_retired_model_sends_the_job_to_its_next_channel(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    """`options.gemini.model` names the retired id: after the first 404 every cell goes to
    the next channel of the fallback list; Gemini is asked once."""
    hub["gemini"].configure(retired_models=(PREVIEW,))
    spec = write_spec(tmp_path, ["gemini", "kie"], in_flight=1,
                      options={"gemini": {"model": PREVIEW}})
    result = run(spec, retry=QUICK)
    frame = manifest(tmp_path)
    assert seen(result.counts) == {"succeeded": 3}
    assert generate_calls(hub, PREVIEW) == 1 and hub["gemini"].creates == []
    assert len(hub["kie"].creates) == 3 and set(frame["provider"]) == {"kie"}


# -- service tiers ------------------------------------------------------------------------------


def test_the_tier_that_served_is_in_the_manifest_and_its_cost(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, ["gemini", "kie"], matrix={"provider": ["gemini", "kie"]},
                      routing="spread", options={"gemini": {"service_tier": "flex"}})
    result = run(spec, retry=QUICK)
    frame = manifest(tmp_path)
    assert seen(result.counts) == {"succeeded": 6}
    flex = frame.filter(pl.col("provider") == "gemini")
    assert set(flex["service_tier"]) == {"flex"}
    assert all(0.06 < cost < 0.07 for cost in flex["cost_usd"])  # half the standard image
    assert frame.filter(pl.col("provider") == "kie")["service_tier"].is_null().all()
