"""A cap holds on a channel billed by tokens, from the first wave of creates: Gemini's
image of $0.134 costs ~$0.1375 (input, thinking and text tokens besides the image), so five
prices of room pay for four images, not five that would pass the cap. A channel billed a
flat price per image still fits exactly as many images as the cap has prices. The evidence
is the emulator's creates and the target's ledger."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from nbp.flows.spec.loader import load_spec
from nbp.flows.spec.settings import provider_rules
from nbp.providers.emulator.hub import EmulatorHub
from tests.flows.engine.emulated import ledger_spend, manifest, run, serving

LATENCY_S = 0.1
CELLS = 8
IMAGES = 5  # the cap: this many prices


@pytest.fixture(scope="module")
def hub() -> Iterator[EmulatorHub]:
    with serving(["gemini", "kie"], LATENCY_S) as running:
        yield running


def write_spec(tmp_path: Path, provider: str, max_usd: float | None = None) -> Path:
    spec = {
        "version": 1, "name": f"markup-{provider}", "provider": provider, "retries": 0,
        "matrix": {"prompt": [f"a {provider} quince number {i}" for i in range(CELLS)]},
        "output": {"target": str(tmp_path / "out")},
        "limits": {provider: {"poll_interval": 0.05}},
    }
    if max_usd is not None:
        spec["budget"] = {"max_usd": max_usd}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def capped(tmp_path: Path, provider: str) -> tuple[Path, float]:
    """The spec with a cap of `IMAGES` of its 1K prices, and that cap."""
    price = provider_rules(load_spec(str(write_spec(tmp_path, provider))), provider).price("1K")
    cap = round(IMAGES * price, 6)
    return write_spec(tmp_path, provider, cap), cap



def test_a_token_billed_channel_never_passes_the_cap_even_in_the_first_wave(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    hub.reset()
    spec, cap = capped(tmp_path, "gemini")
    assert cap == pytest.approx(0.67)
    result = run(spec)
    creates = len(hub["gemini"].creates)
    rows = manifest(tmp_path)
    costs = rows.filter(rows["status"] == "succeeded")["cost_usd"].to_list()
    assert all(cost > 0.134 for cost in costs)    # every image cost more than its price
    assert creates == result.counts["succeeded"] == IMAGES - 1   # not five: they'd cost $0.69
    spent = ledger_spend(tmp_path, result)
    assert spent == pytest.approx(sum(costs))
    assert spent <= cap


def test_a_flat_priced_channel_fits_exactly_the_cap_in_prices(
    hub: EmulatorHub, tmp_path: Path
) -> None:
    hub.reset()
    spec, cap = capped(tmp_path, "kie")
    result = run(spec)
    assert len(hub["kie"].creates) == result.counts["succeeded"] == IMAGES
    spent = ledger_spend(tmp_path, result)
    assert spent == pytest.approx(cap)
    assert spent <= cap + 1e-9


def test_a_cost_above_its_hold_is_counted_as_billed_and_told_once(
    hub: EmulatorHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A price the spec sets too low ($0.10 for an image billed ~$0.1375): the first two
    creates hold $0.11 each under a cap of $0.25 and are billed $0.275 together. The ledger
    counts what Google billed (past the cap by the difference: the provider's word is final),
    one warning says so, and the next create holds the ratio seen, so nothing more is sent."""
    hub.reset()
    spec = write_spec(tmp_path, "gemini", 0.25)
    text = yaml.safe_load(spec.read_text())
    text["prices"] = {"gemini": {"1K": 0.1}}
    spec.write_text(yaml.safe_dump(text))
    with caplog.at_level(logging.WARNING, logger="nbp.markup"):
        result = run(spec)
    assert len(hub["gemini"].creates) == result.counts["succeeded"] == 2
    rows = manifest(tmp_path)
    costs = rows.filter(rows["status"] == "succeeded")["cost_usd"].to_list()
    assert ledger_spend(tmp_path, result) == pytest.approx(sum(costs)) == pytest.approx(0.275,
                                                                                       abs=2e-3)
    warnings = [r for r in caplog.records if r.name == "nbp.markup"]
    assert len(warnings) == 1 and "held $0.1100" in warnings[0].getMessage()
