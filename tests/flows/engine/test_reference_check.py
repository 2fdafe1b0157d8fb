"""http(s) references are asked before anything is paid: each distinct URL once, in bounded
concurrency and time, under the host rule of every fetch nbp makes; a cell is paid for only
when all its http(s) references answered.

Most tests hit a real server on loopback (so they pass `allow_private_hosts`); the ones about
a redirect to a private host use a mock transport and a stand-in resolver, since the real
server is itself on a private address.
"""

from __future__ import annotations

import asyncio
import http.server
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from nbp.flows.cli import main
from nbp.flows.engine.reference_check import (
    CheckLimits,
    ReferenceState,
    check_references,
    http_references,
    payable_problem,
    references_fingerprint,
    shown_url,
)
from nbp.flows.engine.references import ReferenceLoader, ReferenceRefused
from nbp.flows.spec.inputs import InputPolicy
from nbp.flows.spec.loader import load_job, validate_spec_file

ALLOWED = InputPolicy(allow_private_hosts=True)
PUBLIC_IP = "93.184.216.34"  # any global address: the stand-in resolver's answer


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, *, head: bool) -> None:
        server = self.server
        with server.lock:
            server.requests[(self.command, self.path)] += 1
            server.in_flight += 1
            server.most_in_flight = max(server.most_in_flight, server.in_flight)
        try:
            self._route(head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout tests)
        finally:
            with server.lock:
                server.in_flight -= 1

    def _route(self, head: bool) -> None:
        path = self.path
        if path.startswith("/ok/"):
            self._send(200, {"ETag": f'"{path[4:]}"', "Content-Type": "image/png"}, size=1234)
        elif path == "/rows.csv":
            body = b"sku\nA\nB\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/csv")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(b"" if head else body)
        elif path == "/modified":
            self._send(200, {"Last-Modified": "Wed, 21 Oct 2026 07:28:00 GMT",
                             "Content-Type": "image/jpeg"}, size=99)
        elif path.startswith("/photo/"):  # what it answers is the test's to change
            headers = {"Content-Type": "image/png"}
            if self.server.etag is not None:
                headers["ETag"] = f"\"{self.server.etag}\""
            self._send(200, headers, size=10)
        elif path == "/plain":
            self._send(200, {"Content-Type": "image/png"}, size=10)
        elif path.startswith("/missing"):
            self._send(404, {})
        elif path == "/html":
            self._send(200, {"Content-Type": "text/html; charset=utf-8"}, size=20)
        elif path == "/big":
            self._send(200, {"Content-Type": "image/png"}, size=30 << 20)
        elif path == "/no-head":
            if head:
                self._send(405, {})
            else:
                assert self.headers["Range"] == "bytes=0-0"
                self._send(206, {"ETag": '"partial"', "Content-Type": "image/png",
                                 "Content-Range": "bytes 0-0/5000"}, size=1)
        elif path == "/redirect":
            self._send(302, {"Location": "/ok/redirected"})
        elif path == "/loop":
            self._send(302, {"Location": "/loop"})
        elif path.startswith("/slow-ok/"):
            time.sleep(0.15)
            self._send(200, {"ETag": '"slow"', "Content-Type": "image/png"}, size=5)
        elif path == "/slow":
            time.sleep(3)
            self._send(200, {"Content-Type": "image/png"}, size=5)
        else:
            self._send(500, {})

    def _send(self, status: int, headers: dict[str, str], size: int = 0) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command == "GET" and size and size < 1 << 20:
            self.wfile.write(b"\0" * size)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    """Scripted routes on 127.0.0.1; counts each (method, path) asked and the most requests
    it had in flight at once."""

    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: Counter[tuple[str, str]] = Counter()
        self.in_flight = self.most_in_flight = 0
        self.etag: str | None = None  # of /photo/...

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def asked(self, path: str) -> int:
        return sum(n for (_, p), n in self.requests.items() if p == path)


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def check(urls: Sequence[str], policy: InputPolicy = ALLOWED, **limits: float
          ) -> dict[str, ReferenceState]:
    return asyncio.run(check_references(urls, policy, limits=CheckLimits(**limits)))


# -- answers --------------------------------------------------------------------------------


