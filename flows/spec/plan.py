"""What a job will do before it does it: cells, cost and duration.

    plan = make_plan(spec, expand(spec))
    print(plan.render())                  # a table for people
    plan.to_json()["estimated_cost_usd"]  # the same numbers for scripts

Every cell is counted for the primary provider (the first of the fallback list): fallbacks
run only cells the primary cannot.

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

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flows.spec.model import Cell, JobSpec
from flows.spec.rate import Rate
from flows.spec.settings import PriceSource, ProviderRules, provider_rules

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
    """The duration estimate of one provider's cells (see the module docstring)."""

    provider: str
    cells: int
    rate: str | None
    max_in_flight: int
    mean_latency_s: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider, "cells": self.cells, "rate": self.rate,
            "max_in_flight": self.max_in_flight,
            "mean_latency_s": round(self.mean_latency_s, 3), "seconds": round(self.seconds, 1),
        }


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

    @property
    def estimated_cost_usd(self) -> float:
        return sum(row.cost_usd for row in self.rows)

    @property
    def cost_is_estimate(self) -> bool:
        return any(row.price_source == "estimate" for row in self.rows)

    @property
    def estimated_seconds(self) -> float:
        """Providers run side by side, so the slowest one decides."""
        return max((t.seconds for t in self.timings), default=0.0)

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
        }

    def render(self) -> str:
        rows = self.dataset_rows
        size = f"{self.combinations} combinations"
        if rows is not None:
            size += f" x {rows} dataset rows"
        size += f" x {self.repeat} replicate{'s' if self.repeat != 1 else ''} = {self.cells} cells"
        lines = [f"Plan for {self.job} ({self.source})", f"  matrix:    {size}"]
        others = self.providers[1:]
        fallback = f" (fallback: {', '.join(others)})" if others else ""
        lines += [f"  provider:  {self.providers[0]}{fallback}", ""]
        lines.append(
            f"  {'provider':<10}{'resolution':<12}{'cells':>9}{'USD/image':>12}{'cost':>12}"
        )
        for row in self.rows:
            mark = "*" if row.price_source == "estimate" else " "
            lines.append(
                f"  {row.provider:<10}{row.resolution:<12}{row.cells:>9}"
                f"{row.price_usd:>11.3f}{mark}{_usd(row.cost_usd):>12}"
            )
        lines.append(f"  {'total':<22}{self.cells:>9}{'':>12}{_usd(self.estimated_cost_usd):>12}")
        if self.cost_is_estimate:
            lines.append("  * not published by the provider: an estimate (set `prices:` in the "
                         "spec to use yours)")
        lines.append("")
        cost = f"  estimated cost:      {_usd(self.estimated_cost_usd)}"
        if self.max_usd is not None:
            over = self.estimated_cost_usd > self.max_usd
            cost += f" (budget {_usd(self.max_usd)}{': OVER, the run stops there' if over else ''})"
        lines.append(cost)
        lines.append(f"  estimated duration:  {_duration(self.estimated_seconds)}")
        for t in self.timings:
            rate = t.rate or "no create limit"
            lines.append(
                f"    {t.provider}: {t.cells} cells, rate {rate}, {t.max_in_flight} in flight, "
                f"~{t.mean_latency_s:.0f} s per image"
            )
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
    provider = spec.providers[0]
    rules = provider_rules(spec, provider)
    plan_rows = tuple(
        PlanRow(provider, res, count, rules.base_price(res), rules.price_source(res),
                references[res], rules.price_per_reference_usd)
        for res, count in sorted(by_resolution.items(), key=lambda item: _res_order(item[0]))
    )
    timings = (_timing(rules, by_resolution),) if total else ()
    dataset_rows = len(rows) if spec.dataset is not None else None
    per_row = max(1, dataset_rows or 1) * max(1, spec.repeat)
    return Plan(
        job=spec.name, source=spec.source, providers=tuple(spec.providers), cells=total,
        combinations=total // per_row, dataset_rows=dataset_rows, repeat=spec.repeat,
        rows=plan_rows, timings=timings, max_usd=spec.max_usd, by_aspect_ratio=dict(by_ratio),
    )


def duration_s(
    cells: int, rate: Rate | None, max_in_flight: int, mean_latency_s: float
) -> float:
    """The module docstring's formula."""
    if cells <= 0:
        return 0.0
    by_rate = rate.window_s * (math.ceil(cells / rate.count) - 1) if rate else 0.0
    by_concurrency = mean_latency_s * (math.ceil(cells / max(1, max_in_flight)) - 1)
    return max(by_rate, by_concurrency) + mean_latency_s


def _timing(rules: ProviderRules, by_resolution: Counter[str]) -> Timing:
    cells = sum(by_resolution.values())
    latency = sum(LATENCY_S.get(res, DEFAULT_LATENCY_S) * n for res, n in by_resolution.items())
    mean = latency / cells
    rate = rules.rate
    rate_text = f"{rate.count}/{rate.window_s:g}s" if rate else None
    return Timing(rules.provider, cells, rate_text, rules.max_in_flight, mean,
                  duration_s(cells, rate, rules.max_in_flight, mean))


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
