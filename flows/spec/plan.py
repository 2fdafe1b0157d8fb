"""What a job will do before it does it: cells, cost and duration.

    plan = make_plan(spec, expand(spec))
    print(plan.render())                  # a table for people
    plan.to_json()["estimated_cost_usd"]  # the same numbers for scripts

Cells are counted where the spec's routing sends them (`flows.spec.allocation`): with
`fallback` all on the primary channel (fallbacks run only cells the primary cannot), with
`spread` in proportion to each channel's throughput, with `cheapest` the cheapest channels
first. One line per other routing shows what it would take and cost.

Cost: cells x price per image, by resolution, plus per-reference charges where a provider
makes them. Prices come from `flows.spec.settings.provider_rules`, the same resolver the
budget reserves with; anything not published by the provider is marked as an estimate.

Duration, per provider, for n cells, a create rate of c per W seconds (`limits.rate`, else
the documented default; none means no create limit), at most m tasks in flight and a mean
generation latency L (about 20 s at 1K and 2K and 40 s at 4K: protocols.md §6.2 says image
generation "can take 10–60+ s (4K slower)"):

    T = max(W * (ceil(n / c) - 1), L * (ceil(n / m) - 1)) + L

The first term is when the last create can be sent under the rate window, the second when
the last wave of m concurrent tasks can start; the last task then takes L. Polling adds up
to one poll interval, ignored here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flows.spec.allocation import LaneEstimate, allocate, duration_s, meets
from flows.spec.channels import Channel, channels
from flows.spec.model import Cell, JobSpec
from flows.spec.settings import PriceSource, ProviderRules, provider_rules

__all__ = ["Plan", "PlanRow", "RoutingEstimate", "Timing", "duration_s", "make_plan"]

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

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider, "account": self.account, "cells": self.cells,
            "batch": self.batch,
            "rate": self.rate, "max_in_flight": self.max_in_flight,
            "mean_latency_s": round(self.mean_latency_s, 3), "seconds": round(self.seconds, 1),
            "cost_usd": round(self.cost_usd, 6),
        }


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
    routing: str = "fallback"
    channels: int = 1                 # provider x account pairs the job may use
    deadline_s: float | None = None
    alternatives: tuple[RoutingEstimate, ...] = ()

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
            "timing": [t.to_json() for t in self.timings],
            "routing": self.routing,
            "deadline_s": self.deadline_s,
            "meets_deadline": self.meets_deadline,
            "alternatives": [a.to_json() for a in self.alternatives],
        }

    def render(self) -> str:
        rows = self.dataset_rows
        size = f"{self.combinations} combinations"
        if rows is not None:
            size += f" x {rows} dataset rows"
        size += f" x {self.repeat} replicate{'s' if self.repeat != 1 else ''} = {self.cells} cells"
        lines = [f"Plan for {self.job} ({self.source})", f"  matrix:    {size}"]
        if self.routing == "fallback":
            others = self.providers[1:]
            fallback = f" (fallback: {', '.join(others)})" if others else ""
            lines += [f"  provider:  {self.providers[0]}{fallback}", ""]
        else:
            by = f" by {_duration(self.deadline_s)}" if self.deadline_s is not None else ""
            lines += [f"  routing:   {self.routing}{by}: {len(self.timings)} of "
                      f"{self.channels} channels take cells", ""]
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
        lines.append(f"  {'total':<{wide + 12}}{self.cells:>9}{'':>12}"
                     f"{_usd(self.estimated_cost_usd):>12}")
        if self.cost_is_estimate:
            lines.append("  * not published by the provider: an estimate (set `prices:` in the "
                         "spec to use yours)")
        lines.append("")
        cost = f"  estimated cost:      {_usd(self.estimated_cost_usd)}"
        if self.max_usd is not None:
            over = self.estimated_cost_usd > self.max_usd
            cost += f" (budget {_usd(self.max_usd)}{': OVER, the run stops there' if over else ''})"
        lines.append(cost)
        duration = f"  estimated duration:  {_duration(self.estimated_seconds)}"
        if self.deadline_s is not None:
            duration += (f" (deadline {_duration(self.deadline_s)}"
                         f"{'' if self.meets_deadline else ': NOT MET'})")
        lines.append(duration)
        for t in self.timings:
            rate = t.rate or "no create limit"
            if t.batch:
                lines.append(f"    {t.provider}: {t.cells} cells, {_usd(t.cost_usd)}, up to "
                             f"{_duration(t.seconds)} (batch turnaround)")
                continue
            lines.append(
                f"    {t.provider}: {t.cells} cells, {_usd(t.cost_usd)}, "
                f"{_duration(t.seconds)} (rate {rate}, {t.max_in_flight} in flight, "
                f"~{t.mean_latency_s:.0f} s per image)"
            )
        if self.alternatives:
            lines.append("  other routings:      "
                         + " · ".join(a.render() for a in self.alternatives))
        return "\n".join(lines)


def make_plan(spec: JobSpec, cells: Iterable[Cell]) -> Plan:
    """Count, price and time the cells of `spec` (fast: one pass, no I/O, no Prefect)."""
    by_resolution: Counter[str] = Counter()
    references: Counter[str] = Counter()
    by_ratio: Counter[str] = Counter()
    rows: set[int] = set()
    total = 0
    for cell in cells:
        total += 1
        by_resolution[cell.resolution] += 1
        references[cell.resolution] += len(cell.references)
        by_ratio[cell.aspect_ratio] += 1
        if cell.dataset_row is not None:
            rows.add(cell.dataset_row)
    rules = {name: provider_rules(spec, name) for name in spec.providers}
    found = channels(spec)
    lanes = _lanes(found, rules, by_resolution, references, total)
    counts = allocate(spec.routing, lanes, total, spec.deadline_s)
    on_provider = Counter[str]()
    for channel, n in zip(found, counts, strict=True):
        on_provider[channel.provider] += n
    plan_rows = _rows(rules, on_provider, total, by_resolution, references)
    timings = tuple(_timing(c, lane, rules[c.provider], n)
                    for c, lane, n in zip(found, lanes, counts, strict=True) if n) \
        if total else ()
    dataset_rows = len(rows) if spec.dataset is not None else None
    per_row = max(1, dataset_rows or 1) * max(1, spec.repeat)
    return Plan(
        job=spec.name, source=spec.source, providers=tuple(spec.providers), cells=total,
        combinations=total // per_row, dataset_rows=dataset_rows, repeat=spec.repeat,
        rows=plan_rows, timings=timings, max_usd=spec.max_usd, by_aspect_ratio=dict(by_ratio),
        routing=spec.routing, channels=len(found), deadline_s=spec.deadline_s,
        alternatives=_alternatives(spec, lanes, total) if total else (),
    )


def _lanes(
    found: Sequence[Channel], rules: Mapping[str, ProviderRules],
    by_resolution: Counter[str], references: Counter[str], total: int,
) -> list[LaneEstimate]:
    """Each channel's mean price per cell of this job, its limits and mean latency."""
    latency = sum(LATENCY_S.get(res, DEFAULT_LATENCY_S) * n for res, n in by_resolution.items())
    mean = latency / total if total else DEFAULT_LATENCY_S
    lanes = []
    for channel in found:
        rule = rules[channel.provider]
        cost = sum(rule.base_price(res) * n + rule.price_per_reference_usd * references[res]
                   for res, n in by_resolution.items())
        lanes.append(LaneEstimate(channel.key, cost / total if total else 0.0, rule.rate,
                                  rule.max_in_flight, rule.turnaround_s or mean))
    return lanes


