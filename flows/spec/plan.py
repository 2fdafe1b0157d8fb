"""What a job will do before it does it: cells, cost and duration.

    plan = make_plan(spec, expand(spec))
    print(plan.render())                  # a table for people
    plan.to_json()["estimated_cost_usd"]  # the same numbers for scripts

A second table splits the cells by provider x model id: the id each channel will send (the
cell's pinned one, else the provider's default, `options.<provider>.model` or its documented
one), so a researcher sees how many cells ask for which model where.

Cells are counted where the spec's routing sends them (`flows.spec.allocation`): with
`fallback` all on the primary channel (fallbacks run only cells the primary cannot), with
`spread` in proportion to each channel's throughput, with `cheapest` the cheapest channels
first. One line per other routing shows what it would take and cost.

Cost: cells x price per image, by resolution, plus per-reference charges where a provider
makes them. Prices come from `flows.spec.settings.provider_rules`, the same resolver the
budget reserves with; anything not published by the provider is marked as an estimate. An
option that changes the price (`Capabilities.price_factors`: Gemini's `service_tier` flex or
priority) scales the provider's own prices by its factor, marked as an estimate and named in
`price_notes` with what the budget holds (`ProviderRules.hold`: priority's price, flex the
standard one while in flight; prices the spec sets stay as set). A provider that bills tokens
besides the image (Gemini) is priced at its price per image; `price_notes` says that the
budget holds each image with an allowance on top (`ProviderRules.initial_markup`).

Duration, per provider, for n cells, a create rate of c per W seconds (`limits.rate`, else
the documented default; none means no create limit), at most m tasks in flight and a mean
generation latency L (about 20 s at 1K and 2K and 40 s at 4K: protocols.md §6.2 says image
generation "can take 10–60+ s (4K slower)"):

    T = max(W * (ceil(n / c) - 1), L * (ceil(n / m) - 1), S * (ceil(n / k) - 1)) + L

The first term is when the last create can be sent under the rate window, the second when
the last wave of m concurrent tasks can start, the third when the last create fits in the
provider's spend window (`limits.<provider>.spend`: u USD per S seconds, so k = floor(u / p)
images of mean price p per window; a provider's accounts share one window, so each channel
plans with its share of u); the last task then takes L. Polling adds up to one poll
interval, ignored here. An option that sets how long an image takes (`ProviderRules
.latency_range_s`: Gemini's flex tier, "target 1-15 min") times those cells with its least
L (never less than the usual one) and gives the duration with its most too
(`Timing.seconds_max`, `estimated_seconds_max`): a range, shown as "up to". When the spend
window is the longest term, the plan says so: Tier 1 ($10 / 10 min) at $0.134 is ~74 images
per 10 minutes, so 300 cells take at least 40 min.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from nbp.flows.spec.allocation import LaneEstimate, allocate, duration_s
from nbp.flows.spec.channels import Channel, channels
from nbp.flows.spec.delta import TargetDelta
from nbp.flows.spec.model import Cell, JobSpec
from nbp.flows.spec.policies import DEADLINE_ROUTINGS, DEFAULT_ROUTING, ROUTINGS, routing_policy
from nbp.flows.spec.rate import SpendLimit
from nbp.flows.spec.settings import PriceSource, ProviderRules, provider_rules, tier_factors
from nbp.providers import registry

__all__ = ["ModelRow", "Plan", "PlanRow", "RoutingEstimate", "Timing", "duration_s",
           "make_plan"]

LATENCY_S: Mapping[str, float] = {"1K": 20.0, "2K": 20.0, "4K": 40.0}  # protocols.md §6.2
DEFAULT_LATENCY_S = 20.0


@dataclass(frozen=True)
class PlanRow:
    """Cells of one provider at one resolution, and what they cost."""

    provider: str
    resolution: str
    cells: int
    price_usd: float              # per image, before per-reference charges
    price_source: PriceSource
    references: int = 0           # reference images sent by these cells, in all
    price_per_reference_usd: float = 0.0

    @property
    def cost_usd(self) -> float:
        return self.cells * self.price_usd + self.references * self.price_per_reference_usd

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider, "resolution": self.resolution, "cells": self.cells,
            "price_usd": self.price_usd, "price_source": self.price_source,
            "references": self.references,
            "price_per_reference_usd": self.price_per_reference_usd,
            "cost_usd": round(self.cost_usd, 6),
        }


@dataclass(frozen=True)
class ModelRow:
    """Cells of one provider that ask for one model id, and what they cost. `pinned`: the
    cells name the id (a `model` matrix value); else it is the provider's default."""

    provider: str
    model: str
    pinned: bool
    cells: int
    cost_usd: float

    @property
    def usd_per_image(self) -> float:
        return self.cost_usd / self.cells if self.cells else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider, "model": self.model, "model_pinned": self.pinned,
            "cells": self.cells, "usd_per_image": round(self.usd_per_image, 6),
            "cost_usd": round(self.cost_usd, 6),
        }


