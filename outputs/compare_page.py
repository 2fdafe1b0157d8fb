"""`nbp compare`'s page: one offline file of the pairs side by side and the figures by axis.

    write_page(comparison, "compare.html")   # returns its URI; render_page: the same as text

The page is one file with its CSS and one small script inline and no external asset,
bounded (`MAX_PAIRS`) and written a piece at a time: the header (both sides, the counts),
the tables (`outputs.compare_tables`, folded under one line), then the pairs, changed
first, then the rows of one side only, then the same ones; each pair's images side by side
with their facts.

Preference: when the script runs (`PREFERENCE_SCRIPT`), every pair in both sides gets
"A better" / "B better" buttons and a clear one; the choices stay in the browser's
localStorage (per page and pair of sides) and "download ratings" saves them as one JSON file,
`RATINGS_FORMAT` (a Blob download: nothing leaves the machine):

    {"format": "nbp-ratings", "version": 1, "exported_at": ISO, "title": "...",
     "ratings": [], "preferences": [{"a": {"target": "<A as given>", "cell_id": "..."},
                                     "b": {"target": "...", "cell_id": "..."},
                                     "winner": "a" | "b", "at": ISO}]}

Without scripts the page shows everything but the buttons.

The page's content security policy (`outputs.html`, the gallery's) lets it run exactly its
own script and style, by their sha256, computed from the text it embeds, and load nothing
from the network. A manifest is input (a target may come from anyone and point at any URL),
so the page reads no image and shows one only when it sits beside the page: its target's
path joined with the row's `image_path` (`outputs.compare.image_locations`: the path, or a
history copy), relative to the page's folder, on the same disk or in the same bucket, and
inside that folder (no `..`, nothing absolute). The manifest's `output_uri` is never a `src`:
an http(s) URL there could be a tracker. Any other image shows by its facts only, with a
note saying why. The sha256 compared is the manifest's, recorded when the image was verified.
"""

from __future__ import annotations

import html
import json
import os
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import polars as pl

from nbp.outputs.compare import (
    KIND_LABELS,
    KINDS,
    CompareInputError,
    Comparison,
    pairing_notes,
)
from nbp.outputs.compare_tables import OVERALL, AxisTable, Figures, TableRow, percent, value_text
from nbp.outputs.gallery import drawn_size
from nbp.outputs.html import content_security_policy, policy_meta
from nbp.outputs.sink import Sink, file_location
from nbp.outputs.statuses import SETTLED

DEFAULT_PAGE = "compare.html"
# Pairs drawn on the page (up to two images each, ~2 KB of HTML); every pair is counted.
MAX_PAIRS = 1_000
PAIR_PX = 240  # an image is drawn at most this wide and high
# A location shown as text is cut to this: a foreign manifest's value can be any size.
MAX_WHERE_CHARS = 300
RATINGS_FORMAT = "nbp-ratings"  # the downloaded file's `format` (version 1)
RATINGS_FILE = "compare-ratings.json"


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

    def locate(self, side: Sink, row: Mapping[str, Any], prefix: str) -> _Image:
        """Where the image of one side (`side`, its columns in `row` under `prefix`) is,
        and its `src` when it sits beside the page.

        The target as given wins over the manifest's `output_uri`, which is never followed:
        a target folder that was moved or copied still shows its own images, and a URL in
        a foreign manifest is never asked for."""
        rel, output_uri = row[f"{prefix}image_path"], row[f"{prefix}output_uri"]
        if not rel:
            output_path = row[f"{prefix}output_path"]
            note = row[f"{prefix}image_note"]
            if note:
                return _Image(None, output_uri or output_path or "", note)
            return _Image(None, output_uri or "", "the manifest gives it no path in its target")
        try:
            path, where = side.path(rel), side.uri(rel)
        except ValueError:  # `..`, absolute, a URL: shown as text, never followed
            return _Image(None, rel, "its path in the manifest is not a safe one")
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


def _usd(value: float | None) -> str:
    return "–" if value is None else f"${value:.2f}"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} s"


def _page(comparison: Comparison, images: _Images) -> Iterator[str]:
    """The page in pieces of at most one pair each."""
    summary = comparison.summary
    title = f"nbp compare: {comparison.a.source} vs {comparison.b.source}"
    yield _head(title)
    yield _header(comparison, title)
    yield _tables(comparison.tables)
    yield _preference_bar(comparison)
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
    yield f"<script>{PREFERENCE_SCRIPT}</script>\n</body>\n</html>\n"