def test_answers_give_fingerprints_or_reasons(server: _Server) -> None:
    base = server.base
    states = check([f"{base}/ok/a", f"{base}/modified", f"{base}/plain", f"{base}/missing",
                    f"{base}/html", f"{base}/big", f"{base}/no-head", f"{base}/redirect"])
    seen = {url.removeprefix(base): (s.fingerprint, s.code) for url, s in states.items()}
    assert seen == {
        "/ok/a": ('etag:"a"', None),
        "/modified": ("modified:Wed, 21 Oct 2026 07:28:00 GMT;length:99", None),
        "/plain": (None, None),
        "/missing": (None, "status"),
        "/html": (None, "not_image"),
        "/big": (None, "too_large"),
        "/no-head": ('etag:"partial"', None),  # HEAD refused: a one-byte GET instead
        "/redirect": ('etag:"redirected"', None),
    }
    assert states[f"{base}/missing"].failure == "answers 404 Not Found"
    assert "text/html, not an image" in str(states[f"{base}/html"].failure)
    assert server.requests[("GET", "/no-head")] == 1
    assert server.requests[("GET", "/big")] == 0  # a size is asked, never downloaded


def test_each_distinct_url_is_asked_once(server: _Server) -> None:
    urls = [f"{server.base}/ok/{i % 3}" for i in range(30)] + [f"{server.base}/missing"] * 5
    states = check(urls)
    assert len(states) == 4
    assert [server.asked(f"/ok/{i}") for i in range(3)] == [1, 1, 1]
    assert server.asked("/missing") == 1


def test_concurrency_is_bounded(server: _Server) -> None:
    urls = [f"{server.base}/slow-ok/{i}" for i in range(24)]
    states = check(urls, concurrency=4)
    assert all(state.ok for state in states.values())
    assert 2 <= server.most_in_flight <= 4


def test_a_slow_server_times_out(server: _Server) -> None:
    started = time.monotonic()
    state = check([f"{server.base}/slow"], timeout_s=0.3)[f"{server.base}/slow"]
    assert (state.code, state.failure) == ("timeout", "no answer within 0.3 s")
    assert time.monotonic() - started < 2


def test_the_whole_check_is_bounded_in_time(server: _Server) -> None:
    started = time.monotonic()
    states = check([f"{server.base}/slow", f"{server.base}/ok/x"], concurrency=1,
                   timeout_s=10, total_s=0.4)
    assert time.monotonic() - started < 2
    assert {s.code for s in states.values()} == {"not_checked"}
    assert "stopped after 0.4 s" in str(states[f"{server.base}/ok/x"].failure)


def test_redirect_loops_end(server: _Server) -> None:
    state = check([f"{server.base}/loop"])[f"{server.base}/loop"]
    assert state.code == "redirects" and server.asked("/loop") == 6


def test_a_resolver_that_hangs_is_bounded_too() -> None:
    def hanging(host: str, port: int) -> list[str]:
        time.sleep(1)
        return [PUBLIC_IP]

    started = time.monotonic()
    states = asyncio.run(check_references(
        [f"http://slow-dns.example/{i}.png" for i in range(3)], InputPolicy(),
        limits=CheckLimits(timeout_s=0.2), resolve=hanging))
    assert {s.failure for s in states.values()} == {
        "host slow-dns.example: no DNS answer within 0.2 s"}
    assert time.monotonic() - started < 1.5  # one lookup for the host, not one per URL


def test_dns_failure_and_refused_connection_are_reasons() -> None:
    def nowhere(host: str, port: int) -> list[str]:
        raise OSError(-2, "Name or service not known")

    states = asyncio.run(check_references(
        ["http://gone.example/a.png"], InputPolicy(), resolve=nowhere))
    assert states["http://gone.example/a.png"].failure == (
        "host gone.example cannot be resolved (Name or service not known)")
    closed = check(["http://127.0.0.1:9/a.png"])["http://127.0.0.1:9/a.png"]
    assert closed.code == "connect" and "cannot connect to 127.0.0.1" in str(closed.failure)


def test_what_is_not_a_url_is_a_reason() -> None:
    states = check(["http://[::1/a.png", "http://cdn.example.com:99999/a.png"])
    assert [s.failure for s in states.values()] == [
        "is not a valid URL, or redirects to one", "host cdn.example.com: not a valid port"]


