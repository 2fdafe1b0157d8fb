"""One resolver for prices and limits: what `nbp plan` prices is what the budget reserves,
and what the throttles enforce is what the plan times."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from nbp.flows.engine.budget import Budget
from nbp.flows.engine.job import RunHooks, RunOptions, make_throttles, run_job
from nbp.flows.engine.journal import Journal
from nbp.flows.engine.progress import Progress
from nbp.flows.engine.routing import Router
from nbp.flows.engine.runner import RunContext, Runner
from nbp.flows.orchestration.emulation import serve_emulators
from nbp.flows.spec.loader import parse_job
from nbp.flows.spec.plan import make_plan
from nbp.flows.spec.settings import provider_rules
from nbp.outputs.sink import Sink
from nbp.providers import registry

PROVIDERS = ("wiro", "hiapi", "runware", "kie", "apikley")


def job_text(provider: str, resolution: str, references: int, **extra: object) -> str:
    spec = {
        "version": 1, "name": "prices", "provider": provider,
        "matrix": {"prompt": ["a pear"], "resolution": [resolution]},
        "references": [f"https://example.com/ref-{i}.png" for i in range(references)],
        "output": {"target": "memory://prices"}, **extra,
    }
    return yaml.safe_dump(spec)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("resolution", ["1K", "2K", "4K"])
def test_the_plan_prices_what_the_budget_reserves(provider: str, resolution: str) -> None:
    caps = registry.capabilities(provider)
    for references in sorted({0, 1, caps.max_references}):
        job = parse_job(job_text(provider, resolution, references))
        plan = make_plan(job.spec, job.cells)
        sink = Sink("memory://prices")
        ctx = RunContext(
            spec=job.spec, run_id="r", sink=sink, journal=Journal(sink), providers={},
            rules={provider: provider_rules(job.spec, provider)}, throttles={},
            budget=Budget(None), progress=Progress(), router=Router("fallback", []),
        )
        reserved = Runner(ctx).price(provider, next(iter(job.cells)))
        assert reserved == pytest.approx(plan.estimated_cost_usd, abs=1e-12), references


def test_a_per_reference_charge_is_priced_and_can_be_overridden() -> None:
    job = parse_job(job_text("runware", "2K", 4))
    assert make_plan(job.spec, job.cells).estimated_cost_usd == pytest.approx(0.138 + 4 * 0.0011)
    job = parse_job(job_text("runware", "2K", 4,
                             prices={"runware": {"2K": 0.1, "per_reference": 0.01}}))
    assert make_plan(job.spec, job.cells).estimated_cost_usd == pytest.approx(0.14)


def test_the_throttles_enforce_the_limits_the_plan_times() -> None:
    job = parse_job(job_text("kie", "1K", 0, limits={"kie": {"rate": "7/3s",
                                                             "max_in_flight": 9}}))
    rules = {"kie": provider_rules(job.spec, "kie")}
    provider = registry.get_class("kie")(registry.get_class("kie").settings_from_env({}))
    try:
        throttle = make_throttles(rules, {"kie": provider})["kie"]
    finally:
        asyncio.run(provider.aclose())
    timing = make_plan(job.spec, job.cells).timings[0]
    assert throttle.rate is not None
    assert (throttle.rate.rate.count, throttle.rate.rate.window_s) == (7, 3.0)
    assert throttle.in_flight.limit == timing.max_in_flight == 9
    assert timing.rate == "7/3s"


def test_a_budget_of_exactly_the_planned_cost_pays_for_the_cell(tmp_path: Path) -> None:
    """End to end on Runware with four local references (its per-reference charge): the plan's
    cost is enough, a hair less is not, and the emulator bills what was planned."""
    refs = []
    for i in range(4):
        ref = tmp_path / f"ref-{i}.png"
        ref.write_bytes(_png())
        refs.append(str(ref))
    spec = {
        "version": 1, "name": "exact", "provider": "runware",
        "matrix": {"prompt": ["a plum"], "resolution": ["2K"]}, "references": refs,
        "output": {"target": str(tmp_path / "out")},
        "limits": {"runware": {"poll_interval": 0.05}},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    job = parse_job(path.read_text(), base_dir=str(tmp_path))
    planned = make_plan(job.spec, job.cells).estimated_cost_usd
    emulated = RunHooks(emulation=serve_emulators)
    short = asyncio.run(run_job(RunOptions(spec=str(path), emulate=True, max_usd=planned - 1e-6,
                                           emulator_latency_s=0.05), hooks=emulated))
    assert short.counts["skipped"] == 1 and short.spent_usd == 0
    paid = asyncio.run(run_job(RunOptions(spec=str(path), emulate=True, max_usd=planned,
                                          emulator_latency_s=0.05), hooks=emulated))
    assert paid.counts["succeeded"] == 1
    assert paid.spent_usd == pytest.approx(planned)


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buffer, "PNG")
    return buffer.getvalue()
