"""The gallery: one offline page with every cell, its image, failures and escaped text."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from PIL import Image

from nbp.outputs.gallery import (
    CARD_PX,
    GALLERY_NAME,
    PAGE_SCRIPT,
    Layout,
    drawn_size,
    render_gallery,
    write_gallery,
)
from nbp.outputs.manifest import rows_to_frame
from nbp.outputs.sink import Sink

HOSTILE = '<script>alert("x")</script> & "quotes"'


def image_bytes(size: tuple[int, int], fmt: str = "PNG", mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (200, 30, 30, 128) if mode == "RGBA" else (200, 30, 30)).save(out, fmt)
    return out.getvalue()


def cell(cell_id: str, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "cell_id": cell_id, "job": "spring", "run_id": "r1", "provider": "kie",
        "prompt": "Studio photo of a shoe", "aspect_ratio": "1:1", "resolution": "1K",
        "status": "succeeded", "cost_usd": 0.09, "latency_s": 12.5,
        "output_path": f"img/{cell_id}.png",
    }  # fmt: skip
    return {**base, **values}


class Page(HTMLParser):
    """What a browser would load: every src/href, the text of each card, and the scripts
    (which must be inline: a script with any attribute, or an on* attribute, raises)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []
        self.cards: dict[str, str] = {}
        self.titles: dict[str, str] = {}
        self.data: dict[str, str] = {}  # card -> its data-f
        self.scripts: list[str] = []
        self._card: str | None = None
        self._script: int | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.urls += [(k, a[k]) for k in ("src", "href") if k in a]
        if tag == "figure":
            self._card = a["id"].removeprefix("cell-")
            self.cards[self._card] = ""
            if "title" in a:  # only when a value is shortened
                self.titles[self._card] = a["title"]
            self.data[self._card] = a.get("data-f", "")
        if (tag == "script" and a) or any(k.startswith("on") for k in a):
            raise AssertionError(f"script in page: {tag} {a}")
        if tag == "script":
            self._script = len(self.scripts)
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._card = None
        elif tag == "script":
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._card:
            self.cards[self._card] += data
        if self._script is not None:
            self.scripts[self._script] += data


@pytest.fixture
def job(tmp_path: Path) -> tuple[Sink, pl.DataFrame]:
    """A small job: 2 prompts x 2 ratios x 2 resolutions, a failure, a cancel, a dataset row."""
    sink = Sink(str(tmp_path / "target"))
    rows: list[dict[str, Any]] = []
    for p, prompt in enumerate(["Red shoe", "Blue shoe"]):
        for ratio, size in (("1:1", (64, 64)), ("16:9", (160, 90))):
            for res in ("1K", "2K"):
                cid = f"c{p}-{ratio.replace(':', 'x')}-{res}"
                sink.write_bytes(f"img/{cid}.png", image_bytes(size), overwrite=False)
                sha = f"{len(rows):064x}"
                rows.append(cell(cid, prompt=prompt, aspect_ratio=ratio, resolution=res,
                                 sha256=sha, width=size[0], height=size[1]))  # fmt: skip
    rows.append(cell("fail-1", status="failed", error_code="TaskFailed", error_message=HOSTILE,
                     cost_usd=None, output_path=None))  # fmt: skip
    rows.append(cell("cancel-1", status="cancelled", cost_usd=None))
    sink.write_bytes("img/row-7.jpg", image_bytes((600, 300), "JPEG"), overwrite=False)
    rows.append(cell("row-7", dataset_row=7, prompt=HOSTILE, output_path="img/row-7.jpg",
                     vars={"sku": "SKU <7>", "title": "Boot"}))  # fmt: skip
    rows.append(cell("row-7b", dataset_row=7, status="failed", error_message="boom",
                     vars={"sku": "SKU <7>", "style": "watercolor"}))  # fmt: skip
    return sink, rows_to_frame(rows)


def test_every_cell_has_a_card(job: tuple[Sink, pl.DataFrame], tmp_path: Path) -> None:
    sink, frame = job
    uri = write_gallery(sink, frame, title="Spring <catalog>")
    assert uri == str(tmp_path / "target" / GALLERY_NAME)
    page = Page(Path(uri).read_text("utf-8"))
    assert sorted(page.cards) == sorted(frame["cell_id"].to_list())
    for cid, title in page.titles.items():
        assert f"cell {cid}" in title  # tooltip: cell id, cost, latency
    assert "$0.090" in page.titles["c0-1x1-1K"] and "12.5 s" in page.titles["c0-1x1-1K"]
    assert "c0-1x1-1K" in page.cards["c0-1x1-1K"] and "$0.090" in page.cards["c0-1x1-1K"]


def test_page_needs_nothing_outside_the_target(job: tuple[Sink, pl.DataFrame]) -> None:
    sink, frame = job
    text = Path(write_gallery(sink, frame, title="t")).read_text("utf-8")
    page = Page(text)
    srcs = [v for k, v in page.urls if k == "src"]
    hrefs = [v for k, v in page.urls if k == "href"]
    assert not re.search(r"(https?:|file:)?//|url\(|@import", text)  # nothing from outside
    root = Path(sink.root)
    assert len(srcs) == 9 and all((root / src).is_file() for src in srcs)  # relative paths
    assert sorted(hrefs) == sorted(srcs)  # each image links to itself


