"""The review store: one file per cell in the target, read back as input; the manifest's
`review` column taken from it; a gallery's decisions file read strictly."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from nbp.outputs import review
from nbp.outputs.manifest import rows_to_frame
from nbp.outputs.review import (
    EXPORT_FORMAT,
    MAX_FILE_BYTES,
    REVIEWS_DIR,
    Choice,
    Decision,
    ReviewInputError,
    decisions,
    gather,
    read_export,
    record,
    record_all,
    resolve_cells,
    review_frame,
    with_reviews,
)
from nbp.outputs.sink import TEMP_MARKER, Sink

AT = "2026-12-01T09:30:00+00:00"


@pytest.fixture
def sink(tmp_path: Path) -> Sink:
    return Sink(str(tmp_path / "target"))


def entry(cell_id: str = "c1", **values: Any) -> dict[str, Any]:
    return {"version": 1, "cell_id": cell_id, "decision": "approved", "at": AT, "by": "ana",
            "note": None, **values}


def put(sink: Sink, name: str, data: bytes | dict[str, Any] | list[Any]) -> None:
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    sink.write_bytes(f"{REVIEWS_DIR}/{name}", body, overwrite=True)


# -- the store ---------------------------------------------------------------------------


def test_a_decision_round_trips(sink: Sink, tmp_path: Path) -> None:
    written = record(sink, "c1", "rejected", by="ana", note="label cut off")
    assert written == decisions(sink)["c1"]
    stored = json.loads((tmp_path / "target" / REVIEWS_DIR / "c1.json").read_text())
    assert stored == {"version": 1, "cell_id": "c1", "decision": "rejected", "at": written.at,
                      "by": "ana", "note": "label cut off"}
    assert Decision.from_json(stored, "c1") == written
    again = record(sink, "c1", "approved", by="ben", at=AT)  # replaces, whole
    assert decisions(sink) == {"c1": again}
    assert (again.decision, again.by, again.note, again.at) == ("approved", "ben", None, AT)


def test_a_rating_is_kept_when_a_decision_is_recorded(sink: Sink) -> None:
    """The store will hold experiment ratings too: a file with a rating and no decision is
    read, and recording a decision keeps its rating."""
    put(sink, "c1.json", entry(decision=None, rating=4))
    assert decisions(sink)["c1"].rating == 4.0 and decisions(sink)["c1"].decision is None
    assert review_frame(sink).is_empty()  # a rating is not a review decision
    assert record(sink, "c1", "approved", by="ana").rating == 4.0
    record_all(sink, [Choice("c1", "rejected")], by="ana")
    assert decisions(sink)["c1"].rating == 4.0
    assert decisions(sink)["c1"].decision == "rejected"


def test_it_works_on_any_fsspec_store() -> None:
    memory = Sink(f"memory://review-{uuid.uuid4().hex}")
    record(memory, "c1", "approved", by="ana")
    assert review_frame(memory).rows() == [("c1", "approved")]


def test_the_store_is_read_in_one_listing_and_one_batched_read(
    sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(30):
        record(sink, f"c{i}", "approved", by="ana")
    calls: list[str] = []
    for owner, name in ((sink.fs, "ls"), (sink.fs, "find"), (sink, "read_bytes_many"),
                        (sink, "read_bytes"), (sink, "get_json")):
        original = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, _n=name, _o=original, **k: (
            calls.append(_n), _o(*a, **k))[1])
    assert len(decisions(sink)) == 30
    assert sorted(calls) == ["ls", "read_bytes_many"]


def test_writers_of_different_cells_at_once_all_land(sink: Sink) -> None:
    threads = [threading.Thread(target=record, args=(sink, f"c{i}", "rejected"),
                                kwargs={"by": f"reviewer-{i}"}) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    found = decisions(sink)
    assert sorted(found) == sorted(f"c{i}" for i in range(16))
    assert {d.by for d in found.values()} == {f"reviewer-{i}" for i in range(16)}


@pytest.mark.parametrize("cell_id, decision, values", [
    pytest.param("../x", "approved", {}, id="id-climbing-out"),
    pytest.param("c1", "maybe", {}, id="unknown-decision"),
    pytest.param("c1", "approved", {"by": "x" * 201}, id="by-too-long"),
    pytest.param("c1", "approved", {"by": "a\x1b[2Jb"}, id="by-with-terminal-control"),
    pytest.param("c1", "approved", {"note": "n" * 2_001}, id="note-too-long"),
    pytest.param("c1", "approved", {"at": "yesterday"}, id="at-not-iso"),
])  # fmt: skip
def test_record_refuses_what_could_not_be_read_back(
    sink: Sink, cell_id: str, decision: Any, values: dict[str, Any]
) -> None:
    with pytest.raises(ValueError):
        record(sink, cell_id, decision, **{"by": "ana", **values})
    assert decisions(sink) == {}


HOSTILE = [
    pytest.param("c1.json", b"{not json", "not JSON", id="not-json"),
    pytest.param("c1.json", b"[" * 30_000 + b"]" * 30_000, "not JSON", id="nested-too-deep"),
    pytest.param("c1.json", [entry()], "expected an object", id="a-list"),
    pytest.param("c1.json", entry(version=2), "newer than this nbp", id="newer-version"),
    pytest.param("c1.json", entry(version="1"), ".version", id="version-as-text"),
    pytest.param("c1.json", entry(version=True), ".version", id="version-true"),
    pytest.param("c1.json", entry(cell_id="c2"), "not its file's name", id="names-another-cell"),
    pytest.param("c1.json", entry(decision="maybe"), ".decision", id="unknown-decision"),
    pytest.param("c1.json", entry(decision=None), "neither a decision", id="nothing-decided"),
    pytest.param("c1.json", entry(at="2026-12-01 09:30"), ".at", id="time-without-offset"),
    pytest.param("c1.json", entry(by="\x1b]0;owned\x07"), ".by", id="by-terminal-escape"),
    pytest.param("c1.json", entry(by="\ud800"), ".by", id="by-lone-surrogate"),
    pytest.param("c1.json", entry(note="n" * 2_001), ".note", id="note-too-long"),
    pytest.param("c1.json", entry(rating=float("nan")), ".rating", id="rating-nan"),
    pytest.param("c1.json", {k: v for k, v in entry().items() if k != "by"}, ".by: missing",
                 id="missing-by"),
    pytest.param("c1.json", b" " * (MAX_FILE_BYTES + 1), "larger than", id="too-large"),
    pytest.param("-c1.json", entry(cell_id="-c1"), "not a cell id", id="name-not-an-id"),
]  # fmt: skip


@pytest.mark.parametrize("name, data, why", HOSTILE)
def test_a_file_that_does_not_fit_is_skipped_with_a_warning(
    sink: Sink, caplog: pytest.LogCaptureFixture, name: str, data: Any, why: str
) -> None:
    record(sink, "good", "approved", by="ana")
    put(sink, name, data)
    with caplog.at_level(logging.WARNING, logger="nbp.review"):
        found = decisions(sink)
    assert list(found) == ["good"]
    assert why in caplog.text and name in caplog.text
    assert review_frame(sink).rows() == [("good", "approved")]


def test_unknown_fields_are_ignored_and_other_files_are_not_entries(
    sink: Sink, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    put(sink, "c1.json", entry(extra={"from": "a newer nbp"}))
    put(sink, f".c2.json{TEMP_MARKER}abc", entry("c2"))  # a write in progress
    put(sink, "c3.txt", entry("c3"))
    (tmp_path / "target" / REVIEWS_DIR / "c4.json").mkdir()  # a folder
    with caplog.at_level(logging.WARNING, logger="nbp.review"):
        assert list(decisions(sink)) == ["c1"]
    assert caplog.text == ""


def test_a_store_that_does_not_exist_is_empty(sink: Sink) -> None:
    assert decisions(sink) == {}
    frame = review_frame(sink)
    assert frame.is_empty() and frame.schema == pl.Schema({"cell_id": pl.String,
                                                            "review": pl.String})


# -- the manifest's review column -------------------------------------------------------------


def manifest_rows() -> list[dict[str, Any]]:
    return [
        {"cell_id": "aaaa1111", "status": "succeeded", "output_path": "A1.png"},
        {"cell_id": "aaaa2222", "status": "succeeded", "output_path": "A2.png",
         "review": "approved"},
        {"cell_id": "bbbb1111", "status": "failed"},
        {"cell_id": "cccc1111", "status": "succeeded", "output_path": "A1.png",
         "superseded_by": "aaaa1111"},
    ]  # fmt: skip


def test_the_manifest_review_column_is_the_store(sink: Sink) -> None:
    """Eager or lazy, rows and columns stay in order; a cell the store has no decision for
    has none (an approval withdrawn from the store leaves the manifest)."""
    manifest = rows_to_frame(manifest_rows())
    record(sink, "aaaa1111", "rejected", by="ana")
    record(sink, "zzzz", "approved", by="ana")  # not in this manifest: ignored
    reviews = review_frame(sink)
    for joined in (with_reviews(manifest, reviews),
                   with_reviews(manifest.lazy(), reviews).collect()):
        assert joined.columns == manifest.columns
        assert joined["review"].to_list() == ["rejected", None, None, None]
        assert joined.drop("review").equals(manifest.drop("review"))
    old = manifest.drop("review")  # an older manifest without the column gains it
    assert with_reviews(old, reviews).columns == [*old.columns, "review"]


# -- naming cells ------------------------------------------------------------------------------


def test_cells_are_named_by_id_or_unique_prefix() -> None:
    manifest = rows_to_frame(manifest_rows())
    assert resolve_cells(["aaaa1111", "aaaa2", "b"], manifest) == [
        "aaaa1111", "aaaa2222", "bbbb1111"]
    with pytest.raises(ReviewInputError) as caught:
        resolve_cells(["aaaa", "zz", ""], manifest)
    message = str(caught.value)  # every problem, each with what to do
    assert "'aaaa' starts 2 cells (aaaa1111, aaaa2222): give more of the id" in message
    assert "no cell 'zz'" in message and "no cell ''" in message


def test_only_a_current_image_is_reviewed() -> None:
    manifest = rows_to_frame(manifest_rows())
    assert [c.cell_id for c in gather(manifest, approve=["aaaa1"], reject=["aaaa2"])] == [
        "aaaa1111", "aaaa2222"]
    with pytest.raises(ReviewInputError, match=r"bbbb1111 has no image to review \(status "
                                               r"failed\)"):
        gather(manifest, reject=["bbbb"])
    with pytest.raises(ReviewInputError, match="superseded by cell aaaa1111: review that one"):
        gather(manifest, reject=["cccc"])
    with pytest.raises(ReviewInputError, match="decided twice: aaaa1111"):
        gather(manifest, approve=["aaaa1"], reject=["aaaa1111"])


# -- a gallery's decisions file ------------------------------------------------------------------


def export(*decided: dict[str, Any], **top: Any) -> bytes:
    body = {"format": EXPORT_FORMAT, "version": 1, "exported_at": "2026-12-01T10:00:00.123Z",
            "title": "spring", "decisions": list(decided), **top}
    return json.dumps(body).encode()


def test_a_decisions_file_is_read() -> None:
    manifest = rows_to_frame(manifest_rows())
    choices = read_export(export(
        {"cell_id": "aaaa1111", "decision": "rejected", "at": "2026-12-01T09:59:00.000Z"},
        {"cell_id": "aaaa2222", "decision": "approved", "at": AT, "note": "fine"},
    ), manifest)
    assert choices == [Choice("aaaa1111", "rejected", "2026-12-01T09:59:00.000Z"),
                       Choice("aaaa2222", "approved", AT, "fine")]


GOOD = {"cell_id": "aaaa1111", "decision": "approved", "at": AT}
BAD_FILES = [
    pytest.param(b"\xff\xfe", "not a JSON decisions file", id="not-json"),
    pytest.param(b"[]", "expected a JSON object", id="a-list"),
    pytest.param(b" " * (review.MAX_EXPORT_BYTES + 1), "larger than", id="too-large"),
    pytest.param(export(GOOD, format="other"), "format: expected", id="wrong-format"),
    pytest.param(export(GOOD, version=2), "version: expected 1, got 2", id="newer-version"),
    pytest.param(export(GOOD, version=True), "version: expected 1, got true", id="version-true"),
    pytest.param(export(GOOD, run="x"), "'run': unknown key", id="unknown-top-key"),
    pytest.param(export(GOOD, decisions="all"), "decisions: expected a list", id="not-a-list"),
    pytest.param(export(GOOD, exported_at="now"), "exported_at:", id="bad-exported-at"),
    pytest.param(export({**GOOD, "by": "eve"}), "decisions[0]: unknown key 'by'",
                 id="unknown-entry-key"),
    pytest.param(export({**GOOD, "decision": "ok"}), "decisions[0].decision: expected one of",
                 id="unknown-decision"),
    pytest.param(export({"cell_id": "aaaa1111", "at": AT}), "decisions[0].decision: missing",
                 id="no-decision"),
    pytest.param(export({**GOOD, "at": "12:00"}), "decisions[0].at:", id="bad-time"),
    pytest.param(export({**GOOD, "cell_id": "aaaa"}), "decisions[0].cell_id: no cell 'aaaa'",
                 id="prefix-is-not-an-id-here"),
    pytest.param(export({**GOOD, "cell_id": "../../x"}), "decisions[0].cell_id: expected an id",
                 id="path-as-id"),
    pytest.param(export({**GOOD, "cell_id": "bbbb1111"}), "no image to review", id="failed-cell"),
    pytest.param(export({**GOOD, "cell_id": "cccc1111"}), "superseded", id="superseded-cell"),
    pytest.param(export(GOOD, {**GOOD, "decision": "rejected"}),
                 "decisions[1].cell_id: cell aaaa1111 is decided again (first at decisions[0])",
                 id="decided-twice"),
    pytest.param(export(GOOD, [1]), "decisions[1]: expected an object", id="entry-not-object"),
]  # fmt: skip


@pytest.mark.parametrize("data, problem", BAD_FILES)
def test_a_decisions_file_is_checked_strictly(data: bytes, problem: str) -> None:
    with pytest.raises(ReviewInputError) as caught:
        read_export(data, rows_to_frame(manifest_rows()))
    assert problem in str(caught.value)


def test_every_problem_of_a_decisions_file_is_listed() -> None:
    data = export({**GOOD, "cell_id": "nope"}, {**GOOD, "decision": "ok"}, format="x")
    with pytest.raises(ReviewInputError) as caught:
        read_export(data, rows_to_frame(manifest_rows()))
    message = str(caught.value)
    assert message.startswith("3 problem(s): ")
    assert all(p in message for p in ("format:", "decisions[0].cell_id", "decisions[1].decision"))


# -- ratings and preferences ---------------------------------------------------------------------

LATER = "2026-12-02T09:30:00+00:00"


def ratings_file(ratings: list[Any] | None = None, preferences: list[Any] | None = None,
                 **top: Any) -> bytes:
    body: dict[str, Any] = {"format": review.RATINGS_FORMAT, "version": 1,
                            "exported_at": "2026-12-01T10:00:00.123Z", "title": "spring",
                            **top}
    if ratings is not None:
        body["ratings"] = ratings
    if preferences is not None:
        body["preferences"] = preferences
    return json.dumps(body).encode()


def prefer(a: str, b: str, winner: str = "a", at: str = AT, ta: str = "runs/old",
           tb: str = "runs/new") -> dict[str, Any]:
    return {"a": {"target": ta, "cell_id": a}, "b": {"target": tb, "cell_id": b},
            "winner": winner, "at": at}


def test_ratings_and_preferences_round_trip_beside_a_decision(sink: Sink, tmp_path: Path) -> None:
    """pass, rating (the stars), rated_at and preferences are fields of the same file; a
    decision recorded later keeps them, and they keep the decision."""
    manifest = rows_to_frame(manifest_rows())
    record(sink, "aaaa1111", "approved", by="ana", at=AT)
    judged = review.read_ratings(ratings_file(
        [{"cell_id": "aaaa1111", "pass": False, "stars": 2, "at": AT}],
        [prefer("aaaa1111", "ffff9999", winner="b")]), manifest)
    written = review.record_ratings(sink, judged, by="ben")
    stored = json.loads((tmp_path / "target" / REVIEWS_DIR / "aaaa1111.json").read_text())
    assert stored == {
        "version": 1, "cell_id": "aaaa1111", "decision": "approved", "at": AT, "by": "ana",
        "note": None, "pass": False, "rating": 2, "rated_at": AT,
        "preferences": [{"opponent": "ffff9999", "opponent_target": "runs/new",
                         "result": "lost", "at": AT}],
    }
    assert written == decisions(sink)
    assert record(sink, "aaaa1111", "rejected", by="ana").preferences == (
        review.Preference("ffff9999", "runs/new", "lost", AT),)
    entry = decisions(sink)["aaaa1111"]
    assert (entry.decision, entry.passed, entry.stars) == ("rejected", False, 2)


def test_a_ratings_file_counts_for_each_side_this_target_holds() -> None:
    """Two runs of one target compared: both sides are its cells. Two targets of one spec
    (the same cell id on both sides): the side whose target is this one."""
    manifest = rows_to_frame(manifest_rows())
    both = review.read_ratings(ratings_file(preferences=[
        prefer("aaaa1111", "aaaa2222", winner="b", ta="t@r1", tb="t@r2")]), manifest)
    assert both.results == {
        "aaaa1111": (review.Preference("aaaa2222", "t@r2", "lost", AT),),
        "aaaa2222": (review.Preference("aaaa1111", "t@r1", "won", AT),)}
    here = Sink("memory://bucket/runs/kie")
    same = ratings_file(preferences=[prefer("aaaa1111", "aaaa1111", ta="memory://bucket/runs/"
                                            "gemini", tb="memory://bucket/runs/kie@r7")])
    assert review.read_ratings(same, manifest, here).results == {
        "aaaa1111": (review.Preference("aaaa1111", "memory://bucket/runs/gemini", "lost", AT),)}
    with pytest.raises(ReviewInputError, match="neither side's target is this one"):
        review.read_ratings(same, manifest, Sink("memory://bucket/runs/other"))


BAD_RATINGS = [
    pytest.param(ratings_file([{"cell_id": "aaaa1111"}]), "ratings[0]: holds neither pass nor "
                 "stars", id="nothing-rated"),
    pytest.param(ratings_file([{"cell_id": "aaaa1111", "stars": 6}]), "ratings[0].stars: "
                 "expected a whole number from 1 to 5, got 6", id="six-stars"),
    pytest.param(ratings_file([{"cell_id": "aaaa1111", "stars": 4.5}]), "ratings[0].stars",
                 id="half-a-star"),
    pytest.param(ratings_file([{"cell_id": "aaaa1111", "stars": True}]), "ratings[0].stars",
                 id="stars-true"),
    pytest.param(ratings_file([{"cell_id": "aaaa1111", "pass": "yes"}]), "ratings[0].pass: "
                 "expected true or false", id="pass-as-text"),
    pytest.param(ratings_file([{"cell_id": "aaaa1111", "pass": True, "note": "x"}]),
                 "ratings[0]: unknown key 'note'", id="unknown-rating-key"),
    pytest.param(ratings_file([{"cell_id": "aaaa1111", "pass": True},
                               {"cell_id": "aaaa1111", "stars": 3}]),
                 "ratings[1].cell_id: cell aaaa1111 is rated again", id="rated-twice"),
    pytest.param(ratings_file([{"cell_id": "bbbb1111", "pass": True}]), "no image to review",
                 id="failed-cell"),
    pytest.param(ratings_file([{"cell_id": "cccc1111", "pass": True}]), "superseded",
                 id="superseded-cell"),
    pytest.param(ratings_file([{"cell_id": "zzzz", "pass": True}]), "no cell 'zzzz'",
                 id="unknown-cell"),
    pytest.param(ratings_file([], ratings_by="eve"), "'ratings_by': unknown key",
                 id="unknown-top-key"),
    pytest.param(ratings_file([], version=2), "version: expected 1, got 2", id="newer-version"),
    pytest.param(ratings_file(ratings={"cell_id": "aaaa1111"}), "ratings: expected a list",
                 id="ratings-not-a-list"),
    pytest.param(ratings_file(preferences=[prefer("zzzz", "yyyy")]), "preferences[0]: neither "
                 "side (zzzz of 'runs/old' and yyyy of 'runs/new') is a cell", id="elsewhere"),
    pytest.param(ratings_file(preferences=[{**prefer("aaaa1111", "z"), "winner": "tie"}]),
                 "preferences[0].winner: expected \"a\" or \"b\"", id="a-tie"),
    pytest.param(ratings_file(preferences=[{**prefer("aaaa1111", "z"), "a": {"cell_id": "x"}}]),
                 "preferences[0].a.target: missing", id="side-without-target"),
    pytest.param(ratings_file(preferences=[prefer("bbbb1111", "z")]), "a.cell_id: cell "
                 "bbbb1111 has no image to compare (status failed)", id="failed-side"),
    pytest.param(ratings_file(preferences=[prefer("aaaa1111", "z"), prefer("aaaa1111", "z")]),
                 "preferences[1]: cell aaaa1111 is compared with cell z of 'runs/new' again",
                 id="compared-twice"),
    pytest.param(ratings_file(preferences=[{**prefer("aaaa1111", "z"),
                                            "a": {"target": "t" * 501, "cell_id": "aaaa1111"}}]),
                 "preferences[0].a.target: expected text of at most 500", id="long-target"),
]  # fmt: skip


@pytest.mark.parametrize("data, problem", BAD_RATINGS)
def test_a_ratings_file_is_checked_strictly(data: bytes, problem: str) -> None:
    with pytest.raises(ReviewInputError) as caught:
        review.read_ratings(data, rows_to_frame(manifest_rows()))
    assert problem in str(caught.value)


def test_every_problem_of_a_ratings_file_is_listed() -> None:
    data = ratings_file([{"cell_id": "zzzz", "pass": True}, {"cell_id": "aaaa1111"}],
                        [prefer("y", "z")], format="x")
    with pytest.raises(ReviewInputError) as caught:
        review.read_ratings(data, rows_to_frame(manifest_rows()))
    message = str(caught.value)
    assert message.startswith("4 problem(s): ")
    assert all(p in message for p in ("format:", "ratings[0].cell_id", "ratings[1]:",
                                      "preferences[0]:"))


def test_importing_a_file_twice_changes_nothing_and_the_newer_judgement_wins(sink: Sink) -> None:
    manifest = rows_to_frame(manifest_rows())
    first = ratings_file([{"cell_id": "aaaa1111", "pass": True, "stars": 4, "at": LATER}],
                         [prefer("aaaa2222", "z", at=AT)])
    judged = review.read_ratings(first, manifest)
    assert sorted(review.record_ratings(sink, judged, by="ana")) == ["aaaa1111", "aaaa2222"]
    before = decisions(sink)
    assert review.record_ratings(sink, judged, by="ben") == {}  # the same file again
    undated = ratings_file([{"cell_id": "aaaa1111", "pass": True, "stars": 4}],
                           [{k: v for k, v in prefer("aaaa2222", "z").items() if k != "at"}])
    assert review.record_ratings(sink, review.read_ratings(undated, manifest), by="ben") == {}
    assert decisions(sink) == before
    older = ratings_file([{"cell_id": "aaaa1111", "pass": False, "at": AT}],
                         [prefer("aaaa2222", "z", winner="b", at=LATER)])
    written = review.record_ratings(sink, review.read_ratings(older, manifest), by="ben")
    assert list(written) == ["aaaa2222"]  # the store's rating of aaaa1111 is newer: kept
    assert (decisions(sink)["aaaa1111"].passed, decisions(sink)["aaaa1111"].stars) == (True, 4)
    # the same opponent again, later: the new result replaces the old one
    assert decisions(sink)["aaaa2222"].preferences == (
        review.Preference("z", "runs/new", "lost", LATER),)
    assert decisions(sink)["aaaa2222"].by == "ben"  # no decision: who recorded it last


def test_a_cell_keeps_its_latest_preferences(
    sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(review, "MAX_PREFERENCES", 3)
    manifest = rows_to_frame(manifest_rows())
    compared = [prefer("aaaa1111", f"z{n}", at=f"2026-12-0{n + 1}T00:00:00+00:00")
                for n in range(5)]
    review.record_ratings(sink, review.read_ratings(ratings_file(preferences=compared),
                                                    manifest), by="ana")
    assert [p.opponent for p in decisions(sink)["aaaa1111"].preferences] == ["z2", "z3", "z4"]


def test_a_full_store_file_stays_readable(sink: Sink) -> None:
    """The bound on preferences keeps the largest entry under MAX_FILE_BYTES."""
    long = "s3://" + "b" * 495
    entry = Decision("c1", "approved", AT, "b" * 200, "n" * 2_000, 5, True, AT, tuple(
        review.Preference("x" * 128, long, "won", AT) for _ in range(review.MAX_PREFERENCES)))
    sink.put_json(f"{REVIEWS_DIR}/c1.json", entry.to_json())
    assert len(json.dumps(entry.to_json()).encode()) < MAX_FILE_BYTES
    assert decisions(sink)["c1"] == entry


def test_ratings_frame_joins_the_manifest_by_cell_id(sink: Sink) -> None:
    manifest = rows_to_frame(manifest_rows())
    assert review.ratings_frame(sink).schema == pl.Schema(review.RATINGS_SCHEMA)
    record(sink, "aaaa2222", "approved", by="ana")  # a decision alone: not a rating
    put(sink, "aaaa1111.json", entry("aaaa1111", decision=None, rating=4.5))  # not a star
    review.record_ratings(sink, review.read_ratings(ratings_file(
        [{"cell_id": "aaaa2222", "stars": 5}],
        [prefer("aaaa2222", "z1"), prefer("aaaa2222", "z2", winner="b"),
         prefer("z3", "aaaa2222", winner="b")]), manifest), by="ana")
    frame = review.ratings_frame(sink)
    assert frame.rows() == [("aaaa1111", None, None, 0, 0), ("aaaa2222", None, 5, 2, 1)]
    joined = manifest.join(frame, on="cell_id", how="left")
    assert joined.filter(pl.col("stars").is_not_null())["cell_id"].to_list() == ["aaaa2222"]
    assert review.judgement(decisions(sink)["aaaa2222"]) == "5/5,2W1L"
    assert review.judgement(decisions(sink)["aaaa1111"]) == "4.5?"
