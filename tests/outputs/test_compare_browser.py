"""The compare page as a person sees it: headless Chromium draws both images of a pair from
their targets beside it, by relative path, offline, and asks no URL a foreign manifest names.
Each check has a control page that must fail it (B's path broken, the policy taken out)."""

from __future__ import annotations

import http.server
import io
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from nbp.outputs.compare import compare, load_side
from nbp.outputs.compare_page import write_page
from nbp.outputs.sink import Sink
from tests.outputs.test_compare import cell, target
from tests.outputs.test_gallery_browser import CHROMIUM, WINDOW, chromium, colours, page_requests

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="chromium is not installed (`make browser` installs Debian's package)",
    ),
]

# Two colours per side, none of them in the page's CSS (compared at 4 bits a channel).
A_COLOURS = ((255, 0, 0), (255, 255, 0))
B_COLOURS = ((0, 0, 255), (0, 255, 0))
# OFFLINE_FLAGS resolve no name; this one lets Chromium reach our own server on loopback too
# (the last of a repeated switch wins), so that "no request" means the page asked for none.
LOOPBACK = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


def striped(top: tuple[int, int, int], bottom: tuple[int, int, int]) -> bytes:
    img = Image.new("RGB", (96, 96), top)
    img.paste(bottom, (0, 48, 96, 96))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def drawn(shot: Path, wanted: tuple[tuple[int, int, int], ...]) -> bool:
    """Every colour of `wanted` covers a good part of an image's area in the screenshot."""
    with Image.open(shot) as img:
        seen = colours(img)
    return all(seen.get((r & 0xF0, g & 0xF0, b & 0xF0), 0) >= 1000 for r, g, b in wanted)


def test_the_page_draws_both_images_of_a_pair(tmp_path: Path) -> None:
    a = target(tmp_path / "a", [cell("a0", sha256="a", width=96, height=96)])
    b = target(tmp_path / "runs" / "b", [cell("b0", sha256="b", width=96, height=96)])
    Sink(a).write_bytes("img/a0.png", striped(*A_COLOURS), overwrite=True)
    Sink(b).write_bytes("img/b0.png", striped(*B_COLOURS), overwrite=True)
    page = Path(write_page(compare(load_side(a), load_side(b)), str(tmp_path / "compare.html")))
    control = page.with_name("control.html")
    control.write_text(page.read_text("utf-8").replace("runs/b/img/", "runs/b/missing/"))
    shots = {}
    for html in (page, control):
        shots[html] = tmp_path / f"{html.stem}.png"
        netlog = tmp_path / f"{html.stem}-netlog.json"
        chromium(html.as_uri(), f"--screenshot={shots[html]}", f"--log-net-log={netlog}",
                 "--window-size={},{}".format(*WINDOW))
        assert page_requests(netlog) == []  # nothing from the network
    assert drawn(shots[page], A_COLOURS) and drawn(shots[page], B_COLOURS)
    assert drawn(shots[control], A_COLOURS) and not drawn(shots[control], B_COLOURS)


