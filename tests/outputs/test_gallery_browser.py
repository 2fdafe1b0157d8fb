"""The gallery as a person sees it: Debian's headless Chromium opens a real job's index.html
from disk, offline, and we check the DOM it built, the pixels it drew and the requests it made.

Each assertion has a control page that must fail it (broken image paths, a page that fetches
from the network), so the checks cannot pass by measuring nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from PIL import Image

from nbp.flows.engine.job import RunHooks, RunOptions, run_job
from nbp.flows.orchestration.emulation import serve_emulators
from nbp.outputs.gallery import FILTER_SCRIPT, GALLERY_NAME, PAGE_SCRIPT, render_gallery
from nbp.providers.emulator.core import CONTENT_MARKER

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
    result = asyncio.run(run_job(options, hooks=RunHooks(emulation=serve_emulators)))
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


# -- review and before / after in the browser ---------------------------------------------------


class DevTools:
    """Headless Chromium driven over its DevTools pipe (`--remote-debugging-pipe`: no port,
    no network), so a test clicks the page's own buttons with its content security policy in
    force, reads what they did, and takes the files the page downloads.

    Every page also gets a listener (DevTools' own, outside the page's policy) that records
    the policy's refusals in `window.nbpViolations`, and every request is noted."""

    def __init__(self, downloads: Path, *, scripts: bool = True) -> None:
        assert CHROMIUM is not None
        self._profile = tempfile.TemporaryDirectory(prefix="nbp-chromium-")
        ours, theirs = os.pipe(), os.pipe()  # (we read, they write), (they read, we write)

        def fds() -> None:  # the pipe on the descriptors Chromium expects: 3 in, 4 out
            into, out = os.dup(theirs[0]), os.dup(ours[1])
            os.dup2(into, 3)
            os.dup2(out, 4)

        self.process = subprocess.Popen(
            [CHROMIUM, *OFFLINE_FLAGS, "--remote-debugging-pipe",
             f"--user-data-dir={self._profile.name}", "about:blank"],
            preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(theirs[0])
        os.close(ours[1])
        self._in, self._out = ours[0], theirs[1]
        self._buffer, self._id, self.events = b"", 0, []
        self.requests: list[str] = []
        self.call("Browser.setDownloadBehavior",
                  {"behavior": "allow", "downloadPath": str(downloads), "eventsEnabled": True},
                  session=None)
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=None)
        self.session = self.call("Target.attachToTarget", {
            "targetId": target["targetId"], "flatten": True}, session=None)["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", {
            "width": 1200, "height": 2400, "deviceScaleFactor": 1, "mobile": False})
        self.call("Emulation.setScriptExecutionDisabled", {"value": not scripts})
        self.call("Page.addScriptToEvaluateOnNewDocument", {"source": (
            "window.nbpViolations = []; document.addEventListener('securitypolicyviolation', "
            "function (e) { window.nbpViolations.push(e.violatedDirective); });")})

    def __enter__(self) -> DevTools:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call("Browser.close", session=None)
            self.process.wait(20)
        except (OSError, TimeoutError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        os.close(self._in)
        os.close(self._out)
        self._profile.cleanup()

    def call(self, method: str, params: dict[str, Any] | None = None,
             session: str | bool | None = True) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session is True:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        answer = self._next(lambda m: m.get("id") == self._id)
        assert "error" not in answer, (method, answer["error"])
        result: dict[str, Any] = answer["result"]
        return result

    def _next(self, wanted: Any, timeout: float = 30) -> dict[str, Any]:
        """The next message `wanted` accepts; other events are kept in `events`."""
        for i, event in enumerate(self.events):
            if wanted(event):
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if message.get("method") == "Network.requestWillBeSent":
                    self.requests.append(message["params"]["request"]["url"])
                if wanted(message):
                    return dict(message)
                if "method" in message:
                    self.events.append(message)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise TimeoutError("Chromium closed its pipe")
            self._buffer += chunk

    def open(self, page: Path) -> None:
        self.events.clear()
        self.call("Page.navigate", {"url": page.as_uri()})
        self._next(lambda m: m.get("method") == "Page.loadEventFired")

    def reload(self) -> None:
        self.events.clear()
        self.call("Page.reload")
        self._next(lambda m: m.get("method") == "Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        found = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        assert "exceptionDetails" not in found, found["exceptionDetails"]
        return found["result"].get("value")

    def click(self, selector: str) -> None:
        """A left click in the middle of the element, as a person's mouse makes it."""
        box = self.evaluate(f"(function () {{ var e = document.querySelector({selector!r}); "
                            "e.scrollIntoView({block: 'center'}); "
                            "var r = e.getBoundingClientRect(); "
                            "return [r.x + r.width / 2, r.y + r.height / 2, r.width]; })()")
        assert box[2] > 0, f"{selector} is not drawn"
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1],
                                                   "button": "left", "clickCount": 1})

    def key(self, key: str) -> None:
        """A key pressed and released, as a person's keyboard sends it."""
        codes = {"ArrowRight": 39, "ArrowLeft": 37, "Escape": 27}
        code = codes[key] if key in codes else ord(key.upper())
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", {"type": kind, "key": key,
                                                 "windowsVirtualKeyCode": code})

    def download(self) -> Path:
        done = self._next(lambda m: m.get("method") == "Browser.downloadProgress"
                          and m["params"]["state"] in ("completed", "canceled"))
        assert done["params"]["state"] == "completed", done
        return Path(done["params"]["filePath"])

    def visible(self, selector: str) -> list[str]:
        """Ids (else classes) of the elements matching `selector` that are drawn."""
        return list(self.evaluate(
            f"Array.prototype.slice.call(document.querySelectorAll({selector!r}))"
            ".filter(function (e) { return e.getClientRects().length > 0; })"
            ".map(function (e) { return e.id || e.className; })"))


