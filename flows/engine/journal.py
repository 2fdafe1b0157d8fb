"""Where a cell's life is kept: one small JSON file per cell under `{target}/.nbp/cells/`,
replaced whole on every change, so it works on object stores without append or rename.

This module only stores and reads entries; what the states mean and which transitions write
them is `flows.engine.lifecycle`'s. An entry carries the journal's format version
(`JOURNAL_VERSION`); entries written before versions existed are read and upgraded
(`upgrade`). An entry that cannot be read comes back as `JournalEntry.unreadable`: a create
may have been sent for its cell, so it is never created again blindly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

from nbp.outputs.layout import JOURNAL_DIR
from nbp.outputs.manifest import ManifestRow
from nbp.providers.base import Submitted

# 2: intents (a random id and key per create, journalled before it leaves), `unsent` and
# `reserved`, a cancel recorded only on the provider's word, uncertain spend settled.
JOURNAL_VERSION = 2
JournalState = Literal[
    "unsent", "reserved", "create_sent", "created", "finished", "succeeded", "uncertain",
    "failed", "skipped", "cancelled", "unreadable",
]
STATES: frozenset[str] = frozenset(get_args(JournalState))
LIVE_TASK: frozenset[str] = frozenset({"created", "finished"})  # a task to collect


class JsonStore(Protocol):
    """What the journal needs of `outputs.sink.Sink`."""

    def put_json(self, rel: str, obj: Any) -> None: ...
    def json_names(self, rel_dir: str) -> set[str]: ...
    def read_bytes(self, rel: str) -> bytes | None: ...
    def read_bytes_many(self, rels: Iterable[str]) -> dict[str, bytes]: ...


@dataclass
class JournalEntry:
    cell_id: str
    state: JournalState
    run_id: str                               # the run of the job (shards may share it)
    provider: str
    holder: str = ""                          # the process (flow run) that wrote it
    attempts: int = 0                         # creates sent for this cell, all runs
    intent: str | None = None                 # id of the live create intent (random)
    idempotency_key: str | None = None        # its key / client task id (re-sent as is)
    reserved_usd: float = 0.0                 # the live intent's price, counted until settled
    reserved_by: str | None = None            # version 1: the run whose ledger holds it
    spent_usd: float = 0.0                    # what this cell's settled tasks cost
    task: dict[str, Any] | None = None        # Submitted.to_json() of the live remote task
    submitted_at: float | None = None
    reason: str | None = None                 # why uncertain, unsent, unreadable
    row: ManifestRow | None = None            # manifest row once terminal
    updated_at: float = field(default_factory=time.time)
    channel: str | None = None                # the account's channel key (None: `provider`)
    version: int = JOURNAL_VERSION

    @property
    def channel_key(self) -> str:
        """Where the task lives: its channel (entries before accounts: the provider)."""
        return self.channel or self.provider

    @property
    def submitted(self) -> Submitted | None:
        return Submitted.from_json(self.task) if self.task else None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JournalEntry:
        data = upgrade(data)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if known.get("state") not in STATES or not isinstance(known.get("cell_id"), str):
            raise ValueError(f"not a journal entry (state {known.get('state')!r})")
        if isinstance(known.get("row"), Mapping):
            known["row"] = ManifestRow.from_mapping(known["row"])
        return cls(**known)

    @classmethod
    def unreadable(cls, cell_id: str, why: str) -> JournalEntry:
        return cls(cell_id, "unreadable", run_id="", provider="",
                   reason=f"journal entry {JOURNAL_DIR}/{cell_id}.json is unreadable ({why})")

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version, "cell_id": self.cell_id, "state": self.state,
            "run_id": self.run_id, "provider": self.provider, "holder": self.holder,
            "attempts": self.attempts, "intent": self.intent,
            "idempotency_key": self.idempotency_key, "reserved_usd": self.reserved_usd,
            "reserved_by": self.reserved_by, "spent_usd": self.spent_usd, "task": self.task,
            "submitted_at": self.submitted_at, "reason": self.reason,
            "row": self.row.to_json() if self.row is not None else None,
            "updated_at": self.updated_at, "channel": self.channel,
        }


def upgrade(data: Mapping[str, Any]) -> dict[str, Any]:
    """An entry in today's format. Version 1 (no `version` key) differs in three ways:

    - `submitted` was the name of `created`;
    - `cancelled` was written whether or not the provider confirmed the cancel: one that still
      holds a task id is a task to collect (`created`), never a cell to create again;
    - an `uncertain` cell kept its price in `reserved_usd`: it is spend (it may have been
      billed), so it moves to `spent_usd`.
    """
    found = dict(data)
    version = found.get("version", 1)
    if not isinstance(version, int) or version > JOURNAL_VERSION:
        raise ValueError(f"journal format version {version!r} is newer than this nbp "
                         f"reads ({JOURNAL_VERSION}); upgrade nbp")
    if version == JOURNAL_VERSION:
        return found
    state = found.get("state")
    if state == "submitted" or (state == "cancelled" and found.get("task")):
        found["state"] = "created"
    if state == "uncertain":
        found["spent_usd"] = _number(found.get("spent_usd")) + _number(found.get("reserved_usd"))
        found["reserved_usd"], found["reserved_by"] = 0.0, None
    found["version"] = JOURNAL_VERSION
    return found


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


class Journal:
    """One file per cell, written on every change. A run lists which cells have an entry
    (`cell_ids`) and reads the entries of a chunk when the chunk starts (`read`), so memory
    holds a chunk's entries, not the whole journal."""

    def __init__(self, store: JsonStore) -> None:
        self.store = store

    def cell_ids(self) -> set[str]:
        """Cells that have an entry: one listing, no reads."""
        return self.store.json_names(JOURNAL_DIR)

    def read(self, cell_ids: Iterable[str]) -> dict[str, JournalEntry]:
        """The entries of `cell_ids` that exist, in one batched read; an entry that does not
        parse comes back as `JournalEntry.unreadable`."""
        wanted = {f"{JOURNAL_DIR}/{cid}.json": cid for cid in cell_ids}
        found = self.store.read_bytes_many(wanted)
        return {wanted[rel]: _parse(wanted[rel], data) for rel, data in found.items()}

    def load(self) -> dict[str, JournalEntry]:
        """Every entry (for the cancel hook and tests)."""
        return self.read(self.cell_ids())

    def write(self, entry: JournalEntry) -> None:
        entry.updated_at = time.time()
        self.store.put_json(f"{JOURNAL_DIR}/{entry.cell_id}.json", entry.to_json())


def _parse(cell_id: str, data: bytes) -> JournalEntry:
    try:
        value = json.loads(data)
        if not isinstance(value, Mapping) or value.get("cell_id") != cell_id:
            raise ValueError("it names another cell")
        return JournalEntry.from_json(value)
    except (ValueError, TypeError, KeyError) as exc:
        return JournalEntry.unreadable(cell_id, str(exc)[:200])
