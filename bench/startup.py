"""Start-up: wall time of `nbp run` for a 1-cell spec, ephemeral Prefect server vs a running one.

The same 1-cell spec (Kie, emulated in-process with `--emulate`, 0.1 s per task) run as the
real CLI in a fresh process four ways:

- `nbp validate`: the floor (interpreter, nbp's imports, the spec; no Prefect);
- `nbp run` with PREFECT_API_URL set to a running `prefect server start`;
- `nbp run` with no PREFECT_API_URL: Prefect starts an ephemeral server in a subprocess for
  this one run, on a PREFECT_HOME whose database already exists (warm);
- the same on a fresh PREFECT_HOME (cold: the database is created and migrated first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    PrefectServer,
    log,
    quiet_env,
    run_child,
    scratch,
    summarise,
    write_result,
    write_spec,
)

REPEATS = 3


def spec(target: Path) -> dict[str, Any]:
    return {
        "version": 1, "name": "bench-startup", "provider": "kie",
        "matrix": {"prompt": ["One lemon on a blue plate"], "aspect_ratio": ["1:1"],
                   "resolution": ["1K"]},
        "output": {"target": str(target), "format": "jpg"},
        "limits": {"kie": {"poll_interval": 0.05}},
    }


def main() -> dict[str, Any]:
    log("startup: nbp run of a 1-cell spec (--emulate), ephemeral vs running Prefect server")
    walls: dict[str, list[float]] = {k: [] for k in
                                     ("validate", "running_server", "ephemeral_warm",
                                      "ephemeral_cold")}
    with scratch("startup") as work:
        path = write_spec(work / "one.yaml", spec(work / "out"))
        run = [PYTHON, "-m", "nbp.flows.cli", "run", str(path), "--emulate", "--force",
               "--emulator-latency", "0.1"]
        warm_home = work / "warm-home"
        warm_home.mkdir()
        run_child(run, env=quiet_env(PREFECT_HOME=str(warm_home))).check("warm-up run")
        with PrefectServer(work) as server:
            server_start = server.startup_s
            for i in range(REPEATS):
                walls["validate"].append(run_child(
                    [PYTHON, "-m", "nbp.flows.cli", "validate", str(path)], env=quiet_env()
                ).check("nbp validate").wall_s)
                walls["running_server"].append(run_child(run, env=quiet_env(
                    PREFECT_API_URL=server.url, PREFECT_HOME=str(work / "client-home"))
                ).check("nbp run (running server)").wall_s)
                walls["ephemeral_warm"].append(run_child(
                    run, env=quiet_env(PREFECT_HOME=str(warm_home))
                ).check("nbp run (ephemeral)").wall_s)
                if i < 2:
                    cold = work / f"cold-home-{i}"
                    cold.mkdir()
                    walls["ephemeral_cold"].append(run_child(
                        run, env=quiet_env(PREFECT_HOME=str(cold))
                    ).check("nbp run (ephemeral, fresh home)").wall_s)
    figures: dict[str, Any] = {k: summarise(v) for k, v in walls.items()}
    for key, value in figures.items():
        log(f"  {key:<16} {value['median']:6.2f} s (min {value['min']:.2f}, max "
            f"{value['max']:.2f})")
    extra = figures["ephemeral_warm"]["median"] - figures["running_server"]["median"]
    log(f"  ephemeral server costs {extra:.1f} s per run; a running server takes "
        f"{server_start:.1f} s to start, once")
    write_result("startup", {
        "setup": {"cells": 1, "provider": "kie (--emulate, in-process)", "repeats": REPEATS},
        "wall_s": figures, "ephemeral_extra_s": round(extra, 2),
        "server_start_s": round(server_start, 2),
    })
    return figures
