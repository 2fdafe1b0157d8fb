"""Span: nbp against a hand-written asyncio + httpx client, same cells, same emulator.

300 Runware cells, 50 in flight, 2 s per task, first poll after 0.25 s. The span is from the
first create the emulator receives to the last image file written, so start-up (imports,
Prefect flow run creation) and the manifest and gallery written afterwards are outside it.
nbp runs as the real `nbp run` CLI (Prefect flow, one task per chunk) on a running Prefect
server; the emulator runs in its own process. Goal: nbp span / hand-written span <= 1.10.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    EmulatorProcess,
    PrefectServer,
    last_image_written,
    log,
    quiet_env,
    run_child,
    run_nbp,
    scratch,
    summarise,
    write_result,
    write_spec,
)

CELLS, IN_FLIGHT, LATENCY_S, POLL_S, BACKOFF = 300, 50, 2.0, 0.25, 1.25
ROUNDS = 2
PROMPT = "A bench of moss in a greenhouse, soft light"
GOAL = 1.10


def spec(target: Path) -> dict[str, Any]:
    return {
        "version": 1, "name": "bench-span", "provider": "runware",
        "matrix": {"prompt": [PROMPT], "aspect_ratio": ["1:1"], "resolution": ["1K"]},
        "repeat": CELLS,
        "output": {"target": str(target), "format": "png"},
        "limits": {"runware": {"max_in_flight": IN_FLIGHT, "poll_interval": POLL_S}},
    }


def ideal_span_s() -> float:
    """Lower bound: waves of `IN_FLIGHT` tasks, each seen done at the first poll after
    `LATENCY_S` on the shared schedule (downloads and writes taken as free)."""
    at, delay = 0.0, POLL_S
    while at < LATENCY_S:
        at += delay
        delay *= BACKOFF
    return math.ceil(CELLS / IN_FLIGHT) * at


def one_run(kind: str, emulator: EmulatorProcess, work: Path, server_url: str) -> float:
    emulator.reset()
    out = work / kind
    env = quiet_env(**emulator.env)
    if kind == "nbp":
        child, _ = run_nbp(["run", str(write_spec(work / "span.yaml", spec(out)))],
                           env={**env, "PREFECT_API_URL": server_url,
                                "PREFECT_HOME": str(work / "prefect-home")})
    else:
        backoff = BACKOFF if kind == "handwritten" else 1.0
        child = run_child(
            [PYTHON, "-m", "bench.handwritten_client", "--cells", str(CELLS),
             "--in-flight", str(IN_FLIGHT), "--poll", str(POLL_S), "--backoff", str(backoff),
             "--prompt", PROMPT, "--out", str(out)], env=env)
    child.check(kind)
    stats = emulator.stats()["providers"]["runware"]
    images, last = last_image_written(out)
    if images != CELLS or stats["creates"] != CELLS:
        raise RuntimeError(f"{kind}: {images} images, {stats['creates']} creates; want {CELLS}")
    span = last - stats["first_create"]
    log(f"  {kind:<22} span {span:6.2f} s   (process wall {child.wall_s:5.1f} s)")
    return float(span)


def main() -> dict[str, Any]:
    log(f"span: {CELLS} Runware cells, {IN_FLIGHT} in flight, {LATENCY_S:g} s latency, "
        f"poll {POLL_S:g} s x{BACKOFF:g}")
    spans: dict[str, list[float]] = {"handwritten": [], "nbp": [], "handwritten_fixed_poll": []}
    with scratch("span") as work, EmulatorProcess(LATENCY_S) as emulator, \
            PrefectServer(work) as server:
        for _ in range(ROUNDS):
            for kind in spans:
                spans[kind].append(one_run(kind, emulator, work / f"r{len(spans[kind])}",
                                           server.url))
    medians = {kind: summarise(values) for kind, values in spans.items()}
    ratio = medians["nbp"]["median"] / medians["handwritten"]["median"]
    fixed = medians["nbp"]["median"] / medians["handwritten_fixed_poll"]["median"]
    log(f"  ratio nbp / hand-written: {ratio:.3f} (goal <= {GOAL}); vs fixed-interval "
        f"polling: {fixed:.3f}; ideal span {ideal_span_s():.2f} s")
    figures = {
        "setup": {"cells": CELLS, "in_flight": IN_FLIGHT, "latency_s": LATENCY_S,
                  "poll_interval_s": POLL_S, "poll_backoff": BACKOFF, "rounds": ROUNDS,
                  "format": "png", "resolution": "1K"},
        "span_s": medians, "ideal_span_s": round(ideal_span_s(), 3),
        "ratio": round(ratio, 3), "ratio_vs_fixed_poll": round(fixed, 3),
        "goal": f"ratio <= {GOAL}", "goal_met": ratio <= GOAL,
    }
    write_result("span", figures)
    return figures
