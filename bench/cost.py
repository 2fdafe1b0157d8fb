"""Framework cost: CPU per cell and peak memory of the `nbp run` process, 1K PNG (the default
output format) and 1K JPEG, the emulator in a process of its own.

The same Runware spec at 1, 1,000, 10,000 and 100,000 cells (200 in flight, 0.5 s per task),
each through the real CLI (Prefect flow on a running server) in a fresh child process that
reports its own CPU split into start-up (interpreter and imports) and the command
(`bench.nbp_child`). The 1-cell run's command CPU is the fixed cost of a run (flow run,
providers, manifest, gallery); the figure is the rest divided by the cells:

    CPU per cell = (command CPU(N) - command CPU(1)) / (N - 1)

Memory: peak RSS of the process, and its growth per cell against what the manifest itself
takes in memory. For scale, the hand-written client (`bench.handwritten_client`, polling every
0.25 s) makes the same kind of requests for 1,000 cells and nothing else. Goals: <= 20 ms CPU
per 1K PNG cell (issue 12; the older <= 2 ms goal is reported as well); memory flat beyond
the manifest: the largest run's peak RSS within 1.3x the 1,000-cell run's.
`NBP_BENCH_COST_SIZES=1,1000` and `NBP_BENCH_COST_FORMATS=png` shorten it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from bench.common import (
    PYTHON,
    EmulatorProcess,
    PrefectServer,
    log,
    quiet_env,
    run_child,
    run_nbp,
    scratch,
    write_result,
    write_spec,
)

SIZES = tuple(int(n) for n in os.environ.get(
    "NBP_BENCH_COST_SIZES", "1,1000,10000,100000").split(","))
# CPU time on a shared VM varies by +-30 % between runs: the smaller sizes are repeated and the
# run with the least CPU kept (interference only ever adds).
REPEATS = {1: 2, 1000: 3}
FORMATS = tuple(os.environ.get("NBP_BENCH_COST_FORMATS", "png,jpg").split(","))
LATENCY_S, IN_FLIGHT, POLL_S = 0.5, 200, 0.25
GOAL_MS = 20.0          # per 1K PNG cell (issue 12)
FIRST_GOAL_MS = 2.0     # the first goal, per cell whatever the format
MEMORY_GOAL = 1.3  # peak RSS of the largest run within this factor of the 1,000-cell run's
REFERENCE_CELLS = 1000


def spec(target: Path, cells: int, fmt: str) -> dict[str, Any]:
    return {
        "version": 1, "name": "bench-cost", "provider": "runware",
        "matrix": {"prompt": ["A folded paper crane on slate, overhead light"],
                   "aspect_ratio": ["1:1"], "resolution": ["1K"]},
        "repeat": cells,
        "output": {"target": str(target), "format": fmt},
        "limits": {"runware": {"max_in_flight": IN_FLIGHT, "poll_interval": POLL_S}},
    }


def one_run(cells: int, fmt: str, emulator: EmulatorProcess, server: PrefectServer,
            work: Path) -> dict[str, Any]:
    emulator.reset()
    before = emulator.stats()["cpu_s"]
    out = work / f"out-{fmt}-{cells}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh target: nothing to resume
    env = quiet_env(**emulator.env, PREFECT_API_URL=server.url,
                    PREFECT_HOME=str(work / "prefect-home"))
    child, report = run_nbp(["run", str(write_spec(work / f"cost-{fmt}-{cells}.yaml",
                                                    spec(out, cells, fmt)))], env=env,
                            profile_as=f"cost-{fmt}-{cells}",
                            timeout=max(900.0, 0.05 * cells))  # 100,000 cells: ~30 min
    child.check(f"nbp run ({cells} cells)")
    stats = emulator.stats()
    runware = stats["providers"]["runware"]
    manifest = pl.read_parquet(out / "manifest.parquet")
    if manifest.height != cells or set(manifest["status"]) != {"succeeded"}:
        raise RuntimeError(f"{cells} cells: manifest has {manifest.height} rows")
    figures = {
        "cells": cells, "format": fmt, **report, "process_cpu_s": round(child.cpu_s, 3),
        "manifest_in_memory_mb": round(manifest.estimated_size("mb"), 2),
        "manifest_file_mb": round((out / "manifest.parquet").stat().st_size / 2**20, 2),
        "emulator_cpu_s": round(stats["cpu_s"] - before, 2),
        # Runware: every request but a create is a poll (nothing is uploaded)
        "polls_per_task": round((runware["requests"] - runware["creates"]) / cells, 2),
    }
    log(f"  {fmt} {cells:>6} cells: nbp {report['command_cpu_s']:7.2f} s CPU in "
        f"{report['command_wall_s']:6.1f} s wall; start-up {report['startup_cpu_s']:.2f} s; "
        f"peak RSS {report['peak_rss_mb']:.0f} MB; emulator {figures['emulator_cpu_s']} s CPU; "
        f"{figures['polls_per_task']} polls per task")
    return figures


def handwritten_cpu_ms(emulator: EmulatorProcess, work: Path, cells: int, fmt: str) -> float:
    """CPU per cell of `bench.handwritten_client` (same requests, nothing else), 1-cell run
    subtracted: what httpx itself costs for this request pattern."""
    cpu = []
    for n in (1, cells):
        shutil.rmtree(work / f"hand-{n}", ignore_errors=True)
        emulator.reset()
        child = run_child(
            [PYTHON, "-m", "bench.handwritten_client", "--cells", str(n), "--in-flight",
             str(IN_FLIGHT), "--poll", str(POLL_S), "--format", fmt,
             "--out", str(work / f"hand-{n}")], env=quiet_env(**emulator.env),
        ).check("hand-written client")
        cpu.append(child.cpu_s)
    per_cell = 1000 * (cpu[1] - cpu[0]) / (cells - 1)
    log(f"  hand-written client, {fmt}, {cells} cells: {per_cell:.2f} ms CPU per cell")
    return round(per_cell, 3)


def one_format(fmt: str, emu: EmulatorProcess, server: PrefectServer,
               work: Path) -> dict[str, Any]:
    runs = []
    for cells in SIZES:
        tries = [one_run(cells, fmt, emu, server, work) for _ in range(REPEATS.get(cells, 1))]
        best = min(tries, key=lambda run: float(run["command_cpu_s"]))
        best["command_cpu_s_all"] = [t["command_cpu_s"] for t in tries]
        runs.append(best)
    reference = min(handwritten_cpu_ms(emu, work, REFERENCE_CELLS, fmt) for _ in range(2))
    base = runs[0]
    per_cell: dict[str, Any] = {}
    for run in runs[1:]:
        n = run["cells"] - base["cells"]
        cpu_ms = 1000 * (run["command_cpu_s"] - base["command_cpu_s"]) / n
        rss_kb = 1024 * (run["peak_rss_mb"] - base["peak_rss_mb"]) / n
        manifest_kb = 1024 * run["manifest_in_memory_mb"] / run["cells"]
        per_cell[str(run["cells"])] = {"cpu_ms": round(cpu_ms, 3),
                                       "peak_rss_growth_kb": round(rss_kb, 2),
                                       "manifest_kb": round(manifest_kb, 3)}
        log(f"  {fmt} {run['cells']:>6} cells: {cpu_ms:.2f} ms CPU per cell; "
            f"peak RSS +{rss_kb:.1f} KB per cell (manifest {manifest_kb:.2f} KB per cell)")
    if len(runs) > 2:  # the slope between the two largest runs: what each cell adds
        low, high = runs[-2], runs[-1]
        per_cell["slope"] = {"between": [low["cells"], high["cells"]],
                             "peak_rss_growth_kb": round(
                                 1024 * (high["peak_rss_mb"] - low["peak_rss_mb"])
                                 / (high["cells"] - low["cells"]), 2)}
    by_cells = {run["cells"]: run["peak_rss_mb"] for run in runs}
    memory_ratio = (by_cells[max(by_cells)] / by_cells[REFERENCE_CELLS]
                    if REFERENCE_CELLS in by_cells else None)
    if memory_ratio is not None:
        log(f"  {fmt} peak RSS {max(by_cells)} cells / {REFERENCE_CELLS} cells: "
            f"{memory_ratio:.2f} (goal <= {MEMORY_GOAL})")
    return {
        "runs": runs, "per_cell": per_cell, "handwritten_cpu_ms_per_cell": reference,
        "worst_cpu_ms_per_cell": max(
            (v["cpu_ms"] for v in per_cell.values() if "cpu_ms" in v), default=0.0),
        "peak_rss_ratio": None if memory_ratio is None else round(memory_ratio, 3),
        "memory_goal_met": memory_ratio is not None and memory_ratio <= MEMORY_GOAL,
    }


def main() -> dict[str, Any]:
    log(f"cost: Runware, {'/'.join(FORMATS)} 1K, {IN_FLIGHT} in flight, {LATENCY_S:g} s per "
        f"task; cells {', '.join(map(str, SIZES))}")
    with scratch("cost") as work, EmulatorProcess(LATENCY_S, providers=("runware",)) as emu, \
            PrefectServer(work) as server:
        formats = {fmt: one_format(fmt, emu, server, work) for fmt in FORMATS}
    for fmt, result in formats.items():
        log(f"  {fmt}: worst {result['worst_cpu_ms_per_cell']:.2f} ms CPU per cell "
            f"(hand-written client {result['handwritten_cpu_ms_per_cell']:.2f})")
    png = formats.get("png")
    figures = {
        "setup": {"provider": "runware", "formats": list(FORMATS), "resolution": "1K",
                  "in_flight": IN_FLIGHT, "latency_s": LATENCY_S, "poll_interval_s": POLL_S},
        "formats": formats,
        "goal": f"<= {GOAL_MS} ms CPU per 1K PNG cell; memory flat beyond the manifest",
        "goal_met": None if png is None else png["worst_cpu_ms_per_cell"] <= GOAL_MS,
        "first_goal": f"<= {FIRST_GOAL_MS} ms CPU per cell",
        "first_goal_met": all(r["worst_cpu_ms_per_cell"] <= FIRST_GOAL_MS
                              for r in formats.values()),
    }
    write_result("cost", figures)
    return figures
