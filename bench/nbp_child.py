"""`nbp ARGS...` in this process, with its own CPU and memory written to a JSON file.

    python -m bench.nbp_child USAGE.json run spec.yaml

The command is the real CLI (`nbp.flows.cli.main`); the file splits the process into start-up
(interpreter and imports, Prefect included) and the command itself, read from
`getrusage(RUSAGE_SELF)` and /proc/self/status (no psutil).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any


def usage() -> dict[str, float]:
    """CPU seconds, wall clock, and current / peak resident memory (MB) of this process."""
    self = resource.getrusage(resource.RUSAGE_SELF)
    memory = {"rss_mb": 0.0, "peak_rss_mb": self.ru_maxrss / 1024}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    memory["rss_mb"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return {"cpu_s": self.ru_utime + self.ru_stime, "wall": time.time(), **memory}


def main(argv: list[str]) -> int:
    out_path, args = argv[0], argv[1:]
    started = usage()
    import nbp.flows.cli
    import nbp.flows.orchestration.flow  # Prefect: the bulk of start-up, imported by `run` anyway

    imported = usage()
    code = nbp.flows.cli.main(args)
    finished = usage()
    report: dict[str, Any] = {
        "exit_code": code,
        "startup_cpu_s": round(imported["cpu_s"], 3),
        "startup_rss_mb": round(imported["rss_mb"], 1),
        "command_cpu_s": round(finished["cpu_s"] - imported["cpu_s"], 3),
        "command_wall_s": round(finished["wall"] - imported["wall"], 3),
        "peak_rss_mb": round(finished["peak_rss_mb"], 1),
        "interpreter_cpu_s": round(started["cpu_s"], 3),
    }
    with open(out_path, "w") as handle:
        json.dump(report, handle)
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
