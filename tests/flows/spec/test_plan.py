"""Plans: counts per provider and resolution, cost, duration, and speed at 100,000 cells."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nbp.flows.spec.cells import expand
from nbp.flows.spec.loader import load_spec
from nbp.flows.spec.plan import Plan, duration_s, make_plan
from nbp.flows.spec.rate import Rate

REPO = Path(__file__).resolve().parents[3]


def plan_for(folder: Path, text: str) -> Plan:
    path = folder / "job.yaml"
    path.write_text(textwrap.dedent(text))
    spec = load_spec(str(path))
    return make_plan(spec, expand(spec))


def test_demo_plan_json() -> None:
    spec = load_spec(str(REPO / "specs" / "demo.yaml"))
    data = make_plan(spec, expand(spec)).to_json()
    assert data["cells"] == 18
    assert data["by_provider_resolution"] == [
        {"provider": "kie", "resolution": "1K", "cells": 9, "price_usd": 0.09,
         "price_source": "published", "references": 0, "price_per_reference_usd": 0.0,
         "cost_usd": 0.81},
        {"provider": "kie", "resolution": "2K", "cells": 9, "price_usd": 0.09,
         "price_source": "published", "references": 0, "price_per_reference_usd": 0.0,
         "cost_usd": 0.81},
    ]
    assert data["estimated_cost_usd"] == pytest.approx(1.62)
    # 18 creates fit in one 20/10s window and 100 in flight: one ~20 s wave
    assert data["estimated_seconds"] == 20.0
    assert data["cost_is_estimate"] is False
    assert data["within_budget"] is True
    assert json.loads(json.dumps(data)) == data


@pytest.mark.parametrize(
    ("cells", "rate", "in_flight", "latency", "expected"),
    [
        pytest.param(0, Rate(20, 10.0), 100, 20.0, 0.0, id="nothing"),
        pytest.param(20, Rate(20, 10.0), 100, 20.0, 20.0, id="one-window"),
        pytest.param(100, Rate(20, 10.0), 100, 20.0, 60.0, id="rate-bound"),
        pytest.param(100, None, 10, 20.0, 200.0, id="concurrency-bound"),
        pytest.param(100, Rate(100, 1.0), 50, 40.0, 80.0, id="4k-waves"),
    ],
)
def test_duration_formula(
    cells: int, rate: Rate | None, in_flight: int, latency: float, expected: float
) -> None:
    assert duration_s(cells, rate, in_flight, latency) == pytest.approx(expected)


def test_spec_limits_and_prices_override_documented_ones(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, """\
        version: 1
        name: slow
        provider: kie
        matrix:
          prompt: [a, b, c, d, e, f]
          resolution: ["1K", "4K"]
          aspect_ratio: ["1:1", "3:2", "2:3"]
        limits:
          kie: {rate: "5/10s", max_in_flight: 200}
        prices:
          kie: {4K: 0.5}
    """)
    data = plan.to_json()
    assert data["cells"] == 36
    rows = {r["resolution"]: r for r in data["by_provider_resolution"]}
    assert (rows["1K"]["price_usd"], rows["1K"]["price_source"]) == (0.09, "published")
    assert (rows["4K"]["price_usd"], rows["4K"]["price_source"]) == (0.5, "spec")
    assert data["estimated_cost_usd"] == pytest.approx(18 * 0.09 + 18 * 0.5)
    # 36 creates at 5 per 10 s: the last goes out after 70 s; mean latency (20+40)/2 = 30 s
    assert data["estimated_seconds"] == pytest.approx(70 + 30)
    assert data["timing"][0]["rate"] == "5/10s"


def test_unpublished_prices_are_marked_as_estimates(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, """\
        version: 1
        name: guess
        provider: [apikley, kie]
        matrix: {prompt: [a fox]}
        budget: {max_usd: 0.05}
    """)
    data = plan.to_json()
    assert data["by_provider_resolution"][0]["price_source"] == "estimate"
    assert data["cost_is_estimate"] is True
    assert data["within_budget"] is False
    text = plan.render()
    assert "0.134*" in text and "an estimate" in text and "OVER" in text
    assert "fallback: kie" in text


def test_render_for_people() -> None:
    spec = load_spec(str(REPO / "specs" / "catalog.yaml"))
    text = make_plan(spec, expand(spec)).render()
    assert "6 combinations x 5 dataset rows x 1 replicate = 30 cells" in text
    assert "estimated cost:      $2.70 (budget $25.00)" in text
    assert "estimated duration:  30 s" in text


def test_cli_plan_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nbp.flows.cli", "plan", "specs/experiment.yaml", "--json"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    data = json.loads(out.stdout)
    assert {"cells", "estimated_cost_usd", "estimated_seconds"} <= set(data)
    assert data["cells"] == 44


def test_plan_of_100000_cells(tmp_path: Path) -> None:
    """A catalog-sized plan is right; how fast it is lives in bench/planning.py."""
    images = []
    for i in range(5):
        image = tmp_path / f"p{i}.jpg"
        image.write_bytes(f"not decoded, only hashed {i}".encode())
        images.append(image.name)
    lines = ["sku,title,image"] + [
        f"SKU-{i:06d},product {i},{images[i % 5]}" for i in range(25_000)
    ]
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "big.yaml").write_text(textwrap.dedent("""\
        version: 1
        name: big
        provider: [kie, runware]
        dataset: {path: rows.csv}
        matrix:
          prompt: ["Studio photo of the {title} on white marble"]
          aspect_ratio: ["1:1", "4:5", "16:9", "9:16"]
        references: ["{image}"]
        output: {path: "{sku}/{aspect_ratio}_{resolution}.{ext}"}
    """))
    spec = load_spec(str(tmp_path / "big.yaml"))
    data = make_plan(spec, expand(spec)).to_json()
    assert data["cells"] == 100_000
    assert data["estimated_cost_usd"] == pytest.approx(100_000 * 0.09)
    # 100,000 creates at 20 per 10 s
    assert data["estimated_seconds"] == pytest.approx(10 * (5000 - 1) + 20)


ROUTED = """\
version: 1
name: routed
provider: [kie, runware]
accounts: {kie: [KIE_API_KEY, KIE_API_KEY_2]}
matrix: {prompt: [a cup of tea]}
repeat: 1000
"""


def test_spread_plans_each_channel_and_the_other_routings(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, ROUTED + "routing: spread\n")
    data = plan.to_json()
    by_channel = {t["provider"]: t for t in data["timing"]}
    assert set(by_channel) == {"kie", "kie:KIE_API_KEY_2", "runware"}
    assert sum(t["cells"] for t in data["timing"]) == 1000
    assert by_channel["kie:KIE_API_KEY_2"]["account"] == "KIE_API_KEY_2"
    assert data["estimated_cost_usd"] == pytest.approx(sum(t["cost_usd"] for t in data["timing"]))
    assert sum(row["cells"] for row in data["by_provider_resolution"]) == 1000
    others = {a["routing"]: a for a in data["alternatives"]}
    assert set(others) == {"fallback", "cheapest"}
    assert others["cheapest"]["cost_usd"] == pytest.approx(90.0)  # all on kie at $0.09
    assert others["fallback"]["seconds"] > data["estimated_seconds"]
    text = plan.render()
    assert "routing:   spread: 3 of 3 channels take cells" in text
    assert "kie:KIE_API_KEY_2: " in text
    assert "other routings:      fallback: " in text and " · cheapest: " in text


def test_cheapest_by_a_deadline_says_whether_it_is_met(tmp_path: Path) -> None:
    met = plan_for(tmp_path, ROUTED + "routing: cheapest\ndeadline: 2h\n")
    assert met.meets_deadline is True and met.estimated_cost_usd == pytest.approx(90.0)
    assert [t.provider for t in met.timings] == ["kie"]
    assert "(deadline 2 h 00 min)" in met.render()
    # 1000 cells need ~510 s on one Kie account: within 5 min the second account joins
    # (same price); within 3 min Runware too (dearer)
    second = plan_for(tmp_path, ROUTED + "routing: cheapest\ndeadline: 5m\n")
    assert [t.provider for t in second.timings] == ["kie", "kie:KIE_API_KEY_2"]
    assert second.estimated_cost_usd == pytest.approx(90.0) and second.meets_deadline
    tight = plan_for(tmp_path, ROUTED + "routing: cheapest\ndeadline: 3m\n")
    assert tight.meets_deadline is True and len(tight.timings) == 3
    assert tight.estimated_cost_usd > 90.0
    alone = next(r for r in tight.to_json()["alternatives"] if r["routing"] == "cheapest")
    assert alone["meets_deadline"] is False  # the cheapest channel alone is too slow


def test_cheapest_sends_cells_to_the_batch_api_only_when_the_deadline_allows_it(
    tmp_path: Path,
) -> None:
    text = ("version: 1\nname: batchy\nprovider: [kie, gemini-batch]\nrouting: cheapest\n"
            "matrix: {prompt: [a kettle]}\nrepeat: 1000\n")
    relaxed = plan_for(tmp_path, text + "deadline: 2d\n")
    assert [(t.provider, t.batch) for t in relaxed.timings] == [("gemini-batch", True)]
    assert relaxed.estimated_cost_usd == pytest.approx(1000 * 0.067)
    assert "up to 24 h 00 min (batch turnaround)" in relaxed.render()
    urgent = plan_for(tmp_path, text + "deadline: 2h\n")
    assert [t.provider for t in urgent.timings] == ["kie"] and urgent.meets_deadline


def test_each_pinned_row_is_priced_on_its_own_provider(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, """\
        version: 1
        name: pins
        provider: kie
        routing: cheapest
        matrix:
          prompt: ["a {style} fox"]
          style: [ink, oil, clay]
          resolution: [1K, 4K]
          include:
            - {style: clay, provider: runware}
        """)
    rows = {(row.provider, row.resolution): (row.cells, row.price_usd) for row in plan.rows}
    assert rows == {("kie", "1K"): (2, 0.09), ("kie", "4K"): (2, 0.12),
                    ("runware", "1K"): (1, 0.138), ("runware", "4K"): (1, 0.244)}
    assert plan.estimated_cost_usd == pytest.approx(2 * 0.09 + 2 * 0.12 + 0.138 + 0.244)
    assert plan.pinned == ("runware",)
    assert "pinned:    cells of runware run there only" in plan.render()
    assert plan.alternatives == ()  # no group has a choice of channel


def test_a_row_per_provider_and_model_id_the_channel_sends(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, """\
        version: 1
        name: models
        matrix:
          prompt: ["a {style} fox"]
          style: [ink, oil, clay]
          resolution: [1K, 4K]
          provider: [kie, gemini]
          model: {gemini: [gemini-3-pro-image-preview, gemini-3-pro-image]}
        """)
    assert [row.to_json() for row in plan.models] == [
        {"provider": "kie", "model": "nano-banana-pro", "model_pinned": False, "cells": 6,
         "usd_per_image": 0.105, "cost_usd": 0.63},
        {"provider": "gemini", "model": "gemini-3-pro-image-preview", "model_pinned": True,
         "cells": 6, "usd_per_image": 0.187, "cost_usd": 1.122},
        {"provider": "gemini", "model": "gemini-3-pro-image", "model_pinned": True,
         "cells": 6, "usd_per_image": 0.187, "cost_usd": 1.122},
    ]
    assert sum(row.cost_usd for row in plan.models) == pytest.approx(plan.estimated_cost_usd)
    assert plan.to_json()["by_provider_model"] == [row.to_json() for row in plan.models]
    text = plan.render()
    assert "  provider  model                           cells   USD/image        cost\n" in text
    assert "  kie       nano-banana-pro (default)           6       0.105       $0.63\n" in text
    assert "  gemini    gemini-3-pro-image                  6       0.187       $1.12\n" in text


def test_unpinned_cells_show_each_providers_default_model_id(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, """\
        version: 1
        name: spread
        provider: [kie, gemini]
        routing: spread
        options: {gemini: {model: gemini-3-pro-image}}
        matrix:
          prompt: ["a {style} fox"]
          style: [ink, oil, clay, wax]
        """)
    assert [(row.provider, row.model, row.pinned) for row in plan.models] == [
        ("kie", "nano-banana-pro", False), ("gemini", "gemini-3-pro-image", False)]
    assert sum(row.cells for row in plan.models) == 4


def test_one_provider_with_its_default_model_adds_no_table() -> None:
    spec = load_spec(str(REPO / "specs" / "demo.yaml"))
    plan = make_plan(spec, expand(spec))
    assert [(row.provider, row.model, row.cells) for row in plan.models] == [
        ("kie", "nano-banana-pro", 18)]
    assert "model" not in plan.render()


# -- against the target (issue 21) ----------------------------------------------------------


def catalog_spec(folder: Path, rows: list[tuple[str, str]]) -> Path:
    (folder / "products.csv").write_text(
        "sku,title\n" + "".join(f'{sku},"{title}"\n' for sku, title in rows))
    path = folder / "catalog.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: catalog
        provider: kie
        dataset: {{path: products.csv}}
        matrix: {{prompt: ["Studio photo of the {{title}}"]}}
        output: {{target: {folder / 'out'}, path: "{{sku}}.{{ext}}"}}
    """))
    return path


