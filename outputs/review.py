"""Review decisions and ratings: one small JSON file per cell in the target,
`.nbp/reviews/{cell_id}.json`.

    record(sink, "3e6ac763fe2e5735", "rejected", by="ana", note="label cut off")
    decisions(sink)        # {cell_id: Decision}: one listing and one batched read
    review_frame(sink)     # polars (cell_id, review): what the manifest's `review` column says
    with_reviews(manifest, review_frame(sink))   # the manifest with that column filled
    ratings_frame(sink)    # polars (cell_id, passed, stars, wins, losses): the experiment's

A file per cell, like the journal (`flows.engine.journal`), so reviewers and runs write at the
same time without a lock, on any fsspec store, and a catalog of 100,000 decisions is read in a
few round trips. Each file is replaced whole:

    {"version": 1, "cell_id": "3e6ac763fe2e5735", "decision": "approved" | "rejected",
     "at": "2026-12-06T10:42:00+00:00", "by": "ana", "note": "label cut off" | null,
     "pass": true, "rating": 4, "rated_at": "...",
     "preferences": [{"opponent": "9b1d0c44aa07c2e1", "opponent_target": "runs/t2-old",
                      "result": "won" | "lost", "at": "..."}]}

Two judgements live side by side. `decision` is the catalog's review: it gates what is
published (`nbp export`) and what `--redo-rejected` makes again (and pays for). `pass`,
`rating` and `preferences` are the experiment's: pass/fail and 1-5 stars given in the gallery,
A-or-B preferences given on the compare page; they never approve, reject or redo anything.
`rating` is the stars (a whole number 1-5; it was reserved for them, and a value nbp would not
write is kept but not counted), `rated_at` when pass and stars were given. A preference is
kept on the cell of each side the importing target holds, one per opponent (its target as the
file names it, and its cell id; a later, different result replaces an earlier one), at most
`MAX_PREFERENCES` per cell (the latest). The last four fields are optional and came after
version 1, which stays: readers ignore fields they do not know (an older nbp skips, with a
warning, a file holding only a pass or preferences). `at` and `by`: when and by
whom the decision was made, or, in an entry without one, when and by whom it was last
recorded. A file holds a decision, ratings or preferences, or several of them.

A newer `version` is skipped. A target can come from anyone, so every file is input: at most
`MAX_FILE_BYTES` (larger ones are not read), named after a cell id, each field of its type
and size (`outputs.fields`). A file that does not fit is skipped with a warning on the
`nbp.review` logger, never a crash.

The gallery's "download decisions" button saves the choices made in the page as one file,
`EXPORT_FORMAT`, which `nbp review TARGET --import FILE` reads (`read_export`: strictly, every
problem listed, only cells of the manifest that have an image):

    {"format": "nbp-review-decisions", "version": 1, "exported_at": "...", "title": "...",
     "decisions": [{"cell_id": "3e6ac763fe2e5735", "decision": "rejected", "at": "..."}]}

Its "download ratings" button (and the compare page's, with preferences) saves
`RATINGS_FORMAT`, which the same command reads (`read_ratings`, as strictly) and records with
`record_ratings`:

    {"format": "nbp-ratings", "version": 1, "exported_at": "...", "title": "...",
     "ratings": [{"cell_id": "...", "pass": true, "stars": 4, "at": "..."}],
     "preferences": [{"a": {"target": "runs/t2-old", "cell_id": "..."},
                      "b": {"target": "runs/t2-new", "cell_id": "..."},
                      "winner": "b", "at": "..."}]}
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar, cast, get_args

import fsspec.core
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
RATINGS_FORMAT = "nbp-ratings"  # the gallery's ratings, the compare page's preferences
RATINGS_VERSION = 1
STARS = range(1, 6)
Outcome = Literal["won", "lost"]
Winner = Literal["a", "b"]
# Preferences kept per cell: the latest ones. With an opponent's target at its longest, a
# file stays under MAX_FILE_BYTES (50 x ~700 bytes), so older readers read it too.
MAX_PREFERENCES = 50
MAX_TARGET_CHARS = 500
RATINGS_SCHEMA = {"cell_id": pl.String, "passed": pl.Boolean, "stars": pl.Int64,
                  "wins": pl.Int64, "losses": pl.Int64}

log = logging.getLogger("nbp.review")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ReviewInputError(ValueError):
    """Decisions that cannot be recorded (an unknown cell, a bad decisions file); the message
    lists every problem."""


@dataclass(frozen=True)
class Preference:
    """One A-or-B judgement as the store keeps it on one side's cell."""

    opponent: str                # the other side's cell id
    opponent_target: str         # the other side's target, as the ratings file names it
    result: Outcome
    at: str

    def to_json(self) -> dict[str, Any]:
        return {"opponent": self.opponent, "opponent_target": self.opponent_target,
                "result": self.result, "at": self.at}