class Counting(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a PNG and notes its path: a tracker's view of the page."""

    paths: list[str]

    def do_GET(self) -> None:
        self.paths.append(self.path)
        body = striped(*B_COLOURS)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def tracker() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server (its base URL, and the paths asked of it, in order)."""
    paths: list[str] = []
    handler = type("Handler", (Counting,), {"paths": paths})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", paths
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_foreign_manifest_s_url_is_never_asked_for(
    tmp_path: Path, tracker: tuple[str, list[str]]
) -> None:
    """B's manifest points its image at a server we run: the page asks it for nothing, and
    A's image beside the page still shows. Controls: with the policy taken out, an image
    of that server's is asked for (the count works, Chromium can reach it); with the policy
    kept, the same injected image is not (the policy alone would stop it)."""
    url, asked = tracker
    a = target(tmp_path / "a", [cell("a0", sha256="a", width=96, height=96)])
    b = target(tmp_path / "b", [cell("b0", sha256="b", output_path=None,
                                     output_uri=f"{url}/b0.png")])
    Sink(a).write_bytes("img/a0.png", striped(*A_COLOURS), overwrite=True)
    page = Path(write_page(compare(load_side(a), load_side(b)), str(tmp_path / "compare.html")))
    text = page.read_text("utf-8")
    injected = text.replace("</body>", f'<img src="{url}/injected.png"></body>')
    unguarded = page.with_name("unguarded.html")
    unguarded.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>\n', "",
                                injected))
    guarded = page.with_name("guarded.html")
    guarded.write_text(injected)
    for html in (page, guarded, unguarded):
        shot, netlog = tmp_path / f"{html.stem}.png", tmp_path / f"{html.stem}-netlog.json"
        chromium(html.as_uri(), f"--screenshot={shot}", f"--log-net-log={netlog}",
                 "--window-size={},{}".format(*WINDOW), LOOPBACK)
        if html is page:
            assert asked == [] and page_requests(netlog) == []
            assert drawn(shot, A_COLOURS) and not drawn(shot, B_COLOURS)
        elif html is guarded:
            assert asked == []
    assert asked == ["/injected.png"]


# -- preference --------------------------------------------------------------------------------


def preference_page(tmp_path: Path) -> tuple[Path, str, str]:
    """A page of two targets: a changed pair, a same pair and a row only in A (no buttons);
    the sides as given."""
    a = target(tmp_path / "a", [cell("a0", sha256="a"), cell("a1", "blue"), cell("a2", "only")])
    b = target(tmp_path / "b", [cell("b0", sha256="b"), cell("b1", "blue")])
    a_side, b_side = a, f"{b}@r1"
    page = write_page(compare(load_side(a_side), load_side(b_side)), str(tmp_path / "c.html"))
    return Path(page), a_side, b_side


def test_preference_buttons_choose_and_download_one_ratings_file(tmp_path: Path) -> None:
    """A reader's clicks with the page's policy in force: A better on the changed pair, B
    better on the same one, a change of mind, a reload (the choices stay), a clear, and the
    download: one `nbp-ratings` file naming both sides as given and each cell."""
    from tests.outputs.test_gallery_browser import DevTools

    page, a_side, b_side = preference_page(tmp_path)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    pressed = ("Array.prototype.slice.call(document.querySelectorAll('.prefer button[value]'))"
               ".filter(function (b) { return b.value; })"
               ".map(function (b) { return b.getAttribute('aria-pressed'); })")
    counted = "document.getElementById('prefer-count').textContent"
    with DevTools(downloads) as browser:
        browser.open(page)
        assert browser.visible("#prefer") == ["prefer"]
        assert browser.visible(".prefer") == ["prefer", "prefer"]  # not the lone row
        assert browser.evaluate("document.getElementById('prefer-download').disabled")
        browser.click("#pair-0 button[value=a]")
        browser.click("#pair-2 button[value=a]")
        browser.click("#pair-2 button[value=b]")  # changed their mind
        assert browser.evaluate(pressed) == ["true", "false", "false", "true"]
        assert browser.evaluate(counted) == "2 chosen: 1 A better, 1 B better"
        browser.reload()
        assert browser.evaluate(pressed) == ["true", "false", "false", "true"]
        browser.click("#pair-0 button.clear")
        assert browser.evaluate(pressed) == ["false", "false", "false", "true"]
        browser.click("#pair-0 button[value=a]")
        browser.click("#prefer-download")
        saved = browser.download()
        assert browser.evaluate("window.nbpViolations") == []
        browser.click("#prefer-clear")
        assert browser.evaluate(counted) == "no choice yet"
        requests = browser.requests
    assert saved.name == "compare-ratings.json"
    data = json.loads(saved.read_text())
    assert set(data) == {"format", "version", "exported_at", "title", "ratings",
                         "preferences"}
    assert (data["format"], data["version"], data["ratings"]) == ("nbp-ratings", 1, [])
    assert data["title"] == f"nbp compare: {a_side} vs {b_side}"
    assert [(p["a"], p["b"], p["winner"]) for p in data["preferences"]] == [
        ({"target": a_side, "cell_id": "a0"}, {"target": b_side, "cell_id": "b0"}, "a"),
        ({"target": a_side, "cell_id": "a1"}, {"target": b_side, "cell_id": "b1"}, "b"),
    ]
    for stamp in [data["exported_at"], *(p["at"] for p in data["preferences"])]:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    assert {url.split(":", 1)[0] for url in requests} <= {"file", "blob"}  # nothing else


def test_the_buttons_need_the_page_s_own_script(tmp_path: Path) -> None:
    """Without scripts every pair shows and no button does; with one character of the
    script changed the policy runs nothing (the check can fail: the real page shows them)."""
    from nbp.outputs.compare_page import PREFERENCE_SCRIPT
    from tests.outputs.test_gallery_browser import DevTools

    page, _, _ = preference_page(tmp_path)
    tampered = page.with_name("tampered.html")
    text = page.read_text("utf-8")
    assert PREFERENCE_SCRIPT in text
    tampered.write_text(text.replace(PREFERENCE_SCRIPT,
                                     PREFERENCE_SCRIPT.replace("no choice yet", "x")))
    seen = {}
    for name, html, scripts in (("page", page, True), ("no-script", page, False),
                                ("tampered", tampered, True)):
        with DevTools(tmp_path, scripts=scripts) as browser:
            browser.open(html)
            seen[name] = (len(browser.visible("article.pair")), browser.visible(".prefer"),
                          browser.visible("#prefer"), browser.evaluate("window.nbpViolations"))
    assert seen["page"] == (3, ["prefer", "prefer"], ["prefer"], [])
    assert seen["no-script"] == (3, [], [], [])
    assert seen["tampered"] == (3, [], [], ["script-src-elem"])
