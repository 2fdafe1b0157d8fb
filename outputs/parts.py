"""A run's manifest rows spilled to Parquet parts on local disk, merged by streaming.

    parts = ManifestParts(tempdir)
    parts.add(index, frame)                  # each chunk's rows as it ends
    merge_parts(old, parts, out, order)      # old manifest + this run -> out (local files)

A run used to hold its whole manifest (~0.5 KB per cell), concatenate it, merge it with the
old manifest and sort it: several copies of 48 MB at 100,000 cells (BENCHMARKS.md,
"Memory"). Here every chunk's rows go to `part-{index}.parquet` as the chunk ends, and the
merge works out the order of the output on the keys alone (cell_id and a position: ~30 bytes
a row), then writes the rows themselves in slices of `MERGE_SLICE_ROWS`, each read back from
the parts and the old manifest by position, and streams the slices into one file
(`sink_parquet`). The result is exactly `merge_manifest(old, new)` (then `order`, when given):
one row per cell_id, the latest row wins, a cell keeps the position it first had. Key
columns (`key_*`) may differ between the parts and the old manifest: every input is read with
the schema they make together (`outputs.manifest.manifest_schema`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

import polars as pl

from nbp.outputs.manifest import MANIFEST_COLUMNS, conform_lazy, manifest_schema
from nbp.outputs.statuses import SETTLED

MERGE_SLICE_ROWS = 20_000  # rows of the merged manifest in memory at once (~10 MB)
# Rows per row group of the merged manifest: `sink_parquet` holds about one group per thread
# (100,000 bench rows: +75 MB of peak RSS with polars' default group, +12 MB with 5,000);
# smaller groups compress less (each has its own dictionaries): 1.6 MB -> 4 MB there.
ROW_GROUP_ROWS = 10_000
_SRC, _POS = "_src", "_pos"  # which input a row comes from (0 old, 1 new), its row there


def empty_manifest() -> pl.DataFrame:
    return pl.DataFrame(schema=MANIFEST_COLUMNS)


class ManifestParts:
    """This run's manifest rows, one Parquet file per chunk in `folder`, in chunk order."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._indexes: set[int] = set()
        self._schemas: dict[int, pl.Schema] = {}  # a chunk whose key values are all null
        # has a null-typed key column: the parts are read with the schema they make together

    def add(self, index: int, frame: pl.DataFrame) -> None:
        """The rows of chunk `index` (a chunk without rows writes nothing)."""
        if frame.height:
            frame.write_parquet(self._path(index), compression="lz4", statistics=False)
            self._indexes.add(index)
            self._schemas[index] = frame.schema

    def _path(self, index: int) -> str:
        return os.path.join(self.folder, f"part-{index:08d}.parquet")

    def paths(self) -> list[str]:
        return [self._path(index) for index in sorted(self._indexes)]

    def schemas(self) -> list[pl.Schema]:
        """The schema of each part, in chunk order."""
        return [self._schemas[index] for index in sorted(self._indexes)]

    def scan(self, schema: Mapping[str, pl.DataType] | None = None) -> pl.LazyFrame:
        """Every row of this run, in chunk order, with `schema` (default: the manifest schema
        the parts make together)."""
        paths = self.paths()
        if not paths:
            return empty_manifest().lazy()
        schemas = self.schemas()
        wanted = manifest_schema(*schemas) if schema is None else schema
        if all(found == schemas[0] for found in schemas):
            return conform_lazy(pl.scan_parquet(paths), wanted)
        return pl.concat([conform_lazy(pl.scan_parquet(path), wanted) for path in paths])

    def counts(self) -> dict[str, int]:
        """Rows by status: the settled ones always (`SETTLED`, 0 when absent), then others."""
        counts = dict.fromkeys(SETTLED, 0)
        by_status = self.scan().group_by("status").len().collect()
        for status, count in by_status.iter_rows():
            counts[str(status)] = counts.get(str(status), 0) + int(count)
        return counts


