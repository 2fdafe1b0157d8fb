"""`nbp compare`: the cells two targets (or two runs of one target) both have, side by side.

    a, b = load_side("runs/kie"), load_side("runs/runware@a1b2")   # TARGET or TARGET@RUN_ID
    comparison = compare(a, b, by=("template", "style"))             # by=(): by request
    print(render_comparison(comparison))    # counts, the first changed pairs, the tables
    comparison.to_json()                    # `nbp compare --json`: the pairs and the tables
    write_page(comparison, "compare.html")  # outputs.compare_page: one offline page

A side is every row of a target's manifest, or the rows one run of it wrote (`@RUN_ID`, a
unique prefix will do): the run's rows file (`outputs.runs.read_run_rows`), else, for a run
from before nbp kept them, its rows still in the manifest.

Pairing. Without `by`, cells are matched by the provider-neutral request, not by cell id (a
cell pinned to another provider or model has another id): the `REQUEST` columns plus the
template variables other than `NOT_REQUEST_VARS`. Rows of a side with the same request (one
target holding every provider of a provider axis) pair with the other side's on the same
provider first, then in manifest order, first with first; the summary says how many
requests have several rows on one provider (paired by order alone).
With `by` (axes: `outputs.compare_axes`), cells are matched on those axes' values, the
*key*. Where a key has several rows on a side (axes not named), they pair within the key
with the other side's row of the same request on the same provider first, then the same
request, then the same request but for its prompt text (a changed template) on the same
provider, then that on any provider, then in manifest order (`BY_TIERS`); the summary says
how many keys have several rows.

A pair is `same` when both cells succeeded with the same sha256, or both failed with the
same `error_code` (a refusal that did not change), and `changed` otherwise (another image,
another status or reason, no image on either side); a row with no partner is `only_a` or
`only_b`. Channel, cost, latency and size are shown for every pair and marked where they
differ, but do not make a pair changed: a second run is never exactly as fast.

Images: each row's image is where its cell's image is *now* (`image_path`, relative to its
target): its path while the target's manifest says the path still holds it, else its history
copy (`.nbp/history/`, kept when a later cell took its path), else nowhere, with a note.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from nbp.outputs.compare_axes import AxisError, axis_values, check_axes, template_names
from nbp.outputs.compare_tables import (
    CELL_COLUMNS,
    AxisTable,
    CellFigures,
    axis_tables,
    render_tables,
    seconds,
    usd,
    value_text,
)
from nbp.outputs.gallery import history_image
from nbp.outputs.layout import HISTORY_DIR
from nbp.outputs.manifest import MANIFEST_NAME, read_manifest
from nbp.outputs.review import ratings_frame
from nbp.outputs.runs import pick_run, read_records, read_run_rows, split_run_ref
from nbp.outputs.sink import Sink

# What a provider-neutral request is made of, besides its template variables.
REQUEST = ("prompt", "aspect_ratio", "resolution", "output_format", "references", "seed",
           "replicate", "dataset_row")
# Variables that name the channel (`provider`, `model`: soon matrix axes), or repeat a
# REQUEST column before templating (the prompt's template): not part of the request.
NOT_REQUEST_VARS = frozenset({"provider", "model", "prompt", "aspect_ratio", "resolution"})
# Each side's columns that a pair keeps, as `a_<name>` and `b_<name>`; `image_path` and
# `image_note` say where the row's image is now (see the module docstring).
SIDE_COLUMNS = ("cell_id", "run_id", "provider", "account", "model", "status", "cost_usd",
                "latency_s", "bytes", "width", "height", "sha256", "output_path", "output_uri",
                "error_code", "error_message", "image_path", "image_note")
KINDS = ("changed", "only_a", "only_b", "same")  # the page's order
# With `by`: within a key, the columns rows must share to pair, tier by tier, before what is
# left pairs in manifest order. `_request`: the request; `_loose`: it without the prompt
# text; `_channel`: the provider.
BY_TIERS = (("_request", "_channel"), ("_request",), ("_loose", "_channel"), ("_loose",))
# Changed pairs `render_comparison` lists (all are on the page and in --json).
MAX_LISTED = 5
# A pair's JSON: each side's fields.
JSON_SIDE = ("cell_id", "run_id", "provider", "model", "status", "error_code", "sha256",
             "cost_usd", "latency_s", "output_path", "image_path")


class CompareInputError(ValueError):
    """A side, axis or page location that cannot be used; the message names it and says why."""


# -- sides -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """The manifest rows one argument of `nbp compare` names, in manifest order."""

    source: str          # as given: TARGET or TARGET@RUN_ID
    sink: Sink
    run_id: str | None   # the run RUN_ID resolved to, when given
    rows: pl.DataFrame   # conformed to the manifest schema
    # The target's manifest (where each cell's image is now); None: `rows` is it.
    current: pl.DataFrame | None = None


def load_side(source: str) -> Side:
    """The side `source` names; `CompareInputError` when its target cannot be read, has no
    manifest, or has no such run (the message lists the runs it has)."""
    target, run_ref = split_run_ref(source)
    try:
        sink = Sink(target)
        frame = read_manifest(sink)
    except (ImportError, ValueError, OSError, pl.exceptions.PolarsError) as exc:
        raise CompareInputError(f"{target}: cannot read its {MANIFEST_NAME}: {exc}") from exc
    if frame is None:
        raise CompareInputError(f"no {MANIFEST_NAME} at {target}")
    if run_ref is None:
        return Side(source, sink, None, frame)
    rows_by_run = dict(frame.group_by("run_id", maintain_order=True).len().iter_rows())
    try:
        recorded = [r.run_id for r in read_records(sink)]
    except OSError:
        recorded = []
    known = list(dict.fromkeys([*recorded, *(r for r in rows_by_run if r is not None)]))
    if not known:
        raise CompareInputError(f"{target}: no run {run_ref!r}; it names no run")
    try:
        run_id = pick_run(known, run_ref)
        kept = read_run_rows(sink, run_id)
    except (LookupError, ValueError, OSError) as exc:
        raise CompareInputError(f"{target}: {exc}") from exc
    if kept is not None:
        return Side(source, sink, run_id, kept, frame)
    if not rows_by_run.get(run_id):
        counts = ", ".join(f"{r} {n}" for r, n in rows_by_run.items() if r is not None)
        raise CompareInputError(
            f"{target}: run {run_id} has no row left in {MANIFEST_NAME} and no rows file (a "
            f"run from before nbp kept them): the manifest keeps each cell's latest row, and "
            f"later runs rewrote all of its cells (rows by run: {counts or 'none'})")
    return Side(source, sink, run_id, frame.filter(pl.col("run_id") == run_id), frame)


def image_locations(side: Side) -> pl.DataFrame:
    """Where each row's image is now (`image_path`, relative to the target; null: nowhere
    nbp knows) and, when not at its path, why (`image_note`), a row per row of the side.

    The target's manifest knows each path's current image (its succeeded row that no cell
    superseded) and each superseded or archived cell's history copy (its `output_uri`)."""
    current = side.rows if side.current is None else side.current
    now = current.select("cell_id", pl.col("superseded_by").alias("_superseded"),
                         pl.col("output_uri").alias("_uri")).unique("cell_id", keep="last")
    holders = current.filter(
        (pl.col("status") == "succeeded") & pl.col("superseded_by").is_null()
        & pl.col("output_path").is_not_null()
    ).select("output_path", pl.col("cell_id").alias("_holder"),
             pl.col("sha256").alias("_holder_sha")).unique("output_path", keep="last")
    rows = (side.rows.select("cell_id", "status", "output_path", "sha256")
            .with_row_index("_i")
            .join(now, on="cell_id", how="left")
            .join(holders, on="output_path", how="left")
            .sort("_i"))
    kept = [history_image({"cell_id": cell_id, "output_path": path, "output_uri": uri})
            if uri and HISTORY_DIR in uri else None
            for cell_id, path, uri in rows.select("cell_id", "output_path", "_uri").iter_rows()]
    succeeded = pl.col("status") == "succeeded"
    at_path = pl.col("_holder").is_null() | (
        (pl.col("_holder") == pl.col("cell_id")) & pl.col("_holder_sha").eq_missing(
            pl.col("sha256")))
    return rows.with_columns(_kept=pl.Series(kept, dtype=pl.String)).select(
        image_path=pl.when(~succeeded).then(None)
        .when(pl.col("_kept").is_not_null()).then(pl.col("_kept"))
        .when(pl.col("_superseded").is_null() & at_path).then(pl.col("output_path")),
        image_note=pl.when(~succeeded | pl.col("_kept").is_not_null()).then(None)
        .when(pl.col("_superseded").is_not_null()).then(pl.format(
            "cell {} took its path, and no history copy of it was kept",
            pl.col("_superseded")))
        .when(~at_path & (pl.col("_holder") == pl.col("cell_id"))).then(pl.lit(
            "its path now holds a newer image of this cell"))
        .when(~at_path).then(pl.format("its path now holds cell {}'s image",
                                       pl.col("_holder"))),
    )


