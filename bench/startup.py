"""Start-up: how soon `nbp run` sends its first create, and the wall-clock of a 300-cell run
against the hand-written client, on the path a user gets (no `PREFECT_API_URL`).

    python -m bench startup                                  # this checkout
    NBP_BENCH_BEFORE=/path/to/old/checkout python -m bench startup   # paired with older code

(`NBP_BENCH_AFTER=DIR` measures another checkout than this one as "after", e.g. a `git
archive` of the commit, so the code measured cannot change while the benchmark runs.)

Every run is the real CLI (`python -m nbp.flows.cli run SPEC`) in a fresh process, with the
Runware emulator in a process of its own (`bench/emulator.py`, 2 s per task), which
timestamps every create; time to first create = that timestamp - the moment the child was
launched. Per round:

- `first`: a 1-cell spec when no nbp server runs (`nbp server stop` first): the server
  starts during the run (code before issue 24: every run starts a temporary server);
- `second`: the same again, now that the previous run's server is kept (before: the same
  as `first`);
- `cold`: a 1-cell spec on a new `PREFECT_HOME` (the database is created and migrated);
- `wall_300`: span.py's shape — 300 cells, 50 in flight — with the spec a user writes (no
  `poll_interval`), on the kept server, split into time to first create, span (first create
  to last image written) and tail (last image to exit); and the hand-written client
  (bench/handwritten_client.py, 0.25 s polls) once per round for the ratio of the
  wall-clocks (each round's nbp wall over the same round's hand-written wall).

With `NBP_BENCH_BEFORE`, each round runs both checkouts, alternating which goes first, so
the shared machine's load hits both alike. Goals (issue 24, item 1): `second` <= 3 s,
`first` no longer than before, `wall_300` <= 1.15 x the hand-written client's wall.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    ROOT,
    EmulatorProcess,
    compile_bytecode,
    last_image_written,
    log,
    quiet_env,
    run_child,
    scratch,
    summarise,
    write_result,
    write_spec,
)

ROUNDS = int(os.environ.get("NBP_BENCH_STARTUP_ROUNDS", "3"))
CELLS, IN_FLIGHT, LATENCY_S = 300, 50, 2.0
PROMPT = "A bench of moss in a greenhouse, soft light"
GOAL_FIRST_CREATE_S, GOAL_RATIO = 3.0, 1.15
STARTUP_TIMEOUT_S = 120


def spec(target: Path, cells: int) -> dict[str, Any]:
    """Runware, 1K PNG, `cells` repeats of one prompt: as a user writes it (no poll_interval)."""
    return {
        "version": 1, "name": "bench-startup", "provider": "runware",
        "matrix": {"prompt": [PROMPT], "aspect_ratio": ["1:1"], "resolution": ["1K"]},
        "repeat": cells,
        "output": {"target": str(target), "format": "png"},
        "limits": {"runware": {"max_in_flight": IN_FLIGHT}},
    }


class Side:
    """One checkout's `nbp`, its own warm `PREFECT_HOME`, and its figures."""

    def __init__(self, name: str, checkout: Path, work: Path, emulator: EmulatorProcess,
                 kept_server: bool) -> None:
        self.name, self.checkout, self.emulator = name, checkout, emulator
        self.work = work / name
        self.home = self.work / "prefect-home"
        self.home.mkdir(parents=True)
        self.kept_server = kept_server
        compile_bytecode(checkout)
        self.figures: dict[str, list[float]] = {
            k: [] for k in ("first", "second", "cold", "wall_300", "first_create_300",
                            "span_300", "tail_300")}
        self.runs = 0
        self.last: dict[str, float] = {}

    def env(self, home: Path) -> dict[str, str]:
        # Prefect's 20 s default is too short for a new home's migrations on a busy machine:
        # the code before issue 24 failed a cold run at 20 s here.
        return quiet_env(**self.emulator.env, PREFECT_HOME=str(home),
                         PYTHONPATH=str(self.checkout),
                         PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=str(STARTUP_TIMEOUT_S))

    def nbp(self, *args: str, home: Path | None = None) -> Any:
        return run_child([PYTHON, "-m", "nbp.flows.cli", *args], env=self.env(home or self.home),
                         cwd=self.checkout)

    def stop_server(self, home: Path | None = None) -> None:
        if self.kept_server:
            self.nbp("server", "stop", "--force", home=home).check(f"{self.name}: server stop")

    def run(self, cells: int, home: Path | None = None) -> tuple[float, float]:
        """(seconds from launch to the first create, wall) of one `nbp run`; the span (first
        create to last image) and the tail (last image to exit) go to `self.last`."""
        self.runs += 1
        target = self.work / f"out-{self.runs}"
        path = write_spec(self.work / f"spec-{self.runs}.yaml", spec(target, cells))
        self.emulator.reset()
        launched = time.time()
        child = self.nbp("run", str(path), home=home).check(f"{self.name}: nbp run")
        stats = self.emulator.stats()["providers"]["runware"]
        images, last = last_image_written(target)
        if images != cells or stats["creates"] != cells:
            raise RuntimeError(f"{self.name}: {images} images, {stats['creates']} creates")
        self.last = {"span": last - stats["first_create"],
                     "tail": launched + child.wall_s - last}
        return stats["first_create"] - launched, child.wall_s

    def round(self, index: int) -> None:
        cold = self.work / f"cold-home-{index}"
        cold.mkdir()
        self.figures["cold"].append(self.run(1, home=cold)[0])
        self.stop_server(cold)
        self.stop_server()
        self.figures["first"].append(self.run(1)[0])
        self.figures["second"].append(self.run(1)[0])
        first_create, wall = self.run(CELLS)
        self.figures["first_create_300"].append(first_create)
        self.figures["wall_300"].append(wall)
        self.figures["span_300"].append(self.last["span"])
        self.figures["tail_300"].append(self.last["tail"])
        log(f"  {self.name:<7} round {index}: first create cold {self.figures['cold'][-1]:5.2f} s"
            f", first {self.figures['first'][-1]:5.2f} s, second {self.figures['second'][-1]:5.2f}"
            f" s; {CELLS} cells: first create {first_create:5.2f} s, span "
            f"{self.last['span']:5.2f} s, tail {self.last['tail']:4.2f} s, wall {wall:5.2f} s")


