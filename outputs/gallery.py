"""`{target}/index.html`: a contact sheet of a job that works offline, from disk or a bucket.

One file with its CSS and one small script inline, and no external asset. Each card shows its
image straight from the target by relative path (`<img loading="lazy">` with the width and
height it is drawn at, so the page lays out before any image arrives) and links to it, so the
page works wherever the target folder is opened: from disk, offline, or from a bucket served
over HTTP. Making the page reads no image: a run never decodes an image a second time for its
gallery (thumbnails cost 19 ms of CPU per 1K PNG, more than the rest of a cell), and the
browser only loads the images scrolled into view. Opened without the target's images next
to it, the page still shows every card's facts.

Layout: a summary line on top, then grids of cards. By default one section per dataset row
(header: the row's variables), or a single section for jobs without a dataset; in each
section a grid of prompts (rows) by aspect ratio × resolution (columns). A pivot
(`output.gallery: {rows: [style], columns: [lighting, provider]}`) draws one grid whose rows
and columns are the combinations of the named axes, in the order the values first appear in
the manifest (the spec's order); an omitted side keeps its default axes. Cards that share a
grid position (replicates, axes on neither side) stack inside it. An axis name is a manifest
column (`AXIS_COLUMNS`: aspect_ratio, resolution, replicate, provider, model, account,
status, prompt, and run for run_id), else an entry of the cell's template variables (matrix
axes and dataset columns). Failed, skipped and cancelled cells are cards with their status
and reason. Every card shows its cell id, cost and latency (caption and tooltip).

Filter: the script (`FILTER_SCRIPT`, no network, no external asset) shows a form with a
select per axis that has 2 to `MAX_FILTER_VALUES` values among the cards, and a "failed
only" switch (every card whose status is not succeeded: failed, skipped, cancelled, pending,
uncertain). It hides the cards that do not match, then the rows, columns and sections left
empty, and keeps the choice in the URL fragment (`index.html#style=photo&failed-only`), so a
filtered view is a link. With scripts disabled the form stays hidden and every card shows.

Review: a card shows its cell's `review` from the manifest as a badge. When the script runs,
the card of each succeeded cell whose image is current gets approve / reject buttons
(`REVIEW_SCRIPT`; pressed again, a choice is withdrawn); choices are kept in the page's
localStorage and a "download decisions" button saves them as one JSON file
(`outputs.review.EXPORT_FORMAT`, a Blob download: nothing leaves the machine) for
`nbp review TARGET --import FILE`. Without scripts the badges show and no button does.

Before / after: a row another cell superseded in a refresh (`superseded_by`) keeps its image
as history at `HISTORY_DIR/{cell_id}{suffix}` (its `output_uri` points there). The card of
the cell that took the path shows that old image beside the new one, both by relative path;
the old row's own card shows its history image, not what its path holds now.

The page's one script is `PAGE_SCRIPT` (the filter's and the review's), allowed by its hash.
"""

from __future__ import annotations

import html
import json
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import polars as pl

from nbp.outputs.html import content_security_policy, policy_meta
from nbp.outputs.layout import HISTORY_DIR
from nbp.outputs.manifest import conform, conform_lazy
from nbp.outputs.sink import Sink
from nbp.outputs.status import Summary, summarise
from nbp.outputs.statuses import SETTLED

GALLERY_NAME = "index.html"
CARD_PX = 180  # an image is drawn at most this wide and high
# Past this many cells the page shows the first ones only (every cell is in the manifest):
# ~1 KB of HTML per card, so a 1,000,000-cell catalog would otherwise be a 1 GB page, and
# rendering 10,000 cards took 120 MB more memory than the whole run before it (bench/cost.py).
MAX_CARDS = 2_000
# An axis with more values than this gets no select (a dataset's title column is not a
# filter: it would list every row); the page stays small.
MAX_FILTER_VALUES = 100
DEFAULT_ROWS = ("prompt",)
DEFAULT_COLUMNS = ("aspect_ratio", "resolution")
# Axis name -> the manifest column it reads; other names read the cell's `vars` entry (also
# when the column is empty: a cell skipped before a provider served it still has its axis).
# In this order the filter lists them after the grid's axes and the template variables.
AXIS_COLUMNS = {
    "prompt": "prompt", "aspect_ratio": "aspect_ratio", "resolution": "resolution",
    "provider": "provider", "model": "model", "account": "account", "replicate": "replicate",
    "run": "run_id", "status": "status",
}  # fmt: skip
FAILED_ONLY = "failed-only"  # the switch's name, and its key in the URL fragment
REVIEWED = ("approved", "rejected")  # outputs.review.VERDICTS: the badges the page draws

