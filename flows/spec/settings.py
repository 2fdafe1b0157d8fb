"""The effective settings of one provider for one job: the only place where the spec's
`prices` and `limits` are merged over the adapter's documented `Capabilities`.

    rules = provider_rules(spec, "runware")
    rules.price("2K", references=4)   # 0.1424: the plan's price of an image
    rules.hold("2K", references=4)    # the dearest it may be billed at (a tier's price)
    rules.rate, rules.max_in_flight, rules.poll_interval_s   # what the throttle enforces
    rules.spend                       # money per rolling window, all accounts together

The plan, the budget and the throttles all call this, so a price or a limit cannot differ
between what `nbp plan` promised and what `nbp run` reserves and paces.

A price per image comes from the spec (`prices.<provider>.<resolution>`), else the price the
provider publishes (`Capabilities.prices_usd`), else Google's standard price
(protocols.md §6.4) as a stand-in. Per-reference charges (Runware, protocols.md §3.8) are
added per reference image sent; `prices.<provider>.per_reference` overrides them.

An option that changes the price (`Capabilities.price_factors`: Gemini's `service_tier`)
scales the provider's own prices (`tier_factors`), marked as estimates (a tier's discount or
surcharge is published, its price for this model is not); prices the spec sets stay as
written. The plan prices at the tier asked (`price`); a create holds the dearest price it may
be billed at (`hold`): the tier asked or the standard one, because a request that asks for a
tier may be served at standard, and the tier that served it is the provider's word (Google:
priority over its limit falls back silently, a shed flex request goes again at standard with
`flex_fallback`, a tier Google refuses is dropped for the run; `x-gemini-service-tier` says
which). So priority holds its own price and flex the standard one until its cost is known.

A provider that bills usage tokens besides the image (Gemini) has an `initial_markup` over
`hold`: what a create holds in the budget and the spend window is `hold` times the run's
markup of that provider (`flows.engine.markup`), never what the plan prices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from nbp.flows.spec.model import JobSpec
from nbp.flows.spec.rate import Rate, SpendLimit
from nbp.providers import registry
from nbp.providers.base import Capabilities
from nbp.providers.model import GOOGLE_STANDARD_PRICES_USD

PriceSource = Literal["spec", "published", "estimate"]
PER_REFERENCE_KEY = "per_reference"
# Used only for a provider whose adapter cannot be loaded (validation reports that).
STAND_IN_MAX_IN_FLIGHT = 50
STAND_IN_POLL_INTERVAL_S = 3.0
# Emulated tasks finish in about a second; polling them on a provider's 3 s schedule would
# make the demo and the tests wait for nothing.
EMULATED_POLL_INTERVAL_S = 0.25


@dataclass(frozen=True)
class ProviderRules:
    """What one provider costs and how fast it may be driven, for one job."""

    provider: str
    prices_usd: Mapping[str, float]           # resolution -> USD per image
    price_sources: Mapping[str, PriceSource]  # resolution -> where that price comes from
    price_per_reference_usd: float
    rate: Rate | None                          # creates per window; None: no documented limit
    max_in_flight: int
    poll_interval_s: float
    turnaround_s: float | None = None          # a batch provider's target turnaround
    spend: SpendLimit | None = None            # money per rolling window (`limits.spend`)
    # resolution -> USD a create holds where it differs from `prices_usd` (a tier may bill
    # more than it is planned at: the module docstring)
    held_prices_usd: Mapping[str, float] = field(default_factory=dict)
    # (least, most) seconds an image takes where an option of the spec sets it (Gemini's
    # flex tier: 1-15 min, `Capabilities.latency_ranges_s`); None: the usual generation time
    latency_range_s: tuple[float, float] | None = None
    latency_note: str = ""                      # "service_tier flex": the option that sets it
    # The factor over `hold` a create holds until costs are seen (`Capabilities
    # .initial_markup`: a provider that bills usage tokens besides the image); the engine's
    # `flows.engine.markup.CostMarkup` starts from it. The plan's prices never include it.
    initial_markup: float = 1.0

    def price(self, resolution: str, references: int = 0) -> float:
        """USD for one image at `resolution` with `references` reference images."""
        return self.base_price(resolution) + references * self.price_per_reference_usd

    def hold(self, resolution: str, references: int = 0) -> float:
        """The dearest USD one create of such an image may be billed at by its price, never
        less than `price`: what it holds against the budget and the spend window until its
        cost is known, times the run's markup of the provider (`flows.engine.markup`)."""
        base = self.held_prices_usd.get(resolution, self.base_price(resolution))
        return max(base, self.base_price(resolution)) + references * self.price_per_reference_usd

    def base_price(self, resolution: str) -> float:
        if resolution in self.prices_usd:
            return self.prices_usd[resolution]
        stand_in = GOOGLE_STANDARD_PRICES_USD
        return stand_in.get(resolution, max(stand_in.values()))

    def price_source(self, resolution: str) -> PriceSource:
        return self.price_sources.get(resolution, "estimate")