# -- matching ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Channel:
    """A provider x account x model that served rows of a side."""

    provider: str | None
    account: str | None
    model: str | None
    cells: int

    def __str__(self) -> str:
        return " · ".join(x for x in (self.provider, self.account, self.model) if x) or "–"


@dataclass(frozen=True)
class SideSummary:
    source: str
    cells: int
    cost_usd: float                   # every row's cost_usd, nulls as 0
    median_latency_s: float | None    # of succeeded cells
    repeated_requests: int            # requests with several rows on one provider here
    channels: tuple[Channel, ...]     # in order of first appearance
    target: str = ""
    run_id: str | None = None         # the run RUN_ID resolved to
    repeated_keys: int = 0            # with `by`: keys with several rows here

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "run_id": self.run_id,
                "cells": self.cells, "cost_usd": round(self.cost_usd, 6),
                "median_latency_s": self.median_latency_s,
                "repeated_requests": self.repeated_requests,
                "repeated_keys": self.repeated_keys,
                "channels": [asdict(c) for c in self.channels]}


@dataclass(frozen=True)
class CompareSummary:
    a: SideSummary
    b: SideSummary
    counts: Mapping[str, int]         # every kind of KINDS
    by: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The summary part of `nbp compare --json`."""
        return {"a": self.a.to_json(), "b": self.b.to_json(), "counts": dict(self.counts),
                "by": list(self.by)}


@dataclass(frozen=True)
class Comparison:
    a: Side
    b: Side
    # One row per pair or lone row, changed first, then only in A, only in B, same (each in
    # manifest order): `request` (a struct of the request: A's, else B's), `kind`, `differs`
    # (names of the fields that differ), and each side's SIDE_COLUMNS as `a_*` / `b_*` (null
    # when absent). With `by`: also `key` (a struct of the axis values, text) and each
    # side's own request, `a_request` / `b_request`.
    pairs: pl.DataFrame
    summary: CompareSummary
    by: tuple[str, ...] = ()
    tables: tuple[AxisTable, ...] = field(default_factory=tuple)  # overall, then each axis

    def to_json(self) -> dict[str, Any]:
        """`nbp compare --json`: the summary, every pair and the tables."""
        wanted = ["kind", "key" if self.by else "request", "differs", "a_pos", "b_pos",
                  *(f"{side}_{name}" for side in "ab" for name in JSON_SIDE)]
        rows = self.pairs.select(wanted).iter_rows(named=True)  # only what it writes: 3x faster
        return {**self.summary.to_json(), "pairs": [pair_json(row, self.by) for row in rows],
                "tables": [table.to_json() for table in self.tables]}


RATING_FIGURES: Mapping[str, pl.Expr] = {
    "stars": pl.col("stars").mean(),                     # mean of the rated images' stars
    "pass": pl.col("passed").mean(),                     # share judged pass, of those judged
    "preferred": pl.when((pl.col("wins").sum() + pl.col("losses").sum()) > 0).then(
        pl.col("wins").sum() / (pl.col("wins").sum() + pl.col("losses").sum())),  # won, of given
}


def ratings(a: Side, b: Side) -> CellFigures | None:
    """The experiment's judgements of each side (`nbp review --import` of the gallery's and
    the compare page's ratings: `outputs.review.ratings_frame`) as figures for the tables;
    None when neither side has any. Each target keeps its own: two runs of one target share
    them."""
    frames = [ratings_frame(side.sink) for side in (a, b)] if a.sink.root != b.sink.root \
        else [ratings_frame(a.sink)] * 2
    if all(frame.is_empty() for frame in frames):
        return None
    return CellFigures(frames[0], RATING_FIGURES, b_frame=frames[1])


def compare(a: Side, b: Side, by: Sequence[str] = (),
            extra: Sequence[CellFigures] = ()) -> Comparison:
    """Match the two sides' rows (by request, or on the axes `by`) and tell what differs in
    each pair; `extra`: per-cell figures that the tables add (`outputs.compare_tables`).
    `CompareInputError` for an axis neither side has (the message lists those there are)."""
    by = tuple(dict.fromkeys(by))
    try:
        check_axes([a.rows, b.rows], by)
    except AxisError as exc:
        raise CompareInputError(str(exc)) from exc
    a_vars, b_vars = request_variables(a.rows["vars"], b.rows["vars"])
    left, right = _keyed(a, a_vars, "a_"), _keyed(b, b_vars, "b_")
    names = template_names(a.rows) and template_names(b.rows)
    axes = [axis_values(side.rows, by, template_names=names) for side in (a, b)]
    if by:
        left, right = (
            frame.rename({"request": f"{p}request"}).with_columns(
                key=pl.struct(*values.get_columns()))
            for frame, values, p in ((left, axes[0], "a_"), (right, axes[1], "b_")))
        joined = _match(left, right, "key", BY_TIERS).with_columns(
            request=pl.coalesce("a_request", "b_request"))
    else:
        joined = _match(left, right, "request", (("_channel",),))
    rank = pl.col("kind").replace_strict({k: i for i, k in enumerate(KINDS)},
                                         return_dtype=pl.Int8)
    pairs = (joined.with_columns(kind=_kind(), differs=_differs(bool(by)))
             .sort(rank, pl.col("a_pos"), pl.col("b_pos"), nulls_last=True))
    found = dict(pairs.group_by("kind").len().iter_rows())
    counts = {kind: int(found.get(kind, 0)) for kind in KINDS}
    summary = CompareSummary(_side_summary(a, left, by), _side_summary(b, right, by),
                             counts, by)
    cells = [pl.concat([side.rows.select(CELL_COLUMNS), values], how="horizontal")
             for side, values in zip((a, b), axes, strict=True)]
    tables = axis_tables(cells[0], cells[1], pairs, by, extra)
    return Comparison(a, b, pairs, summary, by, tables)


def _match(left: pl.DataFrame, right: pl.DataFrame, key: str,
           tiers: Sequence[Sequence[str]]) -> pl.DataFrame:
    """Pairs of rows with the same `key`: for each tier in turn, rows that also share the
    tier's columns (first with first), then what is left in manifest order. Unpaired rows
    stay, with the other side's columns null. Each side keeps its own (`a_` / `b_`)
    columns; the tiers' columns are dropped."""
    own = [[c for c in frame.columns if c.startswith(p)]
           for frame, p in ((left, "a_"), (right, "b_"))]
    positions = ("a_pos", "b_pos")
    rest, found = [left, right], []
    for tier in tiers:
        on = [key, *tier]
        numbered = [frame.with_columns(_n=pl.int_range(pl.len()).over(on)).select(
            *on, "_n", *columns) for frame, columns in zip(rest, own, strict=True)]
        paired = numbered[0].join(numbered[1], on=[*on, "_n"], how="inner", nulls_equal=True)
        found.append(paired.select(key, *own[0], *own[1]))
        rest = [frame.join(paired.select(pos), on=pos, how="anti")
                for frame, pos in zip(rest, positions, strict=True)]
    numbered = [frame.with_columns(_n=pl.int_range(pl.len()).over(key)).select(
        key, "_n", *columns) for frame, columns in zip(rest, own, strict=True)]
    across = numbered[0].join(numbered[1], on=[key, "_n"], how="full", nulls_equal=True,
                              coalesce=True).drop("_n")
    return pl.concat([*found, across], how="diagonal_relaxed")


