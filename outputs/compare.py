"""`nbp compare A B`: the cells two targets (or two runs of one target) both have, side by side.

    a, b = load_side("runs/kie"), load_side("runs/runware@a1b2")   # TARGET or TARGET@RUN_ID
    comparison = compare(a, b)
    print(render_summary(comparison.summary))       # changed / same / only in A / only in B
    write_page(comparison, "compare.html")          # one offline page; returns its URI

A side is every row of a target's manifest, or the rows one run of it wrote (`@RUN_ID`, a
unique prefix will do). Cells are matched by the provider-neutral request, not by cell id (a
cell pinned to another provider or model has another id): the `REQUEST` columns plus the
template variables other than `NOT_REQUEST_VARS`. Rows of a side with the same request (one
target holding every provider of a provider axis) pair with the other side's on the same
provider first, then in manifest order, first with first; the page says how many requests
have several rows on one provider (paired by order alone).

A pair is `same` when both cells succeeded with the same sha256 and `changed` otherwise
(another image, another status, no image on either side); a row with no partner is
`only_a` or `only_b`. Channel, cost, latency and size are shown for every pair and marked
where they differ, but do not make a pair changed: a second run is never exactly as fast.

The page is one file with its CSS inline, no script and no external asset, bounded like the
gallery (`MAX_PAIRS`) and written a piece at a time, under the gallery's content security
policy (`outputs.html`): nothing runs but its own style, nothing loads from the network.
A manifest is input (a target may come from anyone and point at any URL), so the page reads
no image and shows one only when it sits beside the page: its target's path joined with the
row's `output_path`, relative to the page's folder, on the same disk or in the same bucket,
and inside that folder (no `..`, nothing absolute). The manifest's `output_uri` is never a
`src`: an http(s) URL there could be a tracker. Any other image shows by its facts only,
with a note saying why. The sha256 compared is the manifest's, recorded when the image was
verified.
"""

from __future__ import annotations

import html
import json
import os
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import polars as pl

from nbp.outputs.gallery import drawn_size
from nbp.outputs.html import content_security_policy, policy_meta
from nbp.outputs.manifest import MANIFEST_NAME, read_manifest
from nbp.outputs.runs import pick_run, read_records, split_run_ref
from nbp.outputs.sink import Sink, file_location
from nbp.outputs.statuses import SETTLED

DEFAULT_PAGE = "compare.html"
# What a provider-neutral request is made of, besides its template variables.
REQUEST = ("prompt", "aspect_ratio", "resolution", "output_format", "references", "seed",
           "replicate", "dataset_row")
# Variables that name the channel (`provider`, `model`: soon matrix axes), or repeat a
# REQUEST column before templating (the prompt's template): not part of the request.
NOT_REQUEST_VARS = frozenset({"provider", "model", "prompt", "aspect_ratio", "resolution"})
# Each side's columns that a pair keeps, as `a_<name>` and `b_<name>`.
SIDE_COLUMNS = ("cell_id", "run_id", "provider", "account", "model", "status", "cost_usd",
                "latency_s", "bytes", "width", "height", "sha256", "output_path", "output_uri",
                "error_code", "error_message")
KINDS = ("changed", "only_a", "only_b", "same")  # the page's order
# Pairs drawn on the page (up to two images each, ~2 KB of HTML); every pair is counted.
MAX_PAIRS = 1_000
PAIR_PX = 240  # an image is drawn at most this wide and high
# A location shown as text is cut to this: a foreign manifest's value can be any size.
MAX_WHERE_CHARS = 300


class CompareInputError(ValueError):
    """A side or page location that cannot be used; the message names it and says why."""


# -- sides -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """The manifest rows one argument of `nbp compare` names, in manifest order."""

    source: str          # as given: TARGET or TARGET@RUN_ID
    sink: Sink
    run_id: str | None   # the run RUN_ID resolved to, when given
    rows: pl.DataFrame   # conformed to the manifest schema


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
    except LookupError as exc:
        raise CompareInputError(f"{target}: {exc}") from exc
    if not rows_by_run.get(run_id):
        counts = ", ".join(f"{r} {n}" for r, n in rows_by_run.items() if r is not None)
        raise CompareInputError(
            f"{target}: run {run_id} has no row left in {MANIFEST_NAME}: the manifest keeps "
            f"each cell's latest row, and later runs rewrote all of its cells (rows by run: "
            f"{counts or 'none'})")
    return Side(source, sink, run_id, frame.filter(pl.col("run_id") == run_id))


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
    repeated_requests: int            # requests with several rows on this side
    channels: tuple[Channel, ...]     # in order of first appearance
    target: str = ""
    run_id: str | None = None         # the run RUN_ID resolved to

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "run_id": self.run_id,
                "cells": self.cells, "cost_usd": round(self.cost_usd, 6),
                "median_latency_s": self.median_latency_s,
                "repeated_requests": self.repeated_requests,
                "channels": [asdict(c) for c in self.channels]}