@dataclass(frozen=True)
class Timing:
    """One channel's cells under the chosen routing: duration (see the module docstring)
    and cost. `provider` is the channel's key (the provider, or `provider:ACCOUNT`)."""

    provider: str
    cells: int
    rate: str | None
    max_in_flight: int
    mean_latency_s: float
    seconds: float
    cost_usd: float = 0.0
    account: str = ""
    batch: bool = False           # a batch provider: `seconds` is its turnaround, at most
    spend: SpendLimit | None = None  # the provider's spend window (all its accounts)
    binding: str | None = None    # the limit that decides `seconds`: spend, rate, in_flight
    images_per_window: int | None = None  # of the spend window, at these cells' mean price
    # An option sets the latency (flex): its (least, most) seconds per image, what sets it,
    # and `seconds` with the most
    latency_range_s: tuple[float, float] | None = None
    latency_note: str = ""
    seconds_max: float | None = None

    @property
    def spend_binds(self) -> bool:
        return self.binding == "spend" and self.spend is not None

    def to_json(self) -> dict[str, Any]:
        spend = self.spend
        return {
            "provider": self.provider, "account": self.account, "cells": self.cells,
            "batch": self.batch,
            "rate": self.rate, "max_in_flight": self.max_in_flight,
            "mean_latency_s": round(self.mean_latency_s, 3), "seconds": round(self.seconds, 1),
            "cost_usd": round(self.cost_usd, 6),
            "spend": {"usd": spend.usd, "window_s": spend.window_s,
                      "images_per_window": self.images_per_window} if spend else None,
            "binding": self.binding,
            "latency_range_s": list(self.latency_range_s) if self.latency_range_s else None,
            "seconds_max": round(self.worst_seconds, 1),
        }

    @property
    def worst_seconds(self) -> float:
        """`seconds` when every image takes the longest its option allows."""
        return max(self.seconds, self.seconds_max or 0.0)

    def latency_text(self) -> str:
        """"~20 s per image", or "1-15 min per image: service_tier flex, ..."."""
        if self.latency_range_s is None:
            return f"~{self.mean_latency_s:.0f} s per image"
        low, high = self.latency_range_s
        return f"{_span(low, high)} per image: {self.latency_note}, the provider's target"

    def spend_note(self) -> str | None:
        """"spend window $10 / 10 min binds: ~74 images per 10 min", when it binds."""
        if not self.spend_binds or self.spend is None:
            return None
        window = self.spend.render().partition(" / ")[2]
        return (f"spend window {self.spend.render()} binds: ~{self.images_per_window} images "
                f"per {window}")


@dataclass(frozen=True)
class RoutingEstimate:
    """What another routing of the same cells would take and cost."""

    routing: str                  # "spread", "cheapest", "cheapest by 2h", ...
    seconds: float
    cost_usd: float
    meets_deadline: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {"routing": self.routing, "seconds": round(self.seconds, 1),
                "cost_usd": round(self.cost_usd, 6), "meets_deadline": self.meets_deadline}

    def render(self) -> str:
        late = " (misses the deadline)" if self.meets_deadline is False else ""
        return f"{self.routing}: {_duration(self.seconds)}, {_usd(self.cost_usd)}{late}"


