"""Which cells of an expansion collide, found from 32 bytes per cell instead of the cells.

    keys = CellKeys()
    for position, cell in candidates:          # every cell expansion built, in order
        keys.add(position, cell.cell_id, cell.output_path)
    found = find_collisions(keys, ids_meaningful=True, examples=100)
    found.merged                               # positions to drop: identical to an earlier cell
    found.shared.pairs[0]                      # (first, second) positions writing one path
    found.case.pairs[0]                        # ... writing paths that differ only in case

Validation compares every cell with every other (two cells writing one output path, two
sending one request, two paths that a case-insensitive filesystem takes for one), and holding
every `Cell` for that cost ~0.6 KB per cell: 60 MB of a 100,000-cell run's peak
(BENCHMARKS.md, "Memory"). `CellKeys` keeps a cell's position, its id (16 hex digits: exactly
64 bits), a 64-bit hash of its output path and one of the path as such a filesystem sees it
(`outputs.paths.fold_case`) in flat arrays; `find_collisions` answers with polars window
functions over them. The messages name the colliding cells, so the caller expands again only
up to the positions of the few examples.

Paths are compared by hash: two different paths with one 64-bit hash would be reported as a
collision, with odds of about n^2 / 2^65 (1 in 30 million at 1,000,000 cells).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

import polars as pl

from nbp.outputs.paths import fold_case


def _array(code: str) -> array[int]:
    return array(code)


@dataclass
class CellKeys:
    """Position, id, output-path hash and case-folded output-path hash of every cell, in
    expansion order."""

    positions: array[int] = field(default_factory=lambda: _array("q"))
    ids: array[int] = field(default_factory=lambda: _array("Q"))
    paths: array[int] = field(default_factory=lambda: _array("q"))
    folded: array[int] = field(default_factory=lambda: _array("q"))

    def add(self, position: int, cell_id: str, output_path: str) -> None:
        self.positions.append(position)
        self.ids.append(int(cell_id, 16))
        path_hash = hash(output_path)
        self.paths.append(path_hash)
        folded = fold_case(output_path)
        self.folded.append(path_hash if folded == output_path else hash(folded))

    def __len__(self) -> int:
        return len(self.positions)

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame({
            "pos": pl.Series(self.positions, dtype=pl.Int64),
            "id": pl.Series(self.ids, dtype=pl.UInt64),
            "path": pl.Series(self.paths, dtype=pl.Int64),
            "folded": pl.Series(self.folded, dtype=pl.Int64),
        })


@dataclass(frozen=True)
class Pairs:
    """Cells that collide with an earlier one: how many, and the first pairs in order."""

    count: int = 0
    pairs: tuple[tuple[int, int], ...] = ()  # (first, second) positions

    @classmethod
    def of(cls, frame: pl.DataFrame, examples: int) -> Pairs:
        head = frame.select("first", "pos").head(examples).iter_rows()
        return cls(frame.height, tuple((int(a), int(b)) for a, b in head))


@dataclass(frozen=True)
class Collisions:
    merged: frozenset[int] = frozenset()  # same request and path as an earlier cell: dropped
    identical: Pairs = Pairs()             # same request, another path: would be paid twice
    shared: Pairs = Pairs()                # another request writing an earlier cell's path
    case: Pairs = Pairs()                  # a path that differs from an earlier one in case only

    def positions(self) -> set[int]:
        """Every position the example pairs name."""
        return {p for pairs in (self.identical, self.shared, self.case)
                for pair in pairs.pairs for p in pair}


def find_collisions(keys: CellKeys, *, ids_meaningful: bool, examples: int) -> Collisions:
    """The collisions among `keys`, as comparing each cell with every earlier one would find
    them: a cell with the id of an earlier cell is merged into it when it writes the same
    path, else it is an identical request (and its path is not checked again); every other
    cell collides with the first earlier one writing its path, and a cell whose path differs
    from the first path of its case-folded form collides with that path's first cell (`case`).
    `ids_meaningful` is False when a malformed prompt (a syntax error, an unknown
    placeholder such as `{stlye}`) stood in as plain text: ids then say nothing, so paths
    only, and two cells with one id sharing a path are not reported (the stand-in made them
    one request, and `{cell_id}` one path: the spec's real problem is the prompt, reported
    where it is)."""
    frame = keys.frame()
    merged: frozenset[int] = frozenset()
    identical = Pairs()
    if ids_meaningful:
        frame = frame.with_columns(
            first=pl.col("pos").first().over("id"),
            first_path=pl.col("path").first().over("id"),
        )
        repeated = pl.col("pos") != pl.col("first")
        same_path = pl.col("path") == pl.col("first_path")
        merged = frozenset(frame.filter(repeated & same_path)["pos"].to_list())
        identical = Pairs.of(frame.filter(repeated & ~same_path), examples)
        frame = frame.filter(~repeated)
    frame = frame.select(
        "pos", "path", "id",
        first=pl.col("pos").first().over("path"),
        first_id=pl.col("id").first().over("path"),
        first_folded=pl.col("pos").first().over("folded"),
        folded_id=pl.col("id").first().over("folded"),
        folded_path=pl.col("path").first().over("folded"),
    )
    shared = frame.filter(pl.col("pos") != pl.col("first"))
    case = frame.filter(pl.col("path") != pl.col("folded_path"))
    if not ids_meaningful:  # one stand-in id, so one path: the typo is the problem, not this
        shared = shared.filter(pl.col("id") != pl.col("first_id"))
        case = case.filter(pl.col("id") != pl.col("folded_id"))
    case = case.select("pos", first="first_folded")
    return Collisions(merged, identical, Pairs.of(shared, examples), Pairs.of(case, examples))
