"""Sink: atomic writes, no clobbering, no escaping the target, JSON journal helpers.

Runs against a local folder and `memory://` (S3 is in test_s3.py)."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from nbp.outputs.paths import check_output_path, encode_segment
from nbp.outputs.sink import TEMP_MARKER, Sink


@pytest.fixture(params=["local", "memory"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sink]:
    if request.param == "local":
        yield Sink(str(tmp_path / "target"))
    else:
        root = f"memory://nbp-test-{uuid.uuid4().hex}/target"
        yield Sink(root)
        memory = fsspec.filesystem("memory")
        if memory.exists(root):
            memory.rm(root, recursive=True)


def _all_files(sink: Sink) -> list[str]:
    return [p.removeprefix(sink.root + "/") for p in sink.fs.find(sink.root)]


def test_write_read_round_trip_and_uri(sink: Sink) -> None:
    uri = sink.write_bytes("a/b/image.png", b"\x89PNG data", overwrite=False)
    assert sink.read_bytes("a/b/image.png") == b"\x89PNG data"
    assert sink.exists("a/b/image.png")
    assert uri == sink.uri("a/b/image.png")
    with fsspec.open(uri, "rb") as handle:  # the URI alone is enough to read it back
        assert handle.read() == b"\x89PNG data"
    assert _all_files(sink) == ["a/b/image.png"]  # no temp file left behind


def test_local_uri_is_an_absolute_path(tmp_path: Path) -> None:
    sink = Sink(str(tmp_path / "t"))
    uri = sink.write_bytes("x.png", b"1", overwrite=False)
    assert uri == str(tmp_path / "t" / "x.png")
    assert Path(uri).read_bytes() == b"1"


def test_missing_file_reads_as_none(sink: Sink) -> None:
    assert sink.read_bytes("nope.png") is None
    assert sink.get_json(".nbp/cells/nope.json") is None
    assert not sink.exists("nope.png")
    sink.delete("nope.png")  # no error


def test_existing_file_is_never_overwritten(sink: Sink) -> None:
    sink.write_bytes("cell.png", b"first", overwrite=False)
    with pytest.raises(FileExistsError):
        sink.write_bytes("cell.png", b"second", overwrite=False)
    assert sink.read_bytes("cell.png") == b"first"
    assert _all_files(sink) == ["cell.png"]
    sink.write_bytes("cell.png", b"third", overwrite=True)
    assert sink.read_bytes("cell.png") == b"third"


def test_concurrent_creators_of_one_path_one_wins(tmp_path: Path) -> None:
    sink = Sink(str(tmp_path))
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def create(n: int) -> None:
        barrier.wait()
        try:
            sink.write_bytes("same.png", f"writer {n}".encode() * 1000, overwrite=False)
            outcomes.append(f"won {n}")
        except FileExistsError:
            outcomes.append("lost")

    threads = [threading.Thread(target=create, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1 and outcomes.count("lost") == 7
    assert sink.read_bytes("same.png") == f"writer {winners[0][4:]}".encode() * 1000
    assert os.listdir(tmp_path) == ["same.png"]


def test_readers_never_see_half_a_file(tmp_path: Path) -> None:
    """A reader polling the final name while it is rewritten sees only whole versions."""
    sink = Sink(str(tmp_path))
    versions = [bytes([n]) * 4_000_000 for n in range(1, 4)]
    sink.write_bytes("big.png", versions[0], overwrite=True)
    done = threading.Event()
    seen: set[int] = set()
    torn: list[int] = []

    def read_loop() -> None:
        while not done.is_set():
            data = (tmp_path / "big.png").read_bytes()
            if data not in versions:
                torn.append(len(data))
            seen.add(data[0])

    reader = threading.Thread(target=read_loop)
    reader.start()
    for _ in range(5):
        for data in versions:
            sink.write_bytes("big.png", data, overwrite=True)
    done.set()
    reader.join()
    assert torn == []
    assert len(seen) > 1  # the reader really raced the writer
    assert os.listdir(tmp_path) == ["big.png"]


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    sink = Sink(str(tmp_path))
    with pytest.raises(TypeError):
        sink.write_bytes("broken.png", "not bytes", overwrite=False)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "rel",
    [
        pytest.param("../escape.png", id="parent"),
        pytest.param("a/../../escape.png", id="parent-inside"),
        pytest.param("/etc/passwd", id="absolute"),
        pytest.param("s3://other-bucket/x.png", id="url"),
        pytest.param("a\\..\\x.png", id="backslash"),
        pytest.param("C:/x.png", id="drive"),
        pytest.param("./x.png", id="dot"),
        pytest.param("a//x.png", id="empty-part"),
        pytest.param("", id="empty"),
    ],
)
def test_unsafe_relative_paths_are_refused(sink: Sink, rel: str) -> None:
    with pytest.raises(ValueError, match="safe relative path"):
        sink.write_bytes(rel, b"x", overwrite=True)
    for call in (sink.read_bytes, sink.exists, sink.delete, sink.uri):
        with pytest.raises(ValueError):
            call(rel)
    assert _all_files(sink) == []


@pytest.mark.parametrize(
    "value",
    ["../../../etc/passwd", "..", "/abs/olute", "..\\..\\win", "C:\\x", "a/./../../b", "~/.ssh/x"],
)
def test_templated_values_stay_inside_the_target(tmp_path: Path, value: str) -> None:
    target = tmp_path / "target"
    sink = Sink(str(target))
    rel = f"{encode_segment(value)}/{encode_segment(value)}_1K.png"
    check_output_path(rel)
    sink.write_bytes(rel, b"img", overwrite=False)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) == 1
    assert written[0].resolve().is_relative_to(target.resolve())


def test_json_round_trip(sink: Sink) -> None:
    entry = {"cell_id": "c1", "state": "submitted", "task": {"id": "é☃"}, "n": 1.5}
    sink.put_json(".nbp/cells/c1.json", entry)
    assert sink.get_json(".nbp/cells/c1.json") == entry
    sink.put_json(".nbp/cells/c1.json", {**entry, "state": "succeeded"})  # replaces
    assert sink.get_json(".nbp/cells/c1.json") == {**entry, "state": "succeeded"}


def test_list_json_reads_every_entry_in_path_order(sink: Sink) -> None:
    for n in reversed(range(1000)):
        sink.put_json(f".nbp/cells/{n:05d}.json", {"n": n})
    sink.put_json(".nbp/cells/nested/extra.json", {"n": "nested"})
    sink.write_bytes(".nbp/cells/notes.txt", b"not json", overwrite=True)
    sink.write_bytes(f".nbp/cells/.x.json{TEMP_MARKER}abc", b"{half", overwrite=True)
    sink.put_json(".nbp/other/zzz.json", {"n": "elsewhere"})
    entries = sink.list_json(".nbp/cells")
    assert [e["n"] for e in entries] == [*range(1000), "nested"]
    assert sink.list_json(".nbp/missing") == []


def test_list_json_sees_files_written_by_another_client(sink: Sink) -> None:
    assert sink.list_json("journal") == []
    other = Sink(sink.target)
    other.put_json("journal/a.json", {"a": 1})
    assert sink.list_json("journal") == [{"a": 1}]


def test_many_threads_write_different_files(sink: Sink) -> None:
    def write(n: int) -> None:
        for k in range(20):
            sink.write_bytes(f"t{n}/{k}.png", f"{n}-{k}".encode(), overwrite=False)
            sink.put_json(f".nbp/cells/{n}-{k}.json", {"n": n, "k": k})

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sink.list_json(".nbp/cells")) == 160
    assert all(sink.read_bytes(f"t{n}/{k}.png") == f"{n}-{k}".encode()
               for n in range(8) for k in range(20))


def test_repr_does_not_show_storage_options() -> None:
    sink = Sink(f"memory://nbp-test-{uuid.uuid4().hex}", {"secret": "hunter2-secret"})
    assert "hunter2" not in repr(sink)
