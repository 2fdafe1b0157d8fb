"""The gallery as a person sees it: Debian's headless Chromium opens a real job's index.html
from disk, offline, and we check the DOM it built, the pixels it drew and the requests it made.

Each assertion has a control page that must fail it (broken image paths, a page that fetches
from the network), so the checks cannot pass by measuring nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from PIL import Image

from flows.engine.job import RunOptions, run_job
from outputs.gallery import FILTER_SCRIPT, GALLERY_NAME, PAGE_SCRIPT, render_gallery
from providers.emulator.core import CONTENT_MARKER

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="chromium is not installed (`make browser` installs Debian's package)",
    ),
]

# Headless flags that work offline; the resolver rule makes sure nothing (not even Chromium's
# own background services) resolves a name, so no request can leave the machine.
OFFLINE_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)  # fmt: skip
WINDOW = (900, 700)
PROMPTS = ["A lemon on a blue plate, studio photo", f"{CONTENT_MARKER} a forbidden picture"]
RATIOS = ["1:1", "16:9"]


@dataclass(frozen=True)
class Job:
    target: Path
    manifest: pl.DataFrame

    @property
    def page(self) -> Path:
        return self.target / GALLERY_NAME


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Job:
    """2 prompts x 2 ratios run through the emulated Kie API; the content prompt fails."""
    root = tmp_path_factory.mktemp("gallery-job")
    spec: dict[str, Any] = {
        "version": 1, "name": "browser-test", "provider": "kie",
        "matrix": {"prompt": PROMPTS, "aspect_ratio": RATIOS},
        "output": {"target": str(root / "out")},
        "limits": {"kie": {"poll_interval": 0.05}},
    }  # fmt: skip
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    options = RunOptions(spec=str(root / "spec.yaml"), emulate=True, emulator_latency_s=0.2)
    result = asyncio.run(run_job(options))
    assert result.counts["succeeded"] == 2 and result.counts["failed"] == 2
    target = Path(result.target)
    return Job(target, pl.read_parquet(target / "manifest.parquet"))


def chromium(url: str, *flags: str) -> str:
    """Run headless Chromium once on `url` with a throwaway profile; returns its stdout."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="nbp-chromium-") as profile:
        done = subprocess.run(
            [CHROMIUM, *OFFLINE_FLAGS, f"--user-data-dir={profile}", *flags, url],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@dataclass
class Rendered:
    dom: str
    page_requests: list[str]  # network URLs the page itself asked for


def render(page: Path, tmp: Path) -> Rendered:
    """The DOM after load (`--dump-dom`) and the page's own requests from Chromium's net log."""
    netlog = tmp / f"{page.stem}-netlog.json"
    dom = chromium(page.as_uri(), "--dump-dom", f"--log-net-log={netlog}")
    return Rendered(dom, page_requests(netlog))


def page_requests(netlog: Path) -> list[str]:
    """URL requests started on behalf of a page. Chromium's own services (updater, sign-in,
    network time) log their requests with the initiator "not an origin"; anything a page asks
    for carries the page's origin, "null" for a file:// page."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        params["url"]
        for event in log["events"]
        if event["type"] == start and "url" in (params := event.get("params") or {})
        if params.get("initiator") != "not an origin"
    ]


def screenshot(page: Path, tmp: Path) -> Image.Image:
    shot = tmp / f"{page.stem}.png"
    chromium(page.as_uri(), f"--screenshot={shot}", "--window-size={},{}".format(*WINDOW))
    with Image.open(shot) as img:
        return img.convert("RGB")


def colours(img: Image.Image) -> dict[tuple[int, int, int], int]:
    """Pixel counts by colour at 4 bits a channel (coarse enough to survive browser scaling)."""
    coarse = img.convert("RGB").point(lambda v: v & 0xF0)
    return {rgb: n for n, rgb in coarse.getcolors(maxcolors=1 << 12) or []}


def main_colours(images: list[Image.Image], share: float = 0.8) -> list[tuple[int, int, int]]:
    """The most frequent coarse colours that together cover `share` of the images' pixels."""
    counts: dict[tuple[int, int, int], int] = {}
    for img in images:
        for rgb, n in colours(img).items():
            counts[rgb] = counts.get(rgb, 0) + n
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    total, covered, out = sum(counts.values()), 0, []
    for rgb, n in ranked:
        out.append(rgb)
        covered += n
        if covered >= share * total:
            break
    return out


def drawn_share(shot: Image.Image, wanted: list[tuple[int, int, int]]) -> float:
    seen = colours(shot)
    return sum(seen.get(rgb, 0) >= 5 for rgb in wanted) / len(wanted)


class Cards(HTMLParser):
    """Each card's id, tooltip, image sources, link targets, caption and body text."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.cards: dict[str, dict[str, Any]] = {}
        self.attribute_urls: list[str] = []
        self._card: dict[str, Any] | None = None
        self._in_caption = False
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.attribute_urls += [a[k] for k in ("src", "href", "srcset", "poster") if k in a]
        if tag == "figure":
            self._card = {"title": a["title"], "srcs": [], "hrefs": [], "caption": "", "text": ""}
            self.cards[a["id"].removeprefix("cell-")] = self._card
        elif self._card is not None and tag == "img":
            self._card["srcs"].append(a["src"])
        elif self._card is not None and tag == "a":
            self._card["hrefs"].append(a["href"])
        self._in_caption = self._in_caption or tag == "figcaption"

    def handle_endtag(self, tag: str) -> None:
        if tag == "figcaption":
            self._in_caption = False
        elif tag == "figure":
            self._card = None

    def handle_data(self, data: str) -> None:
        if self._card is not None:
            self._card["text"] += data
            if self._in_caption:
                self._card["caption"] += data + " "


@pytest.fixture(scope="module")
def rendered(job: Job, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    return render(job.page, tmp_path_factory.mktemp("render"))


def test_every_cell_has_a_card_with_id_cost_and_latency(job: Job, rendered: Rendered) -> None:
    cards = Cards(rendered.dom).cards
    assert sorted(cards) == sorted(job.manifest["cell_id"].to_list())
    for row in job.manifest.iter_rows(named=True):
        card = cards[row["cell_id"]]
        assert f"cell {row['cell_id']}" in card["title"]
        assert row["cell_id"][:12] in card["caption"]
        assert re.search(r"(\$\d+\.\d{3}|\$ –) · (\d+\.\d s|– s)", card["caption"]), card
        if row["status"] == "succeeded":
            assert f"${row['cost_usd']:.3f}" in card["caption"]
            assert f"{row['latency_s']:.1f} s" in card["caption"]


def test_failed_cells_show_their_reason(job: Job, rendered: Rendered) -> None:
    cards = Cards(rendered.dom).cards
    failed = job.manifest.filter(pl.col("status") == "failed")
    assert failed.height == 2 and set(failed["prompt"]) == {PROMPTS[1]}
    for row in failed.iter_rows(named=True):
        card = cards[row["cell_id"]]
        assert row["error_message"] and row["error_message"] in card["text"]
        assert "failed" in card["text"] and not card["srcs"]


def test_cards_show_their_image_from_the_target_and_link_to_it(
    job: Job, rendered: Rendered
) -> None:
    cards = Cards(rendered.dom).cards
    for row in job.manifest.filter(pl.col("status") == "succeeded").iter_rows(named=True):
        card = cards[row["cell_id"]]
        assert card["srcs"] == card["hrefs"] == [row["output_path"]]
        assert (job.target / row["output_path"]).is_file()


def test_images_are_drawn(job: Job, tmp_path: Path) -> None:
    """The browser loaded the images from the target folder: their main colours (decoded here
    with Pillow) are in the screenshot, and not in that of the same page with broken paths."""
    text = job.page.read_text("utf-8")
    paths = re.findall(r'<img src="([^"]+)"', text)
    assert len(paths) == 2
    images = []
    for path in paths:
        with Image.open(job.target / path) as img:
            images.append(img.convert("RGB").resize((256, 256)))
    wanted = main_colours(images)
    shot = screenshot(job.page, tmp_path)
    assert shot.size == WINDOW and len(wanted) > 20
    (job.target / "broken.html").write_text(re.sub(r'<img src="', '<img src="missing-', text))
    control = screenshot(job.target / "broken.html", tmp_path)
    drawn, undrawn = drawn_share(shot, wanted), drawn_share(control, wanted)
    assert drawn > 0.9 and undrawn < 0.1, (drawn, undrawn)


def test_the_page_fetches_nothing_from_the_network(rendered: Rendered, tmp_path: Path) -> None:
    assert rendered.page_requests == []
    assert not [u for u in Cards(rendered.dom).attribute_urls if re.match(r"(https?:)?//", u)]
    assert not re.search(r"url\(|@import|<link", rendered.dom)
    # One inline script, the filter's, and nothing in it that could ask for anything
    assert re.findall(r"<script[^>]*>", rendered.dom) == ["<script>"]
    assert PAGE_SCRIPT in rendered.dom
    assert not re.search(r"fetch|XMLHttpRequest|WebSocket|EventSource|sendBeacon|import|"
                         r"src|href|open\(|innerHTML|outerHTML|write\(", FILTER_SCRIPT)
    # Control: the same check sees a page that does fetch (the resolver rule stops it there).
    fetching = tmp_path / "fetching.html"
    fetching.write_text('<img src="http://example.invalid/a.png"><img src="https://example.com/b">')
    assert sorted(render(fetching, tmp_path).page_requests) == [
        "http://example.invalid/a.png", "https://example.com/b",
    ]


# -- a pivoted page and its filter ---------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}
# Driven like a person would: choose a value, tick the switch; then note the fragment.
DRIVER = """<script>
var form = document.getElementById("filter");
var select = form.querySelector("select[name=aspect_ratio]");
select.value = "1:1";
select.dispatchEvent(new Event("change", {bubbles: true}));
var box = form.querySelector("input[name=failed-only]");
box.checked = true;
box.dispatchEvent(new Event("change", {bubbles: true}));
document.body.setAttribute("data-fragment", location.hash);
</script>"""


class Shown(HTMLParser):
    """What the DOM shows: cards with no `hidden` on them or any element around them, the
    grid's headers hidden, the form's state and the body's attributes."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.cards: list[str] = []
        self.hidden_cards: list[str] = []
        self.hidden_headers: list[str] = []
        self.form_hidden: bool | None = None
        self.count = ""
        self.body: dict[str, str] = {}
        self._open: list[tuple[str, bool]] = []
        self._text: str | None = None
        self.feed(dom)

    @property
    def hidden(self) -> bool:
        return any(hidden for _, hidden in self._open)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag not in VOID:
            self._open.append((tag, "hidden" in a))
        if tag == "figure":
            (self.hidden_cards if self.hidden else self.cards).append(a["id"][5:])
        elif tag == "form":
            self.form_hidden = "hidden" in a
        elif tag == "body":
            self.body = a
        elif tag in ("th", "output"):
            self._text = ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "output") and self._text is not None:
            if tag == "output":
                self.count = self._text
            elif self.hidden:
                self.hidden_headers.append(self._text)
            self._text = None
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text += data