@dataclass(frozen=True)
class CompareSummary:
    a: SideSummary
    b: SideSummary
    counts: Mapping[str, int]         # every kind of KINDS

    def to_json(self) -> dict[str, Any]:
        """`nbp compare --json`."""
        return {"a": self.a.to_json(), "b": self.b.to_json(), "counts": dict(self.counts)}


@dataclass(frozen=True)
class Comparison:
    a: Side
    b: Side
    # One row per pair or lone row, changed first, then only in A, only in B, same (each in
    # manifest order): `request` (a struct of the request), `kind`, `differs` (names of the
    # fields that differ), and each side's SIDE_COLUMNS as `a_*` / `b_*` (null when absent).
    pairs: pl.DataFrame
    summary: CompareSummary


def compare(a: Side, b: Side) -> Comparison:
    """Match the two sides' rows by request and tell what differs in each pair."""
    a_vars, b_vars = request_variables(a.rows["vars"], b.rows["vars"])
    left, right = _keyed(a.rows, a_vars, "a_"), _keyed(b.rows, b_vars, "b_")
    joined = _pair_rows(left, right)
    rank = pl.col("kind").replace_strict({k: i for i, k in enumerate(KINDS)},
                                         return_dtype=pl.Int8)
    pairs = (
        joined.with_columns(kind=_kind(), differs=_differs())
        .sort(rank, pl.col("a_pos"), pl.col("b_pos"), nulls_last=True)
        .drop("a_repeated", "b_repeated")
    )
    found = dict(pairs.group_by("kind").len().iter_rows())
    counts = {kind: int(found.get(kind, 0)) for kind in KINDS}
    summary = CompareSummary(_side_summary(a, left, "a_"), _side_summary(b, right, "b_"),
                             counts)
    return Comparison(a, b, pairs, summary)


def _pair_rows(left: pl.DataFrame, right: pl.DataFrame) -> pl.DataFrame:
    """Pairs of one request: on the same provider first (a target holding every provider of
    a provider axis pairs kie with kie), then what is left in manifest order (a channel
    change: kie's row with runware's). Unpaired rows stay, with the other side's null."""
    keys = ["request", "_channel", "_n"]
    same_channel = left.join(right, on=keys, how="inner", nulls_equal=True).drop(
        "_channel", "_n")
    rest = [frame.join(same_channel.select(pos), on=pos, how="anti").drop("_channel", "_n")
            .with_columns(_n=pl.int_range(pl.len()).over("request"))
            for frame, pos in ((left, "a_pos"), (right, "b_pos"))]
    across = rest[0].join(rest[1], on=["request", "_n"], how="full", nulls_equal=True,
                          coalesce=True).drop("_n")
    return pl.concat([same_channel, across], how="diagonal_relaxed")


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


def _keyed(rows: pl.DataFrame, variables: pl.Series, prefix: str) -> pl.DataFrame:
    """Rows with their `request` struct (`variables`: their request variables), their
    provider (`_channel`) and place among the side's rows of that request on that provider
    (`_n`), and the SIDE_COLUMNS under `prefix`."""
    no_references = pl.lit([], dtype=pl.List(pl.String()))
    fields = [pl.col(name).fill_null(no_references) if name == "references" else pl.col(name)
              for name in REQUEST]
    return (
        rows.with_columns(vars=variables)
        .with_row_index(f"{prefix}pos")
        .select(
            pl.struct(*fields, pl.col("vars")).alias("request"),
            pl.col(f"{prefix}pos"),
            *(pl.col(name).alias(prefix + name) for name in SIDE_COLUMNS),
        )
        .with_columns(_channel=pl.col(prefix + "provider"))
        .with_columns(_n=pl.int_range(pl.len()).over("request", "_channel"),
                      **{f"{prefix}repeated": pl.len().over("request", "_channel") > 1})
    )