def test_the_plan_prices_this_run_against_the_target(tmp_path: Path) -> None:
    """Week 2 of a catalog: one title changed, one product added, one removed. The plan
    prices the changed and the new cell only, and reports the rest."""
    from nbp.flows.spec.loader import load_job
    from nbp.outputs.manifest import ManifestRow, rows_to_frame, write_manifest
    from nbp.outputs.sink import Sink
    from tests.conftest import run_nbp

    week_1 = load_job(str(catalog_spec(tmp_path, [("A1", "mug"), ("B2", "bag"),
                                                  ("C3", "hat")])))
    rows = [ManifestRow(cell_id=c.cell_id, job="catalog", run_id="w1", provider="kie",
                        prompt=c.prompt, aspect_ratio=c.aspect_ratio, resolution=c.resolution,
                        output_format="png", references=[], vars=dict(c.vars),
                        status="succeeded", output_path=c.output_path)
            for c in week_1.cells]
    write_manifest(Sink(str(tmp_path / "out")), rows_to_frame(rows))
    spec = catalog_spec(tmp_path, [("A1", "mug, new glaze"), ("B2", "bag"), ("D4", "scarf")])
    done = run_nbp("plan", str(spec), "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["target"] == {"target": str(tmp_path / "out"), "new": 1, "changed": 1,
                              "unchanged": 1, "to_collect": 0, "stale": 2}
    assert plan["cells"] == 3 and plan["priced_cells"] == 2
    assert plan["estimated_cost_usd"] == pytest.approx(2 * 0.09)
    offline = json.loads(run_nbp("plan", str(spec), "--json", "--offline").stdout)
    assert offline["estimated_cost_usd"] == pytest.approx(3 * 0.09) and not offline["target"]
    (tmp_path / "out" / "manifest.parquet").write_text("not parquet")
    broken = run_nbp("plan", str(spec))
    assert broken.returncode == 2 and "--offline" in broken.stderr