def handwritten(emulator: EmulatorProcess, out: Path) -> tuple[float, float]:
    """(wall, span) of the hand-written client."""
    emulator.reset()
    child = run_child(
        [PYTHON, "-m", "bench.handwritten_client", "--cells", str(CELLS), "--in-flight",
         str(IN_FLIGHT), "--poll", "0.25", "--backoff", "1", "--prompt", PROMPT,
         "--out", str(out)], env=quiet_env(**emulator.env)).check("hand-written client")
    _, last = last_image_written(out)
    return child.wall_s, last - emulator.stats()["providers"]["runware"]["first_create"]


def main() -> dict[str, Any]:
    before = os.environ.get("NBP_BENCH_BEFORE")
    log(f"startup: time to first create and {CELLS}-cell wall, no PREFECT_API_URL, "
        f"{ROUNDS} rounds" + (f", paired with {before}" if before else ""))
    handwritten_walls: list[float] = []
    handwritten_spans: list[float] = []
    loads: list[float] = []
    with scratch("startup") as work, \
            EmulatorProcess(LATENCY_S, providers=("runware",)) as emulator:
        after = Path(os.environ.get("NBP_BENCH_AFTER") or ROOT).resolve()
        sides = [Side("after", after, work, emulator, kept_server=True)]
        if before:
            sides.insert(0, Side("before", Path(before).resolve(), work, emulator,
                                 kept_server=(Path(before) / "flows/orchestration/"
                                              "local_server.py").exists()))
        try:
            for side in sides:  # warm homes: the databases exist
                side.run(1)
            for index in range(ROUNDS):
                loads.append(os.getloadavg()[0])
                order = sides if index % 2 == 0 else sides[::-1]
                for side in order:
                    side.round(index)
                wall, span = handwritten(emulator, work / f"handwritten-{index}")
                handwritten_walls.append(wall)
                handwritten_spans.append(span)
                log(f"  hand-written round {index}: span {span:5.2f} s, wall {wall:5.2f} s")
        finally:
            for side in sides:
                side.stop_server()
    hand = summarise(handwritten_walls)
    figures: dict[str, Any] = {}
    for side in sides:
        medians = {key: summarise(values) for key, values in side.figures.items()}
        paired = summarise([wall / hand_wall for wall, hand_wall
                            in zip(side.figures["wall_300"], handwritten_walls, strict=True)])
        ratio = paired["median"]  # each round's wall over the same round's hand-written wall
        figures[side.name] = {**medians, "wall_ratio_to_handwritten": paired}
        log(f"  {side.name:<7} first create: first run {medians['first']['median']:.2f} s, "
            f"second {medians['second']['median']:.2f} s, cold {medians['cold']['median']:.2f}"
            f" s; {CELLS}-cell wall {medians['wall_300']['median']:.2f} s, {ratio:.3f} x the "
            f"hand-written client's (median of the rounds' ratios)")
    measured = figures["after"]
    goal_met = (measured["second"]["median"] <= GOAL_FIRST_CREATE_S
                and measured["wall_ratio_to_handwritten"]["median"] <= GOAL_RATIO
                and ("before" not in figures
                     or measured["first"]["median"] <= figures["before"]["first"]["median"]))
    write_result("startup", {
        "setup": {"cells_small": 1, "cells_large": CELLS, "in_flight": IN_FLIGHT,
                  "latency_s": LATENCY_S, "provider": "runware (emulator process)",
                  "rounds": ROUNDS, "before": before,
                  "after": os.environ.get("NBP_BENCH_AFTER") or "this checkout",
                  "load_avg_1m_per_round": loads},
        "first_create_s_and_wall_s": figures, "handwritten_wall_s": hand,
        "handwritten_span_s": summarise(handwritten_spans),
        "goal": f"second run's first create <= {GOAL_FIRST_CREATE_S} s; {CELLS}-cell wall <= "
                f"{GOAL_RATIO} x the hand-written client's; first run no slower than before",
        "goal_met": goal_met,
    })
    return figures