def _kind() -> pl.Expr:
    a_in, b_in = pl.col("a_pos").is_not_null(), pl.col("b_pos").is_not_null()
    same = ((pl.col("a_status") == "succeeded") & (pl.col("b_status") == "succeeded")
            & pl.col("a_sha256").is_not_null() & (pl.col("a_sha256") == pl.col("b_sha256")))
    return (pl.when(~b_in).then(pl.lit("only_a")).when(~a_in).then(pl.lit("only_b"))
            .when(same).then(pl.lit("same")).otherwise(pl.lit("changed")))


def _differs() -> pl.Expr:
    """The names of the compared fields whose values differ within a pair ([] for lone rows)."""

    def differ(*names: str, digits: int | None = None) -> pl.Expr:
        def value(side: str, name: str) -> pl.Expr:
            column = pl.col(f"{side}_{name}")
            return column if digits is None else column.round(digits)

        return pl.any_horizontal(value("a", n).ne_missing(value("b", n)) for n in names)

    checks = {
        "channel": differ("provider", "account", "model"),
        "status": differ("status"),
        "cost": differ("cost_usd", digits=6),
        "latency": differ("latency_s", digits=1),
        "size": differ("bytes", "width", "height"),
        "sha256": differ("sha256"),
    }
    both = pl.col("a_pos").is_not_null() & pl.col("b_pos").is_not_null()
    return pl.concat_list(
        [pl.when(both & check).then(pl.lit(name)) for name, check in checks.items()]
    ).list.drop_nulls()


def _side_summary(side: Side, keyed: pl.DataFrame, prefix: str) -> SideSummary:
    rows = side.rows
    median = rows.filter(pl.col("status") == "succeeded")["latency_s"].median()
    channels = rows.group_by("provider", "account", "model", maintain_order=True).len()
    repeated = keyed.filter(pl.col(f"{prefix}repeated") & (pl.col("_n") == 0)).height
    return SideSummary(
        source=side.source, cells=rows.height,
        cost_usd=float(rows["cost_usd"].fill_null(0.0).sum()),
        median_latency_s=round(median, 3) if isinstance(median, int | float) else None,
        repeated_requests=repeated,
        channels=tuple(Channel(p, a, m, int(n)) for p, a, m, n in channels.iter_rows()),
        target=side.sink.target, run_id=side.run_id,
    )


# -- summary table -----------------------------------------------------------------------------

KIND_LABELS = {"changed": "changed", "same": "same", "only_a": "only in A", "only_b": "only in B"}
KIND_MEANINGS = {"changed": "in both; another image or status",
                 "same": "in both; succeeded, same sha256"}


def render_summary(summary: CompareSummary) -> str:
    """The table `nbp compare` prints: each side's cells, total cost and median latency, then
    the pairs changed and same and the rows only in one side."""
    a, b = summary.a, summary.b
    lines = [f"A  {a.source}", f"B  {b.source}", ""]
    table = [("", "A", "B"), ("cells", str(a.cells), str(b.cells)),
             ("total cost", _usd(a.cost_usd), _usd(b.cost_usd)),
             ("median latency", _seconds(a.median_latency_s), _seconds(b.median_latency_s))]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    lines += [f"{label:<{widths[0]}}  {x:>{widths[1]}}  {y:>{widths[2]}}".rstrip()
              for label, x, y in table]
    lines.append("")
    for kind in ("changed", "same", "only_a", "only_b"):
        meaning = f"  ({KIND_MEANINGS[kind]})" if kind in KIND_MEANINGS else ""
        lines.append(f"{KIND_LABELS[kind]:<10} {summary.counts[kind]:>6}{meaning}")
    for label, side in (("A", a), ("B", b)):
        if side.repeated_requests:
            lines.append(f"note: {side.repeated_requests} request(s) have several rows on "
                         f"one provider in {label}; paired in manifest order")
    return "\n".join(lines)


def _usd(value: float | None) -> str:
    return "–" if value is None else f"${value:.2f}"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} s"


# -- page --------------------------------------------------------------------------------------