@pytest.fixture(scope="module")
def refreshed(tmp_path_factory: pytest.TempPathFactory) -> Job:
    """Two emulated runs into one target, the second with another prompt at the same paths:
    flows.engine.refresh supersedes the first run's cells and keeps their images as history."""
    root = tmp_path_factory.mktemp("refresh-job")
    for look in ("matte", "glossy"):
        spec: dict[str, Any] = {
            "version": 1, "name": "refresh-test", "provider": "kie",
            "matrix": {"prompt": ["A lemon on a plate, {look} finish"], "look": [look],
                       "aspect_ratio": RATIOS},
            "output": {"target": str(root / "out"), "path": "lemon-{aspect_ratio}.{ext}"},
            "limits": {"kie": {"poll_interval": 0.05}},
        }  # fmt: skip
        (root / "spec.yaml").write_text(yaml.safe_dump(spec))
        options = RunOptions(spec=str(root / "spec.yaml"), emulate=True, emulator_latency_s=0.1)
        emulated = RunHooks(emulation=serve_emulators)
        assert asyncio.run(run_job(options, hooks=emulated)).counts["succeeded"] == 2
    target = root / "out"
    return Job(target, pl.read_parquet(target / "manifest.parquet"))


def current(job: Job) -> list[str]:
    return ids(job, pl.col("superseded_by").is_null())


