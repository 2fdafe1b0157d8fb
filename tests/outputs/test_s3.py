"""A job's outputs on a real S3 API (moto's server on loopback) and on `memory://`.

Images, journal, manifest and gallery go through `Sink`; everything is read back with a fresh
client that shares nothing with the writer."""

from __future__ import annotations

import html
import io
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

import fsspec
import polars as pl
import pytest
from PIL import Image

from nbp.outputs.gallery import write_gallery
from nbp.outputs.manifest import MANIFEST_COLUMNS, read_manifest, rows_to_frame, update_manifest
from nbp.outputs.paths import check_output_path, encode_segment
from nbp.outputs.sink import Sink
from tests.s3server import S3Server, s3_server

Reader = Callable[[str], bytes]  # path relative to the target -> bytes, through a fresh client


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture(params=["s3", "memory"])
def target(request: pytest.FixtureRequest, s3: S3Server) -> tuple[Sink, Reader, str]:
    """A fresh sink on a unique prefix, a reader that does not share its client, the prefix."""
    prefix = f"job-{uuid.uuid4().hex[:8]}"
    if request.param == "s3":
        sink = Sink(s3.url(prefix), s3.storage_options)
        fresh = s3.fresh_fs()
        return sink, lambda rel: bytes(fresh.cat_file(f"{s3.bucket}/{prefix}/{rel}")), prefix
    sink = Sink(f"memory://nbp-s3-test/{prefix}")
    memory = fsspec.filesystem("memory", skip_instance_cache=True)  # same global store
    return sink, lambda rel: bytes(memory.cat_file(f"/nbp-s3-test/{prefix}/{rel}")), prefix


def png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(out, "PNG")
    return out.getvalue()


def test_job_outputs_round_trip(target: tuple[Sink, Reader, str]) -> None:
    sink, read, prefix = target
    rows: list[dict[str, Any]] = []
    for n, ratio in enumerate(["1:1", "16:9"]):
        rel = f"{encode_segment(f'../../{prefix}-sku{n}')}/{encode_segment(ratio)}_1K.png"
        check_output_path(rel)  # as expansion renders a path: one folder, '%' in both names
        uri = sink.write_bytes(rel, png((64, 36) if n else (48, 48)), overwrite=False)
        assert uri.endswith(f"/{prefix}/{rel}")
        rows.append({"cell_id": f"cell{n}", "job": "j", "prompt": "shoe", "status": "succeeded",
                     "aspect_ratio": ratio, "resolution": "1K", "output_path": rel,
                     "output_uri": uri, "cost_usd": 0.05, "latency_s": 3.0})  # fmt: skip
    rows.append({"cell_id": "cell-x", "status": "failed", "error_message": "<b>no</b>"})
    update_manifest(sink, rows_to_frame(rows))
    update_manifest(sink, rows_to_frame([{**rows[2], "status": "cancelled"}]))  # a rerun
    stored = read_manifest(sink)
    assert stored is not None
    write_gallery(sink, stored, title="round trip")

    manifest = pl.read_parquet(io.BytesIO(read("manifest.parquet")))
    assert dict(manifest.schema) == MANIFEST_COLUMNS
    assert manifest["cell_id"].to_list() == ["cell0", "cell1", "cell-x"]
    assert manifest["status"].to_list() == ["succeeded", "succeeded", "cancelled"]
    for rel in manifest["output_path"].drop_nulls():
        with Image.open(io.BytesIO(read(rel))) as img:
            assert img.format == "PNG"
    page = read("index.html").decode()
    assert all(f'id="cell-{cid}"' in page for cid in manifest["cell_id"])
    assert "&lt;b&gt;no&lt;/b&gt;" in page
    # each card shows its image by a path relative to the page, which resolves in the bucket
    srcs = [unquote(html.unescape(src)) for src in re.findall(r'<img src="([^"]+)"', page)]
    assert srcs == manifest["output_path"].drop_nulls().to_list()
    assert all(read(src)[:8] == b"\x89PNG\r\n\x1a\n" for src in srcs)


def test_no_overwrite_and_no_escape(target: tuple[Sink, Reader, str]) -> None:
    sink, read, _ = target
    sink.write_bytes("a.png", b"first", overwrite=False)
    with pytest.raises(FileExistsError):
        sink.write_bytes("a.png", b"second", overwrite=False)
    assert read("a.png") == b"first"
    sink.write_bytes("a.png", b"third", overwrite=True)
    assert read("a.png") == b"third"
    with pytest.raises(ValueError):
        sink.write_bytes("../outside.png", b"x", overwrite=True)


def test_journal_listing(target: tuple[Sink, Reader, str]) -> None:
    sink, read, _ = target

    def write(n: int) -> None:
        for k in range(25):
            sink.put_json(f".nbp/cells/{n:02d}-{k:02d}.json", {"n": n, "k": k})

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = sink.list_json(".nbp/cells")
    assert [(e["n"], e["k"]) for e in entries] == [(n, k) for n in range(4) for k in range(25)]
    assert read(".nbp/cells/03-24.json") == b'{"n":3,"k":24}'
    assert sink.list_json(".nbp/none") == []


def test_s3_uri_content_type_and_no_cache_leak(s3: S3Server) -> None:
    sink = Sink(s3.url("ct"), s3.storage_options)
    assert sink.write_bytes("index.html", b"<p>hi</p>", overwrite=True) == (
        f"s3://{s3.bucket}/ct/index.html"
    )
    sink.write_bytes("x.png", png((4, 4)), overwrite=True)
    fresh = s3.fresh_fs()
    assert fresh.info(f"{s3.bucket}/ct/index.html")["ContentType"] == "text/html; charset=utf-8"
    assert fresh.info(f"{s3.bucket}/ct/x.png")["ContentType"] == "image/png"
    assert Sink(s3.url("ct"), s3.storage_options).fs is not sink.fs  # no shared instance
