"""Run records: `{target}/.nbp/runs/{run_id}.json`, what produced a target's rows.

Every run leaves one record: the spec as written and its sha256, the channels and model ids
it used, nbp's and Prefect's versions, when it started and ended, its counts by status and
its spend, and the Prefect flow run id when there is one. The manifest's `run_id` names the
record. Shards of one run (one `--run-id`) merge into one record under the manifest lease.

    record = RunRecord.start(run_id="a1b2", job="catalog", spec_source=..., spec_text=...)
    merge_record(sink, record.ended(counts, spent_usd))     # at the end of the run
    read_records(sink)                                      # `nbp status` lists them
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from outputs.sink import Sink

RUNS_DIR = ".nbp/runs"
VERSIONED = ("nbp", "prefect")


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    job: str
    spec_source: str                    # where the spec was read from
    spec_text: str                      # the spec as written
    spec_sha256: str
    spec_folder: str = ""               # where its relative paths resolve (`nbp run --from`)
    channels: tuple[Mapping[str, str], ...] = ()  # {key, provider, account, model}
    versions: Mapping[str, str] = field(default_factory=dict)
    started_at: str = ""                # ISO 8601, UTC
    ended_at: str | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    spent_usd: float = 0.0
    flow_run_ids: tuple[str, ...] = ()  # one per shard under Prefect
    shards: tuple[str, ...] = ()        # "i/n" of each shard that ended

    @classmethod
    def start(
        cls, *, run_id: str, job: str, spec_source: str, spec_text: str,
        channels: Sequence[Mapping[str, str]] = (), flow_run_id: str | None = None,
        shard: str | None = None, spec_folder: str = "",
    ) -> RunRecord:
        return cls(
            run_id=run_id, job=job, spec_source=spec_source, spec_text=spec_text,
            spec_sha256=hashlib.sha256(spec_text.encode()).hexdigest(), spec_folder=spec_folder,
            channels=tuple(dict(c) for c in channels), versions=installed_versions(),
            started_at=_now(), flow_run_ids=(flow_run_id,) if flow_run_id else (),
            shards=(shard,) if shard else (),
        )

    def ended(self, counts: Mapping[str, int], spent_usd: float) -> RunRecord:
        return replace(self, ended_at=_now(), counts=dict(counts), spent_usd=spent_usd)

    def merged_into(self, earlier: RunRecord) -> RunRecord:
        """This shard's record added to what earlier shards of the same run wrote."""
        counts = dict(earlier.counts)
        for status, n in self.counts.items():
            counts[status] = counts.get(status, 0) + n
        return replace(
            self, started_at=min(earlier.started_at, self.started_at), counts=counts,
            spent_usd=round(earlier.spent_usd + self.spent_usd, 6),
            flow_run_ids=(*earlier.flow_run_ids, *self.flow_run_ids),
            shards=(*earlier.shards, *self.shards),
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["channels"] = [dict(c) for c in self.channels]
        data["flow_run_ids"], data["shards"] = list(self.flow_run_ids), list(self.shards)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        for name in ("channels", "flow_run_ids", "shards"):
            known[name] = tuple(known.get(name) or ())
        return cls(**known)


def merge_record(sink: Sink, record: RunRecord) -> None:
    """Write the run's record, merged with earlier shards' (call under the manifest lease)."""
    path = f"{RUNS_DIR}/{record.run_id}.json"
    earlier = _read(sink, path)
    if earlier is not None and record.shards and earlier.shards:
        record = record.merged_into(earlier)
    sink.put_json(path, record.to_json())


def read_records(sink: Sink) -> list[RunRecord]:
    """Every run record of the target, oldest first (unreadable ones are skipped)."""
    found = [r for name in sink.json_names(RUNS_DIR)
             if (r := _read(sink, f"{RUNS_DIR}/{name}.json")) is not None]
    return sorted(found, key=lambda r: (r.started_at, r.ended_at or "~"))


def render_runs(records: Sequence[RunRecord]) -> str:
    """One line per run for `nbp status`."""
    lines = [f"runs ({len(records)}):"]
    for r in records:
        counts = ", ".join(f"{n} {status}" for status, n in r.counts.items() if n) or "nothing"
        channels = ", ".join(c.get("key", "") for c in r.channels)
        lines.append(f"  {r.run_id}  {r.started_at} → {r.ended_at or 'running'}  {counts}  "
                     f"${r.spent_usd:.2f}  spec {r.spec_sha256[:12]}  on {channels or '-'}")
    return "\n".join(lines)


def find_record(sink: Sink, run_id: str | None = None) -> RunRecord:
    """The record of `run_id` (a unique prefix will do), else the newest; `LookupError`
    saying what the target holds."""
    records = read_records(sink)
    if not records:
        raise LookupError("it holds no run record (.nbp/runs/)")
    if run_id is None:
        return records[-1]
    wanted = pick_run([r.run_id for r in records], run_id)
    return next(r for r in records if r.run_id == wanted)


def split_run_ref(source: str) -> tuple[str, str | None]:
    """`TARGET[@RUN_ID]` (`nbp run --from`, `nbp compare`) as (target, run id or None).

    A run id holds no `/`, so an `@` inside the target stays in it:

    >>> split_run_ref("runs/catalog@a1b2")
    ('runs/catalog', 'a1b2')
    >>> split_run_ref("sftp://me@host/runs/catalog")
    ('sftp://me@host/runs/catalog', None)
    """
    target, at, run_id = source.rpartition("@")
    if not at or not run_id or "/" in run_id:
        return source, None
    return target, run_id


def pick_run(run_ids: Sequence[str], run_id: str) -> str:
    """The one of `run_ids` that is `run_id`, else the only one it is a prefix of;
    `LookupError` naming them all."""
    if run_id in run_ids:
        return run_id
    found = list(dict.fromkeys(r for r in run_ids if r.startswith(run_id)))
    if len(found) != 1:
        known = ", ".join(dict.fromkeys(run_ids))
        raise LookupError(f"{'no' if not found else 'more than one'} run {run_id!r}; "
                          f"its runs: {known}")
    return found[0]


def installed_versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def _read(sink: Sink, path: str) -> RunRecord | None:
    data = sink.read_bytes(path)
    if data is None:
        return None
    try:
        return RunRecord.from_json(json.loads(data))
    except (ValueError, TypeError, KeyError):
        return None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
