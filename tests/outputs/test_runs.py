"""Run records: one per run of a job, shards merged, listed oldest first."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from outputs.runs import (
    RUNS_DIR,
    RunRecord,
    merge_record,
    pick_run,
    read_records,
    render_runs,
    split_run_ref,
)
from outputs.sink import Sink

SPEC = "version: 1\nname: r\nprovider: kie\nmatrix: {prompt: [a fig]}\n"


def record(run_id: str, shard: str | None = None, **counts: int) -> RunRecord:
    start = RunRecord.start(run_id=run_id, job="r", spec_source="r.yaml", spec_text=SPEC,
                            channels=[{"key": "kie", "provider": "kie",
                                       "account": "KIE_API_KEY", "model": "nano-banana-pro"}],
                            flow_run_id=f"flow-{shard}", shard=shard)
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


def test_an_unreadable_record_is_skipped(tmp_path: Path) -> None:
    sink = Sink(str(tmp_path))
    merge_record(sink, record("good", succeeded=1))
    sink.write_bytes(f"{RUNS_DIR}/bad.json", b"{not json", overwrite=True)
    assert [r.run_id for r in read_records(sink)] == ["good"]


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
