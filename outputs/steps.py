"""Steps after the manifest is written: where an output made from the manifest plugs in.

A run merges its rows into `{target}/manifest.parquet`, then hands every step the merged
manifest, under the same manifest lease: a step sees the target's whole manifest, never a
half-merged one, and two runs' steps never interleave. The gallery is one such step, the
rows the run wrote (kept for `nbp compare TARGET@RUN_ID`, `outputs.runs`) another; a
new output format (WebP thumbnails, a DuckDB copy of the manifest, a CSV for a shop's
importer) is a class with a `name` and `__call__`, added to `AFTER_WRITE` (every run) or
given to one run (`RunHooks.after_write`):

    class Thumbnails:
        name = "thumbnails"

        def __call__(self, written: Written) -> str | None:
            for path in written.manifest.filter(...).select("output_path").collect()...:
                written.sink.write_bytes(...)
            return written.sink.uri("thumbnails")

The engine, the manifest, the gallery and `nbp compare` stay as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import polars as pl

from nbp.outputs.gallery import write_gallery
from nbp.outputs.runs import write_run_rows
from nbp.outputs.sink import Sink


@dataclass(frozen=True)
class Written:
    """What a step reads: the target, and its manifest as just written (a lazy scan of a
    local copy: a step reads only the columns and rows it needs)."""

    sink: Sink
    manifest: pl.LazyFrame
    title: str                                   # the job's name
    gallery_rows: Sequence[str] | None = None    # the spec's `output.gallery` pivot
    gallery_columns: Sequence[str] | None = None
    run_id: str | None = None                    # the run that wrote (None: not a run's)


class AfterWrite(Protocol):
    """One output made from the manifest; returns the URI it wrote (None: nothing)."""

    name: str

    def __call__(self, written: Written) -> str | None: ...


class Gallery:
    """`{target}/index.html` (`outputs.gallery`)."""

    name = "gallery"

    def __call__(self, written: Written) -> str:
        return write_gallery(written.sink, written.manifest, title=written.title,
                             rows=written.gallery_rows, columns=written.gallery_columns)


class RunRows:
    """`{target}/.nbp/runs/{run_id}.parquet`: the manifest rows this run wrote, kept after
    later runs rewrite them (`outputs.runs.write_run_rows`)."""

    name = "run_rows"

    def __call__(self, written: Written) -> str | None:
        if written.run_id is None:
            return None
        return write_run_rows(written.sink, written.manifest, written.run_id)


AFTER_WRITE: tuple[AfterWrite, ...] = (Gallery(), RunRows())


def run_steps(steps: Sequence[AfterWrite], written: Written) -> dict[str, str]:
    """Each step in order; what each wrote, by its name. A step's error is the run's: a
    promised output that is missing must not look like success."""
    names = [step.name for step in steps]
    if len(set(names)) != len(names):
        raise ValueError(f"after-write steps need distinct names: {names}")
    wrote: dict[str, str] = {}
    for step in steps:
        uri = step(written)
        if uri is not None:
            wrote[step.name] = uri
    return wrote
