"""Rate efficiency: how close nbp gets to Kie's documented 20 creates per 10 s.

200 Kie cells through the real `nbp run` CLI; the emulator (own process) enforces the limit
the documented way (a sliding 10 s window, code 429 in an HTTP 200 body) and timestamps every
create it admits. A sliding window allows a burst of 20 at once, then 20 more each 10 s, so
200 creates need at least 10 s x (200/20 - 1) = 90 s from the first to the last:

    achieved rate = (creates - 20) / (last create - first create)      [creates / s]
    efficiency    = achieved rate / documented rate (2 / s) = 90 s / measured create span

Goal: efficiency >= 0.95 with rate-limit rejections under 1 % of create attempts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

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

CELLS, COUNT, WINDOW_S, LATENCY_S, POLL_S = 200, 20, 10.0, 2.0, 0.5
GOAL_EFFICIENCY, GOAL_REJECTIONS = 0.95, 0.01


def spec(target: Path) -> dict[str, Any]:
    return {
        "version": 1, "name": "bench-rate", "provider": "kie",
        "matrix": {"prompt": ["A paper lantern over a night market, bokeh"],
                   "aspect_ratio": ["1:1"], "resolution": ["1K"]},
        "repeat": CELLS,
        "output": {"target": str(target), "format": "png"},
        "limits": {"kie": {"rate": f"{COUNT}/{WINDOW_S:g}s", "poll_interval": POLL_S}},
    }


def max_in_any_window(times: list[float], window: float) -> int:
    """The most creates the emulator admitted inside any `window` seconds."""
    most, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most


def main() -> dict[str, Any]:
    log(f"rate: {CELLS} Kie cells at the documented {COUNT} creates / {WINDOW_S:g} s")
    with scratch("rate") as work, \
            EmulatorProcess(LATENCY_S, rates={"kie": f"{COUNT}/{WINDOW_S:g}"}) as emulator, \
            PrefectServer(work) as server:
        env = quiet_env(**emulator.env, PREFECT_API_URL=server.url,
                        PREFECT_HOME=str(work / "prefect-home"))
        child, _ = run_nbp(["run", str(write_spec(work / "rate.yaml", spec(work / "out")))],
                           env=env)
        child.check("nbp run")
        stats = emulator.stats(times=True)["providers"]["kie"]
    times: list[float] = stats["create_times"]
    span = times[-1] - times[0]
    ideal = WINDOW_S * (math.ceil(CELLS / COUNT) - 1)
    achieved = (len(times) - COUNT) / span
    efficiency = achieved / (COUNT / WINDOW_S)
    rejected = stats["rejected_for_rate"]
    rejection_share = rejected / (len(times) + rejected)
    met = efficiency >= GOAL_EFFICIENCY and rejection_share < GOAL_REJECTIONS
    log(f"  {len(times)} creates in {span:.2f} s (ideal {ideal:.0f} s): {achieved:.3f}/s of "
        f"{COUNT / WINDOW_S:g}/s = {efficiency:.3f}; {rejected} rejected "
        f"({100 * rejection_share:.2f} %); busiest window {max_in_any_window(times, WINDOW_S)}")
    figures = {
        "setup": {"cells": CELLS, "documented_rate": f"{COUNT}/{WINDOW_S:g}s",
                  "latency_s": LATENCY_S, "poll_interval_s": POLL_S, "max_in_flight": 100},
        "creates": len(times), "create_span_s": round(span, 3), "ideal_create_span_s": ideal,
        "achieved_rate_per_s": round(achieved, 4), "documented_rate_per_s": COUNT / WINDOW_S,
        "efficiency": round(efficiency, 4), "rate_limit_rejections": rejected,
        "rejection_share": round(rejection_share, 4),
        "max_creates_in_any_window": max_in_any_window(times, WINDOW_S),
        "run_wall_s": round(child.wall_s, 2),
        "goal": f"efficiency >= {GOAL_EFFICIENCY}, rejections < {GOAL_REJECTIONS:.0%}",
        "goal_met": met,
    }
    write_result("rate", figures)
    return figures
