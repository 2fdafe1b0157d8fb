"""Span: nbp against a hand-written asyncio + httpx client, same cells, same emulator.

300 Runware cells (1K PNG), 50 in flight, 2 s per task. The hand-written client polls every
0.25 s, as a person who wants images fast would write it. nbp runs the spec a user writes:
no `poll_interval`, so it polls on its own schedule (`flows/engine/poll_schedule.py`: the
provider's documented ladder until it has seen a task finish, then when the account's
latencies say a task is likely done). The headline row is that default path; a second row
sets `limits.runware.poll_interval: 0.25` (the figure issue 12 measured).

The span is from the first create the emulator receives to the last image file written, so
start-up (imports, Prefect flow run creation) and the manifest and gallery written afterwards
are outside it. Poll requests per task come from the emulator's own request count (Runware:
every request that is not a create is a `getResponse`; neither client uploads anything).
nbp runs as the real `nbp run` CLI (Prefect flow, one task per chunk) on a running Prefect
server; the emulator runs in its own process. Goal (issue 24): nbp span / hand-written span
<= 1.00 on the default path, with at least 5x fewer poll requests per task.

`NBP_BENCH_BASELINE=DIR` (a checkout of other code, e.g. `git archive COMMIT | tar -x -C DIR`)
adds the same two nbp rows run from DIR's code, alternated with the others in every round,
for before/after figures measured in the same minutes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    ROOT,
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
EXPLICIT_POLL_S = 0.25      # the secondary row's `poll_interval`
ROUNDS = int(os.environ.get("NBP_BENCH_SPAN_ROUNDS", "3"))
PROMPT = "A bench of moss in a greenhouse, soft light"
GOAL = 1.00
FEWER_POLLS = 5.0
HEADLINE = "nbp"


def spec(target: Path, poll_interval: float | None) -> dict[str, Any]:
    limits: dict[str, Any] = {"max_in_flight": IN_FLIGHT}
    if poll_interval is not None:
        limits["poll_interval"] = poll_interval
    return {
        "version": 1, "name": "bench-span", "provider": "runware",
        "matrix": {"prompt": [PROMPT], "aspect_ratio": ["1:1"], "resolution": ["1K"]},
        "repeat": CELLS,
        "output": {"target": str(target), "format": "png"},
        "limits": {"runware": limits},
    }


def kinds(baseline: Path | None) -> dict[str, tuple[Path, float | None] | None]:
    """Each row: None for the hand-written client, else (code root, poll_interval)."""
    rows: dict[str, tuple[Path, float | None] | None] = {
        "handwritten": None,
        HEADLINE: (ROOT, None),
        f"nbp, poll_interval {EXPLICIT_POLL_S:g}": (ROOT, EXPLICIT_POLL_S),
    }
    if baseline is not None:
        rows["baseline"] = (baseline, None)
        rows[f"baseline, poll_interval {EXPLICIT_POLL_S:g}"] = (baseline, EXPLICIT_POLL_S)
    return rows


def ideal_span_s() -> float:
    """Lower bound: waves of `IN_FLIGHT` tasks, each seen done the moment it finishes
    (requests, downloads and writes taken as free)."""
    return math.ceil(CELLS / IN_FLIGHT) * LATENCY_S


def one_run(kind: str, how: tuple[Path, float | None] | None, emulator: EmulatorProcess,
            work: Path, server_url: str) -> tuple[float, float]:
    """(span in seconds, poll requests per task) of one run of `kind`."""
    emulator.reset()
    out = work / kind.replace(" ", "_").replace(",", "")
    env = quiet_env(**emulator.env)
    if how is not None:
        root, poll_interval = how
        work.mkdir(parents=True, exist_ok=True)
        child, _ = run_nbp(["run", str(write_spec(work / "span.yaml", spec(out, poll_interval)))],
                           env={**env, "PREFECT_API_URL": server_url, "PYTHONPATH": str(root),
                                "PREFECT_HOME": str(work / "prefect-home")}, cwd=root)
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
    log(f"  {kind:<32} span {span:6.2f} s   {polls:5.2f} polls per task   "
        f"(process wall {child.wall_s:5.1f} s)")
    return float(span), polls


def main() -> dict[str, Any]:
    baseline_dir = os.environ.get("NBP_BENCH_BASELINE")
    rows = kinds(Path(baseline_dir).resolve() if baseline_dir else None)
    log(f"span: {CELLS} Runware cells, {IN_FLIGHT} in flight, {LATENCY_S:g} s latency; "
        f"hand-written client polls every {HANDWRITTEN_POLL_S:g} s; {ROUNDS} rounds")
    spans: dict[str, list[float]] = {kind: [] for kind in rows}
    polls: dict[str, list[float]] = {kind: [] for kind in rows}
    with scratch("span") as work, EmulatorProcess(LATENCY_S) as emulator, \
            PrefectServer(work) as server:
        for round_ in range(ROUNDS):
            # Alternating, so every row sees the same minutes of the VM; the order turns
            # each round so no row always follows the same one.
            order = list(rows)[round_ % len(rows):] + list(rows)[:round_ % len(rows)]
            for kind in order:
                span, per_task = one_run(kind, rows[kind], emulator, work / f"r{round_}",
                                         server.url)
                spans[kind].append(span)
                polls[kind].append(per_task)
    medians = {kind: summarise(values) for kind, values in spans.items()}
    poll_medians = {kind: summarise(values) for kind, values in polls.items()}
    hand_span = medians["handwritten"]["median"]
    hand_polls = poll_medians["handwritten"]["median"]
    ratios = {kind: round(medians[kind]["median"] / hand_span, 3) for kind in rows
              if kind != "handwritten"}
    fewer = {kind: round(hand_polls / poll_medians[kind]["median"], 2) for kind in ratios}
    for kind in ratios:
        log(f"  {kind:<32} span ratio {ratios[kind]:.3f}, {fewer[kind]:.1f}x fewer polls")
    log(f"  goal: span ratio <= {GOAL:.2f} with >= {FEWER_POLLS:g}x fewer polls on the "
        f"default path; ideal span {ideal_span_s():.2f} s")
    figures = {
        "setup": {"cells": CELLS, "in_flight": IN_FLIGHT, "latency_s": LATENCY_S,
                  "handwritten_poll_interval_s": HANDWRITTEN_POLL_S,
                  "explicit_poll_interval_s": EXPLICIT_POLL_S, "rounds": ROUNDS,
                  "format": "png", "resolution": "1K", "baseline": baseline_dir},
        "span_s": medians, "polls_per_task": poll_medians,
        "ideal_span_s": round(ideal_span_s(), 3), "ratio": ratios, "fewer_polls": fewer,
        "goal": f"{HEADLINE} (no poll_interval): span ratio <= {GOAL:.2f} with >= "
                f"{FEWER_POLLS:g}x fewer polls per task than the hand-written client",
        "goal_met": ratios[HEADLINE] <= GOAL and fewer[HEADLINE] >= FEWER_POLLS,
    }
    write_result("span", figures)
    return figures