def _head(title: str) -> str:
    # The policy allows exactly the style and the script this page embeds, by their hashes.
    policy = content_security_policy(styles=[_CSS], scripts=[PREFERENCE_SCRIPT])
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"{policy_meta(policy)}"
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
    if comparison.by:
        matched = f"cells paired on {', '.join(comparison.by)}"
    else:
        matched = ("cells matched by request (prompt, ratio, resolution, format, references, "
                   "seed, replicate, dataset row, variables other than provider and model)")
    notes = [f"generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", matched,
             "same: both succeeded with the same image, or both failed with the same error "
             "code", *pairing_notes(summary)]
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


def _tables(tables: tuple[AxisTable, ...]) -> str:
    """The figures by axis (overall first), as HTML tables: each figure for A, then B.
    Folded under one line, so that the changed pairs come first."""
    if not tables:
        return ""
    figures = ("cells", "$/image", "p50 latency", "p95 latency", "failed")
    names = ", ".join("all cells" if t.axis == OVERALL else t.axis for t in tables)
    parts = [f'<details class="tables" id="tables"><summary>Figures by axis: {_e(names)}'
             "</summary>\n"]
    for table in tables:
        extra = list(table.rows[0].a.extra) if table.rows else []
        name = "all cells" if table.axis == OVERALL else table.axis
        top = "".join(f'<th colspan="2">{_e(f)}</th>' for f in (*figures, *extra))
        sub = '<th class="side">A</th><th class="side">B</th>' * (len(figures) + len(extra))
        body = "".join(_table_row(table, row, extra) for row in table.rows)
        parts.append(
            f'<table class="figures"><caption>{_e(name)}</caption><thead>'
            f'<tr><th rowspan="2">{_e("" if table.axis == OVERALL else table.axis)}</th>{top}'
            f'<th rowspan="2">changed</th></tr><tr>{sub}</tr></thead>'
            f"<tbody>{body}</tbody></table>\n")
    parts.append("</details>\n")
    return "".join(parts)


def _table_row(table: AxisTable, row: TableRow, extra: list[str]) -> str:
    def both(text: Any) -> str:
        return "".join(f"<td>{_e(text(f) if f.cells else '–')}</td>" for f in (row.a, row.b))

    def figure(name: str) -> Any:
        def text(f: Figures) -> str:
            value = f.extra.get(name)
            return "–" if value is None else (f"{value:.2f}" if isinstance(value, float)
                                              else str(value))
        return text

    value = "" if table.axis == OVERALL else value_text(row.value, 80)
    changed = (f"{row.changed} of {row.paired} ({percent(row.share_changed)})"
               if row.paired else "–")
    return (
        f'<tr><th title="{_e(row.value)}">{_e(value)}</th>'
        + both(lambda f: str(f.cells))
        + both(lambda f: f"${f.cost_per_image:.3f}" if f.cost_per_image is not None else "–")
        + both(lambda f: _seconds(f.p50_latency_s))
        + both(lambda f: _seconds(f.p95_latency_s))
        + both(lambda f: percent(f.failure_rate))
        + "".join(both(figure(name)) for name in extra)
        + f"<td>{_e(changed)}</td></tr>"
    )


def _preference_bar(comparison: Comparison) -> str:
    """The preference controls: hidden until the script shows them; the sides as given are
    what the downloaded file names."""
    return (f'<div id="prefer" class="prefer-bar" hidden data-a-target="{_e(comparison.a.source)}"'
            f' data-b-target="{_e(comparison.b.source)}">'
            '<button type="button" id="prefer-download" disabled>download ratings</button>'
            '<span id="prefer-count" role="status">no choice yet</span>'
            '<button type="button" id="prefer-clear" disabled>clear choices</button>'
            "</div>\n")


def _section_head(kind: str, count: int, shown: pl.DataFrame) -> str:
    drawn = shown.filter(pl.col("kind") == kind).height
    more = f" (the first {drawn})" if drawn < count else ""
    return (f'<section class="kind" id="{kind}">\n'
            f"<h2>{_SECTION_TITLES[kind]}: {count}{more}</h2>\n")


