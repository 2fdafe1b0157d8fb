"""`python -m bench [NAME...]`: run the benchmarks (all by default) and write their results."""

from __future__ import annotations

import argparse
import importlib
import time

BENCHMARKS = ("span", "rate", "routing", "cost", "planning", "startup")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {BENCHMARKS}")
    missed = []
    for name in args.names or BENCHMARKS:
        started = time.perf_counter()
        figures = importlib.import_module(f"bench.{name}").main()
        print(f"{name}: done in {time.perf_counter() - started:.0f} s\n", flush=True)
        if figures.get("goal_met") is False:
            missed.append(name)
    if missed:
        print(f"goal not met: {', '.join(missed)} (see BENCHMARKS.md for why)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
