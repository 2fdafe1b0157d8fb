"""`nbp compare`: cells matched by request across targets and runs, what differs, the page."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import polars as pl
import pytest
from PIL import Image

from nbp.outputs.compare import (
    CompareInputError,
    compare,
    load_side,
    render_comparison,
    render_summary,
    request_variables,
)
from nbp.outputs.compare_page import PREFERENCE_SCRIPT, page_location, render_page, write_page
from nbp.outputs.gallery import render_gallery
from nbp.outputs.manifest import read_manifest, rows_to_frame, write_manifest
from nbp.outputs.review import read_ratings, record_ratings
from nbp.outputs.runs import RunRecord, merge_record
from nbp.outputs.sink import Sink, check_relative
from tests.conftest import ROOT, run_nbp

HOSTILE = '<script>alert("x")</script> & "quotes" <img src=x onerror=alert(1)>'


def png(colour: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def cell(cell_id: str, prompt: str = "a red shoe", **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "cell_id": cell_id, "job": "j", "run_id": "r1", "provider": "kie",
        "account": "KIE_API_KEY", "model": "nano-banana-pro", "prompt": prompt,
        "aspect_ratio": "1:1", "resolution": "1K", "output_format": "png", "references": [],
        "vars": {"prompt": prompt, "style": "photo", "provider": "kie"}, "replicate": 0,
        "status": "succeeded", "cost_usd": 0.09, "latency_s": 10.0,
        "output_path": f"img/{cell_id}.png", "sha256": f"sha-{prompt}", "bytes": 100,
        "width": 32, "height": 32,
    }  # fmt: skip
    return {**base, **values}


def target(path: Path | str, rows: Sequence[dict[str, Any]],
           colour: tuple[int, int, int] = (200, 30, 30)) -> str:
    """A target holding `rows` as its manifest and an image for each row with a path."""
    sink = Sink(str(path))
    for row in rows:
        if row["output_path"] and row["status"] == "succeeded" and safe(row["output_path"]):
            sink.write_bytes(row["output_path"], png(colour), overwrite=True)
    write_manifest(sink, rows_to_frame(rows))
    return str(path)


def safe(path: str) -> bool:
    try:
        check_relative(path)
    except ValueError:
        return False
    return ":" not in path


def policy_of(text: str) -> dict[str, str]:
    """The rules of the page's content security policy, by directive."""
    found = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', text)
    assert found is not None, "the page has no content security policy"
    return dict(rule.strip().split(" ", 1) for rule in html.unescape(found[1]).split(";"))


def pairs_of(a: str, b: str) -> list[tuple[str, str | None, str | None]]:
    """(kind, A's cell id, B's cell id) of every pair and lone row, in the page's order."""
    frame = compare(load_side(a), load_side(b)).pairs
    return list(frame.select("kind", "a_cell_id", "b_cell_id").iter_rows())