@dataclass(frozen=True)
class Plan:
    job: str
    source: str
    providers: tuple[str, ...]
    cells: int
    combinations: int
    dataset_rows: int | None
    repeat: int
    rows: tuple[PlanRow, ...]
    timings: tuple[Timing, ...]
    max_usd: float | None = None
    by_aspect_ratio: Mapping[str, int] = field(default_factory=dict)
    routing: str = DEFAULT_ROUTING
    channels: int = 1                 # provider x account pairs the job may use
    deadline_s: float | None = None
    alternatives: tuple[RoutingEstimate, ...] = ()
    pinned: tuple[str, ...] = ()      # providers a `provider` matrix axis pins cells to
    target: TargetDelta | None = None  # the cells against the target (None: all priced)
    models: tuple[ModelRow, ...] = ()  # the priced cells by provider x model id
    # Prices an option scaled (`_tiered`): "gemini: service_tier flex x0.5 ..." per provider
    price_notes: tuple[str, ...] = ()

    @property
    def priced_cells(self) -> int:
        """The cells this run pays for (all of them without a target)."""
        return sum(row.cells for row in self.rows)

    @property
    def estimated_cost_usd(self) -> float:
        return sum(row.cost_usd for row in self.rows)

    @property
    def cost_is_estimate(self) -> bool:
        return any(row.price_source == "estimate" for row in self.rows)

    @property
    def estimated_seconds(self) -> float:
        """Channels run side by side, so the slowest one decides."""
        return max((t.seconds for t in self.timings), default=0.0)

    @property
    def estimated_seconds_max(self) -> float:
        """The slowest channel when an option's latency takes its most (flex: 15 min)."""
        return max((t.worst_seconds for t in self.timings), default=0.0)

    @property
    def meets_deadline(self) -> bool | None:
        return None if self.deadline_s is None else self.estimated_seconds <= self.deadline_s

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "spec": self.source,
            "providers": list(self.providers),
            "cells": self.cells,
            "combinations": self.combinations,
            "dataset_rows": self.dataset_rows,
            "repeat": self.repeat,
            "by_provider_resolution": [row.to_json() for row in self.rows],
            "by_aspect_ratio": dict(self.by_aspect_ratio),
            "estimated_cost_usd": round(self.estimated_cost_usd, 6),
            "cost_is_estimate": self.cost_is_estimate,
            "max_usd": self.max_usd,
            "within_budget": self.max_usd is None or self.estimated_cost_usd <= self.max_usd,
            "estimated_seconds": round(self.estimated_seconds, 1),
            "estimated_seconds_max": round(self.estimated_seconds_max, 1),
            "timing": [t.to_json() for t in self.timings],
            "routing": self.routing,
            "deadline_s": self.deadline_s,
            "meets_deadline": self.meets_deadline,
            "alternatives": [a.to_json() for a in self.alternatives],
            "pinned": list(self.pinned),
            "priced_cells": self.priced_cells,
            "target": self.target.to_json() if self.target else None,
            "by_provider_model": [row.to_json() for row in self.models],
            "price_notes": list(self.price_notes),
        }

    def render(self) -> str:
        rows = self.dataset_rows
        size = f"{self.combinations} combinations"
        if rows is not None:
            size += f" x {rows} dataset rows"
        size += f" x {self.repeat} replicate{'s' if self.repeat != 1 else ''} = {self.cells} cells"
        lines = [f"Plan for {self.job} ({self.source})", f"  matrix:    {size}"]
        if self.target is not None:
            lines.append(f"  target:    {self.target.target}: {self.target.render()}; "
                         "only new and changed cells are priced")
        if self.pinned:
            lines.append(f"  pinned:    cells of {', '.join(self.pinned)} run there only "
                         "(provider axis)")
        ordered = routing_policy(self.routing).ordered
        if ordered and self.providers:
            others = self.providers[1:]
            fallback = f" (fallback: {', '.join(others)})" if others else ""
            lines.append(f"  provider:  {self.providers[0]}{fallback}")
        elif not ordered:
            by = f" by {_duration(self.deadline_s)}" if self.deadline_s is not None else ""
            lines.append(f"  routing:   {self.routing}{by}: {len(self.timings)} of "
                         f"{self.channels} channels take cells")
        lines.append("")
        wide = max([10, *(len(row.provider) + 2 for row in self.rows)])  # gemini-batch
        lines.append(
            f"  {'provider':<{wide}}{'resolution':<12}{'cells':>9}{'USD/image':>12}{'cost':>12}"
        )
        for row in self.rows:
            mark = "*" if row.price_source == "estimate" else " "
            lines.append(
                f"  {row.provider:<{wide}}{row.resolution:<12}{row.cells:>9}"
                f"{row.price_usd:>11.3f}{mark}{_usd(row.cost_usd):>12}"
            )
        lines.append(f"  {'total':<{wide + 12}}{self.priced_cells:>9}{'':>12}"
                     f"{_usd(self.estimated_cost_usd):>12}")
        if self.cost_is_estimate:
            lines.append("  * not published by the provider: an estimate (set `prices:` in the "
                         "spec to use yours)")
        lines += [f"  * {note}" for note in self.price_notes]
        lines += self._model_lines(wide)
        lines.append("")
        cost = f"  estimated cost:      {_usd(self.estimated_cost_usd)}"
        if self.max_usd is not None:
            over = self.estimated_cost_usd > self.max_usd
            cost += f" (budget {_usd(self.max_usd)}{': OVER, the run stops there' if over else ''})"
        lines.append(cost)
        duration = f"  estimated duration:  {_duration(self.estimated_seconds)}"
        slowest = self.estimated_seconds_max
        if slowest > self.estimated_seconds + 0.5:
            duration += f", up to {_duration(slowest)} if every image takes the longest"
        if self.deadline_s is not None:
            late = "" if self.meets_deadline else ": NOT MET"
            if not late and slowest > self.deadline_s:
                late = ": not met if every image takes the longest"
            duration += f" (deadline {_duration(self.deadline_s)}{late})"
        lines.append(duration)
        for t in self.timings:
            rate = t.rate or "no create limit"
            if t.batch:
                lines.append(f"    {t.provider}: {t.cells} cells, {_usd(t.cost_usd)}, up to "
                             f"{_duration(t.seconds)} (batch turnaround)")
                continue
            span = _duration(t.seconds)
            if t.worst_seconds > t.seconds + 0.5:
                span += f" to {_duration(t.worst_seconds)}"
            lines.append(
                f"    {t.provider}: {t.cells} cells, {_usd(t.cost_usd)}, "
                f"{span} (rate {rate}, {t.max_in_flight} in flight, {t.latency_text()})"
            )
            if (note := t.spend_note()) is not None:
                lines.append(f"      {note}")
        if self.alternatives:
            lines.append("  other routings:      "
                         + " · ".join(a.render() for a in self.alternatives))
        return "\n".join(lines)

    def _model_lines(self, wide: int) -> list[str]:
        """The provider x model table, when it says more than the one above: several
        model ids, or one the cells pin."""
        rows = self.models
        if len(rows) < 2 and not any(row.pinned for row in rows):
            return []
        shown = [(row, row.model if row.pinned else f"{row.model} (default)") for row in rows]
        model_wide = max(len(text) for _, text in shown) + 2
        lines = ["", f"  {'provider':<{wide}}{'model':<{model_wide}}{'cells':>9}"
                     f"{'USD/image':>12}{'cost':>12}"]
        for row, text in shown:
            lines.append(f"  {row.provider:<{wide}}{text:<{model_wide}}{row.cells:>9}"
                         f"{row.usd_per_image:>12.3f}{_usd(row.cost_usd):>12}")
        return lines