def test_images_load_lazily_at_the_size_they_are_drawn(job: tuple[Sink, pl.DataFrame]) -> None:
    sink, frame = job
    text = Path(write_gallery(sink, frame, title="t")).read_text("utf-8")
    tags = re.findall(r"<img [^>]+>", text)
    assert len(tags) == 9 and all('loading="lazy"' in tag for tag in tags)
    assert 'src="img/c0-16x9-1K.png" width="160" height="90"' in text  # small: as it is
    unknown_size = next(tag for tag in tags if 'src="img/row-7.jpg"' in tag)
    assert "width=" not in unknown_size  # the manifest has no size: CSS bounds it alone
    assert drawn_size(1376, 768) == (CARD_PX, 100)
    assert drawn_size(768, 1376) == (100, CARD_PX)
    assert drawn_size(None, 768) is None


def test_text_is_escaped(job: tuple[Sink, pl.DataFrame]) -> None:
    sink, frame = job
    text = Path(write_gallery(sink, frame, title=HOSTILE)).read_text("utf-8")
    data = text.replace(f"<script>{PAGE_SCRIPT}</script>", "", 1)
    assert "<script>" not in data and "&lt;script&gt;" in text
    assert "SKU &lt;7&gt;" in text
    # raises on a script with attributes or an on* attribute; the one script is the filter's
    assert Page(text).scripts == [PAGE_SCRIPT]


def test_failures_show_status_and_reason(job: tuple[Sink, pl.DataFrame]) -> None:
    sink, frame = job
    text = Path(write_gallery(sink, frame, title="t")).read_text("utf-8")
    page = Page(text)
    assert "failed" in page.cards["fail-1"] and "TaskFailed" in page.cards["fail-1"]
    assert 'alert("x")' in page.cards["fail-1"]  # the reason, shown as text
    assert "cancelled" in page.cards["cancel-1"]
    assert 'class="card failed"' in text and 'class="card cancelled"' in text


def test_grid_summary_and_dataset_sections(job: tuple[Sink, pl.DataFrame]) -> None:
    sink, frame = job
    text = Path(write_gallery(sink, frame, title="t")).read_text("utf-8")
    assert "12 cells · 9 succeeded · 2 failed · 1 cancelled · spend $0.90" in text
    for header in ("1:1 · 1K", "1:1 · 2K", "16:9 · 1K", "16:9 · 2K"):
        assert f"<th>{header}</th>" in text
    # no-dataset section: 2 prompts + the failures' prompt; row 7: the hostile and default one
    assert text.count('<th class="prompt"') == 5
    section = text[text.index('id="row-7"') :]
    assert "<dt>sku</dt><dd>SKU &lt;7&gt;</dd>" in section  # shared by the row's cells
    assert "<dt>title</dt>" not in section  # differs between the row's cells
    assert "row-7" in section and "c0-1x1-1K" not in section


def test_a_scanned_manifest_draws_the_same_page(
    job: tuple[Sink, pl.DataFrame], tmp_path: Path
) -> None:
    """A run draws the gallery from the manifest file it wrote, reading only the cards."""
    sink, frame = job
    frame.write_parquet(tmp_path / "m.parquet")
    eager = Path(write_gallery(sink, frame, title="t")).read_text("utf-8")
    lazy = Path(write_gallery(sink, pl.scan_parquet(tmp_path / "m.parquet"), title="t")
                ).read_text("utf-8")
    generated = re.compile(r"generated [0-9-]+ [0-9:]+ UTC")
    assert generated.sub("", lazy) == generated.sub("", eager)