def page_location(out: str) -> tuple[Sink, str]:
    """The folder (a Sink) and file name of the page at `out`: a local path or any fsspec
    URL; a folder (an existing one, or any ending in `/`) gets `DEFAULT_PAGE` in it.
    `CompareInputError` when unusable."""
    try:
        return file_location(out, DEFAULT_PAGE)
    except (ImportError, ValueError) as exc:
        raise CompareInputError(f"{out}: not a place for the page: {exc}") from exc


def write_page(comparison: Comparison, out: str = DEFAULT_PAGE) -> str:
    """Write the page to `out` (see `page_location`) a piece at a time; returns its URI."""
    sink, name = page_location(out)
    pieces = _page(comparison, _Images(sink))
    return sink.write_chunks(name, (piece.encode() for piece in pieces), overwrite=True)


def render_page(comparison: Comparison, out: str = DEFAULT_PAGE) -> str:
    """The page `write_page` writes to `out`, as text."""
    sink, _ = page_location(out)
    return "".join(_page(comparison, _Images(sink)))


@dataclass(frozen=True)
class _Image:
    """How the page shows one side's image."""

    src: str | None   # relative to the page, quoted; None: by its facts only
    where: str        # where the manifest says it is, shown as text and never followed
    why: str = ""     # why there is no `src`


class _Images:
    """Which images a page in the folder `page` shows: only those beside it."""

    def __init__(self, page: Sink) -> None:
        self.page = page

    def locate(self, side: Sink, output_path: str | None, output_uri: str | None) -> _Image:
        """Where `side`'s image is, and its `src` when it sits beside the page.

        The target as given wins over the manifest's `output_uri`, which is never followed:
        a target folder that was moved or copied still shows its own images, and a URL in
        a foreign manifest is never asked for."""
        if not output_path:
            return _Image(None, output_uri or "", "the manifest gives it no path in its target")
        try:
            path, where = side.path(output_path), side.uri(output_path)
        except ValueError:  # `..`, absolute, a URL: shown as text, never followed
            return _Image(None, output_path, "its path in the manifest is not a safe one")
        if type(side.fs) is not type(self.page.fs) or (
            not self.page.local and _bucket(path) != _bucket(self.page.root)
        ):
            return _Image(None, where, "on another disk or bucket than the page")
        relative = self._relative(path)
        if relative is None:
            return _Image(None, where, "outside the page's folder (write the page in a folder "
                                       "that holds the target)")
        return _Image(quote(relative), where)  # quoted: a ':' in it can never make a scheme

    def _relative(self, path: str) -> str | None:
        """`path` relative to the page's folder, or None when it is not inside it."""
        try:
            relative = (os.path.relpath(path, self.page.root).replace(os.sep, "/")
                        if self.page.local else posixpath.relpath(path, self.page.root))
        except ValueError:  # another drive
            return None
        if relative.startswith("/") or ".." in relative.split("/"):
            return None
        return relative


def _bucket(path: str) -> str:
    """The bucket of an object store path (`bucket/key`): page and image must share it."""
    return path.lstrip("/").split("/", 1)[0]


def _short(text: str, limit: int = MAX_WHERE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _page(comparison: Comparison, images: _Images) -> Iterator[str]:
    """The page in pieces of at most one pair each."""
    summary = comparison.summary
    title = f"nbp compare: {comparison.a.source} vs {comparison.b.source}"
    yield _head(title)
    yield _header(comparison, title)
    shown = comparison.pairs.head(MAX_PAIRS)
    open_kind: str | None = None
    for number, row in enumerate(shown.iter_rows(named=True)):
        if row["kind"] != open_kind:
            if open_kind is not None:
                yield "</section>\n"
            open_kind = row["kind"]
            yield _section_head(open_kind, summary.counts[open_kind], shown)
        yield _pair(row, number, comparison, images)
    if open_kind is not None:
        yield "</section>\n"
    yield "</body>\n</html>\n"


def _head(title: str) -> str:
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"{policy_meta(_POLICY)}"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
    )