def request_variables(a: pl.Series, b: pl.Series) -> tuple[pl.Series, pl.Series]:
    """Two sides' `vars` as the request's part of them: JSON text of the variables other
    than NOT_REQUEST_VARS, written alike on both sides (keys sorted; a variable one side
    lacks is null). Polars reads them in a tenth of the json module's time (0.2 s for
    200,000 rows); variables it cannot read as one table of values (lists, objects, text that
    is not an object) go through `request_vars` one distinct value at a time."""
    try:
        decoded = [side.fill_null("{}").str.json_decode(infer_schema_length=None)
                   .struct.unnest() for side in (a, b)]
        names = sorted({name for frame in decoded for name in frame.columns} - NOT_REQUEST_VARS)
        if not names:
            return pl.Series("vars", ["{}"] * a.len()), pl.Series("vars", ["{}"] * b.len())
        a_text, b_text = (
            frame.select(pl.struct(
                *(pl.col(n).cast(pl.String) if n in frame.columns
                  else pl.lit(None, pl.String).alias(n) for n in names)
            ).struct.json_encode().alias("vars")).to_series()
            for frame in decoded
        )
        return a_text, b_text
    except pl.exceptions.PolarsError:
        return _one_by_one(a), _one_by_one(b)


def _one_by_one(variables: pl.Series) -> pl.Series:
    texts = variables.fill_null("{}")
    canonical = {text: request_vars(text) for text in texts.unique().to_list()}
    return texts.replace_strict(canonical, return_dtype=pl.String)