class Page(HTMLParser):
    """Each pair's text and its image sources; refuses any event handler and any script but
    the page's own one (`PREFERENCE_SCRIPT`, at the end, exactly as written)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.pairs: list[dict[str, Any]] = []
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.scripts: list[str] = []
        self.in_script = False
        self.feed(text)
        assert self.scripts == [PREFERENCE_SCRIPT], "a script that is not the page's own"
        assert text.endswith(f"<script>{PREFERENCE_SCRIPT}</script>\n</body>\n</html>\n")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if any(k.startswith("on") for k in a) or (tag == "script" and a):
            raise AssertionError(f"script in page: {tag} {a}")
        if tag == "script":
            self.in_script = True
            self.scripts.append("")
        if tag == "article":
            self.pairs.append({"class": a["class"], "text": "", "srcs": [], "attrs": a})
        if tag == "img":
            self.srcs.append(a["src"])
            if self.pairs:
                self.pairs[-1]["srcs"].append(a["src"])
        if tag == "a":
            self.hrefs.append(a["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self.in_script = False

    def handle_data(self, data: str) -> None:
        if self.in_script:
            self.scripts[-1] += data
        elif self.pairs:
            self.pairs[-1]["text"] += data


def test_cells_pair_by_request_not_by_cell_id(tmp_path: Path) -> None:
    """A cell run on another provider has another cell id: the request pairs them."""
    prompts = ["a red shoe", "a blue hat"]
    a = target(tmp_path / "a", [cell(f"kie-{i}", p) for i, p in enumerate(prompts)])
    b = target(tmp_path / "b", [
        cell(f"rw-{i}", p, provider="runware", account="RUNWARE_API_KEY", model="google:4@2",
             vars={"prompt": p, "style": "photo", "provider": "runware"})
        for i, p in enumerate(prompts)
    ])  # fmt: skip
    assert pairs_of(a, b) == [("same", "kie-0", "rw-0"), ("same", "kie-1", "rw-1")]
    comparison = compare(load_side(a), load_side(b))
    assert comparison.pairs["differs"].to_list() == [["channel"], ["channel"]]
    assert [str(c) for c in comparison.summary.b.channels] == [
        "runware · RUNWARE_API_KEY · google:4@2"]


def test_same_changed_and_only_in_one(tmp_path: Path) -> None:
    """Same: the same image, or a failure with the same error code on both sides (a refusal
    that did not change); changed: anything else in both."""
    failed = {"status": "failed", "sha256": None, "output_path": None}
    a = target(tmp_path / "a", [
        cell("a-same", "same"),
        cell("a-image", "other image"),
        cell("a-status", "fails in B"),
        cell("a-both-failed", "fails twice", **failed, error_code="content_policy"),
        cell("a-other-failure", "fails otherwise", **failed, error_code="content_policy"),
        cell("a-only", "only in A"),
    ])  # fmt: skip
    b = target(tmp_path / "b", [
        cell("b-new", "only in B"),
        cell("b-same", "same", latency_s=4.0, cost_usd=0.05),
        cell("b-image", "other image", sha256="sha-other", bytes=90),
        cell("b-status", "fails in B", **failed, error_code="TaskFailed"),
        cell("b-both-failed", "fails twice", **failed, error_code="content_policy"),
        cell("b-other-failure", "fails otherwise", **failed, error_code="Timeout"),
    ])  # fmt: skip
    comparison = compare(load_side(a), load_side(b))
    assert comparison.summary.counts == {"changed": 3, "only_a": 1, "only_b": 1, "same": 2}
    rows = {r["a_cell_id"] or r["b_cell_id"]: r for r in comparison.pairs.iter_rows(named=True)}
    assert rows["a-same"]["kind"] == "same"  # faster and cheaper, the same image
    assert rows["a-same"]["differs"] == ["cost", "latency"]
    assert rows["a-image"]["differs"] == ["size", "sha256"]
    assert rows["a-status"]["differs"] == ["status", "error", "sha256"]
    assert rows["a-both-failed"]["kind"] == "same" and rows["a-both-failed"]["differs"] == []
    assert rows["a-other-failure"]["kind"] == "changed"
    assert rows["a-other-failure"]["differs"] == ["error"]
    assert (rows["a-only"]["kind"], rows["b-new"]["kind"]) == ("only_a", "only_b")
    # changed first, then only in A, only in B, same; each in manifest order
    assert comparison.pairs["kind"].to_list() == [
        "changed", "changed", "changed", "only_a", "only_b", "same", "same"]
    assert comparison.pairs["a_cell_id"].to_list()[:3] == [
        "a-image", "a-status", "a-other-failure"]


def test_the_request_is_everything_but_the_channel(tmp_path: Path) -> None:
    """Variables other than provider and model are part of the request; so are seed,
    references (none and [] alike), format and dataset row."""
    a = target(tmp_path / "a", [
        cell("a0", vars={"style": "photo", "provider": "kie", "model": "m1"}, references=None),
        cell("a1", "ink", vars={"style": "ink"}),
        cell("a2", "seeded", seed=7),
        cell("a3", "row", dataset_row=3, references=["s3://b/ref.png"]),
    ])  # fmt: skip
    b = target(tmp_path / "b", [
        cell("b0", vars={"provider": "runware", "model": "m2", "style": "photo"}),
        cell("b1", "ink", vars={"style": "watercolour"}),
        cell("b2", "seeded", seed=8),
        cell("b3", "row", dataset_row=3, references=["s3://b/ref.png"]),
    ])  # fmt: skip
    assert pairs_of(a, b) == [
        ("only_a", "a1", None), ("only_a", "a2", None),
        ("only_b", None, "b1"), ("only_b", None, "b2"),
        ("same", "a0", "b0"), ("same", "a3", "b3"),
    ]  # fmt: skip


@pytest.mark.parametrize("extra", [
    pytest.param({}, id="strings-read-by-polars"),
    pytest.param({"tags": ["x", {"y": 1}]}, id="any-json-read-one-by-one"),
])
def test_variables_match_whatever_their_order_and_shape(extra: dict[str, Any]) -> None:
    a = pl.Series("vars", [json.dumps({"sku": "1", "style": "ink", "provider": "kie", **extra}),
                             json.dumps({"sku": "2", **extra}), None])
    b = pl.Series("vars", [json.dumps({**extra, "model": "m2", "style": "ink", "sku": "1"}),
                             json.dumps({"sku": "2", "style": "ink", **extra}), "{}"])
    (a0, a1, a2), (b0, b1, b2) = (side.to_list() for side in request_variables(a, b))
    assert a0 == b0 and a2 == b2  # the channel's variables and the order of keys do not count
    assert a1 != b1 and a0 != a2


def test_rows_of_one_request_pair_on_the_same_provider_first(tmp_path: Path) -> None:
    """Two targets holding every provider of a provider axis: kie with kie, runware with
    runware, whatever their order; what is left pairs in manifest order (a channel change)."""
    runware = {"provider": "runware", "vars": {"style": "photo", "provider": "runware"}}
    a = target(tmp_path / "a", [cell("a-kie"), cell("a-rw", **runware, sha256="sha-rw")])
    b = target(tmp_path / "b", [cell("b-rw", **runware, sha256="sha-rw-2"), cell("b-kie")])
    assert pairs_of(a, b) == [("changed", "a-rw", "b-rw"), ("same", "a-kie", "b-kie")]
    gemini = target(tmp_path / "g", [cell("g", provider="gemini")])
    assert pairs_of(a, gemini) == [("only_a", "a-rw", None), ("same", "a-kie", "g")]


def test_several_rows_on_one_provider_pair_in_manifest_order(tmp_path: Path) -> None:
    a = target(tmp_path / "a", [cell("a0")])
    b = target(tmp_path / "b", [cell("b0"), cell("b1", sha256="sha-other")])
    comparison = compare(load_side(a), load_side(b))
    assert pairs_of(a, b) == [("only_b", None, "b1"), ("same", "a0", "b0")]
    assert (comparison.summary.a.repeated_requests, comparison.summary.b.repeated_requests) == (
        0, 1)
    note = "1 request(s) have several rows on one provider in B"
    assert note in render_summary(comparison.summary)
    assert note in render_page(comparison, str(tmp_path / "p"))


def test_target_at_run_id_is_the_rows_that_run_wrote(tmp_path: Path) -> None:
    t = target(tmp_path / "t", [
        cell("c0", run_id="run-1"), cell("c1", "blue", run_id="run-1"),
        cell("c2", "green", run_id="run-2"),
    ])  # fmt: skip
    for run in ("run-0", "run-1", "run-2"):  # run-0 was rewritten whole by later runs
        merge_record(Sink(t), RunRecord.start(run_id=run, job="j", spec_source="s.yaml",
                                              spec_text="x"))
    assert load_side(t).rows.height == 3
    side = load_side(f"{t}@run-2")
    assert side.run_id == "run-2" and side.rows["cell_id"].to_list() == ["c2"]
    assert load_side(f"{t}@run-1").rows.height == 2
    assert pairs_of(f"{t}@run-1", f"{t}@run-2") == [
        ("only_a", "c0", None), ("only_a", "c1", None), ("only_b", None, "c2")]
    with pytest.raises(CompareInputError, match=r"no run 'nope'; its runs: run-0, run-1, run-2"):
        load_side(f"{t}@nope")
    with pytest.raises(CompareInputError, match="more than one run 'run'"):
        load_side(f"{t}@run")
    with pytest.raises(CompareInputError, match="run run-0 has no row left"):
        load_side(f"{t}@run-0")
    with pytest.raises(CompareInputError, match=f"no manifest.parquet at {tmp_path}/nothing"):
        load_side(f"{tmp_path}/nothing@run-1")


def test_hostile_values_are_escaped(tmp_path: Path) -> None:
    folder = tmp_path / 'a"<b>'
    a = target(folder, [
        cell("a0", HOSTILE, vars={"sku": HOSTILE}, provider=HOSTILE),
        cell("a1", "unsafe path", output_path="javascript:alert(1)//../x.png"),
    ])  # fmt: skip
    b = target(tmp_path / "b", [
        cell("b0", HOSTILE, vars={"sku": HOSTILE}, status="failed", sha256=None,
             error_message=HOSTILE, output_path=None),
        cell("b1", "unsafe path", output_uri="javascript:alert(1)", output_path=None),
    ])  # fmt: skip
    comparison = compare(load_side(a), load_side(b))
    text = render_page(comparison, str(tmp_path / "compare.html"))
    assert text.count("<script>") == 1 and "&lt;script&gt;" in text  # the page's own only
    assert "<b>" not in text and "a&quot;&lt;b&gt;" in text  # the target's name
    page = Page(text)  # raises on any script tag or on* attribute
    assert all(not re.match(r"[a-z]+:", src) for src in page.srcs + page.hrefs)
    assert HOSTILE in page.pairs[0]["text"]  # shown as text, in the prompt and the reason
    unsafe = next(p for p in page.pairs if "unsafe path" in p["text"])
    assert unsafe["srcs"] == [] and "not viewable" in unsafe["text"]


def test_images_show_by_path_relative_to_the_page(tmp_path: Path) -> None:
    a = target(tmp_path / "a", [cell("a0"), cell("a1", "blue", output_path="img/blue #1.png")])
    b = target(tmp_path / "runs" / "b", [cell("b0", sha256="other"), cell("b1", "blue")])
    uri = write_page(compare(load_side(a), load_side(b)), str(tmp_path / "c.html"))
    assert uri == str(tmp_path / "c.html")
    page = Page(Path(uri).read_text("utf-8"))
    assert [p["srcs"] for p in page.pairs] == [
        ["a/img/a0.png", "runs/b/img/b0.png"],
        ["a/img/blue%20%231.png", "runs/b/img/b1.png"],
    ]  # fmt: skip
    for src in page.srcs:
        assert (tmp_path / unquote(src)).is_file()
    assert sorted(page.hrefs) == sorted(page.srcs)  # each image links to itself


def test_only_images_inside_the_page_s_folder_show(tmp_path: Path) -> None:
    """A page in reports/ does not reach up to the targets beside it: facts, and a note."""
    a = target(tmp_path / "a", [cell("a0")])
    b = target(tmp_path / "reports" / "b", [cell("b0")])
    text = render_page(compare(load_side(a), load_side(b)), str(tmp_path / "reports" / "c.html"))
    (pair,) = Page(text).pairs
    assert pair["srcs"] == ["b/img/b0.png"]
    assert "not viewable from here: outside the page's folder" in pair["text"]
    assert str(tmp_path / "a" / "img" / "a0.png") in pair["text"]  # where it is, as text


def test_an_image_the_page_cannot_reach_shows_its_facts(tmp_path: Path) -> None:
    """Targets are any fsspec URL; an image on another filesystem (here memory://, as an s3://
    one from a local page) is not drawn, its location and facts are shown."""
    a = target("memory://compare-test/a", [cell("a0", bytes=12345)])
    b = target(tmp_path / "b", [cell("b0")])
    page = Page(render_page(compare(load_side(a), load_side(b)), str(tmp_path / "c.html")))
    (pair,) = page.pairs
    assert pair["srcs"] == ["b/img/b0.png"]
    assert "not viewable from here: on another disk or bucket" in pair["text"]
    assert "memory://" in pair["text"] and "12,345 bytes · 32×32" in pair["text"]
    # A page in the same bucket shows that image by relative path (the page served from
    # the bucket over HTTP finds it), and not the local one; one in a folder beside the
    # target does not reach up to it.
    comparison = compare(load_side(a), load_side(b))
    (pair,) = Page(render_page(comparison, "memory://compare-test/c.html")).pairs
    assert pair["srcs"] == ["a/img/a0.png"] and str(tmp_path / "b") in pair["text"]
    (pair,) = Page(render_page(comparison, "memory://compare-test/pages/c.html")).pairs
    assert pair["srcs"] == [] and "outside the page's folder" in pair["text"]


# -- a manifest is input ---------------------------------------------------------------------

EVIL = "evil.example"
HOSTILE_URIS = [
    pytest.param("javascript:alert(1)", id="javascript"),
    pytest.param("JaVaScRiPt:alert(1)", id="javascript-mixed-case"),
    pytest.param("data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=", id="data"),
    pytest.param(f"http://{EVIL}/pixel.png?who=me", id="http"),
    pytest.param(f"HTTPS://{EVIL}/pixel.png", id="https-upper-case"),
    pytest.param(f"//{EVIL}/pixel.png", id="scheme-relative"),
    pytest.param("file:///etc/passwd", id="file"),
    pytest.param("../../etc/passwd", id="climbs-out"),
    pytest.param("/etc/passwd", id="absolute"),
    pytest.param('x.png" onerror="alert(1)', id="quotes"),
    pytest.param("<script>alert(1)</script>.png", id="script"),
]


def hostile_page(tmp_path: Path, output_path: str | None, output_uri: str | None) -> str:
    """The page of a pair whose B row carries the hostile values, written beside both targets
    (where a safe relative path would show)."""
    a = target(tmp_path / "a", [cell("a0")])
    b = target(tmp_path / "b", [cell("b0", sha256="other", output_path=output_path,
                                     output_uri=output_uri)])
    return render_page(compare(load_side(a), load_side(b)), str(tmp_path / "c.html"))


def assert_only_beside(text: str, tmp_path: Path) -> Page:
    """The page runs nothing and every src or href is a path inside the page's folder."""
    page = Page(text)  # raises on any script tag or on* attribute
    assert policy_of(text)["default-src"] == "'none'"
    for url in page.srcs + page.hrefs:
        assert not re.match(r"[a-z][a-z0-9+.-]*:|/|\\", url, re.IGNORECASE), url
        assert ".." not in unquote(url).split("/"), url
        assert (tmp_path / unquote(url)).resolve().is_relative_to(tmp_path.resolve())
    return page