def merge_parts(
    old: str | None, parts: ManifestParts, out: str, order: pl.DataFrame | None = None,
    *, slice_rows: int = MERGE_SLICE_ROWS,
) -> None:
    """Write to `out` the manifest `old` (a local Parquet file, or None) merged with this
    run's rows: `merge_manifest` semantics. `order` (columns cell_id, index): then sort cells
    by `index`, stably, after the cells it does not list (shards finish in any order)."""
    old_scan = pl.scan_parquet(old) if old else None
    schema = manifest_schema(*([old_scan.collect_schema()] if old_scan is not None else []),
                             *parts.schemas())  # the old manifest's key columns first
    new = parts.scan(schema)
    if old_scan is None and order is None and _unique_ids(new):
        _write(new, out)  # a first run: this run's rows as they are
        return
    sources = [conform_lazy(old_scan, schema), new] if old_scan is not None else [new]
    plan = _output_plan(sources, order)
    if plan.height and _is_identity(plan, src=len(sources) - 1, rows=plan.height):
        _write(new, out)  # a rerun of the same cells: the new rows replace every old one
        return
    folder = os.path.dirname(out) or "."
    pieces = []
    for n, piece in enumerate(_slices(plan, slice_rows)):
        path = os.path.join(folder, f"merge-{n:06d}.parquet")
        _gather(sources, piece, list(schema)).write_parquet(path, compression="lz4",
                                                            statistics=False)
        pieces.append(path)
    merged = pl.scan_parquet(pieces) if pieces else empty_manifest().lazy()
    _write(merged, out)
    for path in pieces:
        os.remove(path)


def _unique_ids(frame: pl.LazyFrame) -> bool:
    counts = frame.select(pl.len(), pl.col("cell_id").n_unique().alias("ids")).collect()
    return bool(counts["len"][0] == counts["ids"][0])


def _write(frame: pl.LazyFrame, out: str) -> None:
    frame.sink_parquet(out, compression="zstd", statistics=True, row_group_size=ROW_GROUP_ROWS)


def _output_plan(sources: list[pl.LazyFrame], order: pl.DataFrame | None) -> pl.DataFrame:
    """(src, pos) of each row of the merged manifest, in output order, from the keys only:
    per cell the last row wins and the output follows each cell's first row."""
    keys = pl.concat([
        source.select("cell_id").with_row_index(_POS)
        .with_columns(pl.lit(src, pl.UInt8).alias(_SRC))
        for src, source in enumerate(sources)
    ]).with_row_index("_global").collect()
    plan = keys.group_by("cell_id").agg(
        pl.col("_global").min().alias("_first"),
        pl.col(_SRC).last(), pl.col(_POS).last(),
    ).sort("_first")
    if order is not None:
        plan = plan.join(order.select("cell_id", pl.col("index").alias("_order")),
                         on="cell_id", how="left").with_columns(pl.col("_order").fill_null(-1))
        plan = plan.sort("_order", maintain_order=True)
    return plan.select(_SRC, _POS)


def _is_identity(plan: pl.DataFrame, *, src: int, rows: int) -> bool:
    """Whether the plan is every row of source `src`, in order (a first run: no copies)."""
    expected = pl.int_range(0, rows, dtype=pl.UInt32, eager=True)
    return bool((plan[_SRC] == src).all()) and plan[_POS].cast(pl.UInt32).equals(expected)


def _slices(plan: pl.DataFrame, rows: int) -> Iterator[pl.DataFrame]:
    for start in range(0, plan.height, max(1, rows)):
        yield plan.slice(start, rows)


def _gather(sources: list[pl.LazyFrame], piece: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """The rows `piece` names, in its order: each source is scanned once for its rows."""
    found = []
    for src, source in enumerate(sources):
        wanted = piece.filter(pl.col(_SRC) == src)[_POS]
        if wanted.len():
            found.append(source.with_row_index(_POS).filter(pl.col(_POS).is_in(wanted))
                         .with_columns(pl.lit(src, pl.UInt8).alias(_SRC))
                         .collect(engine="streaming"))
    rows = pl.concat(found)
    ordered = piece.with_row_index("_out").join(rows, on=[_SRC, _POS], how="left")
    return ordered.sort("_out").select(columns)