def _pair(row: Mapping[str, Any], number: int, comparison: Comparison, images: _Images) -> str:
    differs: list[str] = row["differs"] or []
    a = images.locate(comparison.a.sink, row, "a_")
    b = images.locate(comparison.b.sink, row, "b_")
    notes = ""
    if differs:
        notes += f'<p class="differs">differs: {_e(", ".join(differs))}</p>'
    if a.where and a.where == b.where and row["a_sha256"] != row["b_sha256"]:
        notes += ('<p class="differs">both rows name the same file: it holds one of the two '
                  "images</p>")
    both = row["a_pos"] is not None and row["b_pos"] is not None
    cells = (f' data-a="{_e(row["a_cell_id"])}" data-b="{_e(row["b_cell_id"])}"'
             if both else "")
    prefer = ('<div class="prefer" hidden>'
              '<button type="button" value="a" aria-pressed="false">A better</button>'
              '<button type="button" value="b" aria-pressed="false">B better</button>'
              '<button type="button" value="" class="clear">clear</button></div>'
              if both else "")
    return (
        f'<article class="pair {_e(row["kind"])}" id="pair-{number}"{cells}>'
        f'<div class="request">{_request(row, comparison)}{notes}</div>'
        f'<div class="sides">{_side(row, "a", a, differs)}{_side(row, "b", b, differs)}</div>'
        f"{prefer}</article>\n"
    )


def _request(row: Mapping[str, Any], comparison: Comparison) -> str:
    """The pair's key (with `by`) and what was asked: once, or each side's when the two
    cells asked for different things."""
    out = ""
    if comparison.by:
        key = row["key"] or {}
        out += ('<p class="key">' + " · ".join(
            f"{_e(axis)}=<strong>{_e(value_text(key.get(axis), 80))}</strong>"
            for axis in comparison.by) + "</p>")
        asked = [(label, r) for label, r in (("A", row["a_request"]), ("B", row["b_request"]))
                 if r]
    else:
        asked = [("", row["request"])]
    for css, texts in (("prompt", [(label, r["prompt"]) for label, r in asked]),
                       ("facts", [(label, _facts(r)) for label, r in asked])):
        if len({text for _, text in texts}) == 1:
            texts = [("", texts[0][1])]
        out += "".join(f'<p class="{css}">{_e(f"{label}: " if label else "")}{_e(text)}</p>'
                       for label, text in texts)
    return out


