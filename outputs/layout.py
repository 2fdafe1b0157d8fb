"""Where nbp keeps its own files in a target: the one place that spells `.nbp/`.

    {target}/manifest.parquet, index.html   what a run shows (outputs.manifest, outputs.gallery)
    {target}/.nbp/                          STATE_DIR: nbp's state; never an image's path
        cells/{cell_id}.json                JOURNAL_DIR: a cell's life (flows.engine.journal)
        runs/{run_id}.json                  RUNS_DIR: what produced the target's rows
        runs/{run_id}.parquet               run_rows(): the manifest rows that run wrote
        inputs/{run_id}.json                INPUTS_DIR: sha256 of each file a run read
        budget.json                         LEDGER: spend by run, and open holds
        spend/{holder}.json                 SPEND_DIR: an uncapped process's spend
        locks/budget, locks/manifest        LEDGER_LOCK, MANIFEST_LOCK: short leases
        claims/{cell_id}                    CLAIMS_DIR: the run working on a cell
        holders/{holder}.json               HOLDERS_DIR: a process's proof of life
        history/{cell_id}{suffix}           HISTORY_DIR: superseded and archived images
        redo/{cell_id}.json                 REDO_DIR: a cell made again (generation, seed)
        reviews/{cell_id}.json              REVIEWS_DIR: approve / reject decisions
        emulated/tasks.json                 EMULATED_TASKS: what `--emulate`'s emulators knew
        target.json                         TARGET_KIND: {"emulated": bool}

Every file nbp writes goes through a temporary name holding TEMP_MARKER first. All paths are
relative to the target and use `/` (fsspec's separator on every filesystem).
"""

from __future__ import annotations

STATE_DIR = ".nbp"
TEMP_MARKER = ".nbp-tmp-"  # in every temp file name; never ends in a real extension

JOURNAL_DIR = f"{STATE_DIR}/cells"
RUNS_DIR = f"{STATE_DIR}/runs"
INPUTS_DIR = f"{STATE_DIR}/inputs"
LEDGER = f"{STATE_DIR}/budget.json"
SPEND_DIR = f"{STATE_DIR}/spend"
LOCKS_DIR = f"{STATE_DIR}/locks"
LEDGER_LOCK = f"{LOCKS_DIR}/budget"
MANIFEST_LOCK = f"{LOCKS_DIR}/manifest"
CLAIMS_DIR = f"{STATE_DIR}/claims"
HOLDERS_DIR = f"{STATE_DIR}/holders"
HISTORY_DIR = f"{STATE_DIR}/history"
REDO_DIR = f"{STATE_DIR}/redo"
REVIEWS_DIR = f"{STATE_DIR}/reviews"
EMULATED_TASKS = f"{STATE_DIR}/emulated/tasks.json"
TARGET_KIND = f"{STATE_DIR}/target.json"


def run_rows(run_id: str) -> str:
    """Where the manifest rows one run wrote are kept (`outputs.runs.write_run_rows`), beside
    its record: the manifest keeps each cell's latest row only."""
    return f"{RUNS_DIR}/{run_id}.parquet"


def in_state(rel: str) -> bool:
    """Whether `rel` (relative to the target) is a file under STATE_DIR."""
    return rel.startswith(f"{STATE_DIR}/")
