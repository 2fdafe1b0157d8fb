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
    note, allowance = plan.price_notes
    assert note.startswith(f"gemini: service_tier {tier} x{factor:g} on the standard price")
    assert allowance.startswith("gemini: billed by tokens")
    assert f"* {note}" in plan.render() and plan.to_json()["price_notes"] == [note, allowance]


def test_standard_is_the_published_price(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, SPEC.format(tier="standard"))
    assert {row.price_source for row in plan.rows} == {"published"}
    assert plan.estimated_cost_usd == pytest.approx(0.748)


def test_the_plan_prices_token_billing_at_the_price_and_says_what_the_budget_holds(
    tmp_path: Path
) -> None:
    """Gemini bills input and thinking tokens besides the image: the plan's cost stays the
    price per image, and a note says the budget holds each image with an allowance on top;
    a provider billed a flat price per image has no such note."""
    plan = plan_for(tmp_path, SPEC.format(tier="standard"))
    [note] = plan.price_notes
    assert note == ("gemini: billed by tokens (input, thinking and text besides the image), "
                    "so the budget holds each image at its price +10% until it is billed, "
                    "then at the largest cost/price ratio seen; the cost above counts prices "
                    "only")
    assert f"* {note}" in plan.render()
    flat = plan_for(tmp_path, SPEC.format(tier="standard").replace(
        "provider: gemini", "provider: kie").replace(
        "    options: {gemini: {service_tier: standard}}\n", ""))
    assert flat.price_notes == ()
    assert flat.rows and all(row.provider == "kie" for row in flat.rows)


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
    # a reference image is its input tokens, $0.0011 at any tier (the markup covers the rest)
    assert rules.hold("4K", references=2) == pytest.approx(0.24 * held + 2 * 0.0011)
    plan = make_plan(spec, expand(spec))
    if tier == "priority":
        assert plan.price_notes[0].endswith("the budget holds this price")
    elif tier == "flex":
        assert "the budget holds the standard price for each image in flight" in (
            plan.price_notes[0])


def test_flex_is_timed_at_its_least_and_its_most_latency(tmp_path: Path) -> None:
    """Flex's documented target is 1-15 min per image: the plan times its cells at 1 min
    (never faster than the usual 20-40 s) and says what 15 min each would take."""
    flex = plan_for(tmp_path, SPEC.format(tier="flex")).to_json()
    standard = plan_for(tmp_path, SPEC.format(tier="standard")).to_json()
    # 4 cells, 10 in flight: one wave, so the duration is one (mean) latency: 20 s and 40 s
    assert standard["estimated_seconds"] == standard["estimated_seconds_max"] == 30.0
    assert (flex["estimated_seconds"], flex["estimated_seconds_max"]) == (60.0, 900.0)
    [timing] = flex["timing"]
    assert timing["latency_range_s"] == [60.0, 900.0] and timing["seconds_max"] == 900.0
    assert standard["timing"][0]["latency_range_s"] is None


def test_the_plan_text_gives_flex_durations_as_a_range_and_judges_the_deadline(
    tmp_path: Path
) -> None:
    text = SPEC.format(tier="flex").replace(
        "    matrix:", "    routing: cheapest\n    deadline: 10m\n    matrix:")
    plan = plan_for(tmp_path, text)
    shown = plan.render()
    assert "estimated duration:  1 min 00 s, up to 15 min 00 s if every image takes the " \
           "longest (deadline 10 min 00 s: not met if every image takes the longest)" in shown
    assert "1-15 min per image: service_tier flex, the provider's target" in shown
    assert plan.meets_deadline is True
    plain = plan_for(tmp_path, SPEC.format(tier="priority")).render()
    assert "up to" not in plain and "~30 s per image" in plain
