"""Review decisions: one small JSON file per cell in the target, `.nbp/reviews/{cell_id}.json`.

    record(sink, "3e6ac763fe2e5735", "rejected", by="ana", note="label cut off")
    decisions(sink)        # {cell_id: Decision}: one listing and one batched read
    review_frame(sink)     # polars (cell_id, review): what the manifest's `review` column says
    with_reviews(manifest, review_frame(sink))   # the manifest with that column filled

A file per cell, like the journal (`flows.engine.journal`), so reviewers and runs write at the
same time without a lock, on any fsspec store, and a catalog of 100,000 decisions is read in a
few round trips. Each file is replaced whole:

    {"version": 1, "cell_id": "3e6ac763fe2e5735", "decision": "approved" | "rejected",
     "at": "2026-12-06T10:42:00+00:00", "by": "ana", "note": "label cut off" | null}

`rating` (a number, 0 or more) is reserved for the experiment ratings this store will also
hold: it is read, checked and kept when a decision is recorded, but nbp writes none yet, and a
file may then hold a rating and no decision. Unknown fields are ignored (a newer nbp may write
more); a newer `version` is skipped.

A target can come from anyone, so every file is input: at most `MAX_FILE_BYTES` (larger ones
are not read), named after a cell id, each field of its type and size (`outputs.fields`). A
file that does not fit is skipped with a warning on the `nbp.review` logger, never a crash.

The gallery's "download decisions" button saves the choices made in the page as one file,
`EXPORT_FORMAT`, which `nbp review TARGET --import FILE` reads (`read_export`: strictly, every
problem listed, only cells of the manifest that have an image):

    {"format": "nbp-review-decisions", "version": 1, "exported_at": "...", "title": "...",
     "decisions": [{"cell_id": "3e6ac763fe2e5735", "decision": "rejected", "at": "..."}]}
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar, cast, get_args

import polars as pl

from nbp.outputs import fields as check
from nbp.outputs.layout import REVIEWS_DIR, TEMP_MARKER
from nbp.outputs.sink import Sink

REVIEW_VERSION = 1
Verdict = Literal["approved", "rejected"]
VERDICTS: tuple[str, ...] = get_args(Verdict)
REVIEWABLE = "succeeded"  # only a cell with an image is reviewed
MAX_FILE_BYTES = 64 * 1024
MAX_BY_CHARS = 200
MAX_NOTE_CHARS = 2_000
EXPORT_FORMAT = "nbp-review-decisions"
EXPORT_VERSION = 1
MAX_EXPORT_BYTES = 32 * 1024 * 1024
MAX_EXPORT_DECISIONS = 1_000_000
MAX_PROBLEMS_SHOWN = 20
REVIEW_SCHEMA = {"cell_id": pl.String, "review": pl.String}

log = logging.getLogger("nbp.review")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ReviewInputError(ValueError):
    """Decisions that cannot be recorded (an unknown cell, a bad decisions file); the message
    lists every problem."""


@dataclass(frozen=True)
class Decision:
    """One cell's entry in the store (see the module docstring)."""

    cell_id: str
    decision: Verdict | None
    at: str                      # ISO 8601 with offset
    by: str
    note: str | None = None
    rating: float | None = None  # reserved for experiment ratings: kept, not written yet
    version: int = REVIEW_VERSION

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version, "cell_id": self.cell_id, "decision": self.decision,
            "at": self.at, "by": self.by, "note": self.note,
        }
        if self.rating is not None:
            out["rating"] = self.rating
        return out

    @classmethod
    def from_json(cls, value: Any, cell_id: str) -> Decision:
        """The entry of `cell_id` from its decoded file; `check.Unfit` naming the field."""
        if not isinstance(value, dict):
            raise check.Unfit(f"expected an object, got {check.describe(value)}")
        version = value.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise check.Unfit(f"expected a format version, got {check.describe(version)}",
                              ".version")
        if version > REVIEW_VERSION:
            raise check.Unfit(f"format version {version} is newer than this nbp reads "
                              f"({REVIEW_VERSION}); upgrade nbp", ".version")
        found = _FIELDS(value)
        for name in ("cell_id", "at", "by"):
            if name not in found:
                raise check.Unfit("missing", f".{name}")
        if found["cell_id"] != cell_id:
            raise check.Unfit(f"{found['cell_id']!r} is not its file's name", ".cell_id")
        if found.get("decision") is None and found.get("rating") is None:
            raise check.Unfit("holds neither a decision nor a rating")
        return cls(cell_id, found.get("decision"), found["at"], found["by"],
                   found.get("note"), found.get("rating"))