@dataclass
class _Tally:
    """Cells that may run on the same channels (one pin, or the unpinned ones), or those of
    them that ask for one model id."""

    cells: int = 0
    by_resolution: Counter[str] = field(default_factory=Counter)
    references: Counter[str] = field(default_factory=Counter)  # by resolution

    @classmethod
    def total(cls, parts: Iterable[_Tally]) -> _Tally:
        found = cls()
        for part in parts:
            found.cells += part.cells
            found.by_resolution.update(part.by_resolution)
            found.references.update(part.references)
        return found


@dataclass
class _Route:
    """The plan's channels and cell groups, and each group's lanes over them."""

    found: tuple[Channel, ...]
    rules: Mapping[str, ProviderRules]
    groups: dict[str | None, _Tally]
    lanes: dict[str | None, list[tuple[Channel, LaneEstimate]]]
    models: dict[str | None, dict[str | None, _Tally]] = field(default_factory=dict)

    def allocate(self, routing: str, deadline_s: float | None) -> dict[str, _Load]:
        """Cells and cost per channel key when each group is routed by `routing`: a pinned
        group over its provider's channels, the unpinned cells over the `provider:` list."""
        load = {channel.key: _Load(channel) for channel in self.found}
        for pin, tally in self.groups.items():
            lanes = self.lanes[pin]
            counts = allocate(routing, [lane for _, lane in lanes], tally.cells, deadline_s)
            for (channel, lane), n in zip(lanes, counts, strict=True):
                load[channel.key].add(n, lane, pin)
        return load

    def seconds(self, load: Mapping[str, _Load]) -> float:
        return max((self.lane_of(x).seconds(x.cells) for x in load.values() if x.cells),
                   default=0.0)

    def lane_of(self, load: _Load) -> LaneEstimate:
        """The channel as one lane for all its cells: their mean price and latency."""
        rule = self.rules[load.channel.provider]
        cells = max(1, load.cells)
        return LaneEstimate(load.channel.key, load.cost_usd / cells, rule.rate,
                            rule.max_in_flight, load.latency_s / cells,
                            _spend_share(rule, self.found))


