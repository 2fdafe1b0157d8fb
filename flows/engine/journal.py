"""The durable journal under `{target}/.nbp/`: what was paid for, written before anything else.

One small JSON file per cell (`.nbp/cells/{cell_id}.json`), replaced whole on every change, so
it works on object stores without append or rename. The remote task id is written the moment
the provider returns it; a run that was killed or cancelled reads the journal and polls the
tasks it already created instead of creating them again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from outputs.manifest import ManifestRow
from providers.base import Submitted

JOURNAL_DIR = ".nbp/cells"
JournalState = Literal["submitted", "succeeded", "failed", "cancelled", "skipped"]


class JsonStore(Protocol):
    """What the journal needs of `outputs.sink.Sink`."""

    def put_json(self, rel: str, obj: Any) -> None: ...
    def list_json(self, rel_dir: str) -> list[Any]: ...
    def json_names(self, rel_dir: str) -> set[str]: ...
    def read_json_many(self, rels: Iterable[str]) -> dict[str, Any]: ...


@dataclass
class JournalEntry:
    cell_id: str
    state: JournalState
    run_id: str
    provider: str
    attempts: int = 0
    task: dict[str, Any] | None = None        # Submitted.to_json() of the live remote task
    submitted_at: float | None = None
    row: ManifestRow | None = None            # manifest row once terminal
    updated_at: float = field(default_factory=time.time)

    @property
    def submitted(self) -> Submitted | None:
        return Submitted.from_json(self.task) if self.task else None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JournalEntry:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if isinstance(known.get("row"), Mapping):
            known["row"] = ManifestRow.from_mapping(known["row"])
        return cls(**known)

    def to_json(self) -> dict[str, Any]:
        return {
            "cell_id": self.cell_id, "state": self.state, "run_id": self.run_id,
            "provider": self.provider, "attempts": self.attempts, "task": self.task,
            "submitted_at": self.submitted_at,
            "row": self.row.to_json() if self.row is not None else None,
            "updated_at": self.updated_at,
        }


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
        """The entries of `cell_ids` that exist, in one batched read."""
        found = self.store.read_json_many(f"{JOURNAL_DIR}/{cid}.json" for cid in cell_ids)
        entries = (JournalEntry.from_json(d) for d in found.values() if isinstance(d, Mapping))
        return {entry.cell_id: entry for entry in entries}

    def load(self) -> dict[str, JournalEntry]:
        """Every entry (for a shard's final manifest and the cancel hook)."""
        entries: dict[str, JournalEntry] = {}
        for data in self.store.list_json(JOURNAL_DIR):
            if isinstance(data, Mapping) and "cell_id" in data:
                entry = JournalEntry.from_json(data)
                entries[entry.cell_id] = entry
        return entries

    def write(self, entry: JournalEntry) -> None:
        entry.updated_at = time.time()
        self.store.put_json(f"{JOURNAL_DIR}/{entry.cell_id}.json", entry.to_json())