@pytest.mark.parametrize("uri", HOSTILE_URIS)
def test_a_hostile_output_uri_is_never_followed(tmp_path: Path, uri: str) -> None:
    """A row with no output_path: its output_uri is shown as text (escaped), never a src."""
    text = hostile_page(tmp_path, None, uri)
    page = assert_only_beside(text, tmp_path)
    (pair,) = page.pairs
    assert pair["srcs"] == ["a/img/a0.png"]  # A's image, beside the page, still shows
    assert "not viewable from here: the manifest gives it no path" in pair["text"]
    assert uri in pair["text"]  # as text
    assert EVIL not in " ".join(page.srcs + page.hrefs)


@pytest.mark.parametrize("path", HOSTILE_URIS)
def test_a_hostile_output_path_is_never_followed(tmp_path: Path, path: str) -> None:
    """An output_path that is not a plain relative path is shown as text; one that is (with
    quotes or markup in a file name) is quoted, so it can never leave its attribute."""
    text = hostile_page(tmp_path, path, "http://tracker.example/b0.png")
    page = assert_only_beside(text, tmp_path)
    (pair,) = page.pairs
    assert "tracker.example" not in text  # the target as given wins over output_uri
    assert EVIL not in " ".join(page.srcs + page.hrefs)
    if safe(path):
        assert pair["srcs"] == ["a/img/a0.png", "b/" + quote(path)]
    else:
        assert pair["srcs"] == ["a/img/a0.png"]
        assert "not viewable from here: its path in the manifest is not a safe one" in pair[
            "text"]


