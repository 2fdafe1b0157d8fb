"""Plans of specs that ask Google for a service tier: flex and priority prices are the
standard price times the tier's factor (`Capabilities.price_factors`), marked as estimates and
named; prices the spec sets stay as set."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from nbp.flows.spec.cells import expand
from nbp.flows.spec.loader import load_spec
from nbp.flows.spec.plan import Plan, make_plan
from nbp.flows.spec.settings import provider_rules

SPEC = """\
    version: 1
    name: tiers
    provider: gemini
    options: {{gemini: {{service_tier: {tier}}}}}
    matrix:
      prompt: ["a {{style}} fox"]
      style: [ink, oil]
      resolution: [1K, 4K]
    """


def plan_for(folder: Path, text: str) -> Plan:
    path = folder / "job.yaml"
    path.write_text(textwrap.dedent(text))
    spec = load_spec(str(path))
    return make_plan(spec, expand(spec))


@pytest.mark.parametrize(("tier", "factor"), [("flex", 0.5), ("priority", 2.0)])
def test_a_tier_scales_the_price_and_marks_it_an_estimate(
    tmp_path: Path, tier: str, factor: float
) -> None:
    plan = plan_for(tmp_path, SPEC.format(tier=tier))
    rows = {row.resolution: row for row in plan.rows}
    assert rows["1K"].price_usd == pytest.approx(0.134 * factor)
    assert rows["4K"].price_usd == pytest.approx(0.24 * factor)
    assert {row.price_source for row in plan.rows} == {"estimate"} and plan.cost_is_estimate
    assert plan.estimated_cost_usd == pytest.approx(2 * (0.134 + 0.24) * factor)
    [note] = plan.price_notes
    assert note.startswith(f"gemini: service_tier {tier} x{factor:g} on the standard price")
    assert f"* {note}" in plan.render() and plan.to_json()["price_notes"] == [note]


def test_standard_is_the_published_price(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, SPEC.format(tier="standard"))
    assert {row.price_source for row in plan.rows} == {"published"}
    assert plan.price_notes == () and plan.estimated_cost_usd == pytest.approx(0.748)


def test_a_price_the_spec_sets_is_not_scaled(tmp_path: Path) -> None:
    text = SPEC.format(tier="flex").replace(
        "    matrix:", '    prices: {gemini: {"1K": 0.07}}\n    matrix:')
    plan = plan_for(tmp_path, text)
    rows = {row.resolution: row for row in plan.rows}
    assert (rows["1K"].price_usd, rows["1K"].price_source) == (0.07, "spec")
    assert rows["4K"].price_usd == pytest.approx(0.12) and rows["4K"].price_source == "estimate"


@pytest.mark.parametrize(("tier", "held"), [("flex", 1.0), ("priority", 2.0), ("standard", 1.0)])
def test_the_budget_holds_the_dearest_price_a_tier_may_bill_and_the_plan_says_so(
    tmp_path: Path, tier: str, held: float
) -> None:
    """One rule (`settings.provider_rules`) for the plan's price and the budget's hold:
    priority holds its own price; flex the standard one (Google may serve it at standard)."""
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(SPEC.format(tier=tier)))
    spec = load_spec(str(path))
    rules = provider_rules(spec, "gemini")
    assert rules.hold("1K") == pytest.approx(0.134 * held)
    assert rules.hold("4K", references=2) == pytest.approx(0.24 * held)
    plan = make_plan(spec, expand(spec))
    if tier == "priority":
        assert plan.price_notes[0].endswith("the budget holds this price")
    elif tier == "flex":
        assert "the budget holds the standard price for each image in flight" in (
            plan.price_notes[0])
