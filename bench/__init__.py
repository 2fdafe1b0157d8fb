"""Reproducible benchmarks of nbp against the loopback emulators (not part of `make test`).

    python -m bench              # every benchmark (`make bench`), about 8 minutes on 2 cores
    python -m bench span rate    # some of them

Each benchmark prints its figures and writes `bench/results/{name}.json`; BENCHMARKS.md
states them with the machine they ran on and what bounds each one.
"""
