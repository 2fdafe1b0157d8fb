"""Run records: `{target}/.nbp/runs/{run_id}.json`, what produced a target's rows.

Every run leaves one record: the spec as written and its sha256, the channels and model ids
it used, nbp's and Prefect's versions, when it started and ended, its counts by status and
its spend, and the Prefect flow run id when there is one. The manifest's `run_id` names the
record. Shards of one run (one `--run-id`) merge into one record under the manifest lease.

    record = RunRecord.start(run_id="a1b2", job="catalog", spec_source=..., spec_text=...)
    merge_record(sink, record.ended(counts, spent_usd))     # at the end of the run
    read_records(sink)                                      # `nbp status` lists them
    recorded_spec(sink, "a1b2").text                        # `nbp run --from TARGET@a1b2`
    read_run_rows(sink, "a1b2")        # the manifest rows that run wrote (`nbp compare`)

Beside its record, each run keeps the manifest rows it wrote, `.nbp/runs/{run_id}.parquet`
(`write_run_rows`, an after-write step: `outputs.steps.RunRows`): the manifest holds each
cell's latest row, so a later run that makes a cell again rewrites it there, and the rows
file is where `nbp compare TARGET@RUN_ID` still finds it. Only that run's rows, never a
snapshot of the manifest.

A record is input: a target can come from anyone, and a record can be written by hand. Each
is read at most `MAX_RECORD_BYTES`, and every field is checked for its type, shape and size
(`outputs.fields`; unknown fields are ignored, a missing `emulated` is false); a record whose
`spec_sha256` is not its spec's, or whose `run_id` is not its file's name, does not fit
either. `read_records` skips a record that does not fit, with a warning on the `nbp.runs`
logger; `find_record` refuses the one asked for with `RecordError`, naming the file and the
field. Nothing in a record is a place to read from or write to: `spec_folder` is where the
spec lay on the machine that ran it, for people to read (`nbp run --from` resolves the
spec's relative paths where its user says).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl

from nbp.outputs import fields as check
from nbp.outputs.layout import INPUTS_DIR, RUNS_DIR, run_rows
from nbp.outputs.manifest import conform, merge_manifest
from nbp.outputs.sink import Sink

VERSIONED = ("nbp", "prefect")
# The spec loader's limit on a spec (flows.spec.inputs.InputPolicy.max_spec_bytes; outputs
# never imports flows, tests/outputs/test_runs.py checks that the two agree).
MAX_SPEC_BYTES = 1_000_000
# A record file read past this is refused unread: a spec at its limit, escaped in JSON at
# worst 6 bytes a character (`\u0001`), and the rest of the record.
MAX_RECORD_BYTES = 8 * MAX_SPEC_BYTES
MAX_PATH_CHARS = 4_096
MAX_ITEMS = 1_024     # channels, shards, flow run ids of one run
CHANNEL_KEYS = ("key", "provider", "account", "model")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA256_OR_NONE = re.compile(r"(?:[0-9a-f]{64})?")
_SHARD = re.compile(r"[0-9]{1,6}/[0-9]{1,6}")

log = logging.getLogger("nbp.runs")


class RecordError(LookupError, ValueError):
    """A run record that does not fit (its message names the file and the field): bad input
    (`ValueError`), and no usable record of that run (`LookupError`, which `nbp run --from`
    already reports as "no such run": exit 2)."""


def check_run_id(run_id: str) -> str:
    """`run_id` when a record can be named by it (`--run-id`), else `ValueError` saying what
    a run id may hold: its record is `.nbp/runs/{run_id}.json` and must read back."""
    try:
        return check.identifier()(run_id)
    except check.Unfit as exc:
        raise ValueError(f"run id {check.describe(run_id)}: {exc.problem}") from None


@dataclass(frozen=True)
class RecordedSpec:
    """The spec a run recorded, as `nbp run --from` may use it: text to validate like any
    spec given by hand (`nbp validate`'s limits and checks), its relative paths resolved in
    a folder the user names. It carries no folder on purpose: a record is input."""

    run_id: str
    job: str
    text: str           # the spec as written, at most MAX_SPEC_BYTES in UTF-8
    sha256: str         # of `text`, checked
    source: str         # where it was read from, for messages and the new run's record
    started_at: str
    emulated: bool      # the run was emulated: running it again should emulate too


@dataclass(frozen=True)
class RunRecord:
    """What produced a target's rows (see the module docstring). Made by `start`, or read
    back by `from_json`, which checks every field: a record read from a target is input."""

    run_id: str
    job: str
    spec_source: str                    # where the spec was read from
    spec_text: str                      # the spec as written
    spec_sha256: str
    spec_folder: str = ""
    """Where the spec's relative paths resolved on the machine that ran it. Informational
    only: read back from a target it is input like the rest, never a folder to trust."""
    channels: tuple[Mapping[str, str], ...] = ()  # {key, provider, account, model}
    versions: Mapping[str, str] = field(default_factory=dict)
    started_at: str = ""                # ISO 8601, UTC
    ended_at: str | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    spent_usd: float = 0.0
    flow_run_ids: tuple[str, ...] = ()  # one per shard under Prefect
    shards: tuple[str, ...] = ()        # "i/n" of each shard that ended
    emulated: bool = False
    """The run's providers were the emulators (records written before this field: false)."""
    dataset: str = ""
    """The dataset the run read in place of the spec's (`--dataset`); empty: the spec's."""
    command: tuple[str, ...] = ()
    """The command line that started the run (`nbp run ...`); empty under a deployment,
    whose flow run (`flow_run_ids`) holds its parameters."""
    inputs_sha256: str = ""
    """One sha256 of the dataset and local reference files the cells were made from
    (`inputs_digest`; each file's own in `write_inputs`'s file); empty: none."""

    @classmethod
    def start(
        cls, *, run_id: str, job: str, spec_source: str, spec_text: str,
        channels: Sequence[Mapping[str, str]] = (), flow_run_id: str | None = None,
        shard: str | None = None, spec_folder: str = "", emulated: bool = False,
        dataset: str = "", command: Sequence[str] = (), inputs_sha256: str = "",
    ) -> RunRecord:
        """A running run's record; `ValueError` for a run id no record could be read by."""
        check_run_id(run_id)
        return cls(
            run_id=run_id, job=job, spec_source=spec_source, spec_text=spec_text,
            spec_sha256=hashlib.sha256(spec_text.encode()).hexdigest(), spec_folder=spec_folder,
            channels=tuple(dict(c) for c in channels), versions=installed_versions(),
            started_at=_now(), flow_run_ids=(flow_run_id,) if flow_run_id else (),
            shards=(shard,) if shard else (), emulated=emulated, dataset=dataset,
            command=tuple(command), inputs_sha256=inputs_sha256,
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
            shards=(*earlier.shards, *self.shards), emulated=earlier.emulated or self.emulated,
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["channels"] = [dict(c) for c in self.channels]
        data["flow_run_ids"], data["shards"] = list(self.flow_run_ids), list(self.shards)
        data["command"] = list(self.command)
        return data

    @classmethod
    def from_json(cls, data: Any, source: str = "run record") -> RunRecord:
        """The record in `data` (decoded JSON) when it fits; `RecordError` naming `source`
        and the first field that does not."""
        try:
            values = _RECORD(data)
        except check.Unfit as exc:
            where = f"field {exc.at.lstrip('.')}: " if exc.at else ""
            raise RecordError(f"{source}: {where}{exc.problem}") from None
        missing = [name for name in _REQUIRED if name not in values]
        if missing:
            raise RecordError(f"{source}: field {missing[0]} is missing")
        record = cls(**values)
        if hashlib.sha256(record.spec_text.encode()).hexdigest() != record.spec_sha256:
            raise RecordError(f"{source}: field spec_sha256 is not the sha256 of spec_text")
        return record

    def recorded_spec(self) -> RecordedSpec:
        """The spec this run recorded (see `RecordedSpec`); `RecordError` when its text is
        over the spec size limit or not what `spec_sha256` says (a record made in code)."""
        try:
            text = check.document(MAX_SPEC_BYTES)(self.spec_text)
        except check.Unfit as exc:
            raise RecordError(f"run {self.run_id}: field spec_text: {exc.problem}") from None
        if hashlib.sha256(text.encode()).hexdigest() != self.spec_sha256:
            raise RecordError(f"run {self.run_id}: field spec_sha256 is not the sha256 of "
                              "spec_text")
        return RecordedSpec(self.run_id, self.job, text, self.spec_sha256, self.spec_source,
                            self.started_at, self.emulated)


_LINE = check.text(MAX_PATH_CHARS)
# Every field of a record and what it must be; unknown fields are ignored.
_RECORD = check.object_of({
    "run_id": check.identifier(),
    "job": check.identifier(256),  # the spec's `name` pattern, its length unbounded there
    "spec_source": _LINE,
    "spec_text": check.document(MAX_SPEC_BYTES),
    "spec_sha256": check.matching(_SHA256, "a sha256 in lowercase hex"),
    "spec_folder": _LINE,
    "channels": check.list_of(check.object_of({
        **{k: _LINE for k in CHANNEL_KEYS},
        "models": check.list_of(_LINE, MAX_ITEMS),
        "prices_usd": check.mapping_of(check.identifier(64), check.amount, 64),
        "price_per_reference_usd": check.amount,
    }), MAX_ITEMS),
    "versions": check.mapping_of(check.identifier(), check.text(256), 64),
    "started_at": check.timestamp,
    "ended_at": check.optional(check.timestamp),
    "counts": check.mapping_of(check.identifier(64), check.count, 64),
    "spent_usd": check.amount,
    "flow_run_ids": check.list_of(check.identifier(), MAX_ITEMS),
    "shards": check.list_of(check.matching(_SHARD, "a shard as i/n"), MAX_ITEMS),
    "emulated": check.flag,
    "dataset": _LINE,
    "command": check.list_of(_LINE, MAX_ITEMS),
    "inputs_sha256": check.matching(_SHA256_OR_NONE, "a sha256 in lowercase hex, or empty"),
})  # fmt: skip
_REQUIRED = tuple(f.name for f in fields(RunRecord)
                  if f.default is MISSING and f.default_factory is MISSING)


def merge_record(sink: Sink, record: RunRecord) -> None:
    """Write the run's record, merged with earlier shards' (call under the manifest lease)."""
    path = f"{RUNS_DIR}/{record.run_id}.json"
    try:
        earlier = _read(sink, record.run_id)
    except RecordError as exc:  # this run's own record takes its place
        log.warning("replacing a run record that does not fit: %s", exc)
        earlier = None
    if earlier is not None and record.shards and earlier.shards:
        record = record.merged_into(earlier)
    sink.put_json(path, record.to_json())


@dataclass(frozen=True)
class InputHash:
    """One file a run read: its role ("dataset", "reference"), its path (relative to the
    spec's folder when it lies there, else as resolved: an absolute path or a URL) and the
    sha256 of its content."""

    role: str
    path: str
    sha256: str


def inputs_digest(files: Sequence[InputHash]) -> str:
    """The run's one hash of its input files: the sha256 of their lines
    `"{role} {sha256} {path}\\n"` in sorted order, so two runs that read the same files (the
    same content under the same names in their spec's folder) have the same digest, on any
    machine. Empty for a run that read no file."""
    if not files:
        return ""
    lines = sorted(f"{f.role} {f.sha256} {f.path}\n" for f in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def relative_inputs(
    files: Iterable[tuple[str, str, str]], spec_folder: str
) -> tuple[InputHash, ...]:
    """(role, resolved path, sha256) as the record names them (`InputHash.path`)."""
    found = []
    for role, path, digest in files:
        inside = "://" not in path and os.path.isabs(path) and spec_folder and (
            os.path.commonpath([path, spec_folder]) == os.path.abspath(spec_folder))
        shown = os.path.relpath(path, spec_folder).replace(os.sep, "/") if inside else path
        found.append(InputHash(role, shown, digest))
    return tuple(found)


def write_inputs(sink: Sink, run_id: str, files: Sequence[InputHash]) -> None:
    """`.nbp/inputs/{run_id}.json`: each input file's sha256 and the digest over them."""
    sink.put_json(f"{INPUTS_DIR}/{run_id}.json", {
        "version": 1, "run_id": run_id, "inputs_sha256": inputs_digest(files),
        "files": [asdict(f) for f in files],
    })


def read_records(sink: Sink) -> list[RunRecord]:
    """Every run record of the target that fits, oldest first; each one that does not is
    skipped with a warning (`nbp.runs` logger) that names its file and field."""
    records, unfit = _scan(sink)
    for _, error in unfit:
        log.warning("skipped a run record: %s", error)
    return records


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
    """The record of `run_id` (a unique prefix will do), else the newest that fits (others
    skipped with a warning). `LookupError` saying what the target holds; `RecordError` (a
    `LookupError`) when the record asked for does not fit, naming its file and field."""
    records, unfit = _scan(sink)
    if run_id is None:
        for _, error in unfit:
            log.warning("skipped a run record: %s", error)
        if records:
            return records[-1]
        raise _none_found(unfit)
    unfit_by_id = {name: error for name, error in unfit if name is not None}
    if not records and not unfit_by_id:
        raise _none_found(unfit)
    wanted = pick_run([*(r.run_id for r in records), *unfit_by_id], run_id)
    if wanted in unfit_by_id:
        raise unfit_by_id[wanted]
    return next(r for r in records if r.run_id == wanted)


def recorded_spec(sink: Sink, run_id: str | None = None) -> RecordedSpec:
    """The spec text a run of the target recorded (`find_record`'s run), for `nbp run
    --from`: to validate like any spec, never to resolve against the record's folder."""
    return find_record(sink, run_id).recorded_spec()


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


# -- the rows a run wrote ----------------------------------------------------------------------


class RunRowsError(ValueError):
    """A run's rows file that is not one nbp can read (the message names it)."""


def write_run_rows(sink: Sink, manifest: pl.LazyFrame, run_id: str) -> str | None:
    """Keep the rows of `manifest` (the target's, as just written) whose `run_id` is
    `run_id` in its rows file, merged into what the run's other shards kept there; returns
    its URI (None: the run wrote no row). A rows file that cannot be read is replaced."""
    check_run_id(run_id)
    rows = manifest.filter(pl.col("run_id") == run_id).collect()
    if rows.is_empty():
        return None
    try:
        earlier = read_run_rows(sink, run_id)
    except RunRowsError as exc:
        log.warning("replacing a rows file that cannot be read: %s", exc)
        earlier = None
    buffer = io.BytesIO()
    conform(merge_manifest(earlier, rows)).write_parquet(buffer, compression="zstd")
    return sink.write_bytes(run_rows(run_id), buffer.getvalue(), overwrite=True)


def read_run_rows(sink: Sink, run_id: str) -> pl.DataFrame | None:
    """The manifest rows run `run_id` wrote (conformed to the manifest's schema), as its
    rows file kept them; None when it has none (a run from before rows files were kept).
    `RunRowsError` when the file does not read as a manifest's rows."""
    rel = run_rows(check_run_id(run_id))
    data = sink.read_bytes(rel)
    if data is None:
        return None
    try:
        frame = conform(pl.read_parquet(io.BytesIO(data)))
    except (pl.exceptions.PolarsError, OSError, ValueError, TypeError) as exc:
        raise RunRowsError(f"{sink.uri(rel)} is not the rows of a run nbp can read "
                           f"({type(exc).__name__}: {str(exc)[:200]})") from None
    return frame.filter(pl.col("run_id") == run_id)  # a file is input: only its run's rows


def installed_versions() -> dict[str, str]:
    """nbp's and Prefect's versions, and nbp's commit when it runs from a git checkout
    (`nbp_commit`: the full hash, "-dirty" when files differ from it)."""
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    if commit := source_commit():
        versions["nbp_commit"] = commit
    return versions


def source_commit() -> str | None:
    """The commit of the checkout this code runs from (None: an installed wheel, or no git);
    asked once per run (`RunRecord.start`)."""
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / ".git").exists():
        return None
    try:
        found = subprocess.run(
            ["git", "-C", str(checkout), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() or None


def _scan(sink: Sink) -> tuple[list[RunRecord], list[tuple[str | None, RecordError]]]:
    """The target's records that fit, oldest first, and (run id, why) for each that does
    not (run id None when the file's name is not one)."""
    found: list[RunRecord] = []
    unfit: list[tuple[str | None, RecordError]] = []
    for name in sorted(sink.json_names(RUNS_DIR)):
        try:
            check_run_id(name)
        except ValueError:
            unfit.append((None, RecordError(
                f"{sink.uri(RUNS_DIR)}/{check.describe(name)}.json: its name is not a run id")))
            continue
        try:
            record = _read(sink, name)
        except RecordError as exc:
            unfit.append((name, exc))
            continue
        if record is not None:
            found.append(record)
    found.sort(key=lambda r: (r.started_at, r.ended_at or "~"))
    return found, unfit


def _none_found(unfit: Sequence[tuple[str | None, RecordError]]) -> LookupError:
    """What to say of a target with no record that fits."""
    if unfit:
        return RecordError(f"it holds no run record that fits: {unfit[0][1]}")
    return LookupError(f"it holds no run record ({RUNS_DIR}/)")


def _read(sink: Sink, run_id: str) -> RunRecord | None:
    """The record of `run_id` (None when it has none); `RecordError` when it does not fit."""
    rel = f"{RUNS_DIR}/{run_id}.json"
    source = sink.uri(rel)
    try:  # one byte past the limit tells a file that is too large, unread
        data: bytes = sink.fs.cat_file(sink.path(rel), start=0, end=MAX_RECORD_BYTES + 1)
    except (FileNotFoundError, IsADirectoryError):
        return None
    if len(data) > MAX_RECORD_BYTES:
        raise RecordError(f"{source}: larger than {MAX_RECORD_BYTES:,} bytes")
    try:
        decoded = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: [[[[... nested too deep
        raise RecordError(f"{source}: not JSON: {str(exc)[:200]}") from None
    record = RunRecord.from_json(decoded, source)
    if record.run_id != run_id:
        raise RecordError(f"{source}: field run_id {record.run_id!r} is not its file's name")
    return record


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
