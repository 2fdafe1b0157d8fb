"""Span: nbp against a hand-written asyncio + httpx client, same cells, same emulator.

300 Runware cells (1K PNG), 50 in flight, 2 s per task. The hand-written client polls every
0.25 s, as a person who wants images fast would write it; nbp polls on its own schedule
(`AccountThrottle.next_poll_delay`: the provider's first interval until it has seen a task
finish, then near the account's observed finishing time and at short intervals after). The
span is from the first create the emulator receives to the last image file written, so
start-up (imports, Prefect flow run creation) and the manifest and gallery written afterwards
are outside it. Poll requests per task come from the emulator's own request count (Runware:
every request that is not a create is a `getResponse`; neither client uploads anything).
nbp runs as the real `nbp run` CLI (Prefect flow, one task per chunk) on a running Prefect
server; the emulator runs in its own process. Goal: nbp span / hand-written span <= 1.10,
with fewer poll requests per task than the hand-written client.
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

CELLS, IN_FLIGHT, LATENCY_S = 300, 50, 2.0
HANDWRITTEN_POLL_S = 0.25   # the hand-written client's fixed interval
NBP_POLL_S = 0.25           # nbp's first interval before it has seen a task finish
ROUNDS = 3
PROMPT = "A bench of moss in a greenhouse, soft light"
GOAL = 1.10
KINDS = ("handwritten", "nbp")


def spec(target: Path) -> dict[str, Any]:
    return {
        "version": 1, "name": "bench-span", "provider": "runware",
        "matrix": {"prompt": [PROMPT], "aspect_ratio": ["1:1"], "resolution": ["1K"]},
        "repeat": CELLS,
        "output": {"target": str(target), "format": "png"},
        "limits": {"runware": {"max_in_flight": IN_FLIGHT, "poll_interval": NBP_POLL_S}},
    }


def ideal_span_s() -> float:
    """Lower bound: waves of `IN_FLIGHT` tasks, each seen done the moment it finishes
    (requests, downloads and writes taken as free)."""
    return math.ceil(CELLS / IN_FLIGHT) * LATENCY_S


def one_run(kind: str, emulator: EmulatorProcess, work: Path,
            server_url: str) -> tuple[float, float]:
    """(span in seconds, poll requests per task) of one run of `kind`."""
    emulator.reset()
    out = work / kind
    env = quiet_env(**emulator.env)
    if kind == "nbp":
        child, _ = run_nbp(["run", str(write_spec(work / "span.yaml", spec(out)))],
                           env={**env, "PREFECT_API_URL": server_url,
                                "PREFECT_HOME": str(work / "prefect-home")})
    else:
        child = run_child(
            [PYTHON, "-m", "bench.handwritten_client", "--cells", str(CELLS),
             "--in-flight", str(IN_FLIGHT), "--poll", str(HANDWRITTEN_POLL_S), "--backoff", "1",
             "--prompt", PROMPT, "--out", str(out)], env=env)
    child.check(kind)
    stats = emulator.stats()["providers"]["runware"]
    images, last = last_image_written(out)
    if images != CELLS or stats["creates"] != CELLS:
        raise RuntimeError(f"{kind}: {images} images, {stats['creates']} creates; want {CELLS}")
    span = last - stats["first_create"]
    polls = (stats["requests"] - stats["creates"]) / CELLS
    log(f"  {kind:<12} span {span:6.2f} s   {polls:5.2f} polls per task   "
        f"(process wall {child.wall_s:5.1f} s)")
    return float(span), polls


def main() -> dict[str, Any]:
    log(f"span: {CELLS} Runware cells, {IN_FLIGHT} in flight, {LATENCY_S:g} s latency; "
        f"hand-written client polls every {HANDWRITTEN_POLL_S:g} s")
    spans: dict[str, list[float]] = {kind: [] for kind in KINDS}
    polls: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with scratch("span") as work, EmulatorProcess(LATENCY_S) as emulator, \
            PrefectServer(work) as server:
        for round_ in range(ROUNDS):
            for kind in KINDS:  # alternating, so both sides see the same minutes of the VM
                span, per_task = one_run(kind, emulator, work / f"r{round_}", server.url)
                spans[kind].append(span)
                polls[kind].append(per_task)
    medians = {kind: summarise(values) for kind, values in spans.items()}
    poll_medians = {kind: summarise(values) for kind, values in polls.items()}
    ratio = medians["nbp"]["median"] / medians["handwritten"]["median"]
    fewer_polls = poll_medians["nbp"]["median"] < poll_medians["handwritten"]["median"]
    log(f"  ratio nbp / hand-written: {ratio:.3f} (goal <= {GOAL}); polls per task "
        f"{poll_medians['nbp']['median']:.2f} vs {poll_medians['handwritten']['median']:.2f}; "
        f"ideal span {ideal_span_s():.2f} s")
    figures = {
        "setup": {"cells": CELLS, "in_flight": IN_FLIGHT, "latency_s": LATENCY_S,
                  "handwritten_poll_interval_s": HANDWRITTEN_POLL_S,
                  "nbp_first_poll_interval_s": NBP_POLL_S, "rounds": ROUNDS,
                  "format": "png", "resolution": "1K"},
        "span_s": medians, "polls_per_task": poll_medians,
        "ideal_span_s": round(ideal_span_s(), 3), "ratio": round(ratio, 3),
        "goal": f"ratio <= {GOAL} with fewer polls per task than the hand-written client",
        "goal_met": ratio <= GOAL and fewer_polls,
    }
    write_result("span", figures)
    return figures
