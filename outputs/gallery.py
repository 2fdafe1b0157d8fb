"""`{target}/index.html`: a contact sheet of a job that works offline, from disk or a bucket.

One file with its CSS inline, no script and no external asset. Each card shows its image
straight from the target by relative path (`<img loading="lazy">` with the width and height
it is drawn at, so the page lays out before any image arrives) and links to it, so the page
works wherever the target folder is opened: from disk, offline, or from a bucket served over
HTTP. Making the page reads no image: a run never decodes an image a second time for its
gallery (thumbnails cost 19 ms of CPU per 1K PNG, more than the rest of a cell), and the
browser only loads the images scrolled into view. Opened without the target's images next
to it, the page still shows every card's facts.

Layout: a summary line on top; one section per dataset row (header: the row's variables),
or a single section for jobs without a dataset; in each section a grid of prompts (rows) by
aspect ratio × resolution (columns). Failed, skipped and cancelled cells are cards with their
status and reason. Every card shows its cell id, cost and latency (caption and tooltip).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import polars as pl

from outputs.manifest import conform
from outputs.sink import Sink
from outputs.status import Summary, summarise

GALLERY_NAME = "index.html"
CARD_PX = 180  # an image is drawn at most this wide and high
# Past this many cells the page shows the first ones only (every cell is in the manifest):
# ~1 KB of HTML per card, so a 1,000,000-cell catalog would otherwise be a 1 GB page, and
# rendering 10,000 cards took 120 MB more memory than the whole run before it (bench/cost.py).
MAX_CARDS = 2_000

Row = Mapping[str, Any]


def write_gallery(sink: Sink, manifest: pl.DataFrame | pl.LazyFrame, *, title: str) -> str:
    """Render the manifest's cells to `{target}/index.html` (atomic); returns its URI.

    `manifest` may be lazy (a scanned Parquet file): only the first `MAX_CARDS` rows and the
    summary's aggregates are read. The page is written a card at a time (`Sink.write_chunks`):
    a 2,000-card page is never joined in memory."""
    pieces = _page(_cards(manifest), summarise(manifest), title=title)
    return sink.write_chunks(GALLERY_NAME, (piece.encode() for piece in pieces), overwrite=True)


def _cards(manifest: pl.DataFrame | pl.LazyFrame) -> list[dict[str, Any]]:
    """The rows the page shows as cards: the first `MAX_CARDS`."""
    return conform(manifest.lazy().head(MAX_CARDS).collect()).to_dicts()


def drawn_size(width: int | None, height: int | None) -> tuple[int, int] | None:
    """The size an image of `width` x `height` is drawn at: within `CARD_PX` square, its
    shape kept (None when the manifest does not know its size)."""
    if not width or not height:
        return None
    scale = min(1.0, CARD_PX / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


# -- HTML --------------------------------------------------------------------------------------


def render_gallery(manifest: pl.DataFrame | pl.LazyFrame, *, title: str) -> str:
    """The page for `manifest`."""
    return "".join(_page(_cards(manifest), summarise(manifest), title=title))


def _page(rows: list[dict[str, Any]], summary: Summary, *, title: str) -> Iterator[str]:
    """The page in pieces of at most one card each."""
    columns = _unique((row["aspect_ratio"], row["resolution"]) for row in rows)
    yield _head(title)
    yield _summary(summary, title)
    for key, section in _sections(rows).items():
        yield from _section(key, section, columns)
    yield "</body>\n</html>\n"


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _unique(items: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def _sections(rows: list[dict[str, Any]]) -> dict[int | None, list[dict[str, Any]]]:
    """Rows grouped by dataset row: cells without one first, then rows in dataset order."""
    sections: dict[int | None, list[dict[str, Any]]] = {}
    for row in rows:
        sections.setdefault(row["dataset_row"], []).append(row)
    return dict(sorted(sections.items(), key=lambda kv: (kv[0] is not None, kv[0] or 0)))


def _head(title: str) -> str:
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
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
    return (
        f"<header>\n<h1>{_e(title)}</h1>\n"
        f'<p class="summary">{_e(" · ".join(counts))}</p>\n'
        f'<p class="meta">{_e(meta)}</p>\n</header>\n'
    )


def _section(
    key: int | None,
    rows: list[dict[str, Any]],
    columns: list[tuple[str, str]],
) -> Iterator[str]:
    out = ['<section class="rows">\n']
    if key is not None:
        out.append(f'<h2 id="row-{key}">Dataset row {key}</h2>\n')
        shared = _shared_vars(rows)
        if shared:
            items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in shared.items())
            out.append(f'<dl class="vars">{items}</dl>\n')
    out.append('<div class="scroll">\n<table class="grid">\n<thead><tr><th>prompt</th>')
    out += [f"<th>{_e(ratio)} · {_e(res)}</th>" for ratio, res in columns]
    out.append("</tr></thead>\n<tbody>\n")
    yield "".join(out)
    grid: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        grid.setdefault((row["prompt"], row["aspect_ratio"], row["resolution"]), []).append(row)
    for prompt in _unique(row["prompt"] for row in rows):
        yield f'<tr><th class="prompt" title="{_e(prompt)}"><div>{_e(prompt)}</div></th>'
        for col in columns:
            yield "<td>"
            for card in grid.get((prompt, *col), []):
                yield _card(card)
            yield "</td>"
        yield "</tr>\n"
    yield "</tbody>\n</table>\n</div>\n</section>\n"


def _shared_vars(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Variables with one value across the section: the dataset row's columns (and fixed axes)."""
    decoded = [_vars(row) for row in rows]
    first = decoded[0]
    return {k: v for k, v in first.items() if all(d.get(k, object()) == v for d in decoded[1:])}