def _facts(request: Mapping[str, Any]) -> str:
    """A request's ratio, size, format, seed, replicate, dataset row, references and
    variables, in one line."""
    facts = [request["aspect_ratio"], request["resolution"], request["output_format"]]
    facts += [f"{label} {request[key]}" for label, key in (
        ("seed", "seed"), ("replicate", "replicate"), ("dataset row", "dataset_row"))
        if request[key] is not None]
    if request["references"]:
        facts.append(f"{len(request['references'])} reference(s)")
    variables = _variables(request["vars"])
    if variables:
        facts.append(", ".join(f"{k}={v}" for k, v in variables.items()))
    return " · ".join(str(f) for f in facts if f is not None)


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
[hidden]{display:none!important}
details.tables{margin:.5rem 0}details.tables summary{cursor:pointer;font-weight:600}
table.figures{border-collapse:collapse;margin:.25rem 0 1rem;font-size:12px;background:#fff}
table.figures caption{text-align:left;font-weight:600;padding:.2rem 0}
table.figures th,table.figures td{border:1px solid #ddd;padding:.15rem .4rem;text-align:right;
white-space:nowrap}
table.figures tbody th{text-align:left;max-width:20rem;overflow:hidden;text-overflow:ellipsis}
table.figures th.side{font-weight:400;color:#666}
.key{font-size:12px;color:#333;overflow-wrap:anywhere}
.prefer-bar{position:sticky;top:0;z-index:1;background:#f6f6f4;padding:.4rem 0;margin:.5rem 0;
display:flex;gap:.6rem;align-items:center;flex-wrap:wrap}
.prefer{display:flex;gap:.4rem;margin-top:.4rem}
.prefer button[aria-pressed=true]{background:#2f6f3f;color:#fff;border-color:#2f6f3f}
.pair.chosen-a .side:first-child,.pair.chosen-b .side:nth-child(2){outline:3px solid #2f6f3f;
outline-offset:2px}
"""


# Preference (see the module docstring). Choices live in `chosen` (pair -> winner and time;
# a pair is the JSON of its two cell ids, whatever characters they hold), in localStorage
# under the page's path and the two sides as given; only pairs with buttons on this page are
# kept. It never writes markup, only attributes, classes and text; the one URL it makes is
# the download's, a blob: of the file it built (RATINGS_FORMAT).
PREFERENCE_SCRIPT = """
(function () {
  "use strict";
  var bar = document.getElementById("prefer");
  var controls = Array.prototype.slice.call(document.querySelectorAll("article.pair .prefer"));
  if (!bar || !controls.length) { return; }  /* no pair in both sides: nothing to prefer */
  var sides = {a: bar.getAttribute("data-a-target"), b: bar.getAttribute("data-b-target")};
  var key = "nbp-compare " + JSON.stringify([location.pathname, sides.a, sides.b]);
  var download = document.getElementById("prefer-download");
  var clear = document.getElementById("prefer-clear");
  var count = document.getElementById("prefer-count");
  var onPage = Object.create(null);
  controls.forEach(function (control) { onPage[pairOf(control)] = true; });
  var chosen = load();

  function pairOf(element) {
    var article = element.closest("article.pair");
    return JSON.stringify([article.getAttribute("data-a"), article.getAttribute("data-b")]);
  }

  function load() {
    var found = Object.create(null);
    try {
      var stored = JSON.parse(localStorage.getItem(key) || "{}");
      Object.keys(stored).forEach(function (pair) {
        var choice = stored[pair];
        if (onPage[pair] === true && choice && typeof choice.at === "string" &&
            (choice.winner === "a" || choice.winner === "b")) {
          found[pair] = {winner: choice.winner, at: choice.at};
        }
      });
    } catch (error) { /* no storage here: choices last as long as the page */ }
    return found;
  }

  function save() {
    try { localStorage.setItem(key, JSON.stringify(chosen)); } catch (error) { /* see load */ }
  }

  function show() {
    var a = 0, b = 0;
    controls.forEach(function (control) {
      var choice = chosen[pairOf(control)], article = control.closest("article.pair");
      var winner = choice ? choice.winner : "";
      Array.prototype.forEach.call(control.querySelectorAll("button"), function (button) {
        if (button.value) {
          button.setAttribute("aria-pressed", String(winner === button.value));
        } else {
          button.disabled = !winner;
        }
      });
      article.classList.toggle("chosen-a", winner === "a");
      article.classList.toggle("chosen-b", winner === "b");
      a += winner === "a" ? 1 : 0;
      b += winner === "b" ? 1 : 0;
    });
    count.textContent = a + b ? (a + b) + " chosen: " + a + " A better, " + b + " B better"
      : "no choice yet";
    download.disabled = clear.disabled = !(a + b);
  }

  function ratingsFile() {
    var preferences = [];
    controls.forEach(function (control) {
      var pair = pairOf(control), choice = chosen[pair], ids = JSON.parse(pair);
      if (choice) {
        preferences.push({a: {target: sides.a, cell_id: ids[0]},
          b: {target: sides.b, cell_id: ids[1]}, winner: choice.winner, at: choice.at});
      }
    });
    var title = document.title.replace(/[\\u0000-\\u001f\\u007f-\\u009f]/g, "").slice(0, 200);
    return JSON.stringify({format: "nbp-ratings", version: 1,
      exported_at: new Date().toISOString(), title: title, ratings: [],
      preferences: preferences}, null, 1);
  }

  function saveFile() {
    var link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([ratingsFile()], {type: "application/json"}));
    link.download = "compare-ratings.json";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(function () { URL.revokeObjectURL(link.href); }, 60000);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest(".prefer button");
    if (!button) { return; }
    var pair = pairOf(button), was = chosen[pair];
    if (!button.value || (was && was.winner === button.value)) {
      delete chosen[pair];
    } else {
      chosen[pair] = {winner: button.value, at: new Date().toISOString()};
    }
    save();
    show();
  });
  download.addEventListener("click", saveFile);
  clear.addEventListener("click", function () { chosen = Object.create(null); save(); show(); });
  controls.forEach(function (control) { control.hidden = false; });
  bar.hidden = false;
  show();
})();
"""
