"""Redo: a rejected image made again, with a new seed, into the same path — remembered by the
target, so a plain run neither undoes it nor pays for it again.

    redos = read_redos(sink)                        # {spec cell id: Redo}, input-checked
    cells = Effective(job.cells, redos)             # what the spec produces on this target
    record_redos(sink, rejected_spec_cells, redos)  # nbp run --redo-rejected

A redo is kept per cell of the spec (`.nbp/redo/{cell_id}.json`: its generation and seed).
The cell it makes has the same request but that seed, and an id of its own derived from the
spec cell's id and the generation (`redo_id`), so it is a new cell that takes the old one's
path: the old image is kept as history and its row marked `superseded_by`
(`flows.engine.refresh`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace

from nbp.flows.spec.model import Cell, CellSource
from nbp.outputs.layout import REDO_DIR
from nbp.outputs.sink import Sink

log = logging.getLogger("nbp.redo")

MAX_SEED = 2**31 - 1  # what every provider that takes a seed accepts


@dataclass(frozen=True)
class Redo:
    """The latest redo of one spec cell."""

    cell_id: str        # the spec's cell
    generation: int     # 1 for the first redo
    seed: int

    def to_json(self) -> dict[str, object]:
        return {"version": 1, "cell_id": self.cell_id, "generation": self.generation,
                "seed": self.seed}


def redo_id(cell_id: str, generation: int) -> str:
    """The id of a spec cell's `generation`-th redo: stable, and never the id of a request."""
    return hashlib.sha256(f"{cell_id}:redo:{generation}".encode()).hexdigest()[:len(cell_id)]


def effective(cell: Cell, redos: Mapping[str, Redo]) -> Cell:
    """The cell as this target makes it: its latest redo, if any."""
    redo = redos.get(cell.cell_id)
    if redo is None:
        return cell
    return replace(cell, cell_id=redo_id(cell.cell_id, redo.generation), seed=redo.seed,
                   spec_id=cell.spec_cell_id)


def fingerprinted(cell: Cell, fingerprint: str | None) -> Cell:
    """The cell with what its reference URLs answered folded into its id
    (`reference_check.references_fingerprint`): a new photo behind an unchanged URL makes a
    new cell, which supersedes the old one's image. None (no URL, or a server that tells
    neither ETag nor Last-Modified): the cell as it is."""
    if fingerprint is None:
        return cell
    derived = hashlib.sha256(f"{cell.cell_id}:references:{fingerprint}".encode()).hexdigest()
    return replace(cell, cell_id=derived[:len(cell.cell_id)], spec_id=cell.spec_cell_id,
                   adopts=cell.cell_id)


class Effective:
    """A `CellSource` with every cell as this target makes it: its latest redo (`effective`),
    then its references' fingerprint (`fingerprinted`, by the cell's id before it)."""

    def __init__(self, cells: CellSource, redos: Mapping[str, Redo],
                 fingerprints: Mapping[str, str] | None = None) -> None:
        self.cells, self.redos = cells, redos
        self.fingerprints: Mapping[str, str] = fingerprints or {}

    def __iter__(self) -> Iterator[Cell]:
        if not self.redos and not self.fingerprints:
            return iter(self.cells)
        return (self._made(cell) for cell in self.cells)

    def _made(self, cell: Cell) -> Cell:
        cell = effective(cell, self.redos)
        return fingerprinted(cell, self.fingerprints.get(cell.cell_id))

    def __len__(self) -> int:
        return len(self.cells)


def read_redos(sink: Sink) -> dict[str, Redo]:
    """Every redo the target remembers; a file of another shape is skipped with a warning
    (it is the target's: input)."""
    names = sink.json_names(REDO_DIR)
    found: dict[str, Redo] = {}
    raw = sink.read_bytes_many(f"{REDO_DIR}/{name}.json" for name in names)
    for rel, data in raw.items():
        redo = _parse(rel, data)
        if redo is None:
            log.warning("%s is not a redo nbp can read; skipped", rel)
        else:
            found[redo.cell_id] = redo
    return found


def record_redos(sink: Sink, cells: Iterable[Cell], redos: Mapping[str, Redo]) -> list[Redo]:
    """A new redo (the next generation, a new seed) for each of `cells` (cells of the spec,
    as expanded); returns them."""
    made = []
    for cell in cells:
        earlier = redos.get(cell.cell_id)
        redo = Redo(cell.cell_id, (earlier.generation if earlier else 0) + 1,
                    random.SystemRandom().randrange(MAX_SEED))
        sink.put_json(f"{REDO_DIR}/{cell.cell_id}.json", redo.to_json())
        made.append(redo)
    return made


def _parse(rel: str, data: bytes) -> Redo | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("version") != 1:
        return None
    cell_id, generation, seed = value.get("cell_id"), value.get("generation"), value.get("seed")
    if not (isinstance(cell_id, str) and rel == f"{REDO_DIR}/{cell_id}.json"
            and isinstance(generation, int) and not isinstance(generation, bool)
            and 0 < generation < 1_000_000 and isinstance(seed, int)
            and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED):
        return None
    return Redo(cell_id, generation, seed)
