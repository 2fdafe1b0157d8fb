"""The compare page as a person sees it: headless Chromium draws both images of a pair from
their targets, by relative path, offline. The control page (B's path broken) must fail."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from outputs.compare import compare, load_side, write_page
from outputs.sink import Sink
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
    page = Path(write_page(compare(load_side(a), load_side(b)),
                           str(tmp_path / "reports" / "compare.html")))
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