def _header(comparison: Comparison, title: str) -> str:
    summary = comparison.summary
    counts = " · ".join(f"{summary.counts[k]} {KIND_LABELS[k]}" for k in KINDS)
    rows = []
    for label, side, facts in (("A", comparison.a, summary.a), ("B", comparison.b, summary.b)):
        channels = ", ".join(f"{c} ({c.cells})" for c in facts.channels) or "–"
        run = f" · run {_e(side.run_id)}" if side.run_id else ""
        rows.append(
            f'<tr><th>{label}</th><td class="wrap"><code>{_e(side.source)}</code>{run}</td>'
            f"<td>{facts.cells} cells</td><td>{_e(_usd(facts.cost_usd))}</td>"
            f"<td>median {_e(_seconds(facts.median_latency_s))}</td>"
            f'<td class="wrap">{_e(channels)}</td></tr>'
        )
    notes = [f"generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
             "cells matched by request (prompt, ratio, resolution, format, references, seed, "
             "replicate, dataset row, variables other than provider and model)"]
    for label, facts in (("A", summary.a), ("B", summary.b)):
        if facts.repeated_requests:
            notes.append(f"{facts.repeated_requests} request(s) have several rows on one "
                         f"provider in {label}: paired with the other side's in manifest order")
    total = comparison.pairs.height
    if total > MAX_PAIRS:
        notes.append(f"the first {MAX_PAIRS} of {total} pairs and lone rows (changed, then "
                     f"only in one side, then same); `nbp compare --json` counts them all")
    return (
        f"<header>\n<h1>{_e(title)}</h1>\n"
        f'<p class="summary">{_e(counts)}</p>\n'
        f'<table class="sides-table">{"".join(rows)}</table>\n'
        + "".join(f'<p class="meta">{_e(note)}</p>\n' for note in notes)
        + "</header>\n"
    )


_SECTION_TITLES = {"changed": "Changed", "only_a": "Only in A", "only_b": "Only in B",
                   "same": "Same"}


def _section_head(kind: str, count: int, shown: pl.DataFrame) -> str:
    drawn = shown.filter(pl.col("kind") == kind).height
    more = f" (the first {drawn})" if drawn < count else ""
    return (f'<section class="kind" id="{kind}">\n'
            f"<h2>{_SECTION_TITLES[kind]}: {count}{more}</h2>\n")


def _pair(row: Mapping[str, Any], number: int, comparison: Comparison, images: _Images) -> str:
    request = row["request"]
    differs: list[str] = row["differs"] or []
    facts = [request["aspect_ratio"], request["resolution"], request["output_format"]]
    facts += [f"{label} {request[key]}" for label, key in (
        ("seed", "seed"), ("replicate", "replicate"), ("dataset row", "dataset_row"))
        if request[key] is not None]
    if request["references"]:
        facts.append(f"{len(request['references'])} reference(s)")
    variables = _variables(request["vars"])
    if variables:
        facts.append(", ".join(f"{k}={v}" for k, v in variables.items()))
    a = images.locate(comparison.a.sink, row["a_output_path"], row["a_output_uri"])
    b = images.locate(comparison.b.sink, row["b_output_path"], row["b_output_uri"])
    notes = ""
    if differs:
        notes += f'<p class="differs">differs: {_e(", ".join(differs))}</p>'
    if a.where and a.where == b.where and row["a_sha256"] != row["b_sha256"]:
        notes += ('<p class="differs">both rows name the same file: it holds one of the two '
                  "images</p>")
    return (
        f'<article class="pair {_e(row["kind"])}" id="pair-{number}">'
        f'<div class="request"><p class="prompt">{_e(request["prompt"])}</p>'
        f'<p class="facts">{_e(" · ".join(str(f) for f in facts if f is not None))}</p>'
        f"{notes}</div>"
        f'<div class="sides">{_side(row, "a", a, differs)}{_side(row, "b", b, differs)}</div>'
        "</article>\n"
    )