@dataclass(frozen=True)
class Choice:
    """A decision to record: from the command line or a gallery's decisions file."""

    cell_id: str
    decision: Verdict
    at: str | None = None        # when it was made (None: when recorded)
    note: str | None = None


def _verdict(value: Any) -> Verdict:
    if not isinstance(value, str) or value not in VERDICTS:
        raise check.Unfit(f"expected one of {', '.join(VERDICTS)}, got {check.describe(value)}")
    return cast(Verdict, value)


_by = check.text(MAX_BY_CHARS)
_note = check.text(MAX_NOTE_CHARS)
_FIELDS = check.object_of({
    "cell_id": check.identifier(), "decision": check.optional(_verdict), "at": check.timestamp,
    "by": _by, "note": check.optional(_note), "rating": check.optional(check.amount),
})


# -- the store ---------------------------------------------------------------------------------


def _rel(cell_id: str) -> str:
    return f"{REVIEWS_DIR}/{check.identifier()(cell_id)}.json"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def default_reviewer() -> str:
    """Who decides when nobody says: the login name (`--by` overrides it)."""
    try:
        name = getpass.getuser()
    except (OSError, KeyError):  # no user name in a bare container
        name = os.environ.get("USER", "")
    return _CONTROL.sub("", name)[:MAX_BY_CHARS] or "unknown"


def check_signature(by: str, note: str | None) -> None:
    """`ReviewInputError` when `by` or `note` would not read back from the store (checked
    before anything is written, so a batch is recorded whole or not at all)."""
    for name, value, fits in (("by", by, _by), ("note", note, check.optional(_note))):
        try:
            fits(value)
        except check.Unfit as exc:
            raise ReviewInputError(f"--{name}: {exc}") from None
    if not by:
        raise ReviewInputError("--by: expected a name, got ''")


def record(
    sink: Sink, cell_id: str, decision: Verdict, *, by: str, note: str | None = None,
    at: str | None = None,
) -> Decision:
    """Write `cell_id`'s decision (replacing any earlier one, keeping its rating); returns
    the entry written. `ValueError` (`check.Unfit`) for an id, decision, `by`, `note` or `at`
    that the store could not read back."""
    return _write(sink, Choice(cell_id, decision, at, note), by=by,
                  previous=_read_one(sink, cell_id))


def record_all(
    sink: Sink, choices: Iterable[Choice], *, by: str, note: str | None = None,
    previous: Mapping[str, Decision] | None = None,
) -> dict[str, Decision]:
    """`record` for many cells: `note` for the choices without their own; `previous`: the
    store as read (`decisions`), so the ratings it holds are kept without reading again.
    Returns the entries written."""
    if previous is None:
        chosen = list(choices)
        previous = _read_entries(sink, {c.cell_id for c in chosen})
        choices = chosen
    return {
        choice.cell_id: _write(sink, choice, by=by, note=note,
                               previous=previous.get(choice.cell_id))
        for choice in choices
    }


def _write(
    sink: Sink, choice: Choice, *, by: str, note: str | None = None,
    previous: Decision | None,
) -> Decision:
    text = choice.note if choice.note is not None else note
    entry = Decision(
        check.identifier()(choice.cell_id), _verdict(choice.decision),
        check.timestamp(choice.at or now()), _by(by), None if text is None else _note(text),
        previous.rating if previous else None,
    )
    sink.put_json(_rel(entry.cell_id), entry.to_json())
    return entry


def decisions(sink: Sink) -> dict[str, Decision]:
    """Every entry of the store that fits, by cell id: one listing and one batched read.
    Files that do not fit are skipped with a warning naming the file and the problem."""
    return _read_entries(sink, None)