def _vars(row: Row) -> dict[str, Any]:
    try:
        value = json.loads(row["vars"] or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _card(row: Row) -> str:
    status = row["status"] or "unknown"
    facts = _facts(row)
    tooltip = "\n".join([f"cell {row['cell_id']}", *facts])
    caption = (
        f'<figcaption><code>{_e(row["cell_id"][:12])}</code>'
        f'<span>{_e(" · ".join(facts[:2]))}</span></figcaption>'
    )
    href = quote(row["output_path"]) if row["output_path"] else None
    if status == "succeeded":
        if href:
            size = drawn_size(row["width"], row["height"])
            dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
            # Not decoding="async": headless Chromium's screenshots (and printing) then
            # often miss images that have loaded (tests/outputs/test_gallery_browser.py).
            body = (f'<a href="{_e(href)}"><div class="frame"><img src="{_e(href)}"{dims} '
                    f'alt="{_e(row["prompt"])}" loading="lazy"></div></a>')
        else:
            body = '<div class="frame"><span class="noimage">no image</span></div>'
    else:
        reason = ": ".join(str(x) for x in (row["error_code"], row["error_message"]) if x)
        body = (
            f'<div class="reason"><strong>{_e(status)}</strong>'
            f"<span>{_e(reason or 'no reason recorded')}</span></div>"
        )
    css = _e(status if status in ("succeeded", "failed", "skipped", "cancelled") else "unknown")
    return (
        f'<figure class="card {css}" id="cell-{_e(row["cell_id"])}" title="{_e(tooltip)}">'
        f"{body}{caption}</figure>"
    )


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
                       ("attempts", "attempts"), ("task", "remote_task_id")):
        if row[key] is not None:
            facts.append(f"{label} {row[key]}")
    return facts


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.25rem;color:#222;background:#f6f6f4}
h1{margin:0 0 .25rem;font-size:1.4rem}h2{font-size:1.1rem;margin:1.75rem 0 .25rem}
.summary{font-weight:600;margin:.25rem 0}.meta{color:#666;margin:0 0 1rem}
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
"""
