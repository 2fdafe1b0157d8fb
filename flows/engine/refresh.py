"""Refreshing a target in place: who owns each output path, which of the job's cells the
spec no longer produces, and how their manifest rows change at the end of a run.

    state = TargetState.read(sink, job="catalog", cells=job.cells)   # once, at the start
    state.check(cell)               # before paying: the path is free, ours, or supersedable
    state.take(sink, cell)          # before overwriting: the old image goes to history
    patches(state, run_rows, sink)  # at the end: superseded_by, output_uri, stale

Only succeeded cells own paths. A path held by a cell of the same job that the current spec
no longer produces (same path, another request: a changed title, a changed photo) is
superseded: the new cell takes it and the old image is kept as history at
`.nbp/history/{old cell id}{suffix}`, written before the path is overwritten and never
overwritten itself, so a refresh killed at any moment leaves the path holding the old or the
new image and the history holding the old one. The old row stays in the manifest with
`superseded_by` and its `output_uri` at the history copy. A path held by another job, or by a
cell the spec still produces, is protected: the cell fails before anything is paid.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field

import polars as pl

from nbp.flows.engine.policy import OutputTaken, RunConfigurationError
from nbp.flows.spec.model import Cell
from nbp.outputs.layout import HISTORY_DIR
from nbp.outputs.manifest import ManifestInvalid, read_manifest
from nbp.outputs.sink import Sink


@dataclass(frozen=True)
class PathOwner:
    """The succeeded cell whose image an output path holds."""

    cell_id: str
    job: str
    sha256: str | None


@dataclass
class TargetState:
    """What the target's manifest says about paths and this job's cells (see the module
    docstring), read once at the start of a run."""

    job: str
    owners: dict[str, PathOwner] = field(default_factory=dict)  # output_path -> owner
    known: set[str] = field(default_factory=set)      # this job's cell ids in the manifest
    produced: set[str] = field(default_factory=set)   # ... that the spec still produces
    files: set[str] | None = None                     # the target's files (None: unlisted)

    @classmethod
    def read(cls, sink: Sink, job: str, cells: Iterable[Cell]) -> TargetState:
        """The target's paths and this job's cells; `ManifestInvalid` when the manifest
        cannot be read. `cells`: every cell of the spec (one pass, only when the manifest
        holds rows of this job)."""
        state = cls(job)
        manifest = read_manifest(sink)
        if manifest is None:
            return state
        owning = manifest.filter(
            (pl.col("status") == "succeeded") & pl.col("superseded_by").is_null()
            & pl.col("output_path").is_not_null()
        ).select("output_path", "cell_id", "job", "sha256")
        for path, cell_id, owner_job, sha in owning.iter_rows():
            state.owners[str(path)] = PathOwner(str(cell_id), str(owner_job or ""), sha)
        mine = manifest.filter(pl.col("job") == job)["cell_id"].drop_nulls()
        state.known = {str(c) for c in mine}
        if state.known:
            state.produced = {c.cell_id for c in cells if c.cell_id in state.known}
            state.files = sink.listing()  # one listing of the target against the manifest
        return state

    def missing(self, path: str) -> bool:
        """A succeeded cell's image is not at its path (known only when this job has rows
        on the target: a first run lists nothing)."""
        return self.files is not None and path not in self.files

    def owner(self, path: str) -> PathOwner | None:
        return self.owners.get(path)

    def supersedable(self, owner: PathOwner) -> bool:
        """A same-job cell the spec no longer produces: its path may be taken."""
        return owner.job == self.job and owner.cell_id not in self.produced

    @property
    def stale(self) -> set[str]:
        """This job's cells in the manifest that the spec no longer produces."""
        return self.known - self.produced

    def check(self, sink: Sink, cell: Cell) -> None:
        """Before paying: the cell's path is free, already its own, or supersedable;
        `OutputTaken` otherwise (nothing was created)."""
        path = cell.output_path
        owner = self.owner(path)
        if owner is not None and (owner.cell_id == cell.cell_id or self.supersedable(owner)):
            return
        if not sink.exists(path):
            return
        raise OutputTaken(f"{path} already holds {self._whose(owner)}; nothing was created "
                          "(change output.path or the target)")

    def take(self, sink: Sink, cell: Cell) -> None:
        """Before the cell's image overwrites its path: keep what is there as the history of
        the cell that owned it (once; a copy that exists is never replaced), or refuse
        (`OutputTaken`) when the path holds a file that is neither the owner's image nor this
        cell's own."""
        path = cell.output_path
        owner = self.owner(path)
        if owner is None or owner.cell_id == cell.cell_id:
            return  # no file, or ours (a run stopped between writing it and recording it)
        if not self.supersedable(owner):
            raise OutputTaken(f"{path} already holds {self._whose(owner)}; not overwritten")
        history = history_path(owner.cell_id, path)
        if sink.exists(history):
            return  # kept already (a refresh stopped after it): the path may hold either
        data = sink.read_bytes(path)
        if data is None:
            return
        if owner.sha256 and hashlib.sha256(data).hexdigest() != owner.sha256:
            raise OutputTaken(f"{path} holds a file that is not cell {owner.cell_id}'s image "
                              "nor this cell's; not overwritten")
        sink.write_bytes(history, data, overwrite=False)

    def _whose(self, owner: PathOwner | None) -> str:
        if owner is None:
            return "a file nbp did not write"
        if owner.job != self.job:
            return f"cell {owner.cell_id} of job {owner.job}"
        return f"cell {owner.cell_id}, which the spec still produces"


