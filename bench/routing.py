"""Pooled channels: 120 cells on two Kie accounts plus Apikley with `routing: spread`, against
the same 120 cells on one Kie account.

Each account is held to the documented 20 creates / 10 s by the emulator (own process): a
sliding window per account, excess refused with code 429. One account needs at least
10 s x (120/20 - 1) = 50 s of creates; three channels together 10 s. Each run goes through
the real `nbp run` CLI on a Prefect server. Span = first create the emulator received ->
last image completed (the manifest's `completed_at`), so start-up and the end of the run are
outside it.

Goal (issue 12): spread span <= 0.40 x one account's span, no rate-limit rejection, and no
account over 20 creates in any 10 s window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from bench.common import (
    EmulatorProcess,
    PrefectServer,
    log,
    quiet_env,
    run_nbp,
    scratch,
    write_result,
    write_spec,
)
from bench.rate import max_in_any_window

CELLS, COUNT, WINDOW_S, LATENCY_S, POLL_S = 120, 20, 10.0, 2.0, 0.5
SECOND_KIE_KEY = "bench-kie-second-account"
GOAL_RATIO = 0.40


def spec(target: Path, **routing: Any) -> dict[str, Any]:
    limits = {"rate": f"{COUNT}/{WINDOW_S:g}s", "poll_interval": POLL_S}
    return {
        "version": 1, "name": "bench-routing", "provider": "kie",
        "matrix": {"prompt": ["A glass teapot on a windowsill, morning light"],
                   "aspect_ratio": ["1:1"], "resolution": ["1K"]},
        "repeat": CELLS,
        "output": {"target": str(target), "format": "png"},
        "limits": {"kie": limits, "apikley": limits},
        **routing,
    }


def one_run(name: str, body: dict[str, Any], emulator: EmulatorProcess, server: PrefectServer,
            work: Path) -> dict[str, Any]:
    emulator.reset()
    env = quiet_env(**emulator.env, KIE_API_KEY_2=SECOND_KIE_KEY, PREFECT_API_URL=server.url,
                    PREFECT_HOME=str(work / "prefect-home"))
    child, _ = run_nbp(["run", str(write_spec(work / f"{name}.yaml", body))], env=env)
    child.check(f"nbp run ({name})")
    providers = emulator.stats(times=True)["providers"]
    frame = pl.read_parquet(Path(body["output"]["target"]) / "manifest.parquet")
    if frame.height != CELLS or set(frame["status"]) != {"succeeded"}:
        raise RuntimeError(f"{name}: {frame.height} rows, {set(frame['status'])}")
    windows = {f"{p}/{account}": times for p, stats in providers.items()
               for account, times in stats["create_times_by_account"].items()}
    first = min(times[0] for times in windows.values())
    last = frame["completed_at"].max()
    span = float(last.timestamp()) - first  # type: ignore[union-attr]
    figures = {
        "span_s": round(span, 2), "run_wall_s": round(child.wall_s, 2),
        "creates": {k: len(v) for k, v in windows.items()},
        "rejections": sum(s["rejected_for_rate"] for s in providers.values()),
        "busiest_window": {k: max_in_any_window(v, WINDOW_S) for k, v in windows.items()},
        "cells_by_account": dict(frame.group_by("account").len().iter_rows()),
    }
    log(f"  {name}: span {span:.1f} s; creates {figures['creates']}; "
        f"{figures['rejections']} rejected; busiest windows {figures['busiest_window']}")
    return figures


def main() -> dict[str, Any]:
    log(f"routing: {CELLS} cells, one Kie account vs spread over two Kie accounts + Apikley, "
        f"each {COUNT} creates / {WINDOW_S:g} s")
    rate = f"{COUNT}/{WINDOW_S:g}"
    with scratch("routing") as work, \
            EmulatorProcess(LATENCY_S, rates={"kie": rate, "apikley": rate},
                            providers=("kie", "apikley"),
                            accounts=[("kie", SECOND_KIE_KEY)]) as emulator, \
            PrefectServer(work) as server:
        single = one_run("one-account", spec(work / "one"), emulator, server, work)
        spread = one_run("spread", spec(
            work / "spread", provider=["kie", "apikley"], routing="spread",
            accounts={"kie": ["KIE_API_KEY", "KIE_API_KEY_2"]}), emulator, server, work)
    ratio = spread["span_s"] / single["span_s"]
    clean = spread["rejections"] == 0 and all(
        n <= COUNT for n in spread["busiest_window"].values())
    log(f"  spread / one account: {ratio:.3f} (goal <= {GOAL_RATIO}); "
        f"{'no' if clean else 'SOME'} rejections or windows over the limit")
    figures = {
        "setup": {"cells": CELLS, "rate_per_account": f"{COUNT}/{WINDOW_S:g}s",
                  "latency_s": LATENCY_S, "poll_interval_s": POLL_S, "format": "png"},
        "one_account": single, "spread": spread, "ratio": round(ratio, 3),
        "goal": f"spread span <= {GOAL_RATIO} x one account's, no rejections",
        "goal_met": ratio <= GOAL_RATIO and clean,
    }
    write_result("routing", figures)
    return figures
