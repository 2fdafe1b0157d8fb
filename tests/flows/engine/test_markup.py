"""What creates hold over their price (`CostMarkup`): the documented allowance first, then
the largest cost/price ratio seen, bounded; a cost above its hold is told once."""

from __future__ import annotations

import logging

import pytest

from nbp.flows.engine.markup import MAX_MARKUP, CostMarkup
from nbp.flows.spec.loader import parse_job
from nbp.flows.spec.settings import provider_rules
from nbp.providers import registry

PRICE = 0.134


def test_token_billed_channels_start_above_their_price_and_flat_ones_at_it() -> None:
    for name in ("gemini", "gemini-batch"):
        assert registry.capabilities(name).initial_markup > 1.0, name
    for name in ("kie", "runware", "hiapi", "wiro", "apikley"):
        assert registry.capabilities(name).initial_markup == 1.0, name


def test_the_markup_starts_at_the_allowance_and_rises_to_the_largest_ratio_seen() -> None:
    markup = CostMarkup("gemini", initial=1.1)
    assert markup.hold(PRICE) == pytest.approx(0.1474)
    markup.seen(PRICE, 0.1474, 0.1375)            # within the allowance: no change
    assert markup.factor == pytest.approx(1.1)
    markup.seen(PRICE, 0.1474, 0.134 * 1.2)       # a long think: later holds follow it
    assert markup.factor == pytest.approx(1.2)
    markup.seen(PRICE, 0.1608, 0.134 * 1.05)      # a cheap answer never lowers it
    assert markup.factor == pytest.approx(1.2)
    markup.seen(PRICE, 0.1608, 10.0)              # a wrong price, not tokens: bounded
    assert markup.factor == MAX_MARKUP
    markup.seen(PRICE, None, None)                # no cost reported: nothing learnt
    markup.seen(0.0, 0.0, 0.1)                    # nothing to compare with
    assert markup.factor == MAX_MARKUP


def test_a_flat_price_holds_the_price_until_a_cost_says_otherwise() -> None:
    markup = CostMarkup("kie")
    assert markup.hold(0.09) == 0.09
    markup.seen(0.09, 0.09, 0.09)
    assert markup.hold(0.09) == 0.09


def test_a_cost_above_its_hold_is_told_once(caplog: pytest.LogCaptureFixture) -> None:
    markup = CostMarkup("gemini", initial=1.1)
    with caplog.at_level(logging.WARNING, logger="nbp.markup"):
        markup.seen(PRICE, 0.1474, 0.1375)        # under the hold: nothing to say
        assert not caplog.records
        markup.seen(PRICE, 0.1474, 0.16)
        markup.seen(PRICE, 0.1474, 0.17)
    assert len(caplog.records) == 1
    assert "gemini billed $0.1600" in caplog.text and "held $0.1474" in caplog.text


def test_the_plan_price_has_no_markup_and_the_rules_carry_the_allowance() -> None:
    job = parse_job("version: 1\nname: m\nprovider: gemini\nmatrix: {prompt: [a plum]}\n"
                    "output: {target: /tmp/nbp-markup-test}\n")
    rules = provider_rules(job.spec, "gemini")
    assert rules.price("1K") == rules.hold("1K") == PRICE
    assert rules.initial_markup == registry.capabilities("gemini").initial_markup
