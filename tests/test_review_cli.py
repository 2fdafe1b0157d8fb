"""`nbp review TARGET`: decisions by id or prefix, a gallery's decisions file, the list; the
manifest's `review` column updated in place under the target's manifest lease."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from nbp.flows.cli import main
from nbp.flows.engine.job import MANIFEST_LOCK
from nbp.flows.engine.lease import Heartbeat, Lease
from nbp.outputs.manifest import read_manifest, rows_to_frame, write_manifest
from nbp.outputs.review import EXPORT_FORMAT, REVIEWS_DIR, decisions
from nbp.outputs.sink import Sink

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
A1, A2, B1, C1 = "aaaa1111bbbb2222", "aaaa1111cccc3333", "dddd4444eeee5555", "ffff6666aaaa7777"


def rows() -> list[dict[str, Any]]:
    return [
        {"cell_id": A1, "job": "spring", "status": "succeeded", "output_path": "A/1_1.png",
         "cost_usd": 0.09},
        {"cell_id": A2, "job": "spring", "status": "succeeded", "output_path": "A/4_5.png"},
        {"cell_id": B1, "job": "spring", "status": "failed", "error_code": "TaskFailed"},
        {"cell_id": C1, "job": "spring", "status": "succeeded", "output_path": "A/1_1.png",
         "superseded_by": A1},
    ]  # fmt: skip


@pytest.fixture
def target(tmp_path: Path) -> Path:
    root = tmp_path / "target"
    write_manifest(Sink(str(root)), rows_to_frame(rows()))
    return root


def review(target: Path, *args: str) -> int:
    return main(["review", str(target), *args])


def column(target: Path) -> dict[str, str | None]:
    frame = read_manifest(Sink(str(target)))
    assert frame is not None
    return dict(frame.select("cell_id", "review").iter_rows())


def unchanged(target: Path, before: bytes) -> bool:
    """Nothing was recorded: the manifest's bytes are the same and the store is empty."""
    return (target / "manifest.parquet").read_bytes() == before and not (
        target / REVIEWS_DIR).exists()