@dataclass
class _Load:
    channel: Channel
    cells: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0                          # summed over cells
    by_pin: Counter[str | None] = field(default_factory=Counter)

    def add(self, n: int, lane: LaneEstimate, pin: str | None) -> None:
        self.cells += n
        self.cost_usd += n * lane.price_usd
        self.latency_s += n * lane.latency_s
        self.by_pin[pin] += n


def make_plan(
    spec: JobSpec, cells: Iterable[Cell], *, target: TargetDelta | None = None,
    priced: Callable[[Cell], bool] | None = None,
) -> Plan:
    """Count, price and time the cells of `spec` (fast: one pass, no I/O, no Prefect).
    Cells pinned to a provider (a `provider` matrix axis) are counted on its channels only;
    the others on the `provider:` list's, by the spec's routing. `priced`: which cells this
    run pays for (against its target, `flows.spec.delta`; default: all), `target` their
    counts, shown with the plan."""
    models: dict[str | None, dict[str | None, _Tally]] = {}  # pin -> model -> its cells
    by_ratio: Counter[str] = Counter()
    rows: set[int] = set()
    total = 0
    for cell in cells:
        total += 1
        by_ratio[cell.aspect_ratio] += 1
        if cell.dataset_row is not None:
            rows.add(cell.dataset_row)
        if priced is not None and not priced(cell):
            continue
        by_model = models.get(cell.provider)
        if by_model is None:
            by_model = models[cell.provider] = {}
        tally = by_model.get(cell.model)
        if tally is None:
            tally = by_model[cell.model] = _Tally()
        tally.cells += 1
        tally.by_resolution[cell.resolution] += 1
        tally.references[cell.resolution] += len(cell.references)
    groups = {pin: _Tally.total(by_model.values()) for pin, by_model in models.items()}
    route = _route(spec, groups)
    route.models = models
    load = route.allocate(spec.routing, spec.deadline_s)
    plan_rows = _rows(route, load)
    timings = tuple(_timing(x.channel, route.lane_of(x), route.rules[x.channel.provider],
                            x.cells) for x in load.values() if x.cells)
    dataset_rows = len(rows) if spec.dataset is not None else None
    per_row = max(1, dataset_rows or 1) * max(1, spec.repeat)
    return Plan(
        job=spec.name, source=spec.source, providers=tuple(spec.routed), cells=total,
        combinations=total // per_row, dataset_rows=dataset_rows, repeat=spec.repeat,
        rows=plan_rows, timings=timings, max_usd=spec.max_usd, by_aspect_ratio=dict(by_ratio),
        routing=spec.routing, channels=len(route.found), deadline_s=spec.deadline_s,
        alternatives=_alternatives(spec, route) if total else (),
        pinned=tuple(name for name in spec.providers if name in groups), target=target,
        models=_model_rows(spec, route, load),
        price_notes=tuple(note for name in spec.providers
                          if any(row.provider == name for row in plan_rows)
                          for note in _price_notes(spec, name, route.rules.get(name))),
    )


def _route(spec: JobSpec, groups: dict[str | None, _Tally]) -> _Route:
    found = channels(spec)
    rules = {name: provider_rules(spec, name) for name in spec.providers}
    lanes = {}
    for pin, tally in groups.items():
        names = (pin,) if pin is not None else spec.routed
        mine = [channel for channel in found if channel.provider in names]
        lanes[pin] = list(zip(mine, _lanes(mine, rules, tally, found), strict=True))
    return _Route(found, rules, groups, lanes)