def test_a_huge_location_is_cut(tmp_path: Path) -> None:
    """A foreign manifest's value can be any size; the page stays ~2 KB a pair."""
    text = hostile_page(tmp_path, None, "https://x/" + "a" * 1_000_000)
    assert len(text) < 20_000 and "https://x/" + "a" * 289 + "…" in text


def test_the_page_has_the_gallery_s_content_security_policy(tmp_path: Path) -> None:
    """Nothing runs but the page's own script, the style only by its hash, images only from
    beside the page: the gallery's rule, from the one definition (outputs.html). The hashes
    are of the text the page embeds."""
    a = target(tmp_path / "a", [cell("a0")])
    text = render_page(compare(load_side(a), load_side(a)), str(tmp_path / "c.html"))
    rules = policy_of(text)
    style = re.search(r"<style>(.*?)</style>", text, re.DOTALL)
    script = re.search(r"<script>(.*?)</script>", text, re.DOTALL)
    assert style is not None and script is not None

    def digest(source: str) -> str:
        hashed = base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()
        return f"'sha256-{hashed}'"

    assert rules == {"default-src": "'none'", "script-src": digest(script[1]),
                     "style-src": digest(style[1]), "img-src": "'self' file:"}
    gallery = policy_of(render_gallery(rows_to_frame([cell("g0")]), title="g"))
    assert (gallery["default-src"], gallery["img-src"]) == (rules["default-src"],
                                                            rules["img-src"])
    assert text.index("Content-Security-Policy") < text.index("<style>")  # before any content


