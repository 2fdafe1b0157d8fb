"""What a create holds over its price, per provider: one rule for the budget and the spend
window.

A provider billed a flat price per image costs its price (markup 1). Google bills tokens
(protocols-gemini.md §7): the image's output tokens are the price, and input, thinking and
text tokens come on top, so an image of $0.134 costs about $0.1375. Holding the price alone
would let a cap of five prices pay for five creates that cost more than the cap. So every
create of such a provider holds its price times `factor`:

    markup = CostMarkup("gemini", initial=rules.initial_markup)   # 1.1: before any answer
    held = markup.hold(rules.hold("1K"))     # what the budget and the spend window hold
    markup.seen(rules.hold("1K"), held, 0.1375)   # an answer's cost: the factor may rise

`factor` starts at the provider's documented allowance (`Capabilities.initial_markup`) and
rises to the largest cost/price ratio seen, never past `MAX_MARKUP`. It never falls: a cheap
answer says nothing about the next prompt's thinking. A cost above what its create held is
still what the provider billed (the ledger records it); the user is told once, and later
creates hold the higher ratio.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from nbp.flows.spec.model import Cell
from nbp.flows.spec.settings import ProviderRules

log = logging.getLogger("nbp.markup")

# The most a reported cost may exceed its price and still teach the factor (anything more is
# a price the spec got wrong, not thinking tokens).
MAX_MARKUP = 1.5
EPSILON_USD = 1e-9


@dataclass
class CostMarkup:
    """What creates of one provider hold over their price, learnt from reported costs."""

    provider: str
    initial: float = 1.0
    factor: float = field(init=False)
    warned: bool = field(default=False, init=False)  # told the user a create cost more

    def __post_init__(self) -> None:
        self.factor = min(MAX_MARKUP, max(1.0, self.initial))

    def hold(self, price_usd: float) -> float:
        """What a create of `price_usd` holds now."""
        return price_usd * self.factor

    def seen(self, price_usd: float, held_usd: float | None, cost_usd: float | None) -> None:
        """A create whose price (`ProviderRules.hold`) was `price_usd` and that held
        `held_usd` reported `cost_usd`: later creates hold at least cost/price (bounded by
        `MAX_MARKUP`); a cost above what it held is told once."""
        if cost_usd is None or cost_usd < 0 or price_usd <= 0:
            return
        self.factor = max(self.factor, min(MAX_MARKUP, cost_usd / price_usd))
        if held_usd is not None and cost_usd > held_usd + EPSILON_USD and not self.warned:
            self.warned = True
            log.warning(
                "%s billed $%.4f for a create that held $%.4f (its price $%.4f): the "
                "ledger counts what was billed, which may pass a budget cap by the "
                "difference; later creates hold %.3f x their price", self.provider, cost_usd,
                held_usd, price_usd, self.factor)


def markups_for(rules: Mapping[str, ProviderRules]) -> dict[str, CostMarkup]:
    """A run's markup of each provider, from its documented allowance."""
    return {name: CostMarkup(name, rule.initial_markup) for name, rule in rules.items()}


def cell_hold(rule: ProviderRules, markup: CostMarkup, cell: Cell) -> float:
    """What a create of `cell` holds (the budget, the spend window, a router's lane): the
    dearest price it may be billed at (`ProviderRules.hold`) times the provider's markup."""
    return markup.hold(rule.hold(cell.resolution, len(cell.references)))