def request_vars(text: str | None) -> str:
    """The request's part of one row's `vars`: canonical JSON without NOT_REQUEST_VARS."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return text or ""
    if not isinstance(value, dict):
        return text or ""
    kept = {k: v for k, v in value.items() if k not in NOT_REQUEST_VARS}
    return json.dumps(kept, sort_keys=True, ensure_ascii=False, default=str)


def _keyed(side: Side, variables: pl.Series, prefix: str) -> pl.DataFrame:
    """A side's rows with their `request` struct (`variables`: their request variables),
    that struct again as `_request` and without the prompt text as `_loose`, their provider
    (`_channel`), their place (`{prefix}pos`) and the SIDE_COLUMNS under `prefix`."""
    no_references = pl.lit([], dtype=pl.List(pl.String()))
    fields = {name: pl.col(name).fill_null(no_references) if name == "references"
              else pl.col(name) for name in REQUEST}
    return (
        pl.concat([side.rows.with_columns(vars=variables), image_locations(side)],
                  how="horizontal")
        .with_row_index(f"{prefix}pos")
        .select(
            pl.struct(*fields.values(), pl.col("vars")).alias("request"),
            pl.struct(*(e for n, e in fields.items() if n != "prompt"),
                      pl.col("vars")).alias("_loose"),
            pl.col(f"{prefix}pos"),
            *(pl.col(name).alias(prefix + name) for name in SIDE_COLUMNS),
            pl.col("provider").alias("_channel"),
        )
        .with_columns(_request=pl.col("request"))
    )


def _kind() -> pl.Expr:
    a_in, b_in = pl.col("a_pos").is_not_null(), pl.col("b_pos").is_not_null()
    same_image = ((pl.col("a_status") == "succeeded") & (pl.col("b_status") == "succeeded")
                  & pl.col("a_sha256").is_not_null() & (pl.col("a_sha256") == pl.col("b_sha256")))
    same_failure = ((pl.col("a_status") == "failed") & (pl.col("b_status") == "failed")
                    & pl.col("a_error_code").eq_missing(pl.col("b_error_code")))
    return (pl.when(~b_in).then(pl.lit("only_a")).when(~a_in).then(pl.lit("only_b"))
            .when(same_image | same_failure).then(pl.lit("same"))
            .otherwise(pl.lit("changed")))


def _differs(by: bool) -> pl.Expr:
    """The names of the compared fields whose values differ within a pair ([] for lone
    rows); with `by`, `request` when the two cells asked for different things."""

    def differ(*names: str, digits: int | None = None) -> pl.Expr:
        def value(side: str, name: str) -> pl.Expr:
            column = pl.col(f"{side}_{name}")
            return column if digits is None else column.round(digits)

        return pl.any_horizontal(value("a", n).ne_missing(value("b", n)) for n in names)

    checks = {
        "request": differ("request") if by else pl.lit(False),
        "channel": differ("provider", "account", "model"),
        "status": differ("status"),
        "error": differ("error_code"),
        "cost": differ("cost_usd", digits=6),
        "latency": differ("latency_s", digits=1),
        "size": differ("bytes", "width", "height"),
        "sha256": differ("sha256"),
    }
    both = pl.col("a_pos").is_not_null() & pl.col("b_pos").is_not_null()
    return pl.concat_list(
        [pl.when(both & check).then(pl.lit(name)) for name, check in checks.items()]
    ).list.drop_nulls()


def _side_summary(side: Side, keyed: pl.DataFrame, by: Sequence[str]) -> SideSummary:
    rows = side.rows
    median = rows.filter(pl.col("status") == "succeeded")["latency_s"].median()
    channels = rows.group_by("provider", "account", "model", maintain_order=True).len()
    request = "request" if "request" in keyed.columns else "_request"
    repeated = keyed.group_by(request, "_channel").len().filter(pl.col("len") > 1).height
    keys = keyed.group_by("key").len().filter(pl.col("len") > 1).height if by else 0
    return SideSummary(
        source=side.source, cells=rows.height,
        cost_usd=float(rows["cost_usd"].fill_null(0.0).sum()),
        median_latency_s=round(median, 3) if isinstance(median, int | float) else None,
        repeated_requests=repeated,
        channels=tuple(Channel(p, a, m, int(n)) for p, a, m, n in channels.iter_rows()),
        target=side.sink.target, run_id=side.run_id, repeated_keys=keys,
    )


# -- text and JSON -----------------------------------------------------------------------------

KIND_LABELS = {"changed": "changed", "same": "same", "only_a": "only in A", "only_b": "only in B"}
KIND_MEANINGS = {"changed": "in both; another image, status or reason",
                 "same": "in both; the same image, or failed alike"}


def render_summary(summary: CompareSummary) -> str:
    """The table `nbp compare` prints: each side's cells, total cost and median latency, then
    the pairs changed and same and the rows only in one side."""
    a, b = summary.a, summary.b
    lines = [f"A  {a.source}", f"B  {b.source}", ""]
    table = [("", "A", "B"), ("cells", str(a.cells), str(b.cells)),
             ("total cost", usd(a.cost_usd), usd(b.cost_usd)),
             ("median latency", seconds(a.median_latency_s), seconds(b.median_latency_s))]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    lines += [f"{label:<{widths[0]}}  {x:>{widths[1]}}  {y:>{widths[2]}}".rstrip()
              for label, x, y in table]
    lines.append("")
    for kind in ("changed", "same", "only_a", "only_b"):
        meaning = f"  ({KIND_MEANINGS[kind]})" if kind in KIND_MEANINGS else ""
        lines.append(f"{KIND_LABELS[kind]:<10} {summary.counts[kind]:>6}{meaning}")
    lines += [f"note: {note}" for note in pairing_notes(summary)]
    return "\n".join(lines)


def pairing_notes(summary: CompareSummary) -> list[str]:
    """What the reader should know of how rows were paired."""
    notes = []
    for label, side in (("A", summary.a), ("B", summary.b)):
        if summary.by and side.repeated_keys:
            notes.append(f"{side.repeated_keys} key(s) have several rows in {label}; paired "
                         "within the key by request, then in manifest order")
        elif not summary.by and side.repeated_requests:
            notes.append(f"{side.repeated_requests} request(s) have several rows on one "
                         f"provider in {label}; paired in manifest order")
    return notes


def render_comparison(comparison: Comparison) -> str:
    """What `nbp compare` prints: the summary, the first changed pairs, then the tables."""
    lines = [render_summary(comparison.summary)]
    changed = comparison.pairs.filter(pl.col("kind") == "changed")
    if changed.height:
        shown = min(changed.height, MAX_LISTED)
        more = f", the first {shown}" if shown < changed.height else ""
        lines.append(f"\nchanged pairs ({changed.height}{more}):")
        for row in changed.head(MAX_LISTED).iter_rows(named=True):
            lines.append(f"  {pair_label(row, comparison.by)}")
            lines.append(f"    A {_side_text(row, 'a')}  →  B {_side_text(row, 'b')}")
    if comparison.by:
        lines.append("\n" + render_tables(comparison.tables))
    return "\n".join(lines)


def pair_label(row: Mapping[str, Any], by: Sequence[str]) -> str:
    """A pair in a few words: its axis values and prompt (each side's when they differ),
    else its request's prompt, ratio and size."""
    if not by:
        request = row["request"]
        return (f"{value_text(request['prompt'], 60)} · {request['aspect_ratio']} · "
                f"{request['resolution']}")
    key = row["key"] or {}
    axes = " · ".join(f"{axis}={value_text(key.get(axis), 30)}" for axis in by)
    prompts = list(dict.fromkeys(value_text(r["prompt"], 40) for r in (
        row["a_request"], row["b_request"]) if r))
    return f"{axes} · {' → '.join(prompts)}"


def _side_text(row: Mapping[str, Any], side: str) -> str:
    status = row[f"{side}_status"] or "unknown"
    cell = (row[f"{side}_cell_id"] or "")[:12]
    if status == "succeeded":
        detail = f"sha256 {(row[f'{side}_sha256'] or '–')[:12]}"
    else:
        detail = row[f"{side}_error_code"] or "no reason recorded"
    channel = row[f"{side}_provider"] or "–"
    return f"{cell} {channel} {status} ({detail})"


def pair_json(row: Mapping[str, Any], by: Sequence[str]) -> dict[str, Any]:
    """One pair of `nbp compare --json`: its key (the axis values; without `by`, the
    request), kind, what differs, and each side's facts (null for a side without the row)."""
    if by:
        key = dict(row["key"] or {})
    else:
        key = dict(row["request"])
        key["vars"] = _decoded(key["vars"])
    sides = {side: None if row[f"{side}_pos"] is None else
             {name: row[f"{side}_{name}"] for name in JSON_SIDE} for side in ("a", "b")}
    return {"kind": row["kind"], "key": key, "differs": list(row["differs"] or []), **sides}


def _decoded(text: str | None) -> Any:
    try:
        return json.loads(text or "{}")
    except ValueError:
        return text