def test_approve_and_reject_by_prefix_update_the_manifest(
    target: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = read_manifest(Sink(str(target)))
    assert review(target, "--approve", "aaaa1111b", "--reject", A2[:12], "--note", "cut off",
                  "--by", "ana") == EXIT_OK
    assert "recorded 2 decision(s) (1 approved, 1 rejected)" in capsys.readouterr().out
    assert column(target) == {A1: "approved", A2: "rejected", B1: None, C1: None}
    after = read_manifest(Sink(str(target)))
    assert after is not None and before is not None
    assert after.drop("review").equals(before.drop("review"))  # only the review column
    store = decisions(Sink(str(target)))
    assert {cid: (d.decision, d.by, d.note) for cid, d in store.items()} == {
        A1: ("approved", "ana", "cut off"), A2: ("rejected", "ana", "cut off")}
    # A second look changes one decision; the other stays as it was.
    assert review(target, "--reject", A1) == EXIT_OK
    assert column(target) == {A1: "rejected", A2: "rejected", B1: None, C1: None}


@pytest.mark.parametrize("args, message", [
    pytest.param(["--approve", "aaaa1111"], "'aaaa1111' starts 2 cells", id="ambiguous-prefix"),
    pytest.param(["--approve", "9999"], "no cell '9999' in the manifest", id="unknown-cell"),
    pytest.param(["--reject", "dddd"], "has no image to review (status failed)",
                 id="failed-cell"),
    pytest.param(["--reject", "ffff"], "superseded by cell aaaa1111bbbb2222", id="superseded"),
    pytest.param(["--approve", A1, "--reject", "aaaa1111b"], "decided twice", id="both-ways"),
    pytest.param(["--approve", A1, "--note", "a\x1b[31mb"], "--note: expected text",
                 id="note-with-terminal-control"),
    pytest.param(["--approve", A1, "--by", ""], "--by: expected a name", id="nobody"),
    pytest.param([], "nothing to do", id="nothing-to-do"),
])  # fmt: skip
def test_a_refused_review_records_nothing_and_exits_2(
    target: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    before = (target / "manifest.parquet").read_bytes()
    assert review(target, *args) == EXIT_INVALID
    assert message in capsys.readouterr().err
    assert unchanged(target, before)


def test_a_target_without_a_readable_manifest_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert review(tmp_path / "empty", "--approve", A1) == EXIT_INVALID
    assert "no manifest.parquet" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.parquet").write_bytes(b"PAR1 not really")
    assert review(tmp_path / "bad", "--list") == EXIT_INVALID
    assert "is not a manifest nbp can read" in capsys.readouterr().err


def decisions_file(path: Path, *decided: dict[str, Any], **top: Any) -> Path:
    path.write_text(json.dumps({"format": EXPORT_FORMAT, "version": 1,
                                "exported_at": "2026-12-01T10:00:00.000Z", "title": "spring",
                                "decisions": list(decided), **top}))
    return path


def test_import_records_a_gallery_decisions_file(
    target: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = decisions_file(
        tmp_path / "review-decisions.json",
        {"cell_id": A1, "decision": "rejected", "at": "2026-12-01T09:59:01.250Z"},
        {"cell_id": A2, "decision": "approved", "at": "2026-12-01T09:59:02.000Z"},
    )
    assert review(target, "--import", str(file), "--by", "ana", "--note", "week 49") == EXIT_OK
    assert column(target) == {A1: "rejected", A2: "approved", B1: None, C1: None}
    store = decisions(Sink(str(target)))
    assert store[A1].at == "2026-12-01T09:59:01.250Z"  # when it was decided in the page
    assert (store[A1].by, store[A1].note) == ("ana", "week 49")
    assert "recorded 2 decision(s)" in capsys.readouterr().out


@pytest.mark.parametrize("decided, top, message", [
    pytest.param([{"cell_id": "9999", "decision": "approved"}], {},
                 "decisions[0].cell_id: no cell '9999' in the manifest", id="unknown-cell"),
    pytest.param([{"cell_id": A1, "decision": "approved", "extra": 1}], {},
                 "decisions[0]: unknown key 'extra'", id="unknown-key"),
    pytest.param([{"cell_id": A1, "decision": "approved"}], {"format": "csv"},
                 "format: expected 'nbp-review-decisions'", id="another-format"),
    pytest.param([{"cell_id": A1, "decision": "approved"}], {"version": 7},
                 "version: expected 1, got 7", id="newer-version"),
])  # fmt: skip
def test_a_bad_decisions_file_records_nothing_and_exits_2(
    target: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    decided: list[dict[str, Any]], top: dict[str, Any], message: str,
) -> None:
    file = decisions_file(tmp_path / "d.json", *decided, **top)
    before = (target / "manifest.parquet").read_bytes()
    # an approval on the command line in the same call is not recorded either
    assert review(target, "--approve", A2, "--import", str(file)) == EXIT_INVALID
    err = capsys.readouterr().err
    assert f"--import {file}:" in err and message in err
    assert unchanged(target, before)


def test_import_of_a_missing_or_mixed_up_file_exits_2(
    target: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (target / "manifest.parquet").read_bytes()
    assert review(target, "--import", str(tmp_path / "nope.json")) == EXIT_INVALID
    assert "nope.json" in capsys.readouterr().err
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert review(target, "--import", str(tmp_path / "photo.png")) == EXIT_INVALID
    assert "not a JSON decisions or ratings file" in capsys.readouterr().err
    assert unchanged(target, before)


def test_list_shows_decisions_with_their_paths(
    target: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert review(target, "--list") == EXIT_OK
    assert capsys.readouterr().out.strip() == "no review decisions"
    assert review(target, "--approve", A1, "--reject", A2, "--by", "ana", "--note", "blurry",
                  "--list") == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["cell_id", "review"]
    listed = {line.split()[0]: line.split() for line in lines[2:]}
    assert listed[A1][1] == "approved" and listed[A1][3:] == ["ana", "A/1_1.png", "-",
                                                               "blurry"]
    assert listed[A2][1] == "rejected" and listed[A2][4] == "A/4_5.png"
    # A decision whose cell the manifest no longer holds is listed as such.
    write_manifest(Sink(str(target)), rows_to_frame(rows()[1:]))
    assert review(target, "--list") == EXIT_OK
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "approved" in listed[A1] and "(not in the manifest)" in listed[A1]
    assert "A/4_5.png" in listed[A2]


def test_review_waits_for_the_manifest_lease_and_keeps_what_a_run_wrote(
    target: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run ending while a review is recorded: the review waits for the run's manifest
    lease, then sets the column in what the run wrote (the run's new row is kept)."""
    sink = Sink(str(target))
    heartbeat = Heartbeat(sink, "a-run")
    heartbeat.beat()
    lease = Lease(sink, MANIFEST_LOCK, heartbeat)
    asyncio.run(lease.acquire())
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(review(target, "--approve", A1)))
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive() and not codes  # waiting for the lease
    new_row = {"cell_id": "0123456789abcdef", "job": "spring", "status": "succeeded",
               "output_path": "B/1_1.png"}
    write_manifest(sink, rows_to_frame([*rows(), new_row]))  # the run's merge
    asyncio.run(lease.release())
    thread.join(30)
    assert codes == [EXIT_OK]
    frame = read_manifest(sink)
    assert frame is not None and frame.height == 5
    assert frame.filter(pl.col("review").is_not_null())["cell_id"].to_list() == [A1]
    assert not (target / MANIFEST_LOCK).exists()


def ratings_file(path: Path, ratings: list[dict[str, Any]],
                 preferences: list[dict[str, Any]] | None = None) -> Path:
    path.write_text(json.dumps({"format": "nbp-ratings", "version": 1,
                                "exported_at": "2026-12-01T10:00:00.000Z", "title": "spring",
                                "ratings": ratings, "preferences": preferences or []}))
    return path


def test_import_records_a_ratings_file_beside_the_decisions(
    target: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ratings are the experiment's: they go to the store, never to the review column;
    the same file twice changes nothing."""
    from nbp.outputs.review import ratings_frame

    assert review(target, "--approve", A2) == EXIT_OK
    before = (target / "manifest.parquet").read_bytes()
    file = ratings_file(tmp_path / "ratings.json", [
        {"cell_id": A1, "pass": True, "stars": 4, "at": "2026-12-01T09:59:01.250Z"},
        {"cell_id": A2, "pass": False, "at": "2026-12-01T09:59:02.000Z"},
    ], [{"a": {"target": "runs/other", "cell_id": "0f0f0f0f0f0f0f0f"},
         "b": {"target": str(target), "cell_id": A1}, "winner": "b",
         "at": "2026-12-01T09:59:03.000Z"}])
    capsys.readouterr()
    assert review(target, "--import", str(file), "--by", "ana") == EXIT_OK
    out = capsys.readouterr().out
    assert "read 2 rating(s) (1 pass, 1 fail, 1 with stars) and 1 preference result(s)" in out
    assert "2 of 2 cell(s) changed" in out
    assert (target / "manifest.parquet").read_bytes() == before  # the review column as it was
    assert column(target)[A2] == "approved"
    assert ratings_frame(Sink(str(target))).rows() == [(A1, True, 4, 1, 0), (A2, False, None,
                                                                             0, 0)]
    assert decisions(Sink(str(target)))[A2].decision == "approved"  # kept beside the rating
    assert review(target, "--import", str(file)) == EXIT_OK
    assert "0 of 2 cell(s) changed" in capsys.readouterr().out
    assert review(target, "--list") == EXIT_OK
    listed = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert listed[A1][1] == "-" and listed[A1][5] == "pass,4/5,1W0L"
    assert listed[A2][1] == "approved" and listed[A2][5] == "fail"


def test_a_bad_ratings_file_records_nothing_and_exits_2(
    target: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = ratings_file(tmp_path / "r.json", [{"cell_id": A1, "stars": 9},
                                              {"cell_id": B1, "pass": True}])
    before = (target / "manifest.parquet").read_bytes()
    assert review(target, "--import", str(file)) == EXIT_INVALID
    err = capsys.readouterr().err
    assert f"--import {file}: 2 problem(s)" in err
    assert "ratings[0].stars" in err and "ratings[1].cell_id" in err
    assert unchanged(target, before)