# -- the host rule --------------------------------------------------------------------------


@pytest.mark.parametrize("host", [
    pytest.param("127.0.0.1", id="loopback"),
    pytest.param("10.1.2.3", id="private"),
    pytest.param("169.254.169.254", id="link-local-metadata"),
    pytest.param("[::1]", id="ipv6-loopback"),
    pytest.param("localhost", id="localhost"),
])
def test_private_hosts_are_not_asked_unless_allowed(server: _Server, host: str) -> None:
    url = f"http://{host}:{server.server_address[1]}/ok/a"
    state = check([url], InputPolicy())[url]
    assert state.code == "refused" and "--allow-private-hosts" in str(state.failure)
    assert not server.requests


def test_a_name_resolving_to_loopback_is_refused(server: _Server) -> None:
    url = f"http://photos.example:{server.server_address[1]}/ok/a"
    states = asyncio.run(check_references(
        [url], InputPolicy(), resolve=lambda host, port: ["127.0.0.1"]))
    assert states[url].failure == (
        "host photos.example resolves to 127.0.0.1, which is a loopback address; nbp "
        "fetches only from public hosts unless you allow private ones (--allow-private-hosts)")
    assert not server.requests


def _cdn(request: httpx.Request) -> httpx.Response:
    """A public CDN (by the stand-in resolver) redirecting to private places."""
    host, path = request.headers["host"], request.url.path
    assert host == "cdn.example.com" and request.url.host == PUBLIC_IP  # pinned, by name
    if path == "/ok.png":
        return httpx.Response(200, headers={"ETag": '"cdn"', "Content-Type": "image/png"})
    targets = {"/to-ip": "http://10.0.0.5/x.png", "/to-metadata": "http://metadata.internal/",
               "/to-v6": "http://[::ffff:169.254.169.254]/", "/to-ftp": "ftp://cdn/x"}
    return httpx.Response(302, headers={"Location": targets[path]})


def _resolver(host: str, port: int) -> list[str]:
    return {"cdn.example.com": [PUBLIC_IP], "metadata.internal": ["169.254.169.254"]}[host]


def test_redirects_to_private_hosts_are_not_followed() -> None:
    urls = [f"http://cdn.example.com/{p}" for p in
            ("ok.png", "to-ip", "to-metadata", "to-v6", "to-ftp")]
    states = asyncio.run(check_references(
        urls, InputPolicy(), transport=httpx.MockTransport(_cdn), resolve=_resolver))
    failures = {url.rsplit("/", 1)[1]: s.failure for url, s in states.items()}
    assert states[urls[0]].fingerprint == 'etag:"cdn"'
    assert failures["to-ip"] is not None and failures["to-ip"].startswith(
        "redirects to 10.0.0.5, but host 10.0.0.5 is a private address")
    assert "metadata.internal resolves to 169.254.169.254, which is a link-local" in str(
        failures["to-metadata"])
    assert "is a link-local address" in str(failures["to-v6"])
    assert "not an http(s) URL" in str(failures["to-ftp"])


def test_a_host_is_resolved_once() -> None:
    asked: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return [PUBLIC_IP]

    urls = [f"http://cdn.example.com/ok.png?v={i}" for i in range(20)]
    states = asyncio.run(check_references(
        urls, InputPolicy(), transport=httpx.MockTransport(_cdn), resolve=resolver))
    assert all(s.ok for s in states.values()) and asked == ["cdn.example.com"]


# -- what the run asks ----------------------------------------------------------------------


GOOD = ReferenceState("https://cdn.example.com/a.png", fingerprint='etag:"1"')
GONE = ReferenceState("https://cdn.example.com/b.png", failure="answers 404 Not Found",
                      code="status")
STATES = {GOOD.url: GOOD, GONE.url: GONE}


def test_a_cell_is_payable_only_when_its_http_references_answered() -> None:
    assert payable_problem([GOOD.url, "/data/local.png"], STATES) is None
    assert payable_problem([], STATES) is None
    assert payable_problem([GOOD.url, GONE.url], STATES) == (
        "reference image https://cdn.example.com/b.png cannot be fetched: answers 404 Not "
        "Found; nothing was created or paid for this cell")
    unasked = payable_problem(["https://other.example/c.png"], STATES)
    assert unasked is not None and "was not checked" in unasked