def _read_entries(sink: Sink, wanted: Collection[str] | None) -> dict[str, Decision]:
    """The entries of `wanted` cells (None: all) that exist and fit."""
    sizes = _listing(sink)
    names = sorted(sizes if wanted is None else set(sizes) & set(wanted))
    readable = []
    for name in names:
        shown = _shown(name) if len(name) <= 60 else check.describe(name)
        where = f"{sink.uri(REVIEWS_DIR)}/{shown}.json"
        if not check.IDENTIFIER.fullmatch(name) or len(name) > check.MAX_IDENTIFIER_CHARS:
            log.warning("review %s skipped: its name is not a cell id", where)
        elif sizes[name] > MAX_FILE_BYTES:
            log.warning("review %s skipped: larger than %s bytes", where, f"{MAX_FILE_BYTES:,}")
        else:
            readable.append(name)
    contents = sink.read_bytes_many(f"{REVIEWS_DIR}/{name}.json" for name in readable)
    found = {}
    for name in readable:
        data = contents.get(f"{REVIEWS_DIR}/{name}.json")
        if data is None:
            continue  # removed since the listing
        try:
            found[name] = Decision.from_json(_json(data), name)
        except check.Unfit as exc:
            log.warning("review %s/%s.json skipped: %s", sink.uri(REVIEWS_DIR), name, exc)
    return found


def _read_one(sink: Sink, cell_id: str) -> Decision | None:
    """`cell_id`'s entry when it exists and fits (read at most `MAX_FILE_BYTES` + 1)."""
    rel = _rel(cell_id)
    try:
        data: bytes = sink.fs.cat_file(sink.path(rel), start=0, end=MAX_FILE_BYTES + 1)
    except (FileNotFoundError, IsADirectoryError):
        return None
    try:
        if len(data) > MAX_FILE_BYTES:
            raise check.Unfit(f"larger than {MAX_FILE_BYTES:,} bytes")
        return Decision.from_json(_json(data), cell_id)
    except check.Unfit as exc:
        log.warning("review %s replaced: %s", sink.uri(rel), exc)
        return None


