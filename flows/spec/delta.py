"""What a run of a spec would change on its target: which cells need a create and why.

    view = TargetView.of_rows(job, rows)          # plain data read from the target's manifest
    delta = TargetDelta(target)
    plan = make_plan(spec, cells, priced=delta.priced(view))
    delta.finish(view)                            # stale: the job's cells the spec dropped

Pure: the caller reads the manifest (`outputs.manifest`) and hands over plain rows. A cell is

    unchanged    it succeeded on the target (its current row): nothing to pay
    to collect   its task exists (pending): the next run collects it, nothing to pay
    changed      its output path holds another cell of this job that the spec no longer
                 produces (a changed title or photo): paid, and it supersedes that image
    new          anything else: paid

and `stale` counts the job's cells on the target that the spec no longer produces. Cells are
compared as the spec gives them (`spec_cell_id`): a plan cannot see a photo that changed
behind an unchanged URL (the run asks the URL; `flows.engine.redo.fingerprinted`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nbp.flows.spec.model import Cell


@dataclass(frozen=True)
class TargetView:
    """A target's manifest as far as planning needs it."""

    job: str
    done: frozenset[str] = frozenset()                         # succeeded, current rows
    pending: frozenset[str] = frozenset()                      # tasks to collect
    owners: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # path -> (cell, job)
    job_cells: frozenset[str] = frozenset()                    # this job's cells there

    @classmethod
    def of_rows(cls, job: str, rows: Iterable[Mapping[str, Any]]) -> TargetView:
        """From manifest rows (cell_id, spec_cell_id, job, status, output_path,
        superseded_by). Cells are the spec's: a row made by a redo or after a reference
        photo changed counts for the spec cell it makes (`spec_cell_id`)."""
        done: set[str] = set()
        pending: set[str] = set()
        owners: dict[str, tuple[str, str]] = {}
        mine: set[str] = set()
        for row in rows:
            cell_id, status = str(row.get("spec_cell_id") or row["cell_id"]), row.get("status")
            if row.get("job") == job:
                mine.add(cell_id)
            if row.get("superseded_by"):
                continue
            if status == "succeeded":
                done.add(cell_id)
                if row.get("output_path"):
                    owners[str(row["output_path"])] = (cell_id, str(row.get("job") or ""))
            elif status == "pending":
                pending.add(cell_id)
        return cls(job, frozenset(done), frozenset(pending), owners, frozenset(mine))


@dataclass
class TargetDelta:
    """Counts of a spec's cells against its target (module docstring)."""

    target: str
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    to_collect: int = 0
    stale: int = 0
    _seen: set[str] = field(default_factory=set, repr=False)

    def priced(self, view: TargetView) -> Callable[[Cell], bool]:
        """Counts each cell it is asked about; True for the ones this run pays for."""

        def paid(cell: Cell) -> bool:
            if cell.cell_id in view.job_cells:
                self._seen.add(cell.cell_id)
            if cell.cell_id in view.done:
                self.unchanged += 1
                return False
            if cell.cell_id in view.pending:
                self.to_collect += 1
                return False
            owner = view.owners.get(cell.output_path)
            if owner is not None and owner[1] == view.job and owner[0] != cell.cell_id:
                self.changed += 1  # the owner is superseded if the spec no longer has it
            else:
                self.new += 1
            return True

        return paid

    def finish(self, view: TargetView) -> None:
        """After every cell was asked about: the job's cells the spec no longer produces."""
        self.stale = len(view.job_cells - self._seen)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "new": self.new, "changed": self.changed,
                "unchanged": self.unchanged, "to_collect": self.to_collect,
                "stale": self.stale}

    def render(self) -> str:
        return (f"{self.new} new, {self.changed} changed (superseding their old image), "
                f"{self.unchanged} unchanged, {self.to_collect} to collect, "
                f"{self.stale} stale")