@pytest.fixture(scope="module")
def pivoted(job: Job) -> Path:
    """The job's cells by aspect ratio (rows) x provider and status (columns), in the target."""
    page = job.target / "pivot.html"
    page.write_text(render_gallery(job.manifest, title="pivot", rows=["aspect_ratio"],
                                   columns=["provider", "status"]))
    return page


def shown(page: Path, fragment: str = "") -> Shown:
    return Shown(chromium(page.as_uri() + fragment, "--dump-dom"))


def ids(job: Job, condition: pl.Expr) -> list[str]:
    return sorted(job.manifest.filter(condition)["cell_id"])


def without_script(page: Path) -> Path:
    """The control: the same page with its script taken out."""
    copy = page.with_name(f"{page.stem}-noscript.html")
    copy.write_text(page.read_text().replace(f"<script>{PAGE_SCRIPT}</script>", ""))
    assert copy.read_text() != page.read_text()
    return copy


def test_a_filter_in_the_fragment_hides_the_other_cards(job: Job, pivoted: Path) -> None:
    view = shown(pivoted, "#aspect_ratio=16%3A9")
    assert sorted(view.cards) == ids(job, pl.col("aspect_ratio") == "16:9")
    assert len(view.hidden_cards) == 2 and view.count == "2 of 4 cards"
    assert view.hidden_headers == ["1:1"]  # the row left empty
    assert view.form_hidden is False
    # Control: without the script the same link shows every card, and no form.
    control = shown(without_script(pivoted), "#aspect_ratio=16%3A9")
    assert sorted(control.cards) == sorted(job.manifest["cell_id"]) and control.form_hidden
    assert control.hidden_headers == [] and control.count == ""