def _listing(sink: Sink) -> dict[str, int]:
    """Name (without `.json`) -> size of each file in the store: one listing, no reads."""
    base = sink.path(REVIEWS_DIR)
    sink.fs.invalidate_cache(base)  # another process may have written since
    try:
        found = sink.fs.ls(base, detail=True)
    except FileNotFoundError:
        return {}
    sizes = {}
    for info in found:
        name = str(info.get("name", "")).rsplit("/", 1)[-1]
        if info.get("type") != "file" or not name.endswith(".json") or TEMP_MARKER in name:
            continue
        size = info.get("size")
        sizes[name[: -len(".json")]] = size if isinstance(size, int) else MAX_FILE_BYTES + 1
    return sizes


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: [[[[... nested too deep
        raise check.Unfit(f"not JSON: {str(exc)[:200]}") from None


# -- the manifest's `review` column -------------------------------------------------------------


def frame_of(entries: Mapping[str, Decision]) -> pl.DataFrame:
    """(cell_id, review) of the entries that hold a decision, by cell id."""
    rows = sorted((cid, d.decision) for cid, d in entries.items() if d.decision is not None)
    return pl.DataFrame(rows, schema=REVIEW_SCHEMA, orient="row")


def review_frame(sink: Sink) -> pl.DataFrame:
    """The store as the manifest's `review` column: columns cell_id and review (approved or
    rejected), one row per decided cell. Join it with `with_reviews`."""
    return frame_of(decisions(sink))


Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)


def with_reviews(manifest: Frame, reviews: pl.DataFrame) -> Frame:
    """`manifest` (eager or lazy, rows and columns in their order) with its `review` column
    taken from `reviews` (`review_frame`): the store is the one truth, so a cell without a
    decision there has none (null)."""
    columns = manifest.collect_schema().names()
    if "review" not in columns:
        columns.append("review")
    joined = (
        manifest.lazy().drop("review", strict=False)
        .join(reviews.lazy().select("cell_id", "review"), on="cell_id", how="left",
              maintain_order="left")
        .select(columns)
    )
    if isinstance(manifest, pl.DataFrame):
        return joined.collect()
    return joined


# -- choices from the command line and the gallery ----------------------------------------------


def resolve_cells(refs: Sequence[str], manifest: pl.DataFrame) -> list[str]:
    """The cell each of `refs` names: itself, else the one cell id of the manifest it starts
    (the gallery shows 12 characters); `ReviewInputError` listing every ref that names none
    or several."""
    ids = manifest["cell_id"]
    found, problems = [], []
    for ref in refs:
        matches = ids.filter(ids == ref) if ref else ids.clear()
        if matches.is_empty() and ref:
            matches = ids.filter(ids.str.starts_with(ref)).unique(maintain_order=True)
        if matches.len() == 1:
            found.append(str(matches[0]))
        elif matches.is_empty():
            problems.append(f"no cell {check.describe(ref)} in the manifest")
        else:
            shown = ", ".join(sorted(matches.head(5).to_list()))
            problems.append(f"{check.describe(ref)} starts {matches.len()} cells ({shown}"
                            f"{', ...' if matches.len() > 5 else ''}): give more of the id")
    if problems:
        raise ReviewInputError("; ".join(problems))
    return found


def unreviewable(cell_ids: Collection[str], manifest: pl.DataFrame) -> dict[str, str]:
    """Why each of `cell_ids` that cannot be reviewed cannot: it is not in the manifest, or
    has no current image (it did not succeed, or another cell took its path in a refresh)."""
    rows = manifest.filter(pl.col("cell_id").is_in(list(cell_ids))).select(
        "cell_id", "status", "superseded_by")
    seen = {str(cid): (status, newer) for cid, status, newer in rows.iter_rows()}
    problems = {}
    for cid in cell_ids:
        if cid not in seen:
            problems[cid] = f"no cell {check.describe(cid)} in the manifest"
            continue
        status, newer = seen[cid]
        if status != REVIEWABLE:
            problems[cid] = f"cell {cid} has no image to review (status {status or 'unknown'})"
        elif newer:
            problems[cid] = f"cell {cid} was superseded by cell {newer}: review that one"
    return problems


def check_reviewable(cell_ids: Collection[str], manifest: pl.DataFrame) -> None:
    """`ReviewInputError` naming each of `cell_ids` that `unreviewable` refuses."""
    problems = unreviewable(cell_ids, manifest)
    if problems:
        raise ReviewInputError("; ".join(problems.values()))


def gather(
    manifest: pl.DataFrame, *, approve: Sequence[str] = (), reject: Sequence[str] = (),
    export: bytes | None = None, export_name: str = "decisions file",
) -> list[Choice]:
    """The choices of one `nbp review`: the cells `approve` and `reject` name (ids or
    prefixes), then those of a gallery's decisions file; each must be reviewable and decided
    once. `ReviewInputError` for any problem, before anything is recorded."""
    choices = [Choice(cid, "approved") for cid in resolve_cells(approve, manifest)]
    choices += [Choice(cid, "rejected") for cid in resolve_cells(reject, manifest)]
    check_reviewable({c.cell_id for c in choices}, manifest)
    if export is not None:
        try:
            choices += read_export(export, manifest)
        except ReviewInputError as exc:
            raise ReviewInputError(f"{export_name}: {exc}") from None
    counts = Counter(c.cell_id for c in choices)
    twice = sorted(cid for cid, n in counts.items() if n > 1)
    if twice:
        raise ReviewInputError(f"decided twice: {', '.join(twice)}")
    return choices


def summary(choices: Sequence[Choice], manifest: pl.DataFrame | None) -> str:
    """One line: what was recorded, and what the manifest's `review` column now holds."""
    approved = sum(c.decision == "approved" for c in choices)
    held = Counter([] if manifest is None else manifest["review"].drop_nulls().to_list())
    shown = ", ".join(f"{n} {value}" for value, n in sorted(held.items())) or "none"
    return (f"recorded {len(choices)} decision(s) ({approved} approved, "
            f"{len(choices) - approved} rejected); manifest.parquet review column: {shown}")


_EXPORT_KEYS = {"format", "version", "exported_at", "title", "decisions"}
_CHOICE_KEYS = {"cell_id", "decision", "at", "note"}
_CHOICE_FIELDS = check.object_of({
    "cell_id": check.identifier(), "decision": _verdict, "at": check.timestamp,
    "note": check.optional(_note),
})


def read_export(data: bytes, manifest: pl.DataFrame) -> list[Choice]:
    """The choices of a gallery's decisions file (`EXPORT_FORMAT`), checked strictly: its
    format and version, no unknown key, each entry a cell of `manifest` with an image to
    review (`unreviewable`), a decision, its time, each cell at most once. Raises
    `ReviewInputError` listing every problem (the first `MAX_PROBLEMS_SHOWN`)."""
    if len(data) > MAX_EXPORT_BYTES:
        raise ReviewInputError(f"larger than {MAX_EXPORT_BYTES:,} bytes")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ReviewInputError(f"not a JSON decisions file: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise ReviewInputError(f"expected a JSON object, got {check.describe(value)}")
    problems = [f"{check.describe(k)}: unknown key" for k in sorted(set(value) - _EXPORT_KEYS)]
    version = value.get("version")
    if value.get("format") != EXPORT_FORMAT:
        problems.append(f"format: expected {EXPORT_FORMAT!r}, got "
                        f"{check.describe(value.get('format'))}")
    if version != EXPORT_VERSION or isinstance(version, bool):
        problems.append(f"version: expected {EXPORT_VERSION}, got {check.describe(version)}")
    for name, fits in (("exported_at", check.optional(check.timestamp)),
                       ("title", check.optional(check.text(1_000)))):
        try:
            fits(value.get(name))
        except check.Unfit as exc:
            problems.append(f"{name}: {exc}")
    entries = value.get("decisions")
    if not isinstance(entries, list) or len(entries) > MAX_EXPORT_DECISIONS:
        problems.append(f"decisions: expected a list of at most {MAX_EXPORT_DECISIONS:,} "
                        f"items, got {check.describe(entries)}")
        entries = []
    choices: dict[int, Choice] = {}
    first: dict[str, int] = {}
    for i, entry in enumerate(entries):
        try:
            choice = _choice(entry)
        except check.Unfit as exc:
            problems.append(f"decisions[{i}]{exc.at}: {exc.problem}")
            continue
        if choice.cell_id in first:
            problems.append(f"decisions[{i}].cell_id: cell {choice.cell_id} is decided again "
                            f"(first at decisions[{first[choice.cell_id]}])")
            continue
        first[choice.cell_id] = i
        choices[i] = choice
    refused = unreviewable(list(first), manifest)
    problems += [f"decisions[{first[cid]}].cell_id: {why}" for cid, why in refused.items()]
    if problems:
        more = len(problems) - MAX_PROBLEMS_SHOWN
        shown = problems[:MAX_PROBLEMS_SHOWN] + ([f"... and {more} more"] if more > 0 else [])
        raise ReviewInputError(f"{len(problems)} problem(s): " + "; ".join(shown))
    return list(choices.values())


def _choice(entry: Any) -> Choice:
    if not isinstance(entry, dict):
        raise check.Unfit(f"expected an object, got {check.describe(entry)}")
    unknown = sorted(set(entry) - _CHOICE_KEYS)
    if unknown:
        raise check.Unfit(f"unknown key {check.describe(unknown[0])}")
    found = _CHOICE_FIELDS(entry)
    for name in ("cell_id", "decision"):
        if name not in found:
            raise check.Unfit("missing", f".{name}")
    return Choice(found["cell_id"], found["decision"], found.get("at"), found.get("note"))


# -- listing -------------------------------------------------------------------------------------


def render_list(entries: Mapping[str, Decision], manifest: pl.DataFrame) -> str:
    """The store's decisions as a table: cell id, decision, when, by whom, the cell's output
    path in the manifest, and the note."""
    rows = manifest.filter(pl.col("cell_id").is_in(list(entries))).select(
        "cell_id", "output_path")
    paths = {str(cid): path for cid, path in rows.iter_rows()}
    table = [("cell_id", "review", "at", "by", "path", "note")]
    for cid in sorted(entries):
        d = entries[cid]
        path = (paths[cid] or "-") if cid in paths else "(not in the manifest)"
        table.append((cid, d.decision or "-", d.at, d.by, _shown(path), d.note or ""))
    if len(table) == 1:
        return "no review decisions"
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row[:5], widths, strict=True)), row[5]])
        .rstrip()
        for row in table
    )


def _shown(text: str) -> str:
    """Text from the manifest as a terminal may print it: control characters escaped."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)
