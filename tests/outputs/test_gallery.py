"""The gallery: one offline page with every cell, thumbnails, failures and escaped text."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from PIL import Image

from outputs.gallery import GALLERY_NAME, THUMB_DIR, THUMB_PX, make_thumbnail, write_gallery
from outputs.manifest import rows_to_frame
from outputs.sink import Sink

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
    """What a browser would load: every src/href, and the text of each card."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []
        self.cards: dict[str, str] = {}
        self.titles: dict[str, str] = {}
        self._card: str | None = None
        self._depth = 0
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.urls += [(k, a[k]) for k in ("src", "href") if k in a]
        if tag == "figure":
            self._card = a["id"].removeprefix("cell-")
            self.cards[self._card] = ""
            self.titles[self._card] = a["title"]
        if tag == "script" or any(k.startswith("on") for k in a):
            raise AssertionError(f"script in page: {tag} {a}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._card = None

    def handle_data(self, data: str) -> None:
        if self._card:
            self.cards[self._card] += data


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


def test_page_is_self_contained(job: tuple[Sink, pl.DataFrame]) -> None:
    sink, frame = job
    text = Path(write_gallery(sink, frame, title="t")).read_text("utf-8")
    page = Page(text)
    srcs = [v for k, v in page.urls if k == "src"]
    hrefs = [v for k, v in page.urls if k == "href"]
    assert len(srcs) == 9 and all(s.startswith("data:image/jpeg;base64,") for s in srcs)
    assert not re.search(r"(https?:)?//|url\(|@import", text)  # nothing fetched from outside
    root = Path(sink.root)
    assert hrefs and all((root / href).is_file() for href in hrefs)  # links resolve locally


def test_thumbnails_are_small_jpegs(job: tuple[Sink, pl.DataFrame]) -> None:
    sink, frame = job
    page = Page(Path(write_gallery(sink, frame, title="t")).read_text("utf-8"))
    for _, src in page.urls:
        if src.startswith("data:"):
            with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as img:
                assert img.format == "JPEG" and max(img.size) <= THUMB_PX
    big = make_thumbnail(image_bytes((1200, 600), "PNG", "RGBA"))
    assert big is not None
    with Image.open(io.BytesIO(big)) as img:
        assert img.size == (THUMB_PX, THUMB_PX // 2)


def test_text_is_escaped(job: tuple[Sink, pl.DataFrame]) -> None:
    sink, frame = job
    text = Path(write_gallery(sink, frame, title=HOSTILE)).read_text("utf-8")
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "SKU &lt;7&gt;" in text
    Page(text)  # raises on any script tag or on* attribute


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


def test_unreadable_image_gives_a_card_without_thumbnail(tmp_path: Path) -> None:
    sink = Sink(str(tmp_path))
    sink.write_bytes("bad.png", b"not an image", overwrite=False)
    frame = rows_to_frame([cell("bad", output_path="bad.png"),
                           cell("gone", output_path="missing.png")])  # fmt: skip
    page = Page(Path(write_gallery(sink, frame, title="t")).read_text("utf-8"))
    assert "no thumbnail" in page.cards["bad"] and "no thumbnail" in page.cards["gone"]


def test_thumbnails_are_cached_by_sha256(tmp_path: Path) -> None:
    sink = Sink(str(tmp_path))
    sha = "f" * 64
    sink.write_bytes("a.png", image_bytes((50, 40)), overwrite=False)
    frame = rows_to_frame([cell("a", output_path="a.png", sha256=sha)])
    first = Path(write_gallery(sink, frame, title="t")).read_text("utf-8")
    assert sink.exists(f"{THUMB_DIR}/{sha}.jpg")
    sink.delete("a.png")  # a rerun no longer needs the full image
    second = Path(write_gallery(sink, frame, title="t")).read_text("utf-8")
    thumbs = [re.findall(r'src="(data:[^"]+)"', page) for page in (first, second)]
    assert thumbs[0] == thumbs[1] and len(thumbs[0]) == 1


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


def test_thumbnail_count_is_bounded(job: tuple[Sink, pl.DataFrame]) -> None:
    sink, frame = job
    text = Path(write_gallery(sink, frame, title="t", max_thumbnails=3)).read_text("utf-8")
    assert text.count('src="data:') == 3
    assert "thumbnails for the first 3 of 9 images" in text
    assert len(Page(text).cards) == frame.height


def test_card_count_is_bounded_and_the_page_says_so(
    job: tuple[Sink, pl.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At catalog scale the page shows the first cells only; the manifest has them all."""
    import outputs.gallery

    sink, frame = job
    monkeypatch.setattr(outputs.gallery, "MAX_CARDS", 3)
    page = Page(Path(write_gallery(sink, frame, title="big")).read_text("utf-8"))
    assert sorted(page.cards) == sorted(frame["cell_id"].head(3).to_list())
    assert f"the first 3 of {frame.height} cells" in Path(sink.uri("index.html")).read_text()