def test_the_gallery_reads_no_image(job: tuple[Sink, pl.DataFrame],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A run never decodes an image a second time for its contact sheet."""
    sink, frame = job

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the gallery read a file")

    monkeypatch.setattr(Sink, "read_bytes", refuse)
    monkeypatch.setattr(Sink, "read_bytes_many", refuse)
    assert Path(write_gallery(sink, frame, title="t")).is_file()


def test_a_succeeded_cell_without_a_path_says_so(tmp_path: Path) -> None:
    frame = rows_to_frame([cell("lost", output_path=None)])
    page = Page(Path(write_gallery(Sink(str(tmp_path)), frame, title="t")).read_text("utf-8"))
    assert "no image" in page.cards["lost"]


def test_card_count_is_bounded_and_the_page_says_so(
    job: tuple[Sink, pl.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At catalog scale the page shows the first cells only; the manifest has them all."""
    import nbp.outputs.gallery

    sink, frame = job
    monkeypatch.setattr(nbp.outputs.gallery, "MAX_CARDS", 3)
    page = Page(Path(write_gallery(sink, frame, title="big")).read_text("utf-8"))
    assert sorted(page.cards) == sorted(frame["cell_id"].head(3).to_list())
    assert f"the first 3 of {frame.height} cells" in Path(sink.uri("index.html")).read_text()


# -- pivots and the filter -----------------------------------------------------------------

XSS = '<img src=x onerror=alert(1)> "q"'


class Grid(HTMLParser):
    """Each grid of the page: its column headers and, per row, its header and the card ids
    in each column, in page order."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: list[dict[str, Any]] = []
        self._cell: list[str] | None = None
        self._header: str | None = None  # text of the header cell being read
        self.feed(text)

    @property
    def table(self) -> dict[str, Any]:
        [table] = self.tables
        return table

    def positions(self) -> dict[tuple[str, str], list[str]]:
        """(row header, column header) -> card ids stacked there (non-empty positions)."""
        found = {}
        for header, cells in self.table["rows"]:
            for column, ids in zip(self.table["columns"], cells, strict=True):
                if ids:
                    found[header, column] = ids
        return found

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "table":
            self.tables.append({"corner": None, "columns": [], "rows": []})
        elif tag == "th":
            self._header = ""
        elif tag == "tr" and self.tables and self.tables[-1]["corner"] is not None:
            self.tables[-1]["rows"].append(["", []])
        elif tag == "td":
            self._cell = []
            self.tables[-1]["rows"][-1][1].append(self._cell)
        elif tag == "figure" and self._cell is not None:
            self._cell.append(a["id"].removeprefix("cell-"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "th" and self._header is not None:
            table = self.tables[-1]
            if table["corner"] is None:
                table["corner"] = self._header
            elif table["rows"]:
                table["rows"][-1][0] = self._header
            else:
                table["columns"].append(self._header)
            self._header = None
        elif tag == "td":
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._header is not None:
            self._header += data


@pytest.fixture
def styles(tmp_path: Path) -> tuple[Sink, pl.DataFrame]:
    """style x lighting x 2 replicates on kie, a cell that fell back to runware, a failure
    no provider served, and a cancel. `provider` is also a template variable (as when it is a
    matrix axis): the channel the spec asked for first."""
    rows = []
    for style in ("photo", "watercolor"):
        for light in ("soft", "hard"):
            for rep in (0, 1):
                rows.append(cell(f"{style}-{light}-{rep}", replicate=rep, run_id="r2",
                                 prompt=f"A {style} fox, {light} light",
                                 vars={"style": style, "lighting": light, "provider": "kie"}))
    rows.append(cell("rw", provider="runware", prompt="A photo fox, soft light",
                     vars={"style": "photo", "lighting": "soft", "provider": "kie"}))
    rows.append(cell("nope", provider=None, status="failed", error_message="boom",
                     vars={"style": "ink", "lighting": "soft", "provider": "wiro"}))
    rows[0]["status"] = "cancelled"
    return Sink(str(tmp_path / "target")), rows_to_frame(rows)


def pivot(job: tuple[Sink, pl.DataFrame], rows: list[str] | None,
          columns: list[str] | None) -> str:
    sink, frame = job
    return Path(write_gallery(sink, frame, title="t", rows=rows, columns=columns)).read_text()


def test_the_default_layout_is_prompt_by_ratio_and_resolution_per_dataset_row() -> None:
    assert Layout.of(None, None) == Layout(("prompt",), ("aspect_ratio", "resolution"), True)
    # a pivot is one grid; a side it leaves out keeps its default axes
    assert Layout.of(["style"], None) == Layout(("style",), ("aspect_ratio", "resolution"), False)
    assert Layout.of((), ["provider"]) == Layout(("prompt",), ("provider",), False)


def test_a_pivot_places_each_card_at_its_combination_of_values(
    styles: tuple[Sink, pl.DataFrame]
) -> None:
    grid = Grid(pivot(styles, ["style"], ["lighting", "provider"]))
    table = grid.table
    assert table["corner"] == "style"
    # headers are combinations, in the order their values first appear in the manifest
    assert table["columns"] == ["soft · kie", "hard · kie", "soft · runware", "soft · wiro"]
    assert [header for header, _ in table["rows"]] == ["photo", "watercolor", "ink"]
    assert grid.positions() == {
        # replicates share a position and stack there, in manifest order
        ("photo", "soft · kie"): ["photo-soft-0", "photo-soft-1"],
        ("photo", "hard · kie"): ["photo-hard-0", "photo-hard-1"],
        ("watercolor", "soft · kie"): ["watercolor-soft-0", "watercolor-soft-1"],
        ("watercolor", "hard · kie"): ["watercolor-hard-0", "watercolor-hard-1"],
        ("photo", "soft · runware"): ["rw"],  # the provider column: who served it
        ("ink", "soft · wiro"): ["nope"],  # no provider served it: the template variable
    }


def test_axes_read_manifest_columns_then_template_variables(
    styles: tuple[Sink, pl.DataFrame]
) -> None:
    """provider, status, replicate and run (run_id) are columns; an empty column falls back
    to the cell's variable of that name; a value neither has is "–"."""
    grid = Grid(pivot(styles, ["provider", "status"], ["run", "replicate"]))
    assert grid.table["corner"] == "provider · status"
    assert grid.table["columns"] == ["r2 · 0", "r2 · 1", "r1 · –"]
    positions = grid.positions()
    assert positions["wiro · failed", "r1 · –"] == ["nope"]
    assert positions["runware · succeeded", "r1 · –"] == ["rw"]
    assert positions["kie · cancelled", "r2 · 0"] == ["photo-soft-0"]
    assert len(positions["kie · succeeded", "r2 · 1"]) == 4
    prompts = Grid(pivot(styles, ["prompt"], ["style"]))
    assert prompts.table["rows"][0][0] == "A photo fox, soft light"  # the column, templated


def test_a_pivot_is_one_grid_and_the_default_one_per_dataset_row(
    job: tuple[Sink, pl.DataFrame]
) -> None:
    default = Grid(pivot(job, None, None))
    assert len(default.tables) == 2 and default.tables[0]["corner"] == "prompt"
    pivoted = pivot(job, ["status"], None)
    assert len(Grid(pivoted).tables) == 1 and 'id="row-7"' not in pivoted
    assert "<caption>rows: status; columns: aspect_ratio · resolution</caption>" in pivoted
    assert Grid(pivoted).table["columns"] == ["1:1 · 1K", "1:1 · 2K", "16:9 · 1K", "16:9 · 2K"]


class Form(HTMLParser):
    """The filter's form: axis -> (option values, option labels), its switch, its state."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.form: dict[str, str] = {}
        self.selects: dict[str, tuple[list[str], list[str]]] = {}
        self.inputs: list[dict[str, str]] = []
        self._select: str | None = None
        self._option = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.form = a
        elif tag == "select":
            self._select = a["name"]
            self.selects[self._select] = ([], [])
        elif tag == "option" and self._select is not None:
            self.selects[self._select][0].append(a["value"])
            self.selects[self._select][1].append("")
            self._option = True
        elif tag == "input":
            self.inputs.append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "option":
            self._option = False

    def handle_data(self, data: str) -> None:
        if self._option and self._select is not None:
            self.selects[self._select][1][-1] += data


def test_the_filter_lists_every_axis_with_several_values(
    styles: tuple[Sink, pl.DataFrame]
) -> None:
    text = pivot(styles, ["style"], ["lighting", "provider"])
    form = Form(text)
    assert "hidden" in form.form  # shown by the script: without one, every card and no form
    # the grid's axes first, then template variables, then the manifest's own axes;
    # an axis with one value (aspect_ratio, resolution, job) has no select
    assert list(form.selects) == ["style", "lighting", "provider", "prompt", "replicate", "run",
                                  "status"]
    values, labels = form.selects["style"]
    assert values == ["", "photo", "watercolor", "ink"] and labels[0] == "all"
    assert form.selects["provider"][0] == ["", "kie", "runware", "wiro"]
    assert form.selects["replicate"][0] == ["", "0", "1", ""]
    assert form.selects["replicate"][1][-1] == "(none)"
    assert form.selects["status"][0] == ["", "cancelled", "succeeded", "failed"]
    assert [i["name"] for i in form.inputs] == ["failed-only"]
    # each card carries, per select, the index of its value among that select's values
    page = Page(text)
    assert page.data["photo-soft-0"] == "0 0 0 0 0 0 0"
    assert page.data["rw"] == "0 0 1 0 2 1 1"
    assert page.data["nope"] == "2 0 2 4 2 1 2"


def test_an_axis_with_too_many_values_gets_no_select(
    styles: tuple[Sink, pl.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbp.outputs.gallery

    monkeypatch.setattr(nbp.outputs.gallery, "MAX_FILTER_VALUES", 2)
    assert list(Form(pivot(styles, None, None)).selects) == ["lighting", "run"]


def test_pivot_values_and_axis_names_are_escaped(tmp_path: Path) -> None:
    """Axis values and names come from user data (a dataset): in headers, option values
    and labels, select names, they are text, never markup."""
    rows = [cell("a", vars={"style": XSS, 'od"d<': "1"}), cell("b", vars={"style": "plain",
                                                                            'od"d<': "2"})]
    sink = Sink(str(tmp_path))
    text = Path(write_gallery(sink, rows_to_frame(rows), title="t", rows=["style"],
                              columns=['od"d<'])).read_text()
    page = Page(text)  # raises on an on* attribute or a script of the data
    assert page.scripts == [PAGE_SCRIPT]
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt; &quot;q&quot;" in text
    grid = Grid(text)
    assert [header for header, _ in grid.table["rows"]] == [XSS, "plain"]
    assert grid.table["corner"] == "style"
    form = Form(text)
    assert form.selects["style"][0] == ["", XSS, "plain"]  # the value, as an attribute
    assert form.selects['od"d<'][0] == ["", "1", "2"]
    assert '<select name="od&quot;d&lt;">' in text


def test_the_page_runs_only_its_own_script_and_style(job: tuple[Sink, pl.DataFrame]) -> None:
    """A content security policy by hash: even markup slipped past the escaping runs no
    script and loads nothing from elsewhere."""
    text = pivot(job, None, None)
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', text)
    assert policy is not None
    rules = dict(rule.strip().split(" ", 1) for rule in html.unescape(policy[1]).split(";"))
    digest = "sha256-" + base64.b64encode(hashlib.sha256(PAGE_SCRIPT.encode()).digest()).decode()
    assert rules["default-src"] == "'none'" and rules["script-src"] == f"'{digest}'"
    assert rules["img-src"] == "'self' file:" and rules["style-src"].startswith("'sha256-")


def test_the_engine_draws_the_spec_pivot(styles: tuple[Sink, pl.DataFrame], tmp_path: Path) -> None:
    """The engine passes `output.gallery` to the page it writes at the end of a run."""
    from nbp.flows.engine.job import write_outputs
    from nbp.flows.engine.lease import Heartbeat
    from nbp.flows.spec.model import GallerySpec
    from nbp.outputs.parts import ManifestParts

    sink, frame = styles
    (tmp_path / "parts").mkdir()
    parts = ManifestParts(str(tmp_path / "parts"))
    parts.add(0, frame)

    async def write(gallery: GallerySpec | None) -> str:
        _, wrote = await write_outputs(Heartbeat(sink, "test"), parts, None, title="t",
                                       gallery=gallery)
        return Path(wrote["gallery"]).read_text()

    pivoted = Grid(asyncio.run(write(GallerySpec(("style",), ("provider",))))).table
    assert pivoted["corner"] == "style" and pivoted["columns"] == ["kie", "runware", "wiro"]
    default = Grid(asyncio.run(write(GallerySpec()))).table  # both sides: their defaults
    assert default["corner"] == "prompt" and default["columns"] == ["1:1 · 1K"]
    assert "<caption>" not in asyncio.run(write(None))  # no pivot: the default layout


# -- review and before / after ---------------------------------------------------------------


@pytest.fixture
def refreshed(tmp_path: Path) -> tuple[Sink, pl.DataFrame]:
    """A refresh as flows.engine.refresh leaves it: "old" held A1.png and was superseded by
    "new" (its image kept as history), "gone" was superseded without a kept copy; reviews."""
    sink = Sink(str(tmp_path / "target"))
    sink.write_bytes("A1.png", image_bytes((64, 64)), overwrite=False)
    sink.write_bytes(".nbp/history/old.png", image_bytes((32, 32)), overwrite=False)
    rows = [
        cell("old", output_path="A1.png", output_uri=sink.uri(".nbp/history/old.png"),
             superseded_by="new", width=32, height=32, review="approved"),
        cell("gone", output_path="B1.png", output_uri=sink.uri("B1.png"), superseded_by="newer"),
        cell("new", output_path="A1.png", output_uri=sink.uri("A1.png"), width=64, height=64),
        cell("newer", output_path="B1.png", review="rejected"),
        cell("fail-1", status="failed", error_message="boom", output_path=None,
             review="rejected"),
    ]  # fmt: skip
    return sink, rows_to_frame(rows)


class Review(HTMLParser):
    """Per card: its badge, whether it has buttons (and hidden ones), its images; the bar."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.badges: dict[str, str] = {}
        self.buttons: dict[str, list[str]] = {}  # approve / reject
        self.rates: dict[str, list[str]] = {}  # pass / fail / stars
        self.hidden_controls: set[str] = set()
        self.srcs: dict[str, list[str]] = {}
        self.bar: dict[str, str] | None = None
        self._card: str | None = None
        self._badge = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "figure":
            self._card = a["id"].removeprefix("cell-")
            self.srcs[self._card] = []
        elif tag == "div" and a.get("id") == "review":
            self.bar = a
        elif self._card is None:
            return
        elif tag == "img":
            self.srcs[self._card].append(a["src"])
        elif tag == "span" and "badge" in a.get("class", ""):
            self._badge = True
        elif a.get("class") in ("decide", "rate") and "hidden" in a:
            self.hidden_controls.add(f"{self._card} {a['class']}")
        elif tag == "button" and a["value"] in ("approved", "rejected"):
            self.buttons.setdefault(self._card, []).append(a["value"])
        elif tag == "button":
            self.rates.setdefault(self._card, []).append(a["value"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._card = None
        self._badge = self._badge and tag != "span"

    def handle_data(self, data: str) -> None:
        if self._badge and self._card:
            self.badges[self._card] = data


def test_cards_show_their_review_and_buttons_for_current_images(
    refreshed: tuple[Sink, pl.DataFrame],
) -> None:
    sink, frame = refreshed
    text = Path(write_gallery(sink, frame, title="t")).read_text("utf-8")
    page = Review(text)
    assert page.badges == {"old": "approved", "newer": "rejected", "fail-1": "rejected"}
    assert 'class="badge approved"' in text and 'class="badge rejected"' in text
    # buttons only where an image is the current one at its path, hidden until the script runs
    assert page.buttons == {"new": ["approved", "rejected"], "newer": ["approved", "rejected"]}
    # and a place for pass / fail and stars on the same cards (their buttons: the script's)
    assert page.rates == {}
    assert page.hidden_controls == {"new decide", "newer decide", "new rate", "newer rate"}
    assert page.bar is not None and "hidden" in page.bar
    assert "review approved" in Page(text).titles["old"]  # the tooltip says it too
    only_failures = frame.filter(pl.col("status") == "failed")
    assert Review(render_gallery(only_failures, title="t")).bar is None  # nothing to review


def test_a_cell_that_took_a_path_shows_before_and_after(
    refreshed: tuple[Sink, pl.DataFrame],
) -> None:
    sink, frame = refreshed
    text = Path(write_gallery(sink, frame, title="t")).read_text("utf-8")
    page, root = Review(text), Path(sink.root)
    assert page.srcs["new"] == [".nbp/history/old.png", "A1.png"]  # before, after
    assert page.srcs["old"] == [".nbp/history/old.png"]  # its own image, not what A1 holds now
    assert all((root / src).is_file() for src in page.srcs["new"])
    cards = Page(text).cards
    assert "before" in cards["new"] and "after" in cards["new"] and "old" in cards["new"]
    assert "superseded by" in cards["old"] and 'class="card succeeded superseded"' in text
    assert '<img src=".nbp/history/old.png" width="32" height="32"' in text  # its own size
    # No copy was kept: no image is shown as "gone"'s, and its successor says so.
    assert page.srcs["gone"] == [] and "image not kept" in cards["gone"]
    assert page.srcs["newer"] == ["B1.png"] and "before: image not kept" in cards["newer"]


def test_before_and_after_come_from_a_scanned_manifest_too(
    refreshed: tuple[Sink, pl.DataFrame], tmp_path: Path
) -> None:
    _, frame = refreshed
    frame.write_parquet(tmp_path / "m.parquet")
    generated = re.compile(r"generated [0-9-]+ [0-9:]+ UTC")
    lazy = render_gallery(pl.scan_parquet(tmp_path / "m.parquet"), title="t")
    assert generated.sub("", lazy) == generated.sub("", render_gallery(frame, title="t"))
    assert Review(lazy).srcs["new"] == [".nbp/history/old.png", "A1.png"]


def test_a_history_path_is_only_what_a_refresh_writes(tmp_path: Path) -> None:
    """A manifest is input: a superseded row's image is shown only at
    `HISTORY_DIR/{its cell id}{suffix}` when its output_uri points exactly there."""
    rows = [
        cell("new", output_path="A1.png"),
        cell("../../etc/x", output_path="A1.png", superseded_by="new",
             output_uri="/t/.nbp/history/../../etc/x.png"),
        cell("other", output_path="B1.png", superseded_by="new", output_uri="/t/B1.png"),
        cell("spoof", output_path="C1.png", superseded_by="zzz",
             output_uri="/t/.nbp/history/spoof.png.evil"),
    ]  # fmt: skip
    page = Review(render_gallery(rows_to_frame(rows), title="t"))
    assert all(".." not in src for srcs in page.srcs.values() for src in srcs)
    assert page.srcs == {"new": ["A1.png"], "../../etc/x": [], "other": [], "spoof": []}


def test_the_history_folder_is_the_refresh_one() -> None:
    """The gallery finds a superseded image where a refresh keeps it."""
    from nbp.flows.engine.refresh import history_path
    from nbp.outputs.gallery import history_image

    row = cell("0123abcd", output_path="sku 1/4_5.jpg",
               output_uri=f"s3://b/t/{history_path('0123abcd', 'sku 1/4_5.jpg')}")
    assert history_image(row) == history_path("0123abcd", "sku 1/4_5.jpg")


def test_the_review_script_writes_no_markup_and_asks_nothing_of_the_network() -> None:
    """Its only URL is the download's blob:, made from the decisions it built; the file it
    writes is the one `nbp review --import` reads."""
    from nbp.outputs.gallery import (
        FILTER_SCRIPT,
        LIGHTBOX_SCRIPT,
        RATING_SCRIPT,
        REVIEW_SCRIPT,
        REVIEWED,
    )
    from nbp.outputs.review import EXPORT_FORMAT, EXPORT_VERSION, VERDICTS

    assert PAGE_SCRIPT == FILTER_SCRIPT + REVIEW_SCRIPT + RATING_SCRIPT + LIGHTBOX_SCRIPT
    assert not re.search(r"fetch|XMLHttpRequest|WebSocket|EventSource|sendBeacon|import|"
                         r"src|open\(|innerHTML|outerHTML|insertAdjacent|write\(|eval|"
                         r"Function\(|//", REVIEW_SCRIPT)
    assert re.findall(r".*href.*", REVIEW_SCRIPT) == [
        "    link.href = URL.createObjectURL(new Blob([decisionsFile()], "
        '{type: "application/json"}));',
        "    setTimeout(function () { URL.revokeObjectURL(link.href); }, 60000);",
    ]
    assert f'format: "{EXPORT_FORMAT}", version: {EXPORT_VERSION},' in REVIEW_SCRIPT
    assert REVIEWED == VERDICTS
    assert all(f'"{verdict}"' in REVIEW_SCRIPT for verdict in VERDICTS)


# -- telling stacked cards apart, the lightbox's facts -------------------------------------------


class Captions(HTMLParser):
    """Each card's "differs" line (None: it has none), its tooltip, and its lightbox facts."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.lines: dict[str, str | None] = {}
        self.titles: dict[str, str] = {}
        self.facts: dict[str, dict[str, str]] = {}
        self._card: str | None = None
        self._line = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "figure":
            self._card = a["id"].removeprefix("cell-")
            self.lines[self._card] = None
            if "data-axes" in a:
                self.facts[self._card] = dict(json.loads(a["data-axes"]))
        elif tag == "div" and a.get("class") == "differs" and self._card:
            self.lines[self._card], self._line = "", True
            if "title" in a:  # only when a value is shortened
                self.titles[self._card] = a["title"]

    def handle_endtag(self, tag: str) -> None:
        self._line = self._line and tag != "div"

    def handle_data(self, data: str) -> None:
        if self._line and self._card:
            self.lines[self._card] = (self.lines[self._card] or "") + data


def test_stacked_cards_name_the_axes_that_tell_them_apart(
    styles: tuple[Sink, pl.DataFrame]
) -> None:
    """Only where cards share a slot, and only the axes whose values differ among them."""
    by_style = Captions(pivot(styles, ["style"], ["lighting", "provider"])).lines
    assert by_style["photo-soft-0"] == "replicate=0" and by_style["photo-soft-1"] == "replicate=1"
    assert by_style["rw"] is None and by_style["nope"] is None  # alone in its slot
    by_provider = Captions(pivot(styles, ["provider"], ["status"])).lines
    assert by_provider["photo-hard-1"] == "style=photo · lighting=hard · replicate=1"
    assert by_provider["watercolor-soft-0"] == "style=watercolor · lighting=soft · replicate=0"
    default = Captions(pivot(styles, None, None)).lines  # prompt rows: replicates stack
    assert default["watercolor-hard-1"] == "replicate=1"
    assert default["rw"] == "provider=runware · replicate=–"


def named(rows: list[dict[str, Any]], templates: list[str | None]) -> pl.DataFrame:
    """A manifest with a `template` column (a newer nbp's, named prompts)."""
    return rows_to_frame(rows).with_columns(template=pl.Series(templates, dtype=pl.String))


def test_a_template_name_tells_prompts_apart_and_is_an_axis(tmp_path: Path) -> None:
    """Two templates in one slot: the caption names the template, not the prompt; without
    names, the prompt (shortened; whole in the tooltip)."""
    long = "A fox in the snow at dawn, watercolor on rough paper, muted palette, wide shot"
    rows = [cell("t1", prompt="A fox", vars={"prompt": "A fox", "style": "ink"}),
            cell("t2", prompt=long, vars={"prompt": long, "style": "ink"})]
    text = render_gallery(named(rows, ["short", "long"]), title="t", rows=["style"])
    captions = Captions(text)
    assert captions.lines == {"t1": "template=short", "t2": "template=long"}
    assert captions.facts["t2"]["template"] == "long"
    assert list(Form(text).selects) == ["template", "prompt"]  # a filter as well
    by_template = Grid(render_gallery(named(rows, ["short", "long"]), title="t",
                                      rows=["template"]))
    assert [header for header, _ in by_template.table["rows"]] == ["short", "long"]
    unnamed = Captions(render_gallery(rows_to_frame(rows), title="t", rows=["style"]))
    assert unnamed.lines["t1"] == "prompt=A fox" and "t1" not in unnamed.titles
    assert unnamed.lines["t2"] == f"prompt={long[:39]}…" and unnamed.titles["t2"] == (
        f"prompt={long}")


def test_the_lightbox_lists_each_card_s_facts_and_axes(
    styles: tuple[Sink, pl.DataFrame]
) -> None:
    facts = Captions(pivot(styles, ["style"], None)).facts
    assert facts["rw"] == {
        "status": "succeeded", "cost": "$0.090", "latency": "12.5 s", "style": "photo",
        "lighting": "soft", "provider": "runware", "aspect_ratio": "1:1", "resolution": "1K",
        "run": "r1"}
    assert facts["photo-hard-1"]["replicate"] == "1"
    assert "nope" not in facts and "photo-soft-0" not in facts  # no image: no lightbox


def test_the_lightbox_and_rating_scripts_write_no_markup_and_ask_nothing_of_the_network(
) -> None:
    """Their only URLs: the download's blob: of the file they built, and the lightbox's
    image, the `href` nbp wrote on the card's own link. The file is the one `nbp review
    --import` reads."""
    from nbp.outputs.gallery import LIGHTBOX_SCRIPT, RATING_SCRIPT
    from nbp.outputs.review import RATINGS_FORMAT, RATINGS_VERSION

    for script in (RATING_SCRIPT, LIGHTBOX_SCRIPT):
        assert not re.search(r"fetch|XMLHttpRequest|WebSocket|EventSource|sendBeacon|import|"
                             r"open\(\)|window\.open|innerHTML|outerHTML|insertAdjacent|"
                             r"write\(|eval|Function\(|//", script)
    assert re.findall(r".*(?:href|src).*", RATING_SCRIPT) == [
        '  var folder = new URL(bar.getAttribute("data-target") || "./", location.href);',
        "    link.href = URL.createObjectURL(new Blob([ratingsFile()], "
        '{type: "application/json"}));',
        "    setTimeout(function () { URL.revokeObjectURL(link.href); }, 60000);",
    ]
    assert re.findall(r".*(?:href|src).*", LIGHTBOX_SCRIPT) == [
        '    image.setAttribute("src", link.getAttribute("href"));',
        '    image.removeAttribute("src");',
    ]
    assert f'format: "{RATINGS_FORMAT}", version: {RATINGS_VERSION},' in RATING_SCRIPT


# -- redrawing: axes, pivots and places ----------------------------------------------------------


def test_the_axes_of_a_manifest(styles: tuple[Sink, pl.DataFrame]) -> None:
    from nbp.outputs.gallery import axes_of

    _, frame = styles
    assert axes_of(frame) == ["style", "lighting", "provider", "prompt", "aspect_ratio",
                              "resolution", "model", "account", "replicate", "run", "status"]
    assert axes_of(named([cell("a", vars={"prompt": "x"})], ["t1"]).lazy()) == [
        "template", "prompt", "aspect_ratio", "resolution", "provider", "model", "account",
        "replicate", "run", "status"]
    assert "template" not in axes_of(named([cell("a")], [None]))


@pytest.mark.parametrize("rows, columns, says", [
    pytest.param(["styel"], None, "--rows: 'styel' is not an axis of this target (did you "
                 "mean 'style'?); axes: style, lighting, provider, prompt,", id="misspelt"),
    pytest.param(["style"], ["style", "x y"], "'style' is in --rows and --columns; an axis "
                 "makes rows or columns, not both", id="both-sides"),
    pytest.param(None, ["x y"], "--columns: 'x y' is not an axis of this target; axes:",
                 id="unknown"),
])  # fmt: skip
def test_a_pivot_names_axes_of_the_manifest(
    styles: tuple[Sink, pl.DataFrame], rows: list[str] | None, columns: list[str] | None,
    says: str,
) -> None:
    from nbp.outputs.gallery import GalleryInputError, axes_of, check_pivot

    axes = axes_of(styles[1])
    check_pivot(["style"], ["provider", "run"], axes)
    with pytest.raises(GalleryInputError) as caught:
        check_pivot(rows, columns, axes)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_a_redrawn_page_goes_beside_or_above_the_target(tmp_path: Path) -> None:
    """In the target's folder, or a folder holding it, whose images it shows by relative
    path; never an image of the target, never a folder the page would have to climb out of."""
    from nbp.outputs.gallery import GalleryInputError, page_place

    root = tmp_path / "runs" / "fox"
    target = Sink(str(root))
    manifest = rows_to_frame([cell("a", output_path="a.html"), cell("b")])
    assert page_place(target, None) == (target, GALLERY_NAME, "")
    page, name, base = page_place(target, str(root / "by-model.html"), manifest)
    assert (page.root, name, base) == (str(root), "by-model.html", "")
    page, name, base = page_place(target, str(tmp_path) + "/", manifest)
    assert (page.root, name, base) == (str(tmp_path), GALLERY_NAME, "runs/fox/")
    for out, says in [(str(root / "sub" / "x.html"), "by relative path"),
                      (str(tmp_path / "other" / "x.html"), "by relative path"),
                      (str(root / "x.png"), "an .html file"),
                      (str(root / "a.html"), "an image of the target"),
                      ("memory://elsewhere/x.html", "by relative path")]:
        with pytest.raises(GalleryInputError, match=re.escape(says)):
            page_place(target, out, manifest)
    bucket = Sink("memory://bucket/runs/fox")
    assert page_place(bucket, "memory://bucket/runs/x.html")[2] == "fox/"
    with pytest.raises(GalleryInputError, match="by relative path"):
        page_place(bucket, "memory://other/runs/x.html")


def test_a_page_above_the_target_shows_its_images_by_relative_path(
    job: tuple[Sink, pl.DataFrame], tmp_path: Path
) -> None:
    _, frame = job
    uri = write_gallery(Sink(str(tmp_path)), frame, title="t", name="above.html",
                        base="target/")
    page = Page(Path(uri).read_text())
    srcs = [v for k, v in page.urls if k == "src"]
    assert len(srcs) == 9 and all(src.startswith("target/img/") for src in srcs)
    assert all((tmp_path / src).is_file() for src in srcs)
    # the ratings in the browser are kept by the target's folder, the same from any page
    assert 'id="ratings" class="review-bar" data-target="target/"' in Path(uri).read_text()