def test_the_page_is_bounded_and_says_so(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import nbp.outputs.compare_page

    monkeypatch.setattr(nbp.outputs.compare_page, "MAX_PAIRS", 2)
    a = target(tmp_path / "a", [cell(f"a{i}", f"p{i}") for i in range(4)])
    b = target(tmp_path / "b", [cell(f"b{i}", f"p{i}", sha256="x" if i == 3 else f"sha-p{i}")
                                for i in range(4)])
    text = render_page(compare(load_side(a), load_side(b)), str(tmp_path / "c.html"))
    page = Page(text)
    assert [p["class"] for p in page.pairs] == ["pair changed", "pair same"]
    assert "the first 2 of 4 pairs" in text and "Same: 3 (the first 1)" in text


def test_the_summary_table(tmp_path: Path) -> None:
    a = target(tmp_path / "a", [cell("a0", latency_s=10.0), cell("a1", "b", latency_s=20.0),
                                cell("a2", "c", latency_s=None, status="failed", sha256=None,
                                     cost_usd=None)])
    b = target(tmp_path / "b", [cell("b0", latency_s=4.0, cost_usd=0.05)])
    summary = compare(load_side(a), load_side(f"{b}@r1")).summary
    text = render_summary(summary)
    assert re.search(r"cells +3 +1\n", text)
    assert re.search(r"total cost +\$0\.18 +\$0\.05\n", text)
    assert re.search(r"median latency +15\.0 s +4\.0 s\n", text)
    for kind, n in (("changed", 0), ("same", 1), ("only in A", 2), ("only in B", 0)):
        assert re.search(rf"^{kind} +{n}\b", text, re.MULTILINE), text
    data = summary.to_json()
    assert data["counts"] == {"changed": 0, "only_a": 2, "only_b": 0, "same": 1}
    assert data["b"]["run_id"] == "r1" and data["b"]["source"] == f"{b}@r1"
    assert data["a"]["median_latency_s"] == 15.0 and data["a"]["cost_usd"] == 0.18
    json.dumps(data)


def test_where_the_page_goes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    sink, name = page_location("compare.html")
    assert (sink.root, name) == (str(tmp_path), "compare.html")
    (tmp_path / "reports").mkdir()
    for out in ("reports", "reports/", "new/"):  # a folder gets compare.html in it
        sink, name = page_location(out)
        assert (sink.root, name) == (str(tmp_path / out.rstrip("/")), "compare.html")
    sink, name = page_location("memory://pages/x.html")
    assert (sink.uri(name), name) == ("memory:///pages/x.html", "x.html")
    with pytest.raises(CompareInputError, match=r"nope://x\.html: not a place for the page"):
        page_location("nope://x.html")


# -- the command line --------------------------------------------------------------------------


def test_nbp_compare_on_the_command_line(tmp_path: Path) -> None:
    """Exit 0 with the summary table and the page (default ./compare.html); 2, with the
    reason and no traceback, for a missing target or run."""
    a = target(tmp_path / "a", [cell("a0"), cell("a1", "blue")])
    b = target(tmp_path / "b", [cell("b0", provider="runware", sha256="other")])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's nbp, from another folder
    done = subprocess.run([sys.executable, "-m", "nbp.flows.cli", "compare", a, b], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^changed +1 .*\nsame +0 .*\nonly in A +1\nonly in B +0\n", done.stdout,
                     re.MULTILINE), done.stdout
    assert f"page: {tmp_path / 'compare.html'}" in done.stdout
    assert Page((tmp_path / "compare.html").read_text("utf-8")).pairs
    as_json = run_nbp("compare", f"{a}@r1", b, "--json", "--out", str(tmp_path / "j.html"))
    assert as_json.returncode == 0, as_json.stderr
    summary = json.loads(as_json.stdout)
    assert summary["counts"] == {"changed": 1, "only_a": 1, "only_b": 0, "same": 0}
    assert summary["page"] == str(tmp_path / "j.html") and (tmp_path / "j.html").is_file()
    for args, says in (([f"{tmp_path}/missing", b], f"no manifest.parquet at {tmp_path}/missing"),
                       ([a, f"{b}@nope"], "no run 'nope'; its runs: r1")):
        bad = run_nbp("compare", *args, "--out", str(tmp_path / "bad.html"))
        assert bad.returncode == 2 and says in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
    assert not (tmp_path / "bad.html").exists()


def test_the_frame_is_the_comparison_s_record(tmp_path: Path) -> None:
    """`pairs` holds both sides' facts, for anyone who wants more than the page."""
    a = target(tmp_path / "a", [cell("a0")])
    b = target(tmp_path / "b", [cell("b0", cost_usd=0.134)])
    pairs = compare(load_side(a), load_side(b)).pairs
    assert pairs.select("a_cost_usd", "b_cost_usd").row(0) == (0.09, 0.134)
    assert pairs["request"].struct.field("prompt").to_list() == ["a red shoe"]
    assert pairs.schema["differs"] == pl.List(pl.String())


# -- by axes -----------------------------------------------------------------------------------


def experiment(path: Path, template: str, *, failing: Sequence[str] = (),
               sha: str = "") -> str:
    """A target of a small experiment: templates t1 (fixed) and t2 (`template`, its text)
    x styles x two providers, one replicate each; cells of `failing` styles of t2 are
    refused on kie; `sha` marks images of t2 as new."""
    rows = []
    for name, text in (("t1", "{style} shoe"), ("t2", template)):
        for style in ("photo", "ink"):
            for provider in ("kie", "gemini"):
                prompt = text.format(style=style)
                refused = name == "t2" and style in failing and provider == "kie"
                facts: dict[str, Any] = {
                    "sha256": f"{sha if name == 't2' else ''}sha-{prompt}-{provider}"}
                if refused:
                    facts = {"status": "failed", "sha256": None, "output_path": None,
                             "cost_usd": 0.0, "error_code": "content_policy"}
                rows.append(cell(
                    f"{name}-{style}-{provider}", prompt, provider=provider,
                    vars={"prompt": text, "style": style, "provider": provider},
                    **facts))  # fmt: skip
    return target(path, rows)


def test_by_axes_pairs_a_changed_template_side_by_side(tmp_path: Path) -> None:
    """The issue's walk: template t2's text changed. By request nothing of t2 pairs; by
    style and provider each t2 cell meets its new self, and a refusal on both sides with the
    same code is the same."""
    a = experiment(tmp_path / "a", "{style} boot", failing=["ink"])
    b = experiment(tmp_path / "b", "a {style} boot, close up", failing=["ink"], sha="new-")
    by_request = compare(load_side(a), load_side(b))
    assert by_request.summary.counts == {"changed": 0, "only_a": 4, "only_b": 4, "same": 4}
    comparison = compare(load_side(a), load_side(b), by=["style", "provider"])
    kinds = [(k, x, y) for k, x, y in comparison.pairs.select("kind", "a_cell_id", "b_cell_id")
             .iter_rows()]
    assert kinds[:3] == [("changed", "t2-photo-kie", "t2-photo-kie"),
                         ("changed", "t2-photo-gemini", "t2-photo-gemini"),
                         ("changed", "t2-ink-gemini", "t2-ink-gemini")]  # changed first
    assert ("same", "t2-ink-kie", "t2-ink-kie") in kinds  # refused alike on both sides
    assert all(x == y for _, x, y in kinds)  # within a key: the same request, then the
    # same but for its prompt text: each cell meets its counterpart, not the next in order
    assert comparison.summary.counts == {"changed": 3, "only_a": 0, "only_b": 0, "same": 5}
    assert (comparison.summary.a.repeated_keys, comparison.summary.b.repeated_keys) == (4, 4)
    changed = comparison.pairs.row(0, named=True)
    assert changed["key"] == {"style": "photo", "provider": "kie"}
    assert changed["differs"] == ["request", "sha256"]
    assert (changed["a_request"]["prompt"], changed["b_request"]["prompt"]) == (
        "photo boot", "a photo boot, close up")
    by_template = compare(load_side(a), load_side(b), by=["template", "style", "provider"])
    # the template axis is its text (no name): the changed text pairs with nothing
    assert by_template.summary.counts == {"changed": 0, "only_a": 4, "only_b": 4, "same": 4}
    assert by_template.summary.a.repeated_keys == 0


def test_by_without_axes_pairs_as_before(tmp_path: Path) -> None:
    a = target(tmp_path / "a", [cell("a0"), cell("a1", "b")])
    assert compare(load_side(a), load_side(a), by=[]).pairs.columns == compare(
        load_side(a), load_side(a)).pairs.columns


def test_an_axis_neither_side_has_is_refused_with_the_axes_there_are(tmp_path: Path) -> None:
    a = target(tmp_path / "a", [cell("a0", vars={"style": "ink", "lighting": "soft"})])
    b = target(tmp_path / "b", [cell("b0", vars={"style": "ink"})])
    with pytest.raises(CompareInputError) as error:
        compare(load_side(a), load_side(b), by=["style", "colour", "mood"])
    assert str(error.value) == (
        "no axis 'colour', 'mood' on either side; the axes there are: template, provider, "
        "model, replicate, aspect_ratio, resolution, account, lighting, style")
    # one side having it is enough: the other side's rows have none (null)
    pairs = compare(load_side(a), load_side(b), by=["lighting"]).pairs
    assert pairs.select("kind", "a_cell_id", "b_cell_id").rows() == [
        ("only_a", "a0", None), ("only_b", None, "b0")]


def test_the_summary_lists_the_first_changed_pairs_and_the_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = experiment(tmp_path / "a", "{style} boot")
    b = experiment(tmp_path / "b", "{style} boot", failing=["ink", "photo"], sha="new-")
    comparison = compare(load_side(a), load_side(b), by=["style", "provider"])
    text = render_comparison(comparison)
    assert "changed pairs (4):\n  style=photo · provider=kie · photo boot\n" in text
    assert ("    A t2-photo-kie kie succeeded (sha256 sha-photo bo)  →  "
            "B t2-photo-kie kie failed (content_policy)\n") in text
    assert re.search(r"^by style +cells +\$/image +p50 latency +p95 latency +failed +changed$",
                     text, re.MULTILINE), text
    assert re.search(r"^ink +4 → 4 +\$0\.090 → \$0\.090 .* 0% → 25% +2 of 4$", text,
                     re.MULTILINE), text
    import nbp.outputs.compare

    monkeypatch.setattr(nbp.outputs.compare, "MAX_LISTED", 3)
    listed = render_comparison(comparison)
    assert "changed pairs (4, the first 3):" in listed and listed.count("  →  B ") == 3


def test_json_carries_the_pairs_and_the_tables(tmp_path: Path) -> None:
    a = experiment(tmp_path / "a", "{style} boot")
    b = experiment(tmp_path / "b", "{style} boot", failing=["ink"], sha="new-")
    done = run_nbp("compare", a, b, "--by", "style", "--by", "provider,template", "--json",
                   "--out", str(tmp_path / "c.html"))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert {"a", "b", "counts", "page"} <= set(data)  # what it held before
    assert data["by"] == ["style", "provider", "template"]
    assert data["counts"] == {"changed": 4, "only_a": 0, "only_b": 0, "same": 4}
    first = data["pairs"][0]
    assert first["kind"] == "changed" and first["key"] == {
        "style": "photo", "provider": "kie", "template": "{style} boot"}
    assert set(first["a"]) == {"cell_id", "run_id", "provider", "model", "status",
                               "error_code", "sha256", "cost_usd", "latency_s",
                               "output_path", "image_path"}
    refused = next(p for p in data["pairs"] if p["b"]["status"] == "failed")
    assert refused["b"]["error_code"] == "content_policy" and refused["b"]["sha256"] is None
    assert [t["axis"] for t in data["tables"]] == ["overall", "style", "provider", "template"]
    ink = next(r for r in data["tables"][1]["rows"] if r["value"] == "ink")
    assert (ink["a"]["failure_rate"], ink["b"]["failure_rate"]) == (0.0, 0.25)
    assert (ink["paired"], ink["changed"], ink["share_changed"]) == (4, 2, 0.5)
    plain = json.loads(run_nbp("compare", a, b, "--json", "--out",
                               str(tmp_path / "d.html")).stdout)
    assert plain["by"] == [] and plain["pairs"][0]["key"]["prompt"] == "photo boot"
    assert plain["pairs"][0]["key"]["vars"] == {"style": "photo"}  # the request's variables
    assert [t["axis"] for t in plain["tables"]] == ["overall"]
    bad = run_nbp("compare", a, b, "--by", "style,colour", "--out", str(tmp_path / "e.html"))
    assert bad.returncode == 2 and "no axis 'colour' on either side" in bad.stderr
    assert "the axes there are: template, provider" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "e.html").exists()