TIER_1 = """\
    version: 1
    name: tier-1
    provider: gemini
    matrix: {prompt: ["a fox {n}"], n: [1, 2, 3]}
    repeat: 100
    limits:
      gemini: {spend: {usd: 10, window: 600}}
"""


def test_a_spend_window_that_binds_sets_the_duration_and_is_said(tmp_path: Path) -> None:
    """Tier 1: $10 per 10 minutes at $0.134 is 74 images a window: 300 cells need five
    windows, the last create leaves after four (40 min), then it takes ~20 s."""
    plan = plan_for(tmp_path, TIER_1)
    (timing,) = plan.to_json()["timing"]
    assert timing["binding"] == "spend"
    assert timing["spend"] == {"usd": 10.0, "window_s": 600.0, "images_per_window": 74}
    assert plan.estimated_seconds == pytest.approx(4 * 600 + 20)
    assert "spend window $10 / 10 min binds: ~74 images per 10 min" in plan.render()


def test_accounts_share_their_providers_spend_window(tmp_path: Path) -> None:
    """Two keys of one billing account are no faster under its cap."""
    plan = plan_for(tmp_path, TIER_1 + "    accounts: {gemini: [GEMINI_API_KEY, GEMINI_API_KEY_2]}"
                    "\n    routing: spread\n")
    assert [t.cells for t in plan.timings] == [150, 150]
    assert plan.estimated_seconds == pytest.approx(4 * 600 + 20)
    assert all(t.spend_binds for t in plan.timings)


def test_a_spend_window_that_does_not_bind_is_not_said(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, TIER_1.replace("repeat: 100", "repeat: 20"))  # 60 < 74 images
    (timing,) = plan.timings
    assert timing.binding == "in_flight" and not timing.spend_binds
    assert plan.estimated_seconds == pytest.approx(5 * 20 + 20)  # six waves of 10 in flight
    assert "binds" not in plan.render()


def test_duration_with_a_spend_window() -> None:
    from nbp.flows.spec.rate import SpendLimit

    tier_1 = SpendLimit(10.0, 600.0)
    assert duration_s(300, None, 10, 20.0, tier_1, 0.134) == pytest.approx(2420.0)
    assert duration_s(74, None, 100, 20.0, tier_1, 0.134) == pytest.approx(20.0)
    assert duration_s(75, None, 100, 20.0, tier_1, 0.134) == pytest.approx(620.0)
