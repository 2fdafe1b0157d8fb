"""Run records: one per run of a job, shards merged, listed oldest first."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

import nbp.outputs.runs
from nbp.flows.spec.inputs import InputPolicy
from nbp.outputs.runs import (
    MAX_SPEC_BYTES,
    RUNS_DIR,
    RecordedSpec,
    RecordError,
    RunRecord,
    check_run_id,
    find_record,
    merge_record,
    pick_run,
    read_records,
    recorded_spec,
    render_runs,
    split_run_ref,
)
from nbp.outputs.sink import Sink

SPEC = "version: 1\nname: r\nprovider: kie\nmatrix: {prompt: [a fig]}\n"


def record(run_id: str, shard: str | None = None, **counts: int) -> RunRecord:
    start = RunRecord.start(run_id=run_id, job="r", spec_source="r.yaml", spec_text=SPEC,
                            channels=[{"key": "kie", "provider": "kie",
                                       "account": "KIE_API_KEY", "model": "nano-banana-pro"}],
                            flow_run_id=f"flow-{shard or 0}".replace("/", "-"), shard=shard)
    return start.ended(counts, 0.09 * sum(counts.values()))


def test_a_record_says_what_produced_the_rows(tmp_path: Path) -> None:
    sink = Sink(str(tmp_path))
    merge_record(sink, record("run1", succeeded=3, failed=1))
    (found,) = read_records(sink)
    assert found.spec_text == SPEC
    assert found.spec_sha256 == hashlib.sha256(SPEC.encode()).hexdigest()
    assert found.versions["nbp"] != "unknown" and "prefect" in found.versions
    assert found.counts == {"succeeded": 3, "failed": 1} and found.ended_at
    assert found.channels[0]["account"] == "KIE_API_KEY"
    assert "run1" in render_runs([found]) and "3 succeeded" in render_runs([found])


def test_shards_of_one_run_merge_into_one_record(tmp_path: Path) -> None:
    sink = Sink(str(tmp_path))
    merge_record(sink, record("run1", "0/2", succeeded=2))
    merge_record(sink, record("run1", "1/2", succeeded=1, pending=1))
    (found,) = read_records(sink)
    assert found.counts == {"succeeded": 3, "pending": 1}
    assert found.shards == ("0/2", "1/2") and len(found.flow_run_ids) == 2
    assert abs(found.spent_usd - 0.36) < 1e-9


def test_a_run_is_named_by_target_at_run_id() -> None:
    assert split_run_ref("runs/catalog@a1b2") == ("runs/catalog", "a1b2")
    assert split_run_ref("runs/catalog") == ("runs/catalog", None)
    assert split_run_ref("runs/catalog@") == ("runs/catalog@", None)
    assert split_run_ref("sftp://me@host/runs/catalog") == ("sftp://me@host/runs/catalog", None)


def test_a_run_is_picked_by_its_id_or_a_unique_prefix() -> None:
    runs = ["a1", "a12", "b7"]
    assert pick_run(runs, "a1") == "a1"  # the exact id wins over the longer one it prefixes
    assert pick_run(runs, "b") == "b7"
    with pytest.raises(LookupError, match="more than one run 'a'; its runs: a1, a12, b7"):
        pick_run(runs, "a")
    with pytest.raises(LookupError, match="no run 'c'"):
        pick_run(runs, "c")


# -- a record is input -------------------------------------------------------------------------

HUGE = "x" * (MAX_SPEC_BYTES + 1)
Change = Callable[[dict[str, Any]], dict[str, Any] | bytes]


def good_json() -> dict[str, Any]:
    """A record of run `bad` as the engine writes it (every case below spoils one thing)."""
    return record("bad", succeeded=1).to_json()


def setting(**values: Any) -> Change:
    return lambda data: {**data, **values}


def without(name: str) -> Change:
    return lambda data: {k: v for k, v in data.items() if k != name}


def raw(text: bytes) -> Change:
    return lambda data: text


def spec(text: str) -> Change:
    return setting(spec_text=text, spec_sha256=hashlib.sha256(text.encode()).hexdigest())


MALFORMED = [
    pytest.param(setting(run_id=5), "field run_id: expected an id", id="run-id-a-number"),
    pytest.param(setting(job=["j"]), "field job: expected an id", id="job-a-list"),
    pytest.param(setting(job="j" * 300), "got text of 300 characters", id="job-too-long"),
    pytest.param(setting(job="a b"), "field job: expected an id", id="job-charset"),
    pytest.param(setting(spec_source="spec\x1b[31m.yaml"), "field spec_source: expected text "
                 "of at most 4,096 characters, without control characters", id="escape-codes"),
    pytest.param(spec(HUGE), "field spec_text: expected text of at most 1,000,000 bytes, got "
                 "text of 1,000,001 characters", id="huge-spec-text"),
    pytest.param(spec("é" * (MAX_SPEC_BYTES // 2 + 1)), "field spec_text: expected text of at "
                 "most 1,000,000 bytes, got 1,000,002 bytes", id="huge-spec-in-utf8"),
    pytest.param(setting(spec_text="other"), "field spec_sha256 is not the sha256 of spec_text",
                 id="spec-not-its-sha256"),
    pytest.param(setting(spec_sha256="ABC"), "field spec_sha256: expected a sha256",
                 id="sha256-shape"),
    pytest.param(setting(spec_folder=7), "field spec_folder: expected text", id="folder-a-number"),
    pytest.param(setting(channels="kie"), "field channels: expected a list", id="channels-text"),
    pytest.param(setting(channels=[{"provider": "kie", "model": {"id": 1}}]),
                 "field channels[0].model: expected text", id="channel-model-an-object"),
    pytest.param(setting(versions={"nbp": 1}), "field versions.nbp: expected text",
                 id="version-a-number"),
    pytest.param(setting(started_at="yesterday"), "field started_at: expected an ISO 8601 time",
                 id="started-at-not-a-time"),
    pytest.param(setting(started_at="2026-01-01T10:00:00"), "field started_at: expected an ISO "
                 "8601 time with its offset", id="started-at-no-offset"),
    pytest.param(setting(ended_at=12), "field ended_at: expected an ISO", id="ended-at-a-number"),
    pytest.param(setting(counts={"succeeded": "3"}), "field counts.succeeded: expected a whole "
                 "number", id="count-as-text"),
    pytest.param(setting(counts={"succeeded": True}), "field counts.succeeded: expected a whole "
                 "number, 0 or more, got true", id="count-a-bool"),
    pytest.param(setting(counts={"failed": -1}), "field counts.failed", id="count-negative"),
    pytest.param(setting(spent_usd="0.09"), "field spent_usd: expected a finite number",
                 id="spend-as-text"),
    pytest.param(lambda data: json.dumps({**data, "spent_usd": float("nan")}).encode(),
                 "field spent_usd: expected a finite number, 0 or more, got nan", id="spend-nan"),
    pytest.param(setting(flow_run_ids=[None]), "field flow_run_ids[0]: expected an id",
                 id="flow-run-id-null"),
    pytest.param(setting(shards=["first"]), "field shards[0]: expected a shard as i/n",
                 id="shard-shape"),
    pytest.param(setting(emulated="yes"), "field emulated: expected true or false, got 'yes'",
                 id="emulated-as-text"),
    pytest.param(setting(run_id="other"), "field run_id 'other' is not its file's name",
                 id="run-id-not-its-file"),
    pytest.param(without("spec_text"), "field spec_text is missing", id="no-spec-text"),
    pytest.param(without("run_id"), "field run_id is missing", id="no-run-id"),
    pytest.param(raw(b"[1, 2]"), "expected an object, got a list of 2 items", id="json-array"),
    pytest.param(raw(b"{not json"), "not JSON: Expecting property name", id="invalid-json"),
    pytest.param(raw(b"\xff\xfe\x00"), "not JSON", id="not-utf8"),
    pytest.param(raw(b"[" * 100_000), "not JSON", id="nested-too-deep"),
    pytest.param(raw(b'{"spec_source": "\\ud800"}'), "field spec_source: expected text "
                 "of at most 4,096 characters, without control characters, got text that is not "
                 "valid Unicode", id="lone-surrogate"),
]  # fmt: skip


def write_bad(sink: Sink, change: Change) -> None:
    changed = change(good_json())
    data = changed if isinstance(changed, bytes) else json.dumps(changed).encode()
    sink.write_bytes(f"{RUNS_DIR}/bad.json", data, overwrite=True)


@pytest.mark.parametrize(("change", "says"), MALFORMED)
def test_a_malformed_record_is_skipped_and_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change: Change, says: str
) -> None:
    """`nbp status` lists the others and warns; `--from TARGET@bad` is refused, naming the
    file and the field, never echoing a huge value."""
    sink = Sink(str(tmp_path))
    merge_record(sink, record("good", succeeded=1))
    write_bad(sink, change)
    with caplog.at_level(logging.WARNING, logger="nbp.runs"):
        assert [r.run_id for r in read_records(sink)] == ["good"]
    (warning,) = caplog.messages
    bad_file = f"{tmp_path}/{RUNS_DIR}/bad.json"
    assert warning.startswith(f"skipped a run record: {bad_file}: ") and says in warning
    for ref in ("bad", "ba"):
        with pytest.raises(RecordError) as refused:
            find_record(sink, ref)
        assert str(refused.value).startswith(f"{bad_file}: ") and says in str(refused.value)
        assert len(str(refused.value)) < 400
    assert isinstance(refused.value, LookupError) and isinstance(refused.value, ValueError)
    assert find_record(sink, "good").run_id == "good"


def test_a_record_file_too_large_is_not_read(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nbp.outputs.runs, "MAX_RECORD_BYTES", 1_000)
    sink = Sink(str(tmp_path))
    write_bad(sink, lambda data: json.dumps({**data, "padding": "x" * 1_000}).encode())
    with pytest.raises(RecordError, match=r"bad\.json: larger than 1,000 bytes"):
        find_record(sink, "bad")


def test_a_file_not_named_by_a_run_id_is_skipped(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink(str(tmp_path))
    (tmp_path / RUNS_DIR).mkdir(parents=True)
    (tmp_path / RUNS_DIR / "a \x1b[2J.json").write_text(json.dumps(good_json()))
    with caplog.at_level(logging.WARNING, logger="nbp.runs"):
        assert read_records(sink) == []
    assert "its name is not a run id" in caplog.text and "\x1b" not in caplog.text
    with pytest.raises(RecordError, match=r"it holds no run record that fits: .*not a run id"):
        find_record(sink)
    with pytest.raises(RecordError, match="no run record that fits"):
        find_record(sink, "a")


def test_the_newest_record_that_fits_is_found(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink(str(tmp_path))
    merge_record(sink, record("old", succeeded=1))
    write_bad(sink, setting(spent_usd=-1))
    with caplog.at_level(logging.WARNING, logger="nbp.runs"):
        assert find_record(sink).run_id == "old"
    assert "bad.json: field spent_usd" in caplog.text
    with pytest.raises(LookupError, match="no run 'x'; its runs: old, bad"):
        find_record(sink, "x")


def test_unknown_fields_are_ignored_and_emulated_is_false_when_absent(tmp_path: Path) -> None:
    """A record from an older nbp (no `emulated`) or a newer one (more fields) reads."""
    sink = Sink(str(tmp_path))
    write_bad(sink, lambda data: {**without("emulated")(data), "from_the_future": {"x": [1]}})
    found = find_record(sink, "bad")
    assert found.emulated is False and found.counts == {"succeeded": 1}
    assert "from_the_future" not in found.to_json()


def test_emulated_round_trips_and_marks_the_merged_run(tmp_path: Path) -> None:
    sink = Sink(str(tmp_path))
    start = RunRecord.start(run_id="emu", job="r", spec_source="r.yaml", spec_text=SPEC,
                            shard="0/2", emulated=True)
    merge_record(sink, start.ended({"succeeded": 1}, 0.0))
    assert find_record(sink, "emu").emulated is True
    assert json.loads((tmp_path / RUNS_DIR / "emu.json").read_text())["emulated"] is True
    live_shard = RunRecord.start(run_id="emu", job="r", spec_source="r.yaml", spec_text=SPEC,
                                 shard="1/2")
    merge_record(sink, live_shard.ended({"succeeded": 1}, 0.09))
    assert find_record(sink, "emu").emulated is True  # one emulated shard marks the run


def test_the_recorded_spec_is_text_to_validate_not_a_folder(tmp_path: Path) -> None:
    """`nbp run --from` gets the spec as written, its sha256 checked, and the emulated flag;
    the folder the record names is not part of it."""
    sink = Sink(str(tmp_path))
    made = RunRecord.start(run_id="run1", job="r", spec_source="r.yaml", spec_text=SPEC,
                           spec_folder="/", emulated=True)
    merge_record(sink, made.ended({"succeeded": 1}, 0.0))
    got = recorded_spec(sink, "run")
    assert (got.run_id, got.job, got.text, got.source, got.emulated) == (
        "run1", "r", SPEC, "r.yaml", True)
    assert got.sha256 == hashlib.sha256(SPEC.encode()).hexdigest()
    assert recorded_spec(sink) == got  # the newest
    assert not {"folder", "spec_folder"} & {f.name for f in fields(RecordedSpec)}
    assert find_record(sink, "run1").spec_folder == "/"  # kept, for people to read
    with pytest.raises(RecordError, match="run big: field spec_text: expected text of at most"):
        RunRecord("big", "r", "r.yaml", HUGE, hashlib.sha256(HUGE.encode()).hexdigest()
                  ).recorded_spec()
    with pytest.raises(RecordError, match="run odd: field spec_sha256 is not the sha256"):
        RunRecord("odd", "r", "r.yaml", SPEC, "0" * 64).recorded_spec()


def test_a_run_id_must_name_a_record_that_reads_back() -> None:
    assert check_run_id("2026-01-05_nightly.1") == "2026-01-05_nightly.1"
    for bad in ("", "a b", "../x", "a/b", ".hidden", "x" * 129, "run\n2"):
        with pytest.raises(ValueError, match="run id"):
            check_run_id(bad)
    with pytest.raises(ValueError, match="run id 'a b'"):
        RunRecord.start(run_id="a b", job="r", spec_source="r.yaml", spec_text=SPEC)


def test_the_spec_limit_is_the_loader_s() -> None:
    assert InputPolicy().max_spec_bytes == MAX_SPEC_BYTES


def test_a_record_keeps_the_command_prices_and_model_lists(tmp_path: Path) -> None:
    """What a researcher needs to recompute a figure: the command line, each channel's model
    ids as a list and the prices the run used; a record without them (older) still reads."""
    sink = Sink(str(tmp_path))
    channel = {"key": "gemini", "provider": "gemini", "account": "GEMINI_API_KEY",
               "model": "a, b", "models": ["a", "b"], "prices_usd": {"1K": 0.134, "4K": 0.24},
               "price_per_reference_usd": 0.0011}
    start = RunRecord.start(run_id="full", job="r", spec_source="r.yaml", spec_text=SPEC,
                            channels=[channel], command=["nbp", "run", "r.yaml", "--force"])
    merge_record(sink, start.ended({"succeeded": 1}, 0.134))
    found = find_record(sink, "full")
    assert found.command == ("nbp", "run", "r.yaml", "--force")
    assert found.channels[0]["models"] == ("a", "b")
    assert found.channels[0]["prices_usd"] == {"1K": 0.134, "4K": 0.24}
    assert found.channels[0]["price_per_reference_usd"] == 0.0011
    write_bad(sink, without("command"))
    assert find_record(sink, "bad").command == ()


def test_a_record_names_the_commit_nbp_ran_from(tmp_path: Path) -> None:
    """From a git checkout (this one) the full commit hash, "-dirty" when files differ;
    an installed wheel has no checkout and records its version only."""
    if not (Path(nbp.outputs.runs.__file__).resolve().parents[1] / ".git").exists():
        pytest.skip("not run from a git checkout")
    commit = nbp.outputs.runs.source_commit()
    assert commit is not None and len(commit.removesuffix("-dirty")) == 40
    start = RunRecord.start(run_id="c", job="r", spec_source="r.yaml", spec_text=SPEC)
    assert start.versions["nbp_commit"] == commit
    merge_record(Sink(str(tmp_path)), start.ended({}, 0.0))
    assert find_record(Sink(str(tmp_path)), "c").versions["nbp_commit"] == commit


def test_the_inputs_digest_is_over_content_and_names_in_the_spec_folder(tmp_path: Path) -> None:
    """One hash for a run's input files: the same content under the same names (relative to
    the spec's folder) on any machine; a URL keeps its name; a record keeps it, and an
    older record without it reads as empty."""
    from nbp.outputs.runs import InputHash, inputs_digest, relative_inputs

    sha = "ab" * 32
    here = relative_inputs([("dataset", "/m1/specs/rows.csv", sha),
                            ("reference", "s3://b/cup.png", sha)], "/m1/specs")
    there = relative_inputs([("reference", "s3://b/cup.png", sha),
                             ("dataset", "/m2/work/specs/rows.csv", sha)], "/m2/work/specs")
    assert [f.path for f in here] == ["rows.csv", "s3://b/cup.png"]
    assert inputs_digest(here) == inputs_digest(there) != ""
    assert inputs_digest(()) == ""
    assert inputs_digest([InputHash("dataset", "rows.csv", "cd" * 32)]) != inputs_digest(
        [InputHash("dataset", "rows.csv", sha)])
    sink = Sink(str(tmp_path))
    start = RunRecord.start(run_id="h", job="r", spec_source="r.yaml", spec_text=SPEC,
                            inputs_sha256=inputs_digest(here))
    merge_record(sink, start.ended({}, 0.0))
    assert find_record(sink, "h").inputs_sha256 == inputs_digest(here)
    write_bad(sink, without("inputs_sha256"))
    assert find_record(sink, "bad").inputs_sha256 == ""
    write_bad(sink, lambda data: {**data, "inputs_sha256": "x"})
    with pytest.raises(RecordError, match="inputs_sha256"):
        find_record(sink, "bad")