def test_the_fingerprint_changes_with_the_photo_not_with_the_run() -> None:
    first = references_fingerprint([GOOD.url], STATES)
    assert first == references_fingerprint([GOOD.url], dict(STATES))  # stable
    assert first is not None and len(first) == 16
    changed = {GOOD.url: ReferenceState(GOOD.url, fingerprint='etag:"2"')}
    assert references_fingerprint([GOOD.url], changed) != first
    assert references_fingerprint(["/data/local.png"], STATES) is None


def test_shown_urls_keep_secrets_out() -> None:
    url = "https://user:pw@bucket.s3.amazonaws.com/a.png?X-Amz-Signature=abc&X-Amz-Credential=k"
    assert shown_url(url) == "https://bucket.s3.amazonaws.com/a.png?…"
    failure = payable_problem([url], {url: ReferenceState(url, failure="answers 403 Forbidden")})
    assert failure is not None and "abc" not in failure and "pw" not in failure


def test_the_loader_refuses_what_did_not_answer(tmp_path: Path) -> None:
    loader = ReferenceLoader(base_dir=str(tmp_path))
    assert loader.load(GONE.url).is_url  # not checked: passed on, as before
    loader.use_check(STATES)
    assert loader.load(GOOD.url).uri == GOOD.url
    with pytest.raises(ReferenceRefused, match="answers 404"):
        loader.load(GONE.url)
    with pytest.raises(ReferenceRefused, match="was not checked"):
        loader.load("https://other.example/c.png")


# -- nbp validate --check-references --------------------------------------------------------


def catalog(folder: Path, base: str) -> str:
    (folder / "rows.csv").write_text(
        "sku,title,image\n"
        f"A,mug,{base}/ok/a\n"
        f'B,"two\nlines",{base}/missing/b\n'
        f"C,cup,{base}/ok/a\n"
        f"D,jar,{base}/missing/b\n"
        f"E,pot,{base}/ok/e\n"
    )
    path = folder / "job.yaml"
    path.write_text(textwrap.dedent("""\
        version: 1
        name: catalog
        provider: kie
        dataset: {path: rows.csv}
        matrix: {prompt: ["a {title}"], aspect_ratio: ["1:1", "4:5"]}
        references: ["{image}"]
    """))
    return str(path)