Row = Mapping[str, Any]
IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a cell id that names a file


@dataclass(frozen=True)
class Layout:
    """Which axes make the grid's rows and columns (each position: a combination of their
    values), and whether each dataset row has a section of its own (the default layout)."""

    rows: tuple[str, ...] = DEFAULT_ROWS
    columns: tuple[str, ...] = DEFAULT_COLUMNS
    by_dataset_row: bool = True

    @classmethod
    def of(cls, rows: Sequence[str] | None, columns: Sequence[str] | None) -> Layout:
        """The default layout when neither is given, else a pivot: one grid, an empty or
        missing side keeping its default axes."""
        if rows is None and columns is None:
            return cls()
        return cls(tuple(rows or DEFAULT_ROWS), tuple(columns or DEFAULT_COLUMNS), False)


def write_gallery(
    sink: Sink, manifest: pl.DataFrame | pl.LazyFrame, *, title: str,
    rows: Sequence[str] | None = None, columns: Sequence[str] | None = None,
) -> str:
    """Render the manifest's cells to `{target}/index.html` (atomic); returns its URI.

    `rows` and `columns` pivot the grid (`output.gallery`); neither: the default layout.
    `manifest` may be lazy (a scanned Parquet file): only the first `MAX_CARDS` rows and the
    summary's aggregates are read. The page is written a card at a time (`Sink.write_chunks`):
    a 2,000-card page is never joined in memory."""
    cards = _cards(manifest)
    pieces = _page(cards, summarise(manifest), title=title, layout=Layout.of(rows, columns),
                   befores=_befores(manifest, cards))
    return sink.write_chunks(GALLERY_NAME, (piece.encode() for piece in pieces), overwrite=True)


def _cards(manifest: pl.DataFrame | pl.LazyFrame) -> list[dict[str, Any]]:
    """The rows the page shows as cards: the first `MAX_CARDS`."""
    return conform(manifest.lazy().head(MAX_CARDS).collect()).to_dicts()