def test_review_buttons_choose_and_download_a_file_nbp_review_imports(
    refreshed: Job, tmp_path: Path
) -> None:
    """A reviewer's clicks, with the page's policy in force: choose, change their mind,
    reload (the choices stay), download; `nbp review --import` records that file, and the
    redrawn page shows the decisions as badges."""
    from nbp.flows.cli import main
    from nbp.outputs.gallery import write_gallery
    from nbp.outputs.sink import Sink

    first, second = current(refreshed)
    with DevTools(tmp_path) as browser:
        browser.open(refreshed.page)
        assert browser.visible("#review") == ["review"]
        assert browser.visible(".decide") == ["decide", "decide"]  # the two current images
        assert browser.evaluate("document.getElementById('review-download').disabled")
        browser.click(f"#cell-{first} button[value=approved]")
        browser.click(f"#cell-{second} button[value=approved]")
        browser.click(f"#cell-{second} button[value=approved]")  # withdrawn
        browser.click(f"#cell-{second} button[value=rejected]")
        state = ("[" + ",".join(
            f"document.querySelector('#cell-{cid} button[value={v}]').getAttribute('aria-pressed')"
            for cid in (first, second) for v in ("approved", "rejected")) + "]")
        assert browser.evaluate(state) == ["true", "false", "false", "true"]
        counted = "document.getElementById('review-count').textContent"
        assert browser.evaluate(counted) == "2 chosen: 1 approved, 1 rejected"
        browser.reload()
        assert browser.evaluate(state) == ["true", "false", "false", "true"]
        browser.click("#review-download")
        saved = browser.download()
        assert browser.evaluate("window.nbpViolations") == []
        requests = browser.requests
    assert saved.name == "review-decisions.json"
    data = json.loads(saved.read_text())
    assert data["format"] == "nbp-review-decisions" and data["title"] == "refresh-test"
    assert [(d["cell_id"], d["decision"]) for d in data["decisions"]] == sorted(
        [(first, "approved"), (second, "rejected")])
    assert {url.split(":", 1)[0] for url in requests} <= {"file", "blob"}  # nothing else
    assert main(["review", str(refreshed.target), "--import", str(saved)]) == 0
    manifest = pl.read_parquet(refreshed.target / "manifest.parquet")
    assert dict(manifest.select("cell_id", "review").iter_rows()) == {
        **dict.fromkeys(manifest["cell_id"]), first: "approved", second: "rejected"}
    page = refreshed.target / "reviewed.html"
    page.write_text(Path(write_gallery(Sink(str(refreshed.target)), manifest, title="t"))
                    .read_text())
    badges = Cards(chromium(page.as_uri(), "--dump-dom")).cards
    assert "approved" in badges[first]["text"] and "rejected" in badges[second]["text"]


def test_before_and_after_are_drawn_from_the_target(refreshed: Job, tmp_path: Path) -> None:
    """The card of a cell that took a path shows the old image from history beside the new
    one; both load (the control, with the history folder misnamed, shows none of them)."""
    pairs = dict(refreshed.manifest.filter(pl.col("superseded_by").is_not_null())
                 .select("superseded_by", "cell_id").iter_rows())
    loaded = ("Array.prototype.slice.call(document.querySelectorAll('.pair img')).map("
              "function (i) { return [i.closest('figure').id.slice(5), i.getAttribute('src'), "
              "i.complete, i.naturalWidth]; })")

    def drawn(page: Path) -> list[list[Any]]:
        with DevTools(tmp_path) as browser:
            browser.open(page)
            deadline = time.monotonic() + 20
            while not all(done for _, _, done, _ in browser.evaluate(loaded)):
                assert time.monotonic() < deadline, browser.evaluate(loaded)
                time.sleep(0.1)
            return list(browser.evaluate(loaded))

    images = drawn(refreshed.page)
    by_card: dict[str, list[tuple[str, int]]] = {}
    for cell_id, src, _, width in images:
        by_card.setdefault(cell_id, []).append((src, width))
    assert sorted(by_card) == sorted(pairs)
    for new, old in pairs.items():
        row = refreshed.manifest.filter(pl.col("cell_id") == new).row(0, named=True)
        (before, before_w), (after, after_w) = by_card[new]
        assert before == f".nbp/history/{old}.png"
        assert urllib.parse.unquote(after) == row["output_path"]  # a path may hold a % now
        assert before_w == after_w == row["width"]  # decoded: both images are there
    control = refreshed.target / "no-history.html"
    control.write_text(refreshed.page.read_text().replace(".nbp/history/", ".nbp/nowhere/"))
    assert [width for *_, width in drawn(control) if _[1].startswith(".nbp/")] == [0, 0]


def test_without_scripts_every_card_shows_with_its_badge_and_no_button(
    refreshed: Job, tmp_path: Path
) -> None:
    from nbp.outputs.gallery import write_gallery
    from nbp.outputs.sink import Sink

    first = current(refreshed)[0]
    manifest = refreshed.manifest.with_columns(
        review=pl.when(pl.col("cell_id") == first).then(pl.lit("rejected")))
    page = refreshed.target / "no-script.html"
    page.write_text(Path(write_gallery(Sink(str(refreshed.target)), manifest, title="t"))
                    .read_text())
    seen = {}
    for scripts in (False, True):  # the control: with scripts the buttons do show
        with DevTools(tmp_path, scripts=scripts) as browser:
            browser.open(page)
            seen[scripts] = (sorted(browser.visible("figure.card")),
                             browser.visible(".badge"), browser.visible(".decide"),
                             browser.visible("#review"))
    cards = sorted(f"cell-{cid}" for cid in refreshed.manifest["cell_id"])
    assert seen[False] == (cards, ["badge rejected"], [], [])
    assert seen[True] == (cards, ["badge rejected"], ["decide", "decide"], ["review"])