def history_path(cell_id: str, output_path: str) -> str:
    """Where a superseded cell's image is kept: by cell id, never an output path."""
    suffix = posixpath.splitext(output_path)[1]
    return f"{HISTORY_DIR}/{cell_id}{suffix}"


def patches(
    state: TargetState, run_rows: pl.LazyFrame, sink: Sink, *, archive_stale: bool = False
) -> pl.DataFrame:
    """How this job's old manifest rows change at the end of a run (columns cell_id,
    superseded_by, output_uri, stale; null: unchanged): a row whose path a succeeded cell of
    this run now holds is superseded by it (its image at its history copy, when kept), and
    a cell the spec no longer produces is stale. `archive_stale`: a stale cell's image moves
    to its history copy too (its path is free again); nothing is deleted otherwise."""
    taken = run_rows.filter(pl.col("status") == "succeeded").select(
        "output_path", pl.col("cell_id").alias("new_id")).collect()
    by_path = dict(taken.iter_rows())
    superseded: list[tuple[str, str, str | None]] = []
    for path, owner in state.owners.items():
        new_id = by_path.get(path)
        if new_id is not None and new_id != owner.cell_id and owner.job == state.job:
            history = history_path(owner.cell_id, path)
            uri = sink.uri(history) if sink.exists(history) else None
            superseded.append((owner.cell_id, str(new_id), uri))
    stale = state.stale - {old for old, _, _ in superseded}
    archived = _archive(state, stale, sink) if archive_stale else {}
    rows = [*superseded, *((cell_id, None, archived.get(cell_id)) for cell_id in sorted(stale))]
    return pl.DataFrame(
        {"cell_id": [r[0] for r in rows], "superseded_by": [r[1] for r in rows],
         "output_uri": [r[2] for r in rows],
         "stale": [cell_id in state.stale for cell_id, _, _ in rows]},
        schema={"cell_id": pl.String, "superseded_by": pl.String, "output_uri": pl.String,
                "stale": pl.Boolean},
    )


def _archive(state: TargetState, stale: set[str], sink: Sink) -> dict[str, str]:
    """Move the images of stale cells that still hold their path to their history copies;
    their new `output_uri` by cell id."""
    moved: dict[str, str] = {}
    for path, owner in state.owners.items():
        if owner.cell_id not in stale or owner.job != state.job:
            continue
        history = history_path(owner.cell_id, path)
        data = sink.read_bytes(path)
        if data is not None and not sink.exists(history):
            if owner.sha256 and hashlib.sha256(data).hexdigest() != owner.sha256:
                continue  # not its image any more: left where it is
            sink.write_bytes(history, data, overwrite=False)
        if sink.exists(history):
            sink.delete(path)
            moved[owner.cell_id] = sink.uri(history)
    return moved


def apply_patches(manifest: pl.LazyFrame, found: pl.DataFrame) -> pl.LazyFrame:
    """`manifest` with `patches` applied (a null in a patch keeps the row's value)."""
    if found.is_empty():
        return manifest
    return manifest.update(found.lazy(), on="cell_id", how="left")


def read_state(sink: Sink, job: str, cells: Iterable[Cell]) -> TargetState:
    """`TargetState.read`, with a manifest that cannot be read as the run's configuration
    error (before anything is paid)."""
    try:
        return TargetState.read(sink, job, cells)
    except ManifestInvalid as exc:
        raise RunConfigurationError(str(exc)) from None