def _variables(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {"vars": text}
    if not isinstance(value, dict):
        return {"vars": text}
    return {k: v for k, v in value.items() if v is not None}


def _side(row: Mapping[str, Any], side: str, image: _Image, differs: list[str]) -> str:
    label = side.upper()
    if row[f"{side}_pos"] is None:
        return (f'<figure class="side absent"><figcaption>{label}</figcaption>'
                f'<div class="frame"><span class="none">not in {label}</span></div></figure>')

    def get(name: str) -> Any:
        return row[f"{side}_{name}"]

    status = get("status") or "unknown"
    src, where = image.src, _short(image.where)
    if status == "succeeded" and src:
        size = drawn_size(get("width"), get("height"), PAIR_PX)
        dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
        body = (f'<a href="{_e(src)}"><img src="{_e(src)}"{dims} alt="{label}: '
                f'{_e(get("cell_id"))}" loading="lazy"></a>')
    elif status == "succeeded":
        body = (f'<span class="none">image not viewable from here: {_e(image.why)}<br>'
                f"{_e(where)}</span>")
    else:
        reason = ": ".join(str(x) for x in (get("error_code"), get("error_message")) if x)
        body = (f'<div class="reason"><strong>{_e(status)}</strong>'
                f"<span>{_e(reason or 'no reason recorded')}</span></div>")
    channel = " · ".join(str(x) for x in (get("provider"), get("account"), get("model")) if x)
    size_text = " · ".join(x for x in (
        f"{get('bytes'):,} bytes" if get("bytes") is not None else "",
        f"{get('width')}×{get('height')}" if get("width") and get("height") else "") if x)
    facts = [
        ("channel", channel or "–"),
        ("status", status),
        ("cost", f"${get('cost_usd'):.3f}" if get("cost_usd") is not None else "–"),
        ("latency", f"{get('latency_s'):.1f} s" if get("latency_s") is not None else "–"),
        ("size", size_text or "–"),
        ("sha256", get("sha256") or "–"),
    ]
    rows = "".join(
        f'<tr class="{"diff" if name in differs else "same"}"><th>{name}</th>'
        f'<td title="{_e(value)}">{_e(value)}</td></tr>'
        for name, value in facts
    )
    rows += (f'<tr><th>cell</th><td title="{_e(where)}">{_e(get("cell_id"))}'
             f' · run {_e(get("run_id") or "–")}</td></tr>')
    css = _e(status if status in SETTLED else "unknown")
    return (f'<figure class="side {css}"><figcaption>{label}</figcaption>'
            f'<div class="frame">{body}</div><table class="facts">{rows}</table></figure>')


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.25rem;color:#222;background:#f6f6f4}
h1{margin:0 0 .25rem;font-size:1.3rem;overflow-wrap:anywhere}
h2{font-size:1.1rem;margin:1.5rem 0 .5rem}
.summary{font-weight:600;margin:.25rem 0}.meta{color:#666;margin:.1rem 0}
table.sides-table{border-collapse:collapse;margin:.5rem 0}
table.sides-table th,table.sides-table td{padding:.15rem .6rem .15rem 0;text-align:left;
vertical-align:top;white-space:nowrap}
table.sides-table td.wrap{white-space:normal;overflow-wrap:anywhere}
.pair{background:#fff;border:1px solid #ddd;border-radius:4px;padding:.6rem;margin:0 0 .75rem;
max-width:60rem}
.pair.changed{border-left:4px solid #c77d12}.pair.same{border-left:4px solid #6a9a6a}
.pair.only_a,.pair.only_b{border-left:4px solid #8a8a8a}
.request p{margin:0 0 .2rem}.prompt{font-weight:600;overflow-wrap:anywhere}
.request .facts{color:#555;font-size:12px;overflow-wrap:anywhere}
.differs{color:#8a4b00;font-size:12px}
.sides{display:grid;grid-template-columns:1fr 1fr;gap:.75rem;margin-top:.4rem}
.side{margin:0;min-width:0}
.side.absent .frame{height:auto;min-height:3rem}
.side figcaption{font-weight:600;font-size:12px;margin-bottom:.2rem}
.side .frame{height:240px;display:flex;align-items:center;justify-content:center;
background:#f1f0ec;border-radius:3px;overflow:hidden}
.side img{display:block;max-width:240px;max-height:240px}
.none{color:#666;font-size:12px;text-align:center;padding:.5rem;overflow-wrap:anywhere}
.reason{box-sizing:border-box;height:100%;width:100%;overflow:auto;padding:.5rem;
font-size:12px;overflow-wrap:anywhere;background:#fde8e8;color:#8a1c1c}
.side.cancelled .reason,.side.skipped .reason,.side.unknown .reason{background:#eee;color:#444}
.reason strong{display:block;text-transform:uppercase;margin-bottom:.25rem}
table.facts{border-collapse:collapse;font-size:12px;margin-top:.3rem;width:100%;
table-layout:fixed}
table.facts th{width:4.5rem;text-align:left;font-weight:400;color:#666;vertical-align:top}
table.facts td{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
table.facts tr.diff td{background:#fff1d6;font-weight:600}
"""

# No script; the style by its hash; images only from beside the page (the gallery's rule).
_POLICY = content_security_policy(styles=[_CSS])