@dataclass(frozen=True)
class Decision:
    """One cell's entry in the store (see the module docstring)."""

    cell_id: str
    decision: Verdict | None
    at: str                      # ISO 8601 with offset
    by: str
    note: str | None = None
    rating: float | None = None  # the stars, 1-5 (`stars`)
    passed: bool | None = None   # the file's `pass`
    rated_at: str | None = None  # when pass and stars were given
    preferences: tuple[Preference, ...] = ()
    version: int = REVIEW_VERSION

    @property
    def stars(self) -> int | None:
        """The rating as stars: a whole number 1-5, else None (not counted)."""
        rating = self.rating
        if rating is None or not float(rating).is_integer() or int(rating) not in STARS:
            return None
        return int(rating)

    @property
    def rated(self) -> bool:
        """Whether the entry holds an experiment judgement (pass, stars or preferences)."""
        return self.passed is not None or self.rating is not None or bool(self.preferences)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version, "cell_id": self.cell_id, "decision": self.decision,
            "at": self.at, "by": self.by, "note": self.note,
        }
        if self.passed is not None:
            out["pass"] = self.passed
        if self.rating is not None:
            out["rating"] = int(self.rating) if self.stars is not None else self.rating
        if self.rated_at is not None:
            out["rated_at"] = self.rated_at
        if self.preferences:
            out["preferences"] = [p.to_json() for p in self.preferences]
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
        entry = cls(cell_id, found.get("decision"), found["at"], found["by"],
                    found.get("note"), found.get("rating"), found.get("pass"),
                    found.get("rated_at"), found.get("preferences", ()))
        if entry.decision is None and not entry.rated:
            raise check.Unfit("holds neither a decision nor a rating, pass or preference")
        return entry


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


def _outcome(value: Any) -> Outcome:
    if value not in ("won", "lost"):
        raise check.Unfit(f"expected won or lost, got {check.describe(value)}")
    return cast(Outcome, value)


def _stored_preference(value: Any) -> Preference:
    found = _PREFERENCE_FIELDS(value)
    for name in ("opponent", "opponent_target", "result", "at"):
        if name not in found:
            raise check.Unfit("missing", f".{name}")
    return Preference(found["opponent"], found["opponent_target"], found["result"],
                      found["at"])