def test_the_page_shows_the_tables_and_the_key_of_each_pair(tmp_path: Path) -> None:
    a = experiment(tmp_path / "a", "{style} boot")
    b = experiment(tmp_path / "b", "{style} boot", failing=["ink"], sha="new-")
    text = render_page(compare(load_side(a), load_side(b), by=["style"]),
                       str(tmp_path / "c.html"))
    page = Page(text)
    assert text.index('id="tables"') < text.index('id="changed"')
    assert "<caption>style</caption>" in text and "2 of 4 (50%)" in text
    assert [p["class"] for p in page.pairs][:4] == ["pair changed"] * 4
    assert "style=photo" in page.pairs[0]["text"]
    assert "cells paired on style" in text
    assert all(p["attrs"]["data-a"] and p["attrs"]["data-b"] for p in page.pairs)


# -- two runs of one target --------------------------------------------------------------------


@pytest.fixture(scope="module")
def refreshed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three emulated runs into one target, `{fruit}.png` a product: run-0 makes a lemon and
    a pear, both matte; run-1 makes the pear glossy (a new cell at the same path: the matte
    one is superseded, its image kept as history) and leaves the lemon alone; run-2
    (--force) makes both again, rewriting their manifest rows. Returns the folder that holds
    the target (`out`)."""
    import asyncio

    from nbp.flows.engine.job import RunHooks, RunOptions, run_job
    from nbp.flows.orchestration.emulation import serve_emulators

    root = tmp_path_factory.mktemp("history")
    spec = root / "spec.yaml"
    spec.write_text(json.dumps({
        "version": 1, "name": "fruit", "provider": "kie",
        "matrix": {"prompt": ["A {fruit} on a plate, {look} finish"]},
        "dataset": {"path": str(root / "fruit.csv")},
        "output": {"target": str(root / "out"), "path": "{fruit}.{ext}"},
        "limits": {"kie": {"poll_interval": 0.05}},
    }))  # fmt: skip
    for run_id, pear, force in (("run-0", "matte", False), ("run-1", "glossy", False),
                                ("run-2", "glossy", True)):
        (root / "fruit.csv").write_text(f"fruit,look\nlemon,matte\npear,{pear}\n")
        options = RunOptions(spec=str(spec), emulate=True, emulator_latency_s=0.05,
                             run_id=run_id, force=force)
        result = asyncio.run(run_job(options, hooks=RunHooks(emulation=serve_emulators)))
        assert result.exit_code == 0 and result.written["run_rows"].endswith(
            f"/out/.nbp/runs/{run_id}.parquet")
    return root


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_runs_of_one_target_compare_through_its_history(refreshed: Path) -> None:
    """@run-0 against @run-1: the pear changed, and each side shows its own image, the matte
    one from history (the pear's path holds the glossy one now); the lemon run-1 did not
    make is only in A. Every image drawn is the one its row's sha256 names."""
    out = refreshed / "out"
    comparison = compare(load_side(f"{out}@run-0"), load_side(f"{out}@run-1"), by=["fruit"])
    assert comparison.pairs.select("kind", "key").rows() == [
        ("changed", {"fruit": "pear"}), ("only_a", {"fruit": "lemon"})]
    pear = comparison.pairs.row(0, named=True)
    assert pear["a_image_path"] == f".nbp/history/{pear['a_cell_id']}.png"
    assert (pear["a_output_path"], pear["b_image_path"]) == ("pear.png", "pear.png")
    page = Page(Path(write_page(comparison, str(refreshed / "c.html"))).read_text("utf-8"))
    assert page.pairs[0]["srcs"] == [f"out/.nbp/history/{pear['a_cell_id']}.png",
                                     "out/pear.png"]
    assert page.pairs[1]["srcs"] == ["out/lemon.png"]
    for side in ("a", "b"):
        assert sha256_of(out / pear[f"{side}_image_path"]) == pear[f"{side}_sha256"]
    # The target itself: its superseded matte row shows its history image too.
    whole = compare(load_side(str(out)), load_side(f"{out}@run-1"), by=["fruit", "look"])
    matte = whole.pairs.filter(pl.col("a_cell_id") == pear["a_cell_id"]).row(0, named=True)
    assert matte["kind"] == "only_a" and matte["a_image_path"] == pear["a_image_path"]


def test_a_run_s_rows_outlive_the_manifest_s(refreshed: Path) -> None:
    """run-2 rewrote every current row of the manifest; run-0's rows are still read from its
    rows file (the manifest alone keeps only its superseded pear), and a cell made again with
    the same image is the same."""
    out = refreshed / "out"
    manifest = pl.read_parquet(out / "manifest.parquet")
    assert manifest.filter(pl.col("run_id") == "run-0").height == 1
    side = load_side(f"{out}@run-0")
    assert side.rows.height == 2 and set(side.rows["run_id"]) == {"run-0"}
    comparison = compare(side, load_side(f"{out}@run-2"), by=["fruit"])
    assert comparison.pairs.select("kind", "key").rows() == [
        ("changed", {"fruit": "pear"}), ("same", {"fruit": "lemon"})]
    lemon = comparison.pairs.row(1, named=True)
    assert lemon["a_image_path"] == lemon["b_image_path"] == "lemon.png"
    rows_file = out / ".nbp" / "runs" / "run-2.parquet"
    assert pl.read_parquet(rows_file).height == 2  # its own rows, not a snapshot
    assert pl.read_parquet(out / ".nbp" / "runs" / "run-1.parquet").height == 1


def test_a_run_from_before_rows_files_reads_the_manifest(refreshed: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(refreshed / "out", out)
    (out / ".nbp" / "runs" / "run-0.parquet").unlink()
    assert load_side(f"{out}@run-0").rows.height == 1  # what the manifest still holds
    (out / ".nbp" / "runs" / "run-1.parquet").unlink()
    with pytest.raises(CompareInputError, match=r"run run-1 has no row left in manifest\.parquet "
                                                r"and no rows file"):
        load_side(f"{out}@run-1")
    (out / ".nbp" / "runs" / "run-2.parquet").write_text("not parquet")
    with pytest.raises(CompareInputError, match=r"run-2\.parquet is not the rows of a run"):
        load_side(f"{out}@run-2")


def test_an_image_no_longer_at_its_path_is_named_not_drawn(tmp_path: Path) -> None:
    """A row whose path now holds another image (a cell made again, or another cell's) and
    no history copy: its facts and why, never the wrong picture."""
    t = target(tmp_path / "t", [cell("c0", run_id="r2", sha256="new"), cell("c1", "blue",
                                                                             run_id="r2")])
    for run in ("r1", "r2"):
        merge_record(Sink(t), RunRecord.start(run_id=run, job="j", spec_source="s.yaml",
                                              spec_text="x"))
    old = rows_to_frame([cell("c0", run_id="r1", sha256="old"),
                         cell("c9", "gone", run_id="r1", output_path="img/c1.png")])
    buffer = io.BytesIO()
    old.write_parquet(buffer)
    Sink(t).write_bytes(".nbp/runs/r1.parquet", buffer.getvalue(), overwrite=True)
    comparison = compare(load_side(f"{t}@r1"), load_side(f"{t}@r2"))
    notes = dict(comparison.pairs.select("a_cell_id", "a_image_note").drop_nulls().rows())
    assert notes == {"c0": "its path now holds a newer image of this cell",
                     "c9": "its path now holds cell c1's image"}
    page = Page(render_page(comparison, str(tmp_path / "c.html")))
    c0 = next(p for p in page.pairs if "a red shoe" in p["text"])
    assert c0["srcs"] == ["t/img/c0.png"]  # B's, the current one; A's by its facts
    assert "not viewable from here: its path now holds a newer image" in c0["text"]


def test_the_tables_carry_each_side_s_ratings(tmp_path: Path) -> None:
    """Ratings imported into each target (`nbp review --import`) become figures of compare's
    tables: mean stars, share judged pass, share of preferences won — each side its own."""
    a = experiment(tmp_path / "a", "{style} boot")
    b = experiment(tmp_path / "b", "{style} boot", sha="new-")

    def rate(where: str, stars: dict[str, int], preferences: Sequence[dict[str, Any]] = ()
             ) -> None:
        ratings = [{"cell_id": cid, "stars": n, "pass": n >= 3, "at": "2026-12-06T08:00:00Z"}
                   for cid, n in stars.items()]
        data = json.dumps({"format": "nbp-ratings", "version": 1,
                           "exported_at": "2026-12-06T08:00:00Z", "title": "t",
                           "ratings": ratings, "preferences": list(preferences)}).encode()
        sink = Sink(where)
        manifest = read_manifest(sink)
        assert manifest is not None
        record_ratings(sink, read_ratings(data, manifest, sink), by="ana")

    rate(a, {"t1-photo-kie": 5, "t1-ink-kie": 2})
    preference = {"a": {"target": a, "cell_id": "t2-ink-gemini"},
                  "b": {"target": b, "cell_id": "t2-ink-gemini"}, "winner": "b",
                  "at": "2026-12-06T08:00:00Z"}
    rate(b, {"t1-photo-kie": 4}, [preference])
    rate(a, {}, [preference])
    data = json.loads(run_nbp("compare", a, b, "--by", "style", "--json",
                              "--out", str(tmp_path / "c.html")).stdout)
    overall = data["tables"][0]["rows"][0]
    assert (overall["a"]["stars"], overall["b"]["stars"]) == (3.5, 4.0)
    assert (overall["a"]["pass"], overall["b"]["pass"]) == (0.5, 1.0)
    assert (overall["a"]["preferred"], overall["b"]["preferred"]) == (0.0, 1.0)
    photo = next(r for r in data["tables"][1]["rows"] if r["value"] == "photo")
    assert photo["a"]["preferred"] is None  # no preference given: no share
    text = run_nbp("compare", a, b, "--by", "style", "--out", str(tmp_path / "c.html")).stdout
    header = r"^overall +cells .* stars +pass +preferred +changed$"
    assert re.search(header, text, re.MULTILINE), text
    plain = experiment(tmp_path / "p", "{style} boot")  # no ratings: no such columns
    assert "stars" not in run_nbp("compare", plain, plain, "--out",
                                  str(tmp_path / "d.html")).stdout
