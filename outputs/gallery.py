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
grid position (replicates, axes on neither side) stack inside it, and each of their captions
says what tells it apart: the axes whose values differ among them (`differing`: template,
template variables, provider, model, account, ratio, resolution, replicate; the prompt when
prompts differ in their template and no template name says so), e.g. `model=gemini-3-pro-image
· replicate=1`. An axis name is a manifest column (`AXIS_COLUMNS`: template where the
manifest has it, aspect_ratio, resolution, replicate, provider, model, account, status,
prompt, and run for run_id), else an entry of the cell's template variables (matrix axes and
dataset columns). Failed, skipped and cancelled cells are cards with their status and
reason. Every card shows its cell id, cost and latency (caption and tooltip).

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

Ratings: beside approve / reject, the same cards get pass / fail and 1-5 stars
(`RATING_SCRIPT`): the experiment's judgement, never a review decision (nothing is published
or made again for it). They are kept in localStorage by the target's folder (every page of
one target shares them: a redraw in another pivot shows them) and cell id, and "download
ratings" saves them as one `outputs.review.RATINGS_FORMAT` file for `nbp review TARGET
--import FILE` (the compare page saves preferences in the same format).

Lightbox: a click on a card's image opens it over the page (`LIGHTBOX_SCRIPT`), with every
axis value of the card (`data-axes`, from `lightbox_facts`), cost, latency, status, prompt,
decision and rating; the arrow keys move through the images the filter shows, in page order,
Escape closes, and keys press the card's own buttons (p / f, 1-5, a / r). Without scripts the
image is a link to itself, as before.

Redraw: `nbp gallery TARGET` draws the page again from the manifest, in another pivot if
asked (`axes_of`, `check_pivot`), into the target or into a page above it (`page_place`: the
images stay relative paths, `base`).

The page's one script is `PAGE_SCRIPT` (the filter's, the review's, the ratings' and the
lightbox's: `outputs.gallery_assets`), allowed by its hash.
"""

from __future__ import annotations

import difflib
import html
import json
import os
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import polars as pl

from nbp.outputs.gallery_assets import CSS, PAGE_SCRIPT
from nbp.outputs.gallery_assets import FILTER_SCRIPT as FILTER_SCRIPT
from nbp.outputs.gallery_assets import LIGHTBOX_SCRIPT as LIGHTBOX_SCRIPT
from nbp.outputs.gallery_assets import RATING_SCRIPT as RATING_SCRIPT
from nbp.outputs.gallery_assets import REVIEW_SCRIPT as REVIEW_SCRIPT
from nbp.outputs.html import content_security_policy, policy_meta
from nbp.outputs.layout import HISTORY_DIR
from nbp.outputs.manifest import conform, conform_lazy
from nbp.outputs.sink import Sink, file_location
from nbp.outputs.status import Summary, summarise
from nbp.outputs.statuses import SETTLED

GALLERY_NAME = "index.html"
CARD_PX = 180  # an image is drawn at most this wide and high
# Past this many cells the page shows the first ones only (every cell is in the manifest):
# ~1.1 KB of HTML per card, so a 1,000,000-cell catalog would otherwise be a 1 GB page, and
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
    "template": "template",
    "prompt": "prompt", "aspect_ratio": "aspect_ratio", "resolution": "resolution",
    "provider": "provider", "model": "model", "account": "account", "replicate": "replicate",
    "run": "run_id", "status": "status",
}  # fmt: skip
# Columns a newer manifest has that the cards read when they are there (`template`: the
# prompt template's name, written by named prompts).
OPTIONAL_COLUMNS = ("template",)
# The axes a card's caption may name (where they differ among the cards of its slot), after
# `template` and the template variables; and those the lightbox lists (all of them).
CAPTION_AXES = ("provider", "model", "account", "aspect_ratio", "resolution", "replicate")
LIGHTBOX_AXES = (*CAPTION_AXES, "run")
MAX_CAPTION_VALUE = 40  # characters of a value a caption shows (all of it in its tooltip)
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
    name: str = GALLERY_NAME, base: str = "",
) -> str:
    """Render the manifest's cells to `{target}/index.html` (atomic); returns its URI.

    `rows` and `columns` pivot the grid (`output.gallery`); neither: the default layout.
    `manifest` may be lazy (a scanned Parquet file): only the first `MAX_CARDS` rows and the
    summary's aggregates are read. The page is written a card at a time (`Sink.write_chunks`):
    a 2,000-card page is never joined in memory. `name` and `base`: the page is `name` in
    `sink`, and the target's files are at `base` + their path from it (`page_place`)."""
    cards = _cards(manifest)
    pieces = _page(cards, summarise(manifest), title=title, layout=Layout.of(rows, columns),
                   befores=_befores(manifest, cards), base=base)
    return sink.write_chunks(name, (piece.encode() for piece in pieces), overwrite=True)


def _cards(manifest: pl.DataFrame | pl.LazyFrame) -> list[dict[str, Any]]:
    """The rows the page shows as cards: the first `MAX_CARDS` (with `OPTIONAL_COLUMNS`
    where the manifest has them, even when the manifest's schema does not name them)."""
    head = manifest.lazy().head(MAX_CARDS).collect()
    rows = conform(head)
    extra = [c for c in OPTIONAL_COLUMNS if c in head.columns and c not in rows.columns]
    if extra:
        rows = rows.with_columns(head.select(pl.col(extra).cast(pl.String)))
    return rows.to_dicts()


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
        value = self.row.get(column) if column else None
        return _text(self.vars.get(axis) if value is None else value)

    def key(self, axes: Sequence[str]) -> tuple[str, ...]:
        return tuple(self.value(axis) for axis in axes)

    def variables(self) -> list[str]:
        """Its template variables' names but `prompt` (the template's text), in order."""
        return [name for name in self.vars if name != "prompt"]

    def caption_value(self, axis: str) -> str:
        """`value`, but for `prompt` the prompt itself (`differing` names it for its
        template)."""
        return _text(self.row["prompt"]) if axis == "prompt" else self.value(axis)

    def template_text(self) -> str:
        """The prompt as written before templating (the whole prompt when `vars` lacks it)."""
        return _text(self.vars.get("prompt", self.row["prompt"]))


def differing(cards: Sequence[_Card]) -> list[str]:
    """The axes whose values differ among `cards` (the cards stacked in one slot), in caption
    order: `template`, the template variables, `CAPTION_AXES`; then `prompt` when the prompts
    differ in their template and no template name says so (written as a list, or a manifest
    whose `vars` lack it, when nothing else differs)."""
    names = _unique(["template", *(n for card in cards for n in card.variables()),
                     *CAPTION_AXES])
    found = [name for name in names if len({card.value(name) for card in cards}) > 1]
    described = all("prompt" in card.vars for card in cards)
    if "template" not in found and (described or not found) and len(
        {card.template_text() for card in cards}
    ) > 1:
        found.append("prompt")
    return found


def lightbox_facts(card: _Card) -> list[tuple[str, str]]:
    """What the lightbox lists for a card: its status, cost, latency and size, then each
    axis it has a value of (`template`, the template variables, `LIGHTBOX_AXES`)."""
    row = card.row
    facts = _facts(row)
    found = [("status", _text(row["status"])), ("cost", facts[0]), ("latency", facts[1])]
    if row["width"] and row["height"]:
        found.append(("size", f"{row['width']}×{row['height']}"))
    for axis in _unique(["template", *card.variables(), *LIGHTBOX_AXES]):
        value = card.value(axis)
        if value:
            found.append((axis, value))
    return found


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
    rows: Sequence[str] | None = None, columns: Sequence[str] | None = None, base: str = "",
) -> str:
    """The page for `manifest` (`write_gallery`'s, as one string)."""
    cards = _cards(manifest)
    return "".join(_page(cards, summarise(manifest), title=title, base=base,
                         layout=Layout.of(rows, columns), befores=_befores(manifest, cards)))


def _page(
    rows: list[dict[str, Any]], summary: Summary, *, title: str, layout: Layout,
    befores: Mapping[str, Row] | None = None, base: str = "",
) -> Iterator[str]:
    """The page in pieces of at most one card each. `befores`: new cell id -> the row it
    superseded (`_befores`); `base`: the path from the page to the target ("" or ending in
    "/")."""
    cards = [_Card(row, (befores or {}).get(row["cell_id"])) for row in rows]
    filters = _filters(cards, layout)
    columns = _unique(card.key(layout.columns) for card in cards)
    yield _head(title)
    yield _summary(summary, title)
    yield _form(filters)
    if any(_reviewable(card.row) for card in cards):
        yield _review_bar()
        yield _ratings_bar(base)
    for key, section in _sections(cards, layout).items():
        yield from _section(key, section, columns, layout, filters, base)
    if any(card.row["status"] == "succeeded" for card in cards):
        yield LIGHTBOX
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
        f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
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


def _label(value: str, limit: int = 60, empty: str = "(none)") -> str:
    if not value:
        return empty
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
    base: str = "",
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
            stacked = grid.get((row_key, col), [])
            differs = differing(stacked) if len(stacked) > 1 else []
            for card in stacked:
                yield _card(card, _code(card, filters), differs, base)
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


def _card(card: _Card, code: str = "", differs: Sequence[str] = (), base: str = "") -> str:
    row, before = card.row, card.before
    status = row["status"] or "unknown"
    facts = _facts(row)
    tooltip = "\n".join([f"cell {row['cell_id']}", *facts])
    caption = (
        f'<figcaption><code>{_e(row["cell_id"][:12])}</code>'
        f'<span>{_e(" · ".join(facts[:2]))}</span></figcaption>'
    )
    if differs:  # what tells it apart from the cards stacked with it
        caption += _differs(card, differs)
    superseded = status == "succeeded" and bool(row["superseded_by"])
    if superseded:  # its path holds the new cell's image now: show the history copy
        path = history_image(row)
        body = _image(path, row, f"image not kept (superseded by {row['superseded_by']})",
                      base)
        body += (f'<p class="superseded">superseded by '
                 f'<code>{_e(row["superseded_by"][:12])}</code></p>')
    elif status == "succeeded":
        body = _image(row["output_path"], row, "no image", base)
        if before is not None:
            old = _image(history_image(before), before, "before: image not kept", base,
                         large=False)
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
    if status == "succeeded":  # for the lightbox; single quotes: JSON's are left as they are
        facts_json = json.dumps(lightbox_facts(card), ensure_ascii=False, separators=(",", ":"))
        data += f" data-axes='{_attribute(facts_json)}'"
    return (
        f'<figure class="card {css}" id="cell-{_e(row["cell_id"])}" title="{_e(tooltip)}"'
        f"{data}>{body}{caption}{_review(row)}{_rating(row)}</figure>"
    )


def _differs(card: _Card, axes: Sequence[str]) -> str:
    """The caption's line of the values that tell the card apart (whole in its tooltip)."""
    shown = [(axis, card.caption_value(axis)) for axis in axes]
    whole = " · ".join(f"{axis}={value}" for axis, value in shown)
    short = " · ".join(f"{axis}={_label(value, MAX_CAPTION_VALUE, '–')}" for axis, value in shown)
    clipped = any(len(value) > MAX_CAPTION_VALUE for _, value in shown)
    title = f' title="{_e(whole)}"' if clipped else ""
    return f'<div class="differs"{title}>{_e(short)}</div>'


def _attribute(text: str) -> str:
    """`text` for an attribute between single quotes."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&#39;"))


def _image(path: str | None, row: Row, missing: str, base: str = "", *,
           large: bool = True) -> str:
    """An image of the target by relative path, linked to itself, at its drawn size; a
    `large` one opens in the lightbox."""
    if not path:
        return f'<div class="frame"><span class="noimage">{_e(missing)}</span></div>'
    href = _e(quote(base + path))
    size = drawn_size(row["width"], row["height"])
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    link = ' class="image"' if large else ""
    # Not decoding="async": headless Chromium's screenshots (and printing) then
    # often miss images that have loaded (tests/outputs/test_gallery_browser.py).
    return (f'<a{link} href="{href}"><div class="frame"><img src="{href}"{dims} '
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


def _rating(row: Row) -> str:
    """The place of the card's pass / fail and star buttons, on the cards the review store
    takes ratings for (`outputs.review.unreviewable`): the script makes the buttons and
    shows them (600 bytes a card less to load, and nothing without a script)."""
    return '<div class="rate" hidden></div>' if _reviewable(row) else ""


def _ratings_bar(base: str) -> str:
    """The page's ratings controls: hidden until the script shows them. `data-target`: the
    path from the page to its target's folder, which keys the ratings kept in the browser."""
    return (f'<div id="ratings" class="review-bar" data-target="{_e(quote(base))}" hidden>'
            '<button type="button" id="ratings-download" disabled>download ratings</button>'
            '<span id="ratings-count" role="status">no rating yet</span>'
            '<button type="button" id="ratings-clear" disabled>clear ratings</button>'
            '<span class="hint">pass / fail and stars, kept in this browser for this '
            "target; then <code>nbp review TARGET --import FILE</code></span></div>\n")


# The lightbox (LIGHTBOX_SCRIPT fills and shows it; its image is made by the script).
LIGHTBOX = (
    '<div id="lightbox" class="lightbox" role="dialog" aria-modal="true" '
    'aria-label="the image, large" hidden>\n<div class="lb-frame"></div>\n<div class="lb-side">'
    '<p class="lb-head"></p><p class="lb-judged"></p><dl class="lb-facts"></dl>'
    '<p class="lb-prompt"></p><div class="lb-buttons">'
    '<button type="button" class="lb-prev">← previous</button>'
    '<button type="button" class="lb-next">next →</button>'
    '<button type="button" class="lb-close">close</button></div>'
    '<p class="lb-keys">← → previous / next · Esc close · p pass · f fail · 1–5 stars · '
    "a approve · r reject</p></div>\n</div>\n"
)


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


# The page runs its own script and style only and loads images from where it lies, nothing
# else (outputs.html says why; compare.html obeys the same policy).
_POLICY = content_security_policy(styles=[CSS], scripts=[PAGE_SCRIPT])


# -- redrawing: `nbp gallery` ---------------------------------------------------------------


class GalleryInputError(ValueError):
    """A pivot or a place for the page that cannot be drawn; the message says why."""


def axes_of(manifest: pl.DataFrame | pl.LazyFrame) -> list[str]:
    """Every axis a pivot of `manifest` may name: its template variables (matrix axes,
    include keys, dataset columns; first seen first) but `prompt`, then `AXIS_COLUMNS`
    (`template` only when the manifest has template names)."""
    frame = manifest.lazy()
    texts = frame.select(pl.col("vars").drop_nulls().unique(maintain_order=True)).collect()
    names: dict[str, None] = {}
    for text in texts["vars"]:
        names.update(dict.fromkeys(_vars({"vars": text})))
    names.pop("prompt", None)
    if "template" in frame.collect_schema().names():
        named = frame.select(pl.col("template").is_not_null().any()).collect().item()
        if named:
            names["template"] = None
    return _unique([*names, *(a for a in AXIS_COLUMNS if a != "template" or a in names)])


def check_pivot(rows: Sequence[str] | None, columns: Sequence[str] | None,
                axes: Sequence[str]) -> None:
    """`GalleryInputError` (one line) when `rows` or `columns` name an axis not in `axes`
    (`axes_of`), or one axis on both sides."""
    problems = []
    for flag, names in (("--rows", rows or ()), ("--columns", columns or ())):
        for name in names:
            if name not in axes:
                close = difflib.get_close_matches(name, axes, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"{flag}: {name!r} is not an axis of this target{hint}")
    both = [name for name in rows or () if name in (columns or ())]
    problems += [f"{name!r} is in --rows and --columns; an axis makes rows or columns, not "
                 "both" for name in both]
    if problems:
        raise GalleryInputError(f"{'; '.join(problems)}; axes: {', '.join(axes)}")


def page_place(target: Sink, out: str | None,
               manifest: pl.DataFrame | None = None) -> tuple[Sink, str, str]:
    """Where a redrawn page goes: (its folder, its file name, the path from it to the
    target: "" or ending in "/"). None: the target's `index.html`. Else `out`, a path or
    fsspec URL of an `.html` file (a folder gets `index.html`) in the target's folder or in
    a folder that holds it, on the same filesystem (and bucket): the page shows the target's
    images by relative path, and climbs out of no folder. In the target's folder it may not
    be one of the manifest's images. `GalleryInputError` saying why otherwise."""
    if out is None:
        return target, GALLERY_NAME, ""
    try:
        page, name = file_location(out, GALLERY_NAME)
    except (ImportError, ValueError) as exc:
        raise GalleryInputError(f"--out {out}: not a place for the page: {exc}") from exc
    if not name.lower().endswith((".html", ".htm")):
        raise GalleryInputError(f"--out {out}: the page is an .html file")
    base = _path_to(target, page)
    if base is None:
        raise GalleryInputError(
            f"--out {out}: the page shows the target's images by relative path: write it in "
            f"the target's folder ({target.target}) or a folder that holds it")
    if not base and manifest is not None and manifest["output_path"].is_in([name]).any():
        raise GalleryInputError(f"--out {out}: that is an image of the target")
    return page, name, base


def _path_to(target: Sink, page: Sink) -> str | None:
    """The relative path from the folder `page` to the folder `target` ("" or ending in
    "/"), or None when the target is not in it (another filesystem or bucket, or outside)."""
    if type(target.fs) is not type(page.fs):
        return None
    if page.local:
        relative = os.path.relpath(target.root, page.root).replace(os.sep, "/")
    elif target.root.split("/", 1)[0] != page.root.split("/", 1)[0]:
        return None
    else:
        relative = posixpath.relpath(target.root, page.root)
    if relative == ".":
        return ""
    if relative.startswith("/") or ".." in relative.split("/"):
        return None
    return relative + "/"


def title_of(manifest: pl.DataFrame | pl.LazyFrame, fallback: str) -> str:
    """A redrawn page's title: the job's name (as a run titles it), the jobs' names joined
    when the target holds several, else `fallback`."""
    jobs = manifest.lazy().select(pl.col("job").drop_nulls().unique(maintain_order=True))
    return ", ".join(jobs.collect()["job"].to_list()) or fallback
