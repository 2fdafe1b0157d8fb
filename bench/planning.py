"""Planning: `nbp plan` on 100,000 and 1,000,000 cells (dataset rows x 4 aspect ratios).

A catalog-shaped spec: a CSV of products (sku, title, colour, image) x 4 ratios x 1K, the
product photo as reference (five photos shared by all rows, hashed once each). `nbp plan` runs
the whole front half of a run: load and validate the spec (JSON Schema, templates, provider
limits for every cell, duplicate-request check), read the dataset, expand every cell with its
stable id, price and time it. Measured: wall time, CPU and peak RSS of the `nbp plan` process,
against `nbp plan` of a 1-cell spec (interpreter and imports). Goal: 100k cells in <= 5 s.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    ROOT,
    log,
    quiet_env,
    run_child,
    scratch,
    summarise,
    write_result,
    write_spec,
)

RATIOS = ("1:1", "4:5", "16:9", "9:16")
SIZES = (100_000, 1_000_000)
REPEATS = {1: 2, 100_000: 3, 1_000_000: 1}
GOAL_S = 5.0
PHOTO_DIR = ROOT / "specs" / "data"  # product photos used as references


def write_dataset(path: Path, rows: int) -> Path:
    photos = sorted(str(p) for p in PHOTO_DIR.glob("*.jpg"))
    colours = ("red", "navy", "teal", "sage", "ochre")
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "title", "colour", "image"])
        for i in range(rows):
            writer.writerow([f"SKU-{i:07d}", f"product {i % 997}", colours[i % 5],
                             photos[i % len(photos)]])
    return path


def spec(dataset: Path, cells: int) -> dict[str, Any]:
    ratios = list(RATIOS) if cells >= len(RATIOS) else ["1:1"]
    return {
        "version": 1, "name": "bench-plan", "provider": "kie",
        "dataset": {"path": str(dataset)},
        "matrix": {"prompt": ["Studio photo of the {title} ({sku}) in {colour}, white marble"],
                   "aspect_ratio": ratios, "resolution": ["1K"]},
        "references": ["{image}"],
        "output": {"target": str(dataset.parent / "out"),
                   "path": "{sku}/{aspect_ratio}_{resolution}.{ext}"},
    }


def main() -> dict[str, Any]:
    log(f"planning: nbp plan on {', '.join(f'{n:,}' for n in SIZES)} cells "
        f"(dataset rows x {len(RATIOS)} ratios)")
    results: dict[str, Any] = {}
    with scratch("plan") as work:
        for cells in (1, *SIZES):
            rows = max(1, cells // len(RATIOS))
            path = write_spec(work / f"plan-{cells}.yaml",
                              spec(write_dataset(work / f"rows-{cells}.csv", rows), cells))
            runs = []
            for _ in range(REPEATS[cells]):
                # The product photos live in the repository, outside the scratch folder.
                child = run_child([PYTHON, "-m", "nbp.flows.cli", "plan", str(path), "--json",
                                   "--allow-path", str(PHOTO_DIR)],
                                  env=quiet_env()).check(f"nbp plan ({cells} cells)")
                if f'"cells": {cells}' not in child.stdout:
                    raise RuntimeError(f"nbp plan did not count {cells} cells")
                runs.append(child)
            wall = summarise([c.wall_s for c in runs])
            results[str(cells)] = {
                "wall_s": wall, "cpu_s": round(min(c.cpu_s for c in runs), 2),
                "peak_rss_mb": round(max(c.peak_rss_mb for c in runs), 1),
            }
            log(f"  {cells:>9,} cells: {wall['median']:6.2f} s wall (min {wall['min']:.2f}), "
                f"{results[str(cells)]['cpu_s']:.2f} s CPU, peak RSS "
                f"{results[str(cells)]['peak_rss_mb']:.0f} MB")
    base = results["1"]
    for cells in SIZES:
        entry = results[str(cells)]
        entry["us_per_cell"] = round(1e6 * (entry["wall_s"]["median"] - base["wall_s"]["median"])
                                     / cells, 2)
        entry["kb_per_cell"] = round(1024 * (entry["peak_rss_mb"] - base["peak_rss_mb"]) / cells,
                                     3)
    met = results[str(SIZES[0])]["wall_s"]["median"] <= GOAL_S
    figures = {"setup": {"ratios": list(RATIOS), "references": "5 shared photos",
                         "command": "nbp plan SPEC --json"},
               "cells": results, "goal": f"100k cells in <= {GOAL_S} s", "goal_met": met}
    write_result("planning", figures)
    return figures