def _rows(
    rules: Mapping[str, ProviderRules], on_provider: Counter[str], total: int,
    by_resolution: Counter[str], references: Counter[str],
) -> tuple[PlanRow, ...]:
    """Price rows per provider x resolution, the provider's share of each resolution."""
    plan_rows = []
    for name, rule in rules.items():
        share = on_provider[name] / total if total else 0.0
        if share == 0.0:
            continue
        for res, count in sorted(by_resolution.items(), key=lambda item: _res_order(item[0])):
            plan_rows.append(PlanRow(
                name, res, round(count * share), rule.base_price(res), rule.price_source(res),
                round(references[res] * share), rule.price_per_reference_usd,
            ))
    return tuple(plan_rows)


def _timing(channel: Channel, lane: LaneEstimate, rules: ProviderRules, cells: int) -> Timing:
    rate = rules.rate
    rate_text = f"{rate.count}/{rate.window_s:g}s" if rate else None
    return Timing(channel.key, cells, rate_text, rules.max_in_flight, lane.latency_s,
                  lane.seconds(cells), cells * lane.price_usd, channel.account,
                  batch=rules.turnaround_s is not None)


def _alternatives(
    spec: JobSpec, lanes: Sequence[LaneEstimate], total: int
) -> tuple[RoutingEstimate, ...]:
    """The other routings of these cells over these channels (none with one channel)."""
    if len(lanes) < 2:
        return ()
    options: list[tuple[str, str, float | None]] = [
        ("fallback", "fallback", None), ("spread", "spread", None),
        ("cheapest", "cheapest", None),
    ]
    if spec.deadline_s is not None:
        options.append((f"cheapest by {_duration(spec.deadline_s)}", "cheapest",
                        spec.deadline_s))
    found = []
    for label, routing, deadline in options:
        if (routing, deadline) == (spec.routing, spec.deadline_s):
            continue
        counts = allocate(routing, lanes, total, deadline)
        found.append(RoutingEstimate(
            label, max(lane.seconds(n) for lane, n in zip(lanes, counts, strict=True)),
            sum(lane.price_usd * n for lane, n in zip(lanes, counts, strict=True)),
            None if spec.deadline_s is None else meets(lanes, counts, spec.deadline_s),
        ))
    return tuple(found)


def _res_order(resolution: str) -> tuple[int, str]:
    order = {"1K": 0, "2K": 1, "4K": 2}
    return order.get(resolution, 9), resolution


def _usd(amount: float) -> str:
    return f"${amount:,.2f}"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"