def _lanes(
    found: Sequence[Channel], rules: Mapping[str, ProviderRules], tally: _Tally,
    found_all: Sequence[Channel] = (),
) -> list[LaneEstimate]:
    """Each channel's mean price per cell of a group, its limits and mean latency."""
    by_resolution, references, total = tally.by_resolution, tally.references, tally.cells
    latency = sum(LATENCY_S.get(res, DEFAULT_LATENCY_S) * n for res, n in by_resolution.items())
    mean = latency / total if total else DEFAULT_LATENCY_S
    lanes = []
    for channel in found:
        rule = rules[channel.provider]
        cost = sum(rule.base_price(res) * n + rule.price_per_reference_usd * references[res]
                   for res, n in by_resolution.items())
        latency_s = rule.turnaround_s or mean
        if rule.latency_range_s is not None:  # flex: no faster than its least
            latency_s = max(latency_s, rule.latency_range_s[0])
        lanes.append(LaneEstimate(channel.key, cost / total if total else 0.0, rule.rate,
                                  rule.max_in_flight, latency_s,
                                  _spend_share(rule, found_all)))
    return lanes


def _spend_share(rule: ProviderRules, found: Sequence[Channel]) -> SpendLimit | None:
    """A channel's share of its provider's spend window: its accounts split one window."""
    if rule.spend is None:
        return None
    accounts = max(1, sum(1 for channel in found if channel.provider == rule.provider))
    return SpendLimit(rule.spend.usd / accounts, rule.spend.window_s)


def _rows(route: _Route, load: Mapping[str, _Load]) -> tuple[PlanRow, ...]:
    """Price rows per provider x resolution: each group's resolutions, in the share of the
    group its channels of that provider take."""
    cells: Counter[tuple[str, str]] = Counter()
    references: Counter[tuple[str, str]] = Counter()
    for pin, tally in route.groups.items():
        on_provider: Counter[str] = Counter()
        for x in load.values():
            on_provider[x.channel.provider] += x.by_pin[pin]
        for name, n in on_provider.items():
            share = n / tally.cells if tally.cells else 0.0
            for res, count in tally.by_resolution.items():
                cells[name, res] += round(count * share)
                references[name, res] += round(tally.references[res] * share)
    plan_rows = []
    for name, rule in route.rules.items():
        for res in sorted({r for p, r in cells if p == name}, key=_res_order):
            if cells[name, res]:
                plan_rows.append(PlanRow(
                    name, res, cells[name, res], rule.base_price(res), rule.price_source(res),
                    references[name, res], rule.price_per_reference_usd,
                ))
    return tuple(plan_rows)


def _model_rows(
    spec: JobSpec, route: _Route, load: Mapping[str, _Load]
) -> tuple[ModelRow, ...]:
    """Rows per provider x model id sent: each group's cells of each model id, in the share
    of the group its channels of that provider take (counted per resolution as `_rows`)."""
    cells: Counter[tuple[str, str, bool]] = Counter()
    cost: dict[tuple[str, str, bool], float] = {}
    for pin, by_model in route.models.items():
        group = route.groups[pin]
        on_provider: Counter[str] = Counter()
        for x in load.values():
            on_provider[x.channel.provider] += x.by_pin[pin]
        for name, n in on_provider.items():
            share = n / group.cells if group.cells else 0.0
            rule = route.rules[name]
            for model, tally in by_model.items():
                key = (name, model or _default_model(spec, name), model is not None)
                for res, count in tally.by_resolution.items():
                    images = round(count * share)
                    cells[key] += images
                    cost[key] = cost.get(key, 0.0) + images * rule.base_price(res) + round(
                        tally.references[res] * share) * rule.price_per_reference_usd
    order = {name: i for i, name in enumerate(route.rules)}
    return tuple(ModelRow(name, model, pinned, n, cost[name, model, pinned])
                 for (name, model, pinned), n in sorted(
                     cells.items(), key=lambda item: (order.get(item[0][0], 0), item[0][2]))
                 if n)


