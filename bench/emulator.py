"""The emulators in a process of their own, so their CPU never counts as nbp's.

    python -m bench.emulator --latency 2 --rate kie=20/10 --account kie=second-key

Prints one JSON line `{"url": ..., "env": {...}}` (the variables that point a client at it),
then answers commands read from stdin, one JSON line each:

    stats          creates, rate-limit rejections, downloads, requests and CPU per provider
    stats times    the same, plus every create's time (epoch seconds)
    reset          forget tasks and counters (between runs)

and exits at end of input.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from typing import Any

from nbp.providers.emulator.core import FaultConfig
from nbp.providers.emulator.hub import EMULATORS, EmulatorHub


def parse_rates(values: list[str]) -> dict[str, tuple[int, float]]:
    """`kie=20/10` -> {"kie": (20, 10.0)}: at most 20 creates per 10 s window."""
    rates = {}
    for value in values:
        name, _, rate = value.partition("=")
        count, _, window = rate.partition("/")
        rates[name] = (int(count), float(window))
    return rates


def stats(hub: EmulatorHub, *, times: bool) -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out: dict[str, Any] = {
        "downloads": hub.files.downloads,
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "providers": {},
    }
    for name, emulator in hub.emulators.items():
        at = [record.at for record in list(emulator.creates)]
        entry: dict[str, Any] = {
            "creates": len(at),
            "first_create": min(at, default=None),
            "last_create": max(at, default=None),
            "rejected_for_rate": emulator.rejected_for_rate,
            "requests": len(emulator.requests),
        }
        if times:
            entry["create_times"] = sorted(at)
            by_account: dict[str, list[float]] = {}
            for record in list(emulator.creates):
                by_account.setdefault(str(record.account), []).append(record.at)
            entry["create_times_by_account"] = {k: sorted(v) for k, v in by_account.items()}
        out["providers"][name] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.emulator")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per task")
    parser.add_argument("--rate", action="append", default=[], metavar="NAME=N/W",
                        help="create-rate limit of one provider, e.g. kie=20/10")
    parser.add_argument("--providers", default=",".join(EMULATORS))
    parser.add_argument("--account", action="append", default=[], metavar="NAME=KEY",
                        help="another account of a provider, e.g. kie=second-key")
    args = parser.parse_args(argv)
    rates = parse_rates(args.rate)
    names = args.providers.split(",")
    config = {n: FaultConfig(latency_s=args.latency, rate_limit=rates.get(n)) for n in names}
    hub = EmulatorHub(names, config=config)
    for value in args.account:
        name, _, key = value.partition("=")
        hub[name].add_account(key)
    hub.serve_in_thread()
    print(json.dumps({"url": hub.url, "env": hub.environ()}), flush=True)
    for line in sys.stdin:
        command = line.split()
        if command[:1] == ["stats"]:
            print(json.dumps(stats(hub, times="times" in command)), flush=True)
        elif command[:1] == ["reset"]:
            hub.reset()
            print(json.dumps({"reset": True}), flush=True)
    hub.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
