"""The budget holds what a service tier may bill, against the Gemini emulator: priority
(twice the standard price, the top of Google's "75-100 % more") holds its own price, so a
`max_usd` with room for six standard images lets only three priority ones be created; flex
holds the standard price while in flight (it may be served at standard) and counts its own
cost once known. The evidence is the emulator's creates and the target's ledger."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from nbp.flows.spec.loader import load_spec
from nbp.flows.spec.settings import provider_rules
from nbp.providers.emulator.gemini import GeminiEmulator
from nbp.providers.emulator.hub import EmulatorHub
from tests.flows.engine.emulated import fresh_gemini, ledger_spend, manifest, run, serving

LATENCY_S = 0.2
CELLS = 8
MAX_USD = 0.85   # 6 x $0.134 standard holds; 3 x $0.268 priority holds (~$0.275 each billed)


@pytest.fixture(scope="module")
def hub() -> Iterator[EmulatorHub]:
    with serving(["gemini"], LATENCY_S) as running:
        yield running


@pytest.fixture
def gemini(hub: EmulatorHub) -> GeminiEmulator:
    return fresh_gemini(hub, latency_s=LATENCY_S)


def write_spec(tmp_path: Path, tier: str) -> Path:
    spec = {
        "version": 1, "name": f"tier-{tier}", "provider": "gemini", "retries": 0,
        "options": {"gemini": {"service_tier": tier}},
        "matrix": {"prompt": [f"a {tier} damson number {i}" for i in range(CELLS)]},
        "budget": {"max_usd": MAX_USD},
        "output": {"target": str(tmp_path / "out")},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path



def test_priority_holds_its_own_price_so_max_usd_is_never_passed(
    gemini: GeminiEmulator, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, "priority")
    rules = provider_rules(load_spec(str(spec)), "gemini")
    assert rules.hold("1K") == pytest.approx(2 * 0.134) == rules.price("1K")
    result = run(spec)
    assert len(gemini.creates) <= 3          # not the 6 that standard holds would let through
    assert result.counts["succeeded"] == len(gemini.creates) >= 2
    spent = ledger_spend(tmp_path, result)
    assert spent <= MAX_USD
    assert spent == pytest.approx(sum(manifest(tmp_path)["cost_usd"].to_list()))
    assert set(manifest(tmp_path)["service_tier"].drop_nulls().to_list()) == {"priority"}


def test_flex_holds_the_standard_price_and_counts_its_own(
    gemini: GeminiEmulator, tmp_path: Path
) -> None:
    """A flex request may be billed at standard (fallback, a refused tier, the header says
    so): it holds that much while in flight; what it cost once served at flex is what
    counts, so the same cap pays for more flex images than standard ones."""
    spec = write_spec(tmp_path, "flex")
    rules = provider_rules(load_spec(str(spec)), "gemini")
    assert rules.price("1K") == pytest.approx(0.134 / 2)
    assert rules.hold("1K") == pytest.approx(0.134)
    result = run(spec)
    assert result.counts["succeeded"] == len(gemini.creates) > 6
    spent = ledger_spend(tmp_path, result)
    assert spent <= MAX_USD


def test_flex_served_at_standard_stays_under_the_cap(
    gemini: GeminiEmulator, tmp_path: Path
) -> None:
    """Flex shed under load and sent again at standard (`flex_fallback`): each image costs
    the standard price, which is what each create held, so the cap holds."""
    gemini.configure(flex="shed_429")
    spec = write_spec(tmp_path, "flex")
    text = yaml.safe_load(spec.read_text())
    text["options"]["gemini"]["flex_fallback"] = True
    spec.write_text(yaml.safe_dump(text))
    result = run(spec)
    assert 0 < len(gemini.creates) <= 6
    assert set(manifest(tmp_path)["service_tier"].drop_nulls().to_list()) == {"standard"}
    assert ledger_spend(tmp_path, result) <= MAX_USD