_by = check.text(MAX_BY_CHARS)
_note = check.text(MAX_NOTE_CHARS)
_target = check.text(MAX_TARGET_CHARS)
_PREFERENCE_FIELDS = check.object_of({
    "opponent": check.identifier(), "opponent_target": _target, "result": _outcome,
    "at": check.timestamp,
})
_FIELDS = check.object_of({
    "cell_id": check.identifier(), "decision": check.optional(_verdict), "at": check.timestamp,
    "by": _by, "note": check.optional(_note), "rating": check.optional(check.amount),
    "pass": check.optional(check.flag), "rated_at": check.optional(check.timestamp),
    "preferences": check.list_of(_stored_preference, MAX_PREFERENCES),
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
    """Write `cell_id`'s decision (replacing any earlier one, keeping its ratings); returns
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
    )
    if previous is not None:  # its ratings and preferences stay
        entry = replace(previous, decision=entry.decision, at=entry.at, by=entry.by,
                        note=entry.note, version=REVIEW_VERSION)
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
    also: Sequence[Choice] = (),
) -> list[Choice]:
    """The choices of one `nbp review`: the cells `approve` and `reject` name (ids or
    prefixes), then those of a gallery's decisions file (`export`, or `also`: its choices
    as `read_import` read them); each must be reviewable and decided once.
    `ReviewInputError` for any problem, before anything is recorded."""
    choices = [Choice(cid, "approved") for cid in resolve_cells(approve, manifest)]
    choices += [Choice(cid, "rejected") for cid in resolve_cells(reject, manifest)]
    check_reviewable({c.cell_id for c in choices}, manifest)
    choices += also
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
    return _decisions_of(_load(data, "decisions file"), manifest)


def _decisions_of(value: dict[str, Any], manifest: pl.DataFrame) -> list[Choice]:
    problems = _header(value, EXPORT_FORMAT, EXPORT_VERSION, _EXPORT_KEYS)
    entries = _entries(value, "decisions", problems, required=True)
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
    _refuse(problems)
    return list(choices.values())


def _load(data: bytes, what: str) -> dict[str, Any]:
    """A file's JSON object, at most `MAX_EXPORT_BYTES`; `ReviewInputError` when it is not."""
    if len(data) > MAX_EXPORT_BYTES:
        raise ReviewInputError(f"larger than {MAX_EXPORT_BYTES:,} bytes")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ReviewInputError(f"not a JSON {what}: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise ReviewInputError(f"expected a JSON object, got {check.describe(value)}")
    return value


def _header(value: dict[str, Any], fmt: str, version: int, keys: set[str]) -> list[str]:
    """The problems of a file's top level: unknown keys, its format, version, time, title."""
    problems = [f"{check.describe(k)}: unknown key" for k in sorted(set(value) - keys)]
    found = value.get("version")
    if value.get("format") != fmt:
        problems.append(f"format: expected {fmt!r}, got {check.describe(value.get('format'))}")
    if found != version or isinstance(found, bool):
        problems.append(f"version: expected {version}, got {check.describe(found)}")
    for name, fits in (("exported_at", check.optional(check.timestamp)),
                       ("title", check.optional(check.text(1_000)))):
        try:
            fits(value.get(name))
        except check.Unfit as exc:
            problems.append(f"{name}: {exc}")
    return problems


def _entries(value: dict[str, Any], name: str, problems: list[str], *,
             required: bool) -> list[Any]:
    """The list `name` of a file (at most `MAX_EXPORT_DECISIONS` items); a problem when it
    is not one ([] when it is absent and not `required`)."""
    entries = value.get(name, None if required else [])
    if not isinstance(entries, list) or len(entries) > MAX_EXPORT_DECISIONS:
        problems.append(f"{name}: expected a list of at most {MAX_EXPORT_DECISIONS:,} "
                        f"items, got {check.describe(entries)}")
        return []
    return entries


def _refuse(problems: Sequence[str]) -> None:
    """`ReviewInputError` listing `problems` (the first `MAX_PROBLEMS_SHOWN`), if any."""
    if problems:
        more = len(problems) - MAX_PROBLEMS_SHOWN
        shown = [*problems[:MAX_PROBLEMS_SHOWN], *([f"... and {more} more"] if more > 0 else [])]
        raise ReviewInputError(f"{len(problems)} problem(s): " + "; ".join(shown))


def _choice(entry: Any) -> Choice:
    found = _closed(entry, _CHOICE_KEYS, _CHOICE_FIELDS)
    for name in ("cell_id", "decision"):
        if name not in found:
            raise check.Unfit("missing", f".{name}")
    return Choice(found["cell_id"], found["decision"], found.get("at"), found.get("note"))


def _closed(entry: Any, keys: set[str], fields: check.Check[dict[str, Any]]) -> dict[str, Any]:
    """`entry`'s checked fields; `check.Unfit` for a non-object or an unknown key."""
    if not isinstance(entry, dict):
        raise check.Unfit(f"expected an object, got {check.describe(entry)}")
    unknown = sorted(set(entry) - keys)
    if unknown:
        raise check.Unfit(f"unknown key {check.describe(unknown[0])}")
    return fields(entry)


# -- ratings and preferences ---------------------------------------------------------------------


@dataclass(frozen=True)
class Rating:
    """Pass/fail and stars for one cell, from a ratings file."""

    cell_id: str
    passed: bool | None = None
    stars: int | None = None
    at: str | None = None        # when it was given (None: when recorded)


@dataclass(frozen=True)
class Judged:
    """What a ratings file says about one target's cells: the ratings, and each preference
    as the result it is for each of this target's cells it names."""

    ratings: tuple[Rating, ...] = ()
    results: Mapping[str, tuple[Preference, ...]] = field(default_factory=dict)

    @property
    def preferences(self) -> int:
        return sum(len(found) for found in self.results.values())


@dataclass(frozen=True)
class Imported:
    """One `nbp review --import` file: decisions (`EXPORT_FORMAT`) or ratings
    (`RATINGS_FORMAT`), the other empty."""

    choices: tuple[Choice, ...] = ()
    judged: Judged | None = None


def read_import(data: bytes, manifest: pl.DataFrame, here: Sink | None = None) -> Imported:
    """A decisions file or a ratings file, by its `format` (`read_export`, `read_ratings`);
    `here`: the target whose manifest it is (see `read_ratings`)."""
    value = _load(data, "decisions or ratings file")
    if value.get("format") == RATINGS_FORMAT:
        return Imported(judged=_ratings_of(value, manifest, here))
    return Imported(choices=tuple(_decisions_of(value, manifest)))


def read_ratings(data: bytes, manifest: pl.DataFrame, here: Sink | None = None) -> Judged:
    """The ratings and preferences of a ratings file (`RATINGS_FORMAT`) for the target
    whose manifest is `manifest`, checked as strictly as `read_export`: each rating a cell of
    `manifest` with an image to review, pass and/or stars 1-5, each cell once; each
    preference two sides (target and cell id), a winner, naming at least one cell of
    `manifest` that succeeded. A preference counts for every side `manifest` holds (two runs
    of one target); when both sides are one cell id (two targets of one spec), for the side
    whose target is `here`. `ReviewInputError` listing every problem."""
    return _ratings_of(_load(data, "ratings file"), manifest, here)


_RATINGS_KEYS = {"format", "version", "exported_at", "title", "ratings", "preferences"}
_RATING_KEYS = {"cell_id", "pass", "stars", "at"}
_PREFERENCE_KEYS = {"a", "b", "winner", "at"}
_SIDE_KEYS = {"target", "cell_id"}


def _stars(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in STARS:
        raise check.Unfit(f"expected a whole number from 1 to 5, got {check.describe(value)}")
    return value


def _winner(value: Any) -> Winner:
    if value not in ("a", "b"):
        raise check.Unfit(f"expected \"a\" or \"b\", got {check.describe(value)}")
    return cast(Winner, value)


def _side(value: Any) -> tuple[str, str]:
    found = _closed(value, _SIDE_KEYS, _SIDE_FIELDS)
    for name in ("target", "cell_id"):
        if name not in found:
            raise check.Unfit("missing", f".{name}")
    return found["target"], found["cell_id"]


_RATING_FIELDS = check.object_of({
    "cell_id": check.identifier(), "pass": check.flag, "stars": _stars, "at": check.timestamp,
})
_SIDE_FIELDS = check.object_of({"target": _target, "cell_id": check.identifier()})
_COMPARED_FIELDS = check.object_of({
    "a": _side, "b": _side, "winner": _winner, "at": check.timestamp,
})


def _ratings_of(value: dict[str, Any], manifest: pl.DataFrame, here: Sink | None) -> Judged:
    problems = _header(value, RATINGS_FORMAT, RATINGS_VERSION, _RATINGS_KEYS)
    ratings = _rating_entries(_entries(value, "ratings", problems, required=False), manifest,
                              problems)
    results = _preference_entries(_entries(value, "preferences", problems, required=False),
                                  manifest, here, problems)
    _refuse(problems)
    return Judged(tuple(ratings), results)


def _rating_entries(entries: list[Any], manifest: pl.DataFrame,
                    problems: list[str]) -> list[Rating]:
    found: list[Rating] = []
    first: dict[str, int] = {}
    for i, entry in enumerate(entries):
        try:
            fields_ = _closed(entry, _RATING_KEYS, _RATING_FIELDS)
            if "cell_id" not in fields_:
                raise check.Unfit("missing", ".cell_id")
            if "pass" not in fields_ and "stars" not in fields_:
                raise check.Unfit("holds neither pass nor stars")
        except check.Unfit as exc:
            problems.append(f"ratings[{i}]{exc.at}: {exc.problem}")
            continue
        cid = fields_["cell_id"]
        if cid in first:
            problems.append(f"ratings[{i}].cell_id: cell {cid} is rated again "
                            f"(first at ratings[{first[cid]}])")
            continue
        first[cid] = i
        found.append(Rating(cid, fields_.get("pass"), fields_.get("stars"), fields_.get("at")))
    refused = unreviewable(list(first), manifest)
    problems += [f"ratings[{first[cid]}].cell_id: {why}" for cid, why in refused.items()]
    return found


def _preference_entries(
    entries: list[Any], manifest: pl.DataFrame, here: Sink | None, problems: list[str]
) -> dict[str, tuple[Preference, ...]]:
    named = set()
    for entry in entries:
        for side in (entry.get("a"), entry.get("b")) if isinstance(entry, dict) else ():
            if isinstance(side, dict) and isinstance(side.get("cell_id"), str):
                named.add(side["cell_id"])
    status = dict(manifest.filter(pl.col("cell_id").is_in(list(named)))
                  .select("cell_id", "status").iter_rows())
    results: dict[str, list[Preference]] = {}
    first: dict[tuple[str, str, str], int] = {}
    for i, entry in enumerate(entries):
        where = f"preferences[{i}]"
        try:
            fields_ = _closed(entry, _PREFERENCE_KEYS, _COMPARED_FIELDS)
            for name in ("a", "b", "winner"):
                if name not in fields_:
                    raise check.Unfit("missing", f".{name}")
        except check.Unfit as exc:
            problems.append(f"{where}{exc.at}: {exc.problem}")
            continue
        sides = {"a": fields_["a"], "b": fields_["b"]}
        ours, problem = _our_sides(sides, status, here)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        at = fields_.get("at") or now()
        for side in ours:
            other = "b" if side == "a" else "a"
            own, (target, opponent) = sides[side][1], sides[other]
            key = (own, target, opponent)
            if key in first:
                problems.append(f"{where}: cell {own} is compared with cell {opponent} of "
                                f"{check.describe(target)} again (first at "
                                f"preferences[{first[key]}])")
                continue
            first[key] = i
            result: Outcome = "won" if fields_["winner"] == side else "lost"
            results.setdefault(own, []).append(Preference(opponent, target, result, at))
    return {cid: tuple(found) for cid, found in results.items()}


def _our_sides(
    sides: Mapping[str, tuple[str, str]], status: Mapping[str, str | None], here: Sink | None
) -> tuple[list[str], str | None]:
    """The sides of one preference that are cells of this target, or why there are none."""
    ours = [side for side, (_, cid) in sides.items() if cid in status]
    if not ours:
        shown = " and ".join(f"{cid} of {check.describe(t)}" for t, cid in sides.values())
        return [], f"neither side ({shown}) is a cell of this target's manifest"
    if len(ours) == 2 and sides["a"][1] == sides["b"][1]:  # one spec, two targets
        ours = [side for side in ours if here is not None and _names(sides[side][0], here)]
        if len(ours) != 1:
            return [], (f"both sides are cell {sides['a'][1]}; "
                        f"{'neither' if not ours else 'each'} side's target is this one, so "
                        "it cannot say which side this target's image was (import it with "
                        "the target as the compare page names it)")
    for side in ours:
        cid = sides[side][1]
        if status[cid] != REVIEWABLE:
            return [], (f"{side}.cell_id: cell {cid} has no image to compare (status "
                        f"{status[cid] or 'unknown'})")
    return ours, None


def _names(name: str, here: Sink) -> bool:
    """Whether `name` (a target as a compare page names it, maybe with `@RUN_ID`) is the
    target `here`: the same protocol and path (a local one made absolute)."""
    target = name.rsplit("@", 1)[0] if "@" in name.rsplit("/", 1)[-1] else name
    protocol, path = fsspec.core.split_protocol(target)
    ours, root = fsspec.core.split_protocol(here.target)
    if protocol in (None, "file", "local") and ours in (None, "file", "local"):
        return bool(os.path.abspath(os.path.expanduser(path))
                    == os.path.abspath(os.path.expanduser(root)))
    return bool(protocol == ours and path.rstrip("/") == root.rstrip("/"))


def record_ratings(
    sink: Sink, judged: Judged, *, by: str, previous: Mapping[str, Decision] | None = None,
) -> dict[str, Decision]:
    """Merge `judged` into the store; returns the entries written (those that changed).

    A rating replaces the cell's pass and stars unless the store's are newer (`rated_at`);
    a preference replaces the cell's earlier one against the same opponent when its result
    differs, unless that one is newer; the latest `MAX_PREFERENCES` are kept. Importing one
    file twice writes nothing the second time. `previous`: the store as read (`decisions`)."""
    cells = [r.cell_id for r in judged.ratings] + list(judged.results)
    if previous is None:
        previous = _read_entries(sink, set(cells))
    ratings = {r.cell_id: r for r in judged.ratings}
    stamp = now()
    written = {}
    for cid in dict.fromkeys(cells):
        entry = _judged(previous.get(cid) or Decision(check.identifier()(cid), None, stamp,
                                                      _by(by)),
                        ratings.get(cid), judged.results.get(cid, ()), stamp)
        if entry is not previous.get(cid) and entry.rated:
            if entry.decision is None:  # `at` and `by` say who recorded it last
                entry = replace(entry, at=stamp, by=_by(by))
            sink.put_json(_rel(cid), entry.to_json())
            written[cid] = entry
    return written


def _judged(entry: Decision, rating: Rating | None, results: Sequence[Preference],
            stamp: str) -> Decision:
    """`entry` with `rating` and `results` merged in (the same object when nothing changes)."""
    found = entry
    if rating is not None and (
        (rating.passed, rating.stars) != (entry.passed, entry.rating)
        and (entry.rated_at is None or _time(rating.at or stamp) >= _time(entry.rated_at))
    ):
        found = replace(found, passed=rating.passed, rating=rating.stars,
                        rated_at=rating.at or stamp)
    if results:
        kept = {(p.opponent_target, p.opponent): p for p in entry.preferences}
        for p in results:
            old = kept.get((p.opponent_target, p.opponent))
            if old is None or (p.result != old.result and _time(p.at) >= _time(old.at)):
                kept[p.opponent_target, p.opponent] = p
        ordered = sorted(kept.values(), key=lambda p: (_time(p.at), p.opponent_target,
                                                       p.opponent))
        preferences = tuple(ordered[-MAX_PREFERENCES:])
        if preferences != entry.preferences:
            found = replace(found, preferences=preferences)
    return found if found is entry else replace(found, version=REVIEW_VERSION)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def ratings_summary(judged: Judged, written: Mapping[str, Decision]) -> str:
    """One line: the ratings and preferences a file held, and how many cells changed."""
    passed = sum(r.passed is True for r in judged.ratings)
    failed = sum(r.passed is False for r in judged.ratings)
    starred = sum(r.stars is not None for r in judged.ratings)
    cells = len({r.cell_id for r in judged.ratings} | set(judged.results))
    return (f"read {len(judged.ratings)} rating(s) ({passed} pass, {failed} fail, {starred} "
            f"with stars) and {judged.preferences} preference result(s) on this target's "
            f"cells; {len(written)} of {cells} cell(s) changed in the store (the rest held "
            "them already, or newer ones)")


def ratings_of(entries: Mapping[str, Decision]) -> pl.DataFrame:
    """(cell_id, passed, stars, wins, losses) of the entries that hold ratings or
    preferences, by cell id (`ratings_frame`)."""
    rows = sorted(
        (cid, d.passed, d.stars, sum(p.result == "won" for p in d.preferences),
         sum(p.result == "lost" for p in d.preferences))
        for cid, d in entries.items() if d.rated
    )
    return pl.DataFrame(rows, schema=RATINGS_SCHEMA, orient="row")


def ratings_frame(sink: Sink) -> pl.DataFrame:
    """The experiment's judgements in the store, one row per rated or compared cell:
    cell_id (str), passed (bool, null: not judged), stars (int64 1-5, null: none), wins and
    losses (int64: preferences won and lost). Join it with the manifest by cell_id:

        manifest.join(ratings_frame(sink), on="cell_id", how="left")
    """
    return ratings_of(decisions(sink))


# -- listing -------------------------------------------------------------------------------------


def render_list(entries: Mapping[str, Decision], manifest: pl.DataFrame) -> str:
    """The store as a table: cell id, decision, when, by whom, the cell's output path in the
    manifest, the experiment's judgement (`judgement`), and the note."""
    rows = manifest.filter(pl.col("cell_id").is_in(list(entries))).select(
        "cell_id", "output_path")
    paths = {str(cid): path for cid, path in rows.iter_rows()}
    table = [("cell_id", "review", "at", "by", "path", "rating", "note")]
    for cid in sorted(entries):
        d = entries[cid]
        path = (paths[cid] or "-") if cid in paths else "(not in the manifest)"
        table.append((cid, d.decision or "-", d.at, d.by, _shown(path), judgement(d),
                      d.note or ""))
    if len(table) == 1:
        return "no review decisions"
    widths = [max(len(row[i]) for row in table) for i in range(6)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row[:6], widths, strict=True)), row[6]])
        .rstrip()
        for row in table
    )


def judgement(entry: Decision) -> str:
    """An entry's experiment judgement in one word: `pass,4/5,2W1L` ("-": none)."""
    parts = [] if entry.passed is None else ["pass" if entry.passed else "fail"]
    if entry.rating is not None:
        parts.append(f"{entry.stars}/5" if entry.stars is not None else f"{entry.rating:g}?")
    if entry.preferences:
        won = sum(p.result == "won" for p in entry.preferences)
        parts.append(f"{won}W{len(entry.preferences) - won}L")
    return ",".join(parts) or "-"


def _shown(text: str) -> str:
    """Text from the manifest as a terminal may print it: control characters escaped."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)