def _price_notes(spec: JobSpec, provider: str, rule: ProviderRules | None) -> tuple[str, ...]:
    """What the plan's reader should know of `provider`'s prices: a price-changing option
    (`_tier_note`), and the allowance its holds carry where it bills tokens besides the
    image (`ProviderRules.initial_markup`: the budget holds more than the plan's price)."""
    notes = [note] if (note := _tier_note(spec, provider)) else []
    if rule is not None and rule.initial_markup > 1.0:
        notes.append(
            f"{provider}: billed by tokens (input, thinking and text besides the image), so "
            f"the budget holds each image at its price +{rule.initial_markup - 1:.0%} until "
            "it is billed, then at the largest cost/price ratio seen; the cost above counts "
            "prices only")
    return tuple(notes)


def _tier_note(spec: JobSpec, provider: str) -> str | None:
    """What a price-changing option did to `provider`'s prices (`settings.tier_factors`),
    and what the budget holds for it, for the plan's reader; None: nothing."""
    found = tier_factors(spec, provider)
    if not found:
        return None
    said = ", ".join(f"{option} {value} x{factor:g}"
                     for option, (value, factor) in found.items())
    factor = math.prod(scale for _, scale in found.values())
    held = ("the budget holds this price" if factor > 1.0 else
            "the budget holds the standard price for each image in flight (it may be served "
            "at standard), then counts what it cost")
    return (f"{provider}: {said} on the standard price, an estimate (the provider has not "
            f"published it for this model); {held}")


def _default_model(spec: JobSpec, provider: str) -> str:
    """The model id a provider's channel sends for a cell that pins none: the spec's
    `options.<provider>.model`, else the provider's documented default."""
    chosen = spec.options.get(provider, {}).get("model")
    if isinstance(chosen, str) and chosen:
        return chosen
    try:
        return registry.facts(provider).model or "?"
    except Exception:  # an adapter that cannot load: validation says so
        return "?"


def _timing(channel: Channel, lane: LaneEstimate, rules: ProviderRules, cells: int) -> Timing:
    rate = rules.rate
    rate_text = f"{rate.count}/{rate.window_s:g}s" if rate else None
    spend = rules.spend
    bounds = rules.latency_range_s
    slowest = replace(lane, latency_s=max(lane.latency_s, bounds[1])) if bounds else None
    return Timing(channel.key, cells, rate_text, rules.max_in_flight, lane.latency_s,
                  lane.seconds(cells), cells * lane.price_usd, channel.account,
                  batch=rules.turnaround_s is not None, spend=spend,
                  binding=lane.binding(cells),
                  images_per_window=spend.images_per_window(lane.price_usd) if spend else None,
                  latency_range_s=bounds, latency_note=rules.latency_note,
                  seconds_max=slowest.seconds(cells) if slowest else None)


def _alternatives(spec: JobSpec, route: _Route) -> tuple[RoutingEstimate, ...]:
    """The other routings of these cells over these channels (none when no group has a
    choice of channel)."""
    if all(len(lanes) < 2 for lanes in route.lanes.values()):
        return ()
    options: list[tuple[str, str, float | None]] = [(name, name, None) for name in ROUTINGS]
    if spec.deadline_s is not None:
        options += [(f"{name} by {_duration(spec.deadline_s)}", name, spec.deadline_s)
                    for name in DEADLINE_ROUTINGS]
    found = []
    for label, routing, deadline in options:
        if (routing, deadline) == (spec.routing, spec.deadline_s):
            continue
        load = route.allocate(routing, deadline)
        seconds = route.seconds(load)
        found.append(RoutingEstimate(
            label, seconds, sum(x.cost_usd for x in load.values()),
            None if spec.deadline_s is None else seconds <= spec.deadline_s,
        ))
    return tuple(found)


def _res_order(resolution: str) -> tuple[int, str]:
    order = {"1K": 0, "2K": 1, "4K": 2}
    return order.get(resolution, 9), resolution


def _usd(amount: float) -> str:
    return f"${amount:,.2f}"


def _span(low_s: float, high_s: float) -> str:
    """"1-15 min", or "20-40 s"."""
    if low_s >= 60 and high_s >= 60:
        return f"{low_s / 60:g}-{high_s / 60:g} min"
    return f"{low_s:g}-{high_s:g} s"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"