def provider_rules(
    spec: JobSpec, provider: str, caps: Capabilities | None = None, *, emulated: bool = False
) -> ProviderRules:
    """The settings of `provider` for `spec`; `caps` defaults to the registered adapter's."""
    if caps is None:
        caps = _capabilities(provider)
    prices, sources = _prices(spec.prices.get(provider, {}), caps)
    override = spec.prices.get(provider, {}).get(PER_REFERENCE_KEY)
    per_reference = float(override) if override is not None else (
        caps.price_per_reference_usd if caps else 0.0
    )
    limits = spec.limits.get(provider)
    rate_text = (limits.rate if limits else None) or (caps.default_rate if caps else None)
    documented_poll = caps.poll_interval_s if caps else STAND_IN_POLL_INTERVAL_S
    if emulated:
        documented_poll = min(documented_poll, EMULATED_POLL_INTERVAL_S)
    factor = 1.0
    for _, scale in tier_factors(spec, provider, caps).values():
        factor *= scale
    own = [res for res in prices if sources[res] != "spec"]
    held = {res: prices[res] * max(factor, 1.0) for res in own}
    if factor != 1.0:
        prices.update({res: prices[res] * factor for res in own})
        sources.update({res: "estimate" for res in own})
    return ProviderRules(
        provider=provider,
        prices_usd=prices,
        price_sources=sources,
        price_per_reference_usd=per_reference,
        rate=Rate.parse(rate_text) if rate_text else None,
        max_in_flight=(limits.max_in_flight if limits else None) or _default_in_flight(caps),
        poll_interval_s=(limits.poll_interval_s if limits else None) or documented_poll,
        turnaround_s=caps.batch.turnaround_s if caps and caps.batch else None,
        spend=limits.spend if limits else None,
        held_prices_usd={res: usd for res, usd in held.items() if usd != prices[res]},
        initial_markup=caps.initial_markup if caps else 1.0,
        **_latency(spec, provider, caps),
    )


def tier_factors(
    spec: JobSpec, provider: str, caps: Capabilities | None = None
) -> dict[str, tuple[str, float]]:
    """The options of the spec that change `provider`'s price: option -> (value, factor on
    the standard price), for factors other than 1 (`Capabilities.price_factors`; Gemini's
    service tiers). The one reading of those factors: prices, holds and the plan's notes."""
    if caps is None:
        caps = _capabilities(provider)
    if caps is None:
        return {}
    options = spec.options.get(provider, {})
    found = {}
    for option, by_value in caps.price_factors.items():
        value = options.get(option)
        factor = by_value.get(str(value)) if value is not None else None
        if factor is not None and factor != 1.0:
            found[option] = (str(value), factor)
    return found


def _latency(spec: JobSpec, provider: str, caps: Capabilities | None) -> dict[str, Any]:
    """`latency_range_s` and `latency_note` of the option of the spec that sets how long an
    image takes (`Capabilities.latency_ranges_s`); the slowest when several do."""
    options = spec.options.get(provider, {})
    found: dict[str, Any] = {}
    for option, by_value in (caps.latency_ranges_s if caps else {}).items():
        value = options.get(option)
        bounds = by_value.get(str(value)) if value is not None else None
        if bounds is not None and bounds[1] > found.get("latency_range_s", (0.0, 0.0))[1]:
            found = {"latency_range_s": (float(bounds[0]), float(bounds[1])),
                     "latency_note": f"{option} {value}"}
    return found


def _prices(
    spec_prices: Mapping[str, float], caps: Capabilities | None
) -> tuple[dict[str, float], dict[str, PriceSource]]:
    prices: dict[str, float] = {}
    sources: dict[str, PriceSource] = {}
    published = caps.prices_usd if caps else {}
    for resolution in {*GOOGLE_STANDARD_PRICES_USD, *published, *spec_prices} - {PER_REFERENCE_KEY}:
        if resolution in spec_prices:
            prices[resolution], sources[resolution] = float(spec_prices[resolution]), "spec"
        elif resolution in published:
            prices[resolution] = float(published[resolution])
            sources[resolution] = "published" if caps and caps.price_is_published else "estimate"
        else:
            prices[resolution] = GOOGLE_STANDARD_PRICES_USD[resolution]
            sources[resolution] = "estimate"
    return prices, sources


def _capabilities(provider: str) -> Capabilities | None:
    try:
        return registry.capabilities(provider)
    except Exception:  # an unknown provider: validation reports it; plan with stand-ins
        return None


def _default_in_flight(caps: Capabilities | None) -> int:
    """Cells in flight by default: a batch provider's concurrent jobs hold many cells each
    (`BatchLimits.max_requests`)."""
    if caps is None:
        return STAND_IN_MAX_IN_FLIGHT
    if caps.batch is not None:
        return caps.default_max_in_flight * caps.batch.max_requests
    return caps.default_max_in_flight