def test_validate_checks_each_url_once_and_names_the_lines(
    server: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = catalog(tmp_path, server.base)
    assert main(["validate", spec, "--check-references", "--allow-private-hosts"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{spec}:6:14: references[0]: {server.base}/missing/b: answers 404 Not Found; used "
        "by rows.csv lines 3 and 6",
        f"{spec}: 1 problem(s)",
    ]
    assert [server.asked(p) for p in ("/ok/a", "/missing/b", "/ok/e")] == [1, 1, 1]


def test_validate_without_the_flag_asks_nothing(
    server: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = catalog(tmp_path, server.base)
    assert main(["validate", spec]) == 0
    assert not server.requests
    assert main(["validate", spec, "--check-references"]) == 2  # loopback: refused
    assert "is a loopback address" in capsys.readouterr().err and not server.requests


def test_validate_says_how_many_answered(
    server: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = catalog(tmp_path, server.base)
    (tmp_path / "rows.csv").write_text(f"sku,title,image\nA,mug,{server.base}/ok/a\n")
    assert main(["validate", spec, "--check-references", "--allow-private-hosts"]) == 0
    assert capsys.readouterr().out == f"{spec}: valid; 1 reference URL(s) answered\n"


# -- an http dataset: the same host rule ----------------------------------------------------


def test_an_http_dataset_follows_the_host_rule(server: _Server, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: remote
        provider: kie
        dataset: {{path: "{server.base}/rows.csv"}}
        matrix: {{prompt: ["a {{sku}}"]}}
    """))
    problems = validate_spec_file(str(path), policy=InputPolicy())
    assert [p.path for p in problems] == ["dataset.path"]
    assert "is a loopback address" in problems[0].message and not server.requests
    assert len(load_job(str(path), policy=ALLOWED).cells) == 2
    assert server.asked("/rows.csv") >= 1


def test_http_references_are_listed_once_in_order(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text(
        "sku,image\nA,https://cdn.example.com/a.png\nB,HTTPS://cdn.example.com/b.png\n"
        "C,https://cdn.example.com/a.png\n")
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent("""\
        version: 1
        name: refs
        provider: kie
        dataset: {path: rows.csv}
        matrix: {prompt: ["a {sku}"], aspect_ratio: ["1:1", "4:5"]}
        references: ["{image}"]
    """))
    assert http_references(load_job(str(path)).cells) == [
        "https://cdn.example.com/a.png", "https://cdn.example.com/b.png"]


def test_a_run_never_pays_for_a_cell_whose_reference_does_not_answer(
    server: _Server, tmp_path: Path
) -> None:
    """`nbp run` checks the job's http(s) references first: a cell whose photo answers 404
    fails before anything is paid; the one whose photo answers is created."""
    import yaml

    from nbp.flows.engine.job import RunOptions, run_job
    from tests.flows.engine.emulated import serving

    (tmp_path / "rows.csv").write_text(
        f"sku,image\nA1,{server.base}/ok/a1.png\nB2,{server.base}/missing/b2.png\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "version": 1, "name": "photos", "provider": "kie",
        "dataset": {"path": "rows.csv"}, "references": ["{image}"],
        "matrix": {"prompt": ["the product {sku}"]},
        "output": {"target": str(tmp_path / "out"), "path": "{sku}.{ext}"},
        "limits": {"kie": {"poll_interval": 0.05}},
    }))
    with serving(["kie"], 0.1) as hub:
        result = asyncio.run(run_job(RunOptions(spec=str(spec), inputs=ALLOWED)))
        assert [c.prompt for c in hub["kie"].creates] == ["the product A1"]
    assert result.counts["succeeded"] == 1 and result.counts["failed"] == 1
    assert "cannot be fetched: answers 404" in str(result.failures)
    assert server.asked("/missing/b2.png") == 1


def test_a_new_photo_behind_an_unchanged_url_is_made_again_and_supersedes_the_old(
    server: _Server, tmp_path: Path
) -> None:
    """What the reference URL answers (its ETag) is part of the cell's request: a new photo
    behind the same URL makes a new image that takes the old one's path (kept as history).
    A target made while the server told nothing (or before nbp asked) keeps its images: the
    first run that learns the ETag adopts them unpaid."""
    import polars as pl
    import yaml

    from nbp.flows.engine.job import RunOptions, run_job
    from tests.flows.engine.emulated import serving

    (tmp_path / "rows.csv").write_text(f"sku,image\nA1,{server.base}/photo/a1.png\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "version": 1, "name": "photos", "provider": "kie",
        "dataset": {"path": "rows.csv"}, "references": ["{image}"],
        "matrix": {"prompt": ["the product {sku}"]},
        "output": {"target": str(tmp_path / "out"), "path": "{sku}.{ext}"},
        "limits": {"kie": {"poll_interval": 0.05}},
    }))

    def rows() -> pl.DataFrame:
        return pl.read_parquet(tmp_path / "out" / "manifest.parquet")

    with serving(["kie"], 0.1) as hub:
        def run() -> int:
            options = RunOptions(spec=str(spec), inputs=ALLOWED)
            return asyncio.run(run_job(options)).exit_code

        assert run() == 0 and len(hub["kie"].creates) == 1  # no ETag: nothing to fold
        first = rows().row(0, named=True)
        server.etag = "v1"
        assert run() == 0 and len(hub["kie"].creates) == 1  # adopted, unpaid
        adopted = rows().filter(pl.col("superseded_by").is_null()).row(0, named=True)
        assert adopted["cell_id"] != first["cell_id"]
        assert adopted["spec_cell_id"] == first["cell_id"]
        assert adopted["sha256"] == first["sha256"]
        server.etag = "v2"  # a new photo behind the same URL
        assert run() == 0 and len(hub["kie"].creates) == 2
        now = rows().filter(pl.col("superseded_by").is_null()).row(0, named=True)
        old = rows().filter(pl.col("cell_id") == adopted["cell_id"]).row(0, named=True)
        assert old["superseded_by"] == now["cell_id"]  # a new task made it
        assert ".nbp/history/" in old["output_uri"] and Path(old["output_uri"]).exists()
        assert run() == 0 and len(hub["kie"].creates) == 2  # unchanged: nothing paid