def test_a_script_the_policy_does_not_allow_shows_no_button(
    refreshed: Job, tmp_path: Path
) -> None:
    """The policy is in force, and the check of it can fail: the same page with one
    character of its script changed runs nothing, and the refusal is seen."""
    from nbp.outputs.gallery import PAGE_SCRIPT

    tampered = refreshed.target / "tampered.html"
    text = refreshed.page.read_text()
    assert PAGE_SCRIPT in text
    tampered.write_text(text.replace(PAGE_SCRIPT, PAGE_SCRIPT.replace("no choice yet", "x")))
    with DevTools(tmp_path) as browser:
        browser.open(tampered)
        assert browser.visible(".decide") == [] and browser.visible("#review") == []
        assert browser.evaluate("window.nbpViolations") == ["script-src-elem"]


# -- judging: captions, the lightbox, ratings ------------------------------------------------

MODELS = ["gemini-3-pro-image-preview", "gemini-3-pro-image"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Job:
    """2 styles x 2 model ids x 2 replicates on the emulated Gemini API, drawn by style:
    each style's slot stacks 4 cards that differ only in model and replicate."""
    root = tmp_path_factory.mktemp("experiment")
    spec: dict[str, Any] = {
        "version": 1, "name": "fox-experiment", "provider": "gemini", "repeat": 2,
        "matrix": {"prompt": ["A {style} fox"], "style": ["photo", "ink"], "model": MODELS},
        "output": {"target": str(root / "out"),
                   "gallery": {"rows": ["style"], "columns": ["aspect_ratio"]}},
    }  # fmt: skip
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    options = RunOptions(spec=str(root / "spec.yaml"), emulate=True, emulator_latency_s=0.05)
    result = asyncio.run(run_job(options, hooks=RunHooks(emulation=serve_emulators)))
    assert result.counts["succeeded"] == 8
    target = Path(result.target)
    return Job(target, pl.read_parquet(target / "manifest.parquet"))


def in_page_order(browser: DevTools) -> list[str]:
    return list(browser.evaluate(
        "Array.prototype.map.call(document.querySelectorAll('figure.card a.image'), "
        "function (a) { return a.closest('figure').id.slice(5); })"))


LIGHTBOX_STATE = """(function () {
  var box = document.getElementById('lightbox'), img = box.querySelector('.lb-frame img');
  var facts = {}, terms = box.querySelectorAll('.lb-facts dt');
  Array.prototype.forEach.call(terms, function (t) { facts[t.textContent] =
    t.nextElementSibling.textContent; });
  return {shown: box.getClientRects().length > 0, head: box.querySelector('.lb-head')
    .textContent, src: img.getAttribute('src'), loaded: img.complete && img.naturalWidth,
    judged: box.querySelector('.lb-judged').textContent, facts: facts,
    prompt: box.querySelector('.lb-prompt').textContent,
    covers: img.getBoundingClientRect().width > 400,
    focused: document.activeElement.className};
})()"""


def lightbox(browser: DevTools) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        state: dict[str, Any] = browser.evaluate(LIGHTBOX_STATE)
        if not state["shown"] or state["loaded"] or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def test_stacked_cards_say_what_tells_them_apart(experiment: Job, tmp_path: Path) -> None:
    with DevTools(tmp_path) as browser:
        browser.open(experiment.page)
        captions = browser.evaluate(
            "Array.prototype.map.call(document.querySelectorAll('figure.card'), function (f) "
            "{ var d = f.querySelector('.differs'); return [f.id.slice(5), d ? d.textContent "
            ": null]; })")
    rows = {r["cell_id"]: r for r in experiment.manifest.iter_rows(named=True)}
    assert len(captions) == 8
    for cell_id, differs in captions:
        row = rows[cell_id]
        assert differs == f"model={row['model']} · replicate={row['replicate']}"
    assert len({differs for _, differs in captions}) == 4  # per slot, no two alike


def test_the_lightbox_shows_a_card_large_and_moves_in_page_order(
    experiment: Job, tmp_path: Path
) -> None:
    """A click on an image opens it over the page with the card's facts; the arrow keys
    move through the cards the filter shows, in page order; Escape closes. Nothing runs but
    the page's own script, nothing is asked of the network."""
    rows = {r["cell_id"]: r for r in experiment.manifest.iter_rows(named=True)}
    with DevTools(tmp_path) as browser:
        browser.open(experiment.page)
        order = in_page_order(browser)
        assert sorted(order) == sorted(rows) and not lightbox(browser)["shown"]
        browser.click(f"#cell-{order[1]} a.image")
        state = lightbox(browser)
        row = rows[order[1]]
        assert state["shown"] and state["covers"] and state["loaded"] == row["width"]
        assert state["head"] == f"cell {order[1]} (2 of 8)"
        assert state["src"] == urllib.parse.quote(row["output_path"])
        assert state["prompt"] == row["prompt"] and state["focused"] == "lb-close"
        assert state["facts"] == {
            "status": "succeeded", "cost": f"${row['cost_usd']:.3f}",
            "latency": f"{row['latency_s']:.1f} s", "size": f"{row['width']}×{row['height']}",
            "style": json.loads(row["vars"])["style"], "model": row["model"],
            "aspect_ratio": "1:1", "resolution": "1K", "provider": "gemini",
            "account": row["account"], "replicate": str(row["replicate"]), "run": row["run_id"],
        }
        browser.key("ArrowRight")
        assert lightbox(browser)["head"] == f"cell {order[2]} (3 of 8)"
        browser.key("ArrowLeft")
        browser.key("ArrowLeft")
        browser.key("ArrowLeft")  # at the first card: it stays
        assert lightbox(browser)["head"] == f"cell {order[0]} (1 of 8)"
        browser.key("Escape")
        assert not lightbox(browser)["shown"]
        assert browser.evaluate("document.activeElement.closest('figure').id") == (
            f"cell-{order[1]}")  # focus back on the image it opened from
        # The filter's choice is the lightbox's too: only the cards it shows.
        browser.evaluate(f"location.hash = 'model={MODELS[1]}'")
        browser.reload()
        shown = [cid for cid in in_page_order(browser) if rows[cid]["model"] == MODELS[1]]
        browser.click(f"#cell-{shown[-1]} a.image")
        assert lightbox(browser)["head"] == f"cell {shown[-1]} (4 of 4)"
        browser.key("ArrowRight")  # the last shown card: it stays
        assert lightbox(browser)["head"] == f"cell {shown[-1]} (4 of 4)"
        assert browser.evaluate("window.nbpViolations") == []
        requests = browser.requests
    assert {url.split(":", 1)[0] for url in requests} <= {"file"}


def test_without_scripts_an_image_is_a_link_to_itself(experiment: Job, tmp_path: Path) -> None:
    with DevTools(tmp_path, scripts=False) as browser:
        browser.open(experiment.page)
        first = in_page_order(browser)[0]
        browser.click(f"#cell-{first} a.image")
        browser._next(lambda m: m.get("method") == "Page.loadEventFired")
        assert browser.evaluate("location.pathname").endswith(
            experiment.manifest.filter(pl.col("cell_id") == first)["output_path"][0])


RATED = """Array.prototype.map.call(document.querySelectorAll('figure.card'), function (f) {
  return [f.id.slice(5), Array.prototype.filter.call(f.querySelectorAll('.rate button'),
    function (b) { return b.getAttribute('aria-pressed') === 'true'; })
    .map(function (b) { return b.value; }).join(' '),
    f.querySelectorAll('.rate .lit').length];
})"""


def test_ratings_stay_in_the_browser_for_the_target_and_download_as_one_file(
    experiment: Job, tmp_path: Path
) -> None:
    """Pass / fail and stars, by clicks and in the lightbox by keys; a reload keeps them, and
    so does another page of the same target (a redraw with another pivot); "download
    ratings" saves one nbp-ratings file of them."""
    from nbp.flows.cli import main

    assert main(["gallery", str(experiment.target), "--rows", "model", "--columns",
                 "replicate", "--out", str(experiment.target / "by-model.html")]) == 0
    with DevTools(tmp_path) as browser:
        browser.open(experiment.page)
        a, b, c = in_page_order(browser)[:3]
        assert browser.visible("#ratings") == ["ratings"]
        assert browser.evaluate("document.getElementById('ratings-download').disabled")
        browser.click(f"#cell-{a} .rate button[value=pass]")
        browser.click(f"#cell-{a} .rate button[value='3']")
        browser.click(f"#cell-{b} .rate button[value=fail]")
        browser.click(f"#cell-{b} .rate button[value='5']")
        browser.click(f"#cell-{b} .rate button[value='5']")  # withdrawn
        browser.click(f"#cell-{c} a.image")  # in the lightbox: keys
        browser.key("4")
        browser.key("p")
        assert lightbox(browser)["judged"] == "pass · 4 of 5 stars"
        browser.key("Escape")
        counted = "document.getElementById('ratings-count').textContent"
        assert browser.evaluate(counted) == "3 rated: 2 pass, 1 fail, 2 with stars"
        rated = {cid: (pressed, lit) for cid, pressed, lit in browser.evaluate(RATED)}
        expected = {a: ("pass 3", 3), b: ("fail", 0), c: ("pass 4", 4)}
        assert {cid: rated[cid] for cid in (a, b, c)} == expected
        assert {state for cid, state in rated.items() if cid not in expected} == {("", 0)}
        browser.reload()
        assert {cid: p for cid, *p in browser.evaluate(RATED) if cid in expected} == {
            cid: list(state) for cid, state in expected.items()}
        browser.open(experiment.target / "by-model.html")  # another page of the target
        assert browser.evaluate(counted) == "3 rated: 2 pass, 1 fail, 2 with stars"
        browser.click("#ratings-download")
        saved = browser.download()
        assert browser.evaluate("window.nbpViolations") == []
    assert saved.name == "ratings.json"
    data = json.loads(saved.read_text())
    assert set(data) == {"format", "version", "exported_at", "title", "ratings", "preferences"}
    assert (data["format"], data["version"], data["title"]) == ("nbp-ratings", 1,
                                                                "fox-experiment")
    assert data["preferences"] == []
    got = {r["cell_id"]: {k: v for k, v in r.items() if k != "cell_id"} for r in data["ratings"]}
    assert [r["cell_id"] for r in data["ratings"]] == sorted(got)
    assert {cid: (r.get("pass"), r.get("stars")) for cid, r in got.items()} == {
        a: (True, 3), b: (False, None), c: (True, 4)}
    assert all(r["at"].endswith("Z") and set(r) <= {"pass", "stars", "at"} for r in got.values())


def test_a_ratings_round_trip_into_the_review_store(experiment: Job, tmp_path: Path) -> None:
    """The file the gallery saves is what `nbp review --import` reads: rate, download,
    import; `ratings_frame` joins the manifest by cell id."""
    from nbp.flows.cli import main
    from nbp.outputs.review import ratings_frame
    from nbp.outputs.sink import Sink

    with DevTools(tmp_path) as browser:
        browser.open(experiment.page)
        first, second = in_page_order(browser)[-2:]
        browser.click(f"#cell-{first} .rate button[value=fail]")
        browser.click(f"#cell-{second} .rate button[value='2']")
        browser.click("#ratings-download")
        saved = browser.download()
    assert main(["review", str(experiment.target), "--import", str(saved)]) == 0
    frame = ratings_frame(Sink(str(experiment.target)))
    by_cell = {row[0]: row[1:] for row in frame.rows()}
    assert by_cell[first] == (False, None, 0, 0) and by_cell[second] == (None, 2, 0, 0)
    joined = experiment.manifest.join(frame, on="cell_id", how="left")
    assert joined.height == 8 and joined["stars"].drop_nulls().to_list() == [2]