def _befores(
    manifest: pl.DataFrame | pl.LazyFrame, cards: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """For each succeeded card that took another cell's path in a refresh, that cell's row
    (the latest one in manifest order): its image is the card's "before"."""
    shown = [row["cell_id"] for row in cards if row["status"] == "succeeded"]
    if not shown:
        return {}
    old = conform_lazy(manifest.lazy()).filter(pl.col("superseded_by").is_in(shown)).collect()
    return {row["superseded_by"]: row for row in old.to_dicts()}


def history_image(row: Row) -> str | None:
    """The relative path of a superseded row's image kept as history: when its `output_uri`
    points at `HISTORY_DIR/{cell_id}{suffix of its output_path}` (a refresh that kept none
    leaves it at the path, which now holds the new image)."""
    cell_id, path, uri = row["cell_id"], row["output_path"], row["output_uri"]
    if not (path and uri and IDENTIFIER.fullmatch(cell_id)):
        return None
    rel = f"{HISTORY_DIR}/{cell_id}{posixpath.splitext(path)[1]}"
    return rel if str(uri).replace("\\", "/").endswith("/" + rel) else None


def drawn_size(
    width: int | None, height: int | None, box: int = CARD_PX
) -> tuple[int, int] | None:
    """The size an image of `width` x `height` is drawn at: within a `box` px square (a
    card's by default), its shape kept (None when the manifest does not know its size)."""
    if not width or not height:
        return None
    scale = min(1.0, box / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


# -- cards, axes and filters ---------------------------------------------------------------


class _Card:
    """A manifest row with its template variables decoded once, and the row it superseded."""

    __slots__ = ("before", "row", "vars")

    def __init__(self, row: dict[str, Any], before: Row | None = None) -> None:
        self.row = row
        self.vars = _vars(row)
        self.before = before

    def value(self, axis: str) -> str:
        """The card's value of `axis` as text ("" when it has none)."""
        column = AXIS_COLUMNS.get(axis)
        value = self.row[column] if column else None
        return _text(self.vars.get(axis) if value is None else value)

    def key(self, axes: Sequence[str]) -> tuple[str, ...]:
        return tuple(self.value(axis) for axis in axes)


@dataclass(frozen=True)
class _Filter:
    axis: str
    values: dict[str, int]  # value -> its index, in the order values first appear

    def code(self, card: _Card) -> int:
        return self.values[card.value(self.axis)]


def _filters(cards: list[_Card], layout: Layout) -> list[_Filter]:
    """A filter per axis with 2 to `MAX_FILTER_VALUES` values among the cards: the grid's
    axes first, then the template variables, then the manifest's own axes."""
    names = _unique([
        *layout.rows, *layout.columns,
        *(name for card in cards for name in card.vars if name not in AXIS_COLUMNS),
        *AXIS_COLUMNS,
    ])
    found = []
    for name in names:
        values = _unique(card.value(name) for card in cards)
        if 1 < len(values) <= MAX_FILTER_VALUES:
            found.append(_Filter(name, {value: i for i, value in enumerate(values)}))
    return found


def _code(card: _Card, filters: list[_Filter]) -> str:
    """The card's value of each filter, as the index of that value among the filter's."""
    return " ".join(str(f.code(card)) for f in filters)


# -- HTML --------------------------------------------------------------------------------------


def render_gallery(
    manifest: pl.DataFrame | pl.LazyFrame, *, title: str,
    rows: Sequence[str] | None = None, columns: Sequence[str] | None = None,
) -> str:
    """The page for `manifest` (`write_gallery`'s, as one string)."""
    cards = _cards(manifest)
    return "".join(_page(cards, summarise(manifest), title=title,
                         layout=Layout.of(rows, columns), befores=_befores(manifest, cards)))


def _page(
    rows: list[dict[str, Any]], summary: Summary, *, title: str, layout: Layout,
    befores: Mapping[str, Row] | None = None,
) -> Iterator[str]:
    """The page in pieces of at most one card each. `befores`: new cell id -> the row it
    superseded (`_befores`)."""
    cards = [_Card(row, (befores or {}).get(row["cell_id"])) for row in rows]
    filters = _filters(cards, layout)
    columns = _unique(card.key(layout.columns) for card in cards)
    yield _head(title)
    yield _summary(summary, title)
    yield _form(filters)
    if any(_reviewable(card.row) for card in cards):
        yield _review_bar()
    for key, section in _sections(cards, layout).items():
        yield from _section(key, section, columns, layout, filters)
    yield f"<script>{PAGE_SCRIPT}</script>\n</body>\n</html>\n"


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _unique(items: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def _sections(cards: list[_Card], layout: Layout) -> dict[int | None, list[_Card]]:
    """Cards grouped by dataset row (cells without one first, then rows in dataset order),
    or all in one section for a pivot."""
    if not layout.by_dataset_row:
        return {None: cards}
    sections: dict[int | None, list[_Card]] = {}
    for card in cards:
        sections.setdefault(card.row["dataset_row"], []).append(card)
    return dict(sorted(sections.items(), key=lambda kv: (kv[0] is not None, kv[0] or 0)))


def _head(title: str) -> str:
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"{policy_meta(_POLICY)}"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
    )


def _summary(summary: Summary, title: str) -> str:
    counts = [f"{summary.cells} cells"]
    counts += [f"{n} {status}" for status, n in summary.by_status.items() if n]
    counts.append(f"spend ${summary.spend_usd:.2f}")
    meta = f"generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    if summary.jobs:
        meta += f" · job {', '.join(summary.jobs)} · {summary.runs} run(s)"
    if summary.cells > MAX_CARDS:
        meta += f" · the first {MAX_CARDS} of {summary.cells} cells (all in manifest.parquet)"
    emulated = ""
    if summary.emulated:
        emulated = (f'<p class="emulated">Emulated: {summary.emulated} of {summary.cells} '
                    "cells ran against the local emulators. Their images are placeholders "
                    "and nothing was paid; the spend is what they would cost.</p>\n")
    return (
        f"<header>\n<h1>{_e(title)}</h1>\n{emulated}"
        f'<p class="summary">{_e(" · ".join(counts))}</p>\n'
        f'<p class="meta">{_e(meta)}</p>\n</header>\n'
    )


def _form(filters: list[_Filter]) -> str:
    """The filter's controls, hidden until the script shows them (a page without scripts
    shows every card and no control that would do nothing)."""
    out = ['<form id="filter" class="filter" hidden>\n']
    for f in filters:
        options = "".join(
            f'<option value="{_e(value)}">{_e(_label(value))}</option>' for value in f.values
        )
        out.append(f'<label>{_e(f.axis)} <select name="{_e(f.axis)}">'
                   f'<option value="">all</option>{options}</select></label>\n')
    out.append(f'<label><input type="checkbox" name="{FAILED_ONLY}"> failed only</label>\n'
               '<output id="shown"></output>\n</form>\n')
    return "".join(out)


def _label(value: str, limit: int = 60) -> str:
    if not value:
        return "(none)"
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _joined(key: tuple[str, ...]) -> str:
    """A grid header: the combination's values ("watercolor · kie"), "–" for a missing one."""
    return " · ".join(value or "–" for value in key)


def _section(
    key: int | None,
    cards: list[_Card],
    columns: list[tuple[str, ...]],
    layout: Layout,
    filters: list[_Filter],
) -> Iterator[str]:
    out = ['<section class="rows">\n']
    if key is not None:
        out.append(f'<h2 id="row-{key}">Dataset row {key}</h2>\n')
        shared = _shared_vars(cards)
        if shared:
            items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in shared.items())
            out.append(f'<dl class="vars">{items}</dl>\n')
    out.append('<div class="scroll">\n<table class="grid">\n')
    if not layout.by_dataset_row:
        out.append(f"<caption>rows: {_e(' · '.join(layout.rows))}; "
                   f"columns: {_e(' · '.join(layout.columns))}</caption>\n")
    out.append(f"<thead><tr><th>{_e(' · '.join(layout.rows))}</th>")
    out += [f"<th>{_e(_joined(col))}</th>" for col in columns]
    out.append("</tr></thead>\n<tbody>\n")
    yield "".join(out)
    grid: dict[tuple[tuple[str, ...], tuple[str, ...]], list[_Card]] = {}
    for card in cards:
        grid.setdefault((card.key(layout.rows), card.key(layout.columns)), []).append(card)
    for row_key in _unique(card.key(layout.rows) for card in cards):
        header = _e(_joined(row_key))
        # class "prompt": a row header's style, named after the default layout's rows
        yield f'<tr><th class="prompt" title="{header}"><div>{header}</div></th>'
        for col in columns:
            yield "<td>"
            for card in grid.get((row_key, col), []):
                yield _card(card.row, _code(card, filters), card.before)
            yield "</td>"
        yield "</tr>\n"
    yield "</tbody>\n</table>\n</div>\n</section>\n"


def _shared_vars(cards: list[_Card]) -> dict[str, Any]:
    """Variables with one value across the section: the dataset row's columns (and fixed axes)."""
    first = cards[0].vars
    return {k: v for k, v in first.items()
            if all(card.vars.get(k, object()) == v for card in cards[1:])}


def _vars(row: Row) -> dict[str, Any]:
    try:
        value = json.loads(row["vars"] or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _card(row: Row, code: str = "", before: Row | None = None) -> str:
    status = row["status"] or "unknown"
    facts = _facts(row)
    tooltip = "\n".join([f"cell {row['cell_id']}", *facts])
    caption = (
        f'<figcaption><code>{_e(row["cell_id"][:12])}</code>'
        f'<span>{_e(" · ".join(facts[:2]))}</span></figcaption>'
    )
    superseded = status == "succeeded" and bool(row["superseded_by"])
    if superseded:  # its path holds the new cell's image now: show the history copy
        path = history_image(row)
        body = _image(path, row, f"image not kept (superseded by {row['superseded_by']})")
        body += (f'<p class="superseded">superseded by '
                 f'<code>{_e(row["superseded_by"][:12])}</code></p>')
    elif status == "succeeded":
        body = _image(row["output_path"], row, "no image")
        if before is not None:
            old = _image(history_image(before), before, "before: image not kept")
            body = (f'<div class="pair"><div class="side"><span class="tag">before · '
                    f'<code>{_e(before["cell_id"][:12])}</code></span>{old}</div>'
                    f'<div class="side"><span class="tag">after</span>{body}</div></div>')
    else:
        reason = ": ".join(str(x) for x in (row["error_code"], row["error_message"]) if x)
        body = (
            f'<div class="reason"><strong>{_e(status)}</strong>'
            f"<span>{_e(reason or 'no reason recorded')}</span></div>"
        )
    css = _e(status if status in SETTLED else "unknown")
    css += " superseded" if superseded else " paired" if before is not None else ""
    data = f' data-f="{code}"' if code else ""
    return (
        f'<figure class="card {css}" id="cell-{_e(row["cell_id"])}" title="{_e(tooltip)}"'
        f"{data}>{body}{caption}{_review(row)}</figure>"
    )


def _image(path: str | None, row: Row, missing: str) -> str:
    """An image of the target by relative path, linked to itself, at its drawn size."""
    if not path:
        return f'<div class="frame"><span class="noimage">{_e(missing)}</span></div>'
    href = _e(quote(path))
    size = drawn_size(row["width"], row["height"])
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    # Not decoding="async": headless Chromium's screenshots (and printing) then
    # often miss images that have loaded (tests/outputs/test_gallery_browser.py).
    return (f'<a href="{href}"><div class="frame"><img src="{href}"{dims} '
            f'alt="{_e(row["prompt"])}" loading="lazy"></div></a>')


def _reviewable(row: Row) -> bool:
    """A cell whose image is the current one at its path (outputs.review.unreviewable)."""
    return row["status"] == "succeeded" and not row["superseded_by"]


def _review(row: Row) -> str:
    """The card's review: the manifest's decision as a badge, and the buttons that choose
    one (hidden until the script shows them)."""
    review = row["review"]
    badge = ""
    if review:
        kind = review if review in REVIEWED else "other"
        badge = f'<span class="badge {_e(kind)}">{_e(review)}</span>'
    buttons = ""
    if _reviewable(row):
        buttons = ('<span class="decide" hidden>'
                   '<button type="button" value="approved" aria-pressed="false">approve</button>'
                   '<button type="button" value="rejected" aria-pressed="false">reject</button>'
                   "</span>")
    return f'<div class="review">{badge}{buttons}</div>' if badge or buttons else ""


def _review_bar() -> str:
    """The page's review controls: hidden until the script shows them."""
    return ('<div id="review" class="review-bar" hidden>'
            '<button type="button" id="review-download" disabled>download decisions</button>'
            '<span id="review-count" role="status">no choice yet</span>'
            '<button type="button" id="review-clear" disabled>clear choices</button>'
            '<span class="hint">then <code>nbp review TARGET --import FILE</code></span>'
            "</div>\n")


def _facts(row: Row) -> list[str]:
    """Cost and latency first (the caption shows those two), then details for the tooltip."""
    cost = row["cost_usd"]
    latency = row["latency_s"]
    facts = [
        f"${cost:.3f}" if cost is not None else "$ –",
        f"{latency:.1f} s" if latency is not None else "– s",
    ]
    if row["width"] and row["height"]:
        facts.append(f"{row['width']}×{row['height']}")
    for label, key in (("provider", "provider"), ("replicate", "replicate"),
                       ("attempts", "attempts"), ("task", "remote_task_id"),
                       ("review", "review"), ("superseded by", "superseded_by")):
        if row[key] is not None:
            facts.append(f"{label} {row[key]}")
    return facts


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.25rem;color:#222;background:#f6f6f4}
h1{margin:0 0 .25rem;font-size:1.4rem}h2{font-size:1.1rem;margin:1.75rem 0 .25rem}
.summary{font-weight:600;margin:.25rem 0}.meta{color:#666;margin:0 0 1rem}
.emulated{background:#fff3cd;border:1px solid #e0c060;border-radius:3px;padding:.4rem .6rem;
margin:.25rem 0;max-width:60rem}
dl.vars{display:flex;flex-wrap:wrap;gap:.25rem 1rem;margin:.25rem 0 .75rem}
dl.vars dt{font-weight:600}dl.vars dt::after{content:":"}dl.vars dd{margin:0}
.scroll{overflow-x:auto}
table.grid{border-collapse:collapse;background:#fff}
table.grid th,table.grid td{border:1px solid #ddd;padding:.35rem;vertical-align:top}
table.grid thead th{background:#ecebe7;white-space:nowrap;font-size:13px}
th.prompt{width:12rem;min-width:9rem;font-weight:400;text-align:left;font-size:12px;
background:#fff;position:sticky;left:0;z-index:1}
th.prompt div{overflow:hidden;display:-webkit-box;-webkit-line-clamp:10;
-webkit-box-orient:vertical}
.card{display:inline-block;margin:0;width:180px;vertical-align:top}
.card+.card{margin-left:.35rem}
.card .frame{height:180px;display:flex;align-items:center;justify-content:center;
background:#f1f0ec;border-radius:3px;overflow:hidden}
.card img{display:block;max-width:180px;max-height:180px}
.card figcaption{display:flex;justify-content:space-between;gap:.25rem;font-size:11px;
color:#555;margin-top:.2rem;white-space:nowrap}
.card figcaption code{font-size:10.5px;overflow:hidden;text-overflow:ellipsis}
.card .reason{box-sizing:border-box;height:180px;overflow:auto;padding:.5rem;
border-radius:3px;font-size:12px;overflow-wrap:anywhere}
.card .reason strong{display:block;text-transform:uppercase;margin-bottom:.25rem}
.failed .reason{background:#fde8e8;color:#8a1c1c;border:1px solid #f5b5b5}
.cancelled .reason,.skipped .reason,.unknown .reason{background:#eee;color:#444;
border:1px solid #ccc}
.noimage{color:#666}
[hidden]{display:none!important}
form.filter{display:flex;flex-wrap:wrap;align-items:center;gap:.35rem 1rem;margin:0 0 1rem;
font-size:13px}
form.filter select{max-width:16rem}form.filter output{color:#666}
table.grid caption{caption-side:top;text-align:left;color:#666;padding:0 0 .35rem}
.card.paired{width:366px}.pair{display:flex;gap:6px}.pair .side{width:180px}
.pair .tag{display:block;font-size:11px;color:#555;margin-bottom:.15rem}
.superseded .frame{opacity:.8}.card p.superseded{font-size:11px;color:#666;margin:.15rem 0 0}
.card .review{display:flex;flex-wrap:wrap;align-items:center;gap:.3rem;margin-top:.2rem;
font-size:11px}
.badge{border-radius:3px;padding:0 .35rem;font-weight:600;border:1px solid #ccc}
.badge.approved{background:#e3f4e1;color:#1d5e1a;border-color:#9fd39a}
.badge.rejected{background:#fde8e8;color:#8a1c1c;border-color:#f5b5b5}
.decide button{font-size:11px;padding:0 .4rem;margin-right:.2rem;cursor:pointer}
.decide button[aria-pressed=true]{font-weight:700}
.chosen-approved .frame{outline:3px solid #3c9a36}
.chosen-rejected .frame{outline:3px solid #c43c3c}
.chosen-approved .decide button[value=approved]{background:#3c9a36;color:#fff}
.chosen-rejected .decide button[value=rejected]{background:#c43c3c;color:#fff}
.review-bar{display:flex;flex-wrap:wrap;align-items:center;gap:.35rem 1rem;margin:0 0 1rem;
font-size:13px}#review-count,.review-bar .hint{color:#666}
"""

# The filter (see the module docstring). Cards carry `data-f`: for each select, in order, the
# index of the card's value among that select's options (after "all"). It never writes
# markup, only `hidden` and the count: values from user data are read as option values.
# No line comments: the page is checked to hold no "//" (no URL of any kind).
FILTER_SCRIPT = """
(function () {
  "use strict";
  var form = document.getElementById("filter");
  if (!form) { return; }
  var selects = Array.prototype.slice.call(form.querySelectorAll("select"));
  var failedOnly = form.querySelector("input[type=checkbox]");
  var cards = Array.prototype.slice.call(document.querySelectorAll("figure.card"));
  var codes = cards.map(function (card) { return (card.getAttribute("data-f") || "").split(" "); });

  function fromFragment() {
    var params = new URLSearchParams(location.hash.slice(1));
    selects.forEach(function (select) {
      var wanted = params.get(select.name), index = 0;
      for (var i = 1; wanted !== null && i < select.options.length; i++) {
        if (select.options[i].value === wanted) { index = i; }
      }
      select.selectedIndex = index;
    });
    failedOnly.checked = params.has(failedOnly.name);
  }

  function toFragment() {
    var params = new URLSearchParams();
    selects.forEach(function (select) {
      if (select.selectedIndex > 0) { params.append(select.name, select.value); }
    });
    if (failedOnly.checked) { params.append(failedOnly.name, ""); }
    var fragment = params.toString();
    try {
      var url = fragment ? "#" + fragment : location.pathname + location.search;
      history.replaceState(null, "", url);
    } catch (error) { /* some browsers refuse it for a page opened from disk: no matter */ }
  }

  function hideEmpty(table, active) {
    var rows = Array.prototype.slice.call(table.tBodies[0].rows);
    var headers = table.tHead.rows[0].cells;
    var used = [], any = false;
    rows.forEach(function (row) {
      var shown = false;
      for (var j = 1; j < row.cells.length; j++) {
        if (row.cells[j].querySelector("figure.card:not([hidden])")) {
          used[j] = shown = any = true;
        }
      }
      row.hidden = active && !shown;
    });
    for (var j = 1; j < headers.length; j++) {
      var hide = active && !used[j];
      headers[j].hidden = hide;
      rows.forEach(function (row) { if (row.cells[j]) { row.cells[j].hidden = hide; } });
    }
    table.closest("section").hidden = active && !any;
  }

  function apply() {
    var wanted = selects.map(function (select) { return String(select.selectedIndex - 1); });
    var active = failedOnly.checked || selects.some(function (s) { return s.selectedIndex > 0; });
    var count = 0;
    cards.forEach(function (card, i) {
      var show = !(failedOnly.checked && card.classList.contains("succeeded")) &&
        wanted.every(function (want, axis) { return want === "-1" || codes[i][axis] === want; });
      card.hidden = !show;
      count += show ? 1 : 0;
    });
    Array.prototype.forEach.call(document.querySelectorAll("table.grid"), function (table) {
      hideEmpty(table, active);
    });
    document.getElementById("shown").textContent = count + " of " + cards.length + " cards";
  }

  form.addEventListener("change", function () { toFragment(); apply(); });
  form.addEventListener("submit", function (event) { event.preventDefault(); });
  window.addEventListener("hashchange", function () { fromFragment(); apply(); });
  form.hidden = false;
  fromFragment();
  apply();
})();
"""


# Review (see the module docstring). Choices live in `chosen` (cell id -> decision and time),
# in localStorage under the page's path; only cells with buttons on this page are kept. It
# never writes markup, only attributes, classes and text; the one URL it makes is the
# download's, a blob: of the decisions it built. The file is outputs.review.EXPORT_FORMAT.
REVIEW_SCRIPT = """
(function () {
  "use strict";
  var bar = document.getElementById("review");
  if (!bar) { return; }
  var key = "nbp-review " + location.pathname;
  var download = document.getElementById("review-download");
  var clear = document.getElementById("review-clear");
  var count = document.getElementById("review-count");
  var controls = Array.prototype.slice.call(document.querySelectorAll("figure.card .decide"));
  var onPage = {};
  controls.forEach(function (control) { onPage[cellOf(control)] = true; });
  var chosen = load();

  function cellOf(element) { return element.closest("figure.card").id.slice(5); }

  function load() {
    var found = {};
    try {
      var stored = JSON.parse(localStorage.getItem(key) || "{}");
      Object.keys(stored).forEach(function (id) {
        var choice = stored[id];
        if (onPage[id] === true && choice && typeof choice.at === "string" &&
            (choice.decision === "approved" || choice.decision === "rejected")) {
          found[id] = {decision: choice.decision, at: choice.at};
        }
      });
    } catch (error) { /* no storage here: choices last as long as the page */ }
    return found;
  }

  function save() {
    try { localStorage.setItem(key, JSON.stringify(chosen)); } catch (error) { /* see load */ }
  }

  function show() {
    controls.forEach(function (control) {
      var choice = chosen[cellOf(control)], card = control.closest("figure.card");
      Array.prototype.forEach.call(control.querySelectorAll("button"), function (button) {
        button.setAttribute("aria-pressed", String(!!choice && choice.decision === button.value));
      });
      card.classList.toggle("chosen-approved", !!choice && choice.decision === "approved");
      card.classList.toggle("chosen-rejected", !!choice && choice.decision === "rejected");
    });
    var ids = Object.keys(chosen), approved = 0;
    ids.forEach(function (id) { approved += chosen[id].decision === "approved" ? 1 : 0; });
    count.textContent = ids.length ? ids.length + " chosen: " + approved + " approved, " +
      (ids.length - approved) + " rejected" : "no choice yet";
    download.disabled = clear.disabled = !ids.length;
  }

  function decisionsFile() {
    var decisions = Object.keys(chosen).sort().map(function (id) {
      return {cell_id: id, decision: chosen[id].decision, at: chosen[id].at};
    });
    var title = document.title.replace(/[\\u0000-\\u001f\\u007f-\\u009f]/g, "").slice(0, 200);
    return JSON.stringify({format: "nbp-review-decisions", version: 1,
      exported_at: new Date().toISOString(), title: title, decisions: decisions}, null, 1);
  }

  function saveFile() {
    var link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([decisionsFile()], {type: "application/json"}));
    link.download = "review-decisions.json";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(function () { URL.revokeObjectURL(link.href); }, 60000);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest(".decide button");
    if (!button) { return; }
    var id = cellOf(button), was = chosen[id];
    if (was && was.decision === button.value) {
      delete chosen[id];
    } else {
      chosen[id] = {decision: button.value, at: new Date().toISOString()};
    }
    save();
    show();
  });
  download.addEventListener("click", saveFile);
  clear.addEventListener("click", function () { chosen = {}; save(); show(); });
  controls.forEach(function (control) { control.hidden = false; });
  bar.hidden = false;
  show();
})();
"""
# The page's one inline script, allowed by its hash.
PAGE_SCRIPT = FILTER_SCRIPT + REVIEW_SCRIPT

# The page runs its own script and style only and loads images from where it lies, nothing
# else (outputs.html says why; compare.html obeys the same policy).
_POLICY = content_security_policy(styles=[_CSS], scripts=[PAGE_SCRIPT])