def test_failed_only_shows_the_cells_that_did_not_succeed(job: Job, pivoted: Path) -> None:
    view = shown(pivoted, "#failed-only")
    assert sorted(view.cards) == ids(job, pl.col("status") != "succeeded")
    assert view.hidden_headers == ["kie · succeeded"]  # the column left empty
    assert view.count == "2 of 4 cards"


def test_the_controls_filter_and_keep_the_choice_in_the_fragment(
    job: Job, pivoted: Path
) -> None:
    """A person's choice (a select, then the switch) filters the page and becomes its link.
    The driver is a script of its own, so it runs in a copy without the page's content
    security policy; in the page itself the policy refuses it, as it would any script that
    is not the page's own."""
    text = pivoted.read_text().replace("</body>", DRIVER + "</body>")
    driven = pivoted.with_name("pivot-driven.html")
    driven.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>\n', "", text))
    view = shown(driven)
    assert sorted(view.cards) == ids(job, (pl.col("aspect_ratio") == "1:1")
                                     & (pl.col("status") == "failed"))
    assert view.body["data-fragment"] == "#aspect_ratio=1%3A1&failed-only="
    assert sorted(view.hidden_headers) == ["16:9", "kie · succeeded"]
    refused = pivoted.with_name("pivot-refused.html")
    refused.write_text(text)
    assert "data-fragment" not in shown(refused).body
