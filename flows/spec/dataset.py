"""Dataset rows for a job: csv, parquet or jsonl from any fsspec URL, read with polars.

Every value becomes a string (templates insert text): nulls become "", numbers their usual
spelling. Columns keep the file's order; rows keep the file's order, counted from 0.
`max_bytes` and `max_rows` bound what a file may hold (`InputPolicy` has the defaults);
a parquet file's row count is read from its footer before any row is decoded.

    data = read_dataset("specs/data/products.csv", key=("sku",), duplicates="fail")
    data.columns     # ("sku", "title", "colour", "image")
    data.rows[0]     # {"sku": "SKU-001", "title": "...", ...}
    data.key_of(0)   # {"sku": "SKU-001"}: typed as in the file (csv: text as written)
    data.where(9)    # "line 11 of products.csv": where row 9 starts, for messages

Messages name a row where a person finds it: the file line its record starts on for csv (the
header is line 1; a quoted field may span lines) and jsonl, and the 0-based row for parquet.

`key` names the columns that identify a row (a product): a row with values but no key, a key
that repeats an earlier row's (`duplicates`: "fail", or keep the "first" or the "last" row)
and keys that differ only in case are `problems` (or `dropped` rows, a note); blank rows are
left out (`blank`, a note); the rows that stay are the rows cells are made of, each with its
number in the file (`number`).
"""

from __future__ import annotations

import difflib
import hashlib
import io
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import fsspec
import polars as pl

from nbp.outputs.paths import fold_case

FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
DUPLICATE_RULES = ("fail", "first", "last")
MAX_KEY_EXAMPLES = 10  # rows a key problem names one by one; the rest are counted
LINE_WINDOW = 1 << 23  # bytes of the file split into lines at once, when counting lines
_ROW = "_nbp_row"


class DatasetError(ValueError):
    """The dataset cannot be read or has values that cannot become template text."""


@dataclass(frozen=True)
class Lines:
    """Where each row of a file starts, for messages: `table[n]` (a 1-based line), else
    `n + offset` when rows are lines, else (parquet, or lines that could not be matched to
    rows) the 0-based row."""

    name: str = "the dataset"
    offset: int | None = None
    table: array[int] | None = None

    def where(self, number: int, *, short: bool = False) -> str:
        """"line 11 of products.csv" ("line 11" when `short`), or "row 9 of x.parquet
        (counted from 0)"."""
        of = "" if short else f" of {self.name}"
        if self.table is not None and 0 <= number < len(self.table):
            return f"line {self.table[number]}{of}"
        if self.offset is not None:
            return f"line {number + self.offset}{of}"
        return f"row {number}{of} (counted from 0)"


@dataclass(frozen=True)
class Dataset:
    columns: tuple[str, ...]
    rows: list[dict[str, str]]
    lines: Lines = field(default_factory=Lines)
    key: tuple[str, ...] = ()
    # the file's row number of each row kept (None: every row, in order)
    numbers: array[int] | None = None
    # key columns that are numbers or booleans: their values by kept row (text ones: `rows`)
    typed: Mapping[str, list[Any]] = field(default_factory=dict)
    problems: tuple[str, ...] = ()  # about the key: the spec is invalid
    dropped: int = 0                # rows left out by `duplicates: first | last`
    dropped_example: str = ""       # the first of them, and the row it repeats
    blank: int = 0                  # rows without a single value, left out (with a key)
    blank_example: str = ""         # where the first of them is
    sha256: str = ""                # of the file's bytes as read (the run's record)

    def number(self, index: int) -> int:
        """The 0-based row in the file of `rows[index]`."""
        return index if self.numbers is None else self.numbers[index]

    def where(self, number: int) -> str:
        """Where row `number` of the file starts (`Lines.where`)."""
        return self.lines.where(number)

    def key_of(self, index: int) -> dict[str, Any]:
        """The key of `rows[index]`, column -> value: int, float or bool as in the file,
        else text as the row has it; an empty text is None. {} without a key."""
        row = self.rows[index]
        return {
            name: (self.typed[name][index] if name in self.typed else row[name] or None)
            for name in self.key
        }


def dataset_format(path: str, declared: str | None = None) -> str:
    """The declared format, else the one the file extension names."""
    if declared:
        return declared
    name = path.split("?", 1)[0].lower()
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise DatasetError(
        f"cannot tell the format of {path!r} from its extension; set dataset.format to "
        "csv, parquet or jsonl"
    )


def read_dataset(
    path: str,
    *,
    format: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    max_bytes: int | None = None,
    max_rows: int | None = None,
    key: Sequence[str] = (),
    duplicates: str = "fail",
) -> Dataset:
    """All rows of the file as strings, keyed by `key` (see the module docstring); raises
    `DatasetError` with a plain explanation when the file cannot be read."""
    fmt = dataset_format(path, format)
    data = _read_bytes(path, storage_options, max_bytes)
    try:
        frame = _read_frame(data, fmt, path, max_rows)
    except DatasetError:
        raise
    except Exception as exc:  # polars raises its own error types per format
        raise DatasetError(f"cannot read {path!r} as {fmt}: {exc}") from None
    if max_rows is not None and frame.height > max_rows:
        raise _too_many_rows(path, frame.height, max_rows)
    lines = record_lines(data, fmt, frame.height, _file_name(path))
    digest = hashlib.sha256(data).hexdigest()
    del data
    text = _as_text(frame, path)
    if not key:
        return Dataset(tuple(frame.columns), text.to_dicts(), lines, sha256=digest)
    return replace(_keyed(frame, text, lines, tuple(key), duplicates), sha256=digest)


def _read_bytes(
    path: str, storage_options: Mapping[str, Any] | None, max_bytes: int | None
) -> bytes:
    try:
        with fsspec.open(path, "rb", **dict(storage_options or {})) as handle:
            data: bytes = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise DatasetError(f"dataset file {path!r} does not exist") from None
    except (OSError, ValueError, ImportError) as exc:
        raise DatasetError(f"cannot open dataset {path!r}: {exc}") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise DatasetError(
            f"dataset {path!r} is larger than {max_bytes:,} bytes, the most nbp reads "
            "(InputPolicy.max_dataset_bytes)"
        )
    return data


def _file_name(path: str) -> str:
    return path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or path


def _too_many_rows(path: str, rows: int, limit: int) -> DatasetError:
    return DatasetError(
        f"dataset {path!r} has {rows:,} rows; nbp reads at most {limit:,} "
        "(InputPolicy.max_dataset_rows)"
    )


def _read_frame(data: bytes, fmt: str, path: str, max_rows: int | None) -> pl.DataFrame:
    buffer = io.BytesIO(data)
    if fmt == "parquet" and max_rows is not None:
        rows = pl.scan_parquet(io.BytesIO(data)).select(pl.len()).collect().item()
        if rows > max_rows:
            raise _too_many_rows(path, int(rows), max_rows)
    if fmt == "csv":
        return pl.read_csv(buffer, infer_schema=False)  # every column as text, as written
    if fmt == "parquet":
        return pl.read_parquet(buffer)
    if fmt == "jsonl":
        return pl.read_ndjson(buffer) if data.strip() else pl.DataFrame()
    raise DatasetError(f"unknown dataset format {fmt!r}")


def _as_text(frame: pl.DataFrame, path: str) -> pl.DataFrame:
    nested = [
        name for name, dtype in frame.schema.items() if dtype.is_nested() or dtype == pl.Object
    ]
    if nested:
        raise DatasetError(
            f"dataset {path!r}: column {nested[0]!r} holds lists or records; "
            "template variables must be plain values"
        )
    return frame.select(
        pl.col(name).cast(pl.String).fill_null("") for name in frame.columns
    )


# -- lines ---------------------------------------------------------------------------------


def record_lines(data: bytes, fmt: str, rows: int, name: str) -> Lines:
    """Where each of the `rows` rows polars read from `data` starts. csv: the header is line
    1 and a record spans the lines its quoted fields do; every line break outside quotes ends
    a record, blank lines included (polars reads them as empty rows). jsonl: each non-blank
    line is a row. When the count of records is not `rows` (a file polars reads another way),
    rows are named by number instead of a wrong line."""
    if fmt == "csv":
        if b'"' not in data:
            return Lines(name, offset=2) if _physical_lines(data) == rows + 1 else Lines(name)
        starts = _csv_record_starts(data)
        return Lines(name, table=starts[1:]) if len(starts) == rows + 1 else Lines(name)
    if fmt == "jsonl":
        table = array("I", (n for n, line in _lines(data) if line.strip()))
        if len(table) != rows:
            return Lines(name)
        return Lines(name, offset=1) if not rows or table[-1] == rows else Lines(name, table=table)
    return Lines(name)


def _physical_lines(data: bytes) -> int:
    return data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(1-based number, text) of each line, a window of the file at a time (a line break ends
    a line; the text after the last one is a line when it is not empty)."""
    number, start = 1, 0
    while start < len(data):
        end = data.find(b"\n", start + LINE_WINDOW)
        end = len(data) if end < 0 else end + 1
        pieces = data[start:end].split(b"\n")
        if pieces[-1] == b"":
            pieces.pop()  # the empty text after a final line break is no line
        for piece in pieces:
            yield number, piece
            number += 1
        start = end


def _csv_record_starts(data: bytes) -> array[int]:
    """The line each csv record (the header first) starts on: a line ends a record when the
    quotes before its end are balanced (`""` inside a quoted field counts twice)."""
    starts = array("I")
    balanced = True
    for number, line in _lines(data):
        if balanced:
            starts.append(number)
        if line.count(b'"') % 2:
            balanced = not balanced
    return starts


# -- keys ----------------------------------------------------------------------------------


def _keyed(
    frame: pl.DataFrame, text: pl.DataFrame, lines: Lines, key: tuple[str, ...],
    duplicates: str,
) -> Dataset:
    """The rows whose key is present, once, with the problems found and the rows dropped."""
    missing = [name for name in key if name not in frame.columns]
    if missing:
        return Dataset(tuple(frame.columns), text.to_dicts(), lines,
                       problems=tuple(_missing_column(name, frame.columns, lines)
                                      for name in missing))
    keys = _key_frame(frame, key)
    blank = text.select(pl.all_horizontal(pl.col(name) == "" for name in text.columns))
    check = _KeyCheck(keys.with_columns(_blank=blank.to_series()), key, lines, duplicates)
    kept = check.run()
    rows = text[kept].to_dicts() if len(kept) < frame.height else text.to_dicts()
    numbers = array("q", kept) if len(kept) < frame.height else None
    typed = {name: keys[name][kept].to_list() for name in key
             if keys.schema[name] != pl.String}
    return Dataset(tuple(frame.columns), rows, lines, key, numbers, typed,
                   tuple(check.problems), check.dropped, check.dropped_example,
                   check.blank, check.blank_example)


def _missing_column(name: str, columns: Sequence[str], lines: Lines) -> str:
    close = difflib.get_close_matches(name, list(columns), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (f"dataset.key names {name!r}, which is not a column of {lines.name}; {hint}"
            f"columns: {', '.join(columns)}")


def _key_frame(frame: pl.DataFrame, key: tuple[str, ...]) -> pl.DataFrame:
    """The key columns with the types the manifest keeps (`outputs.manifest` key columns):
    integers as Int64, floats as Float64, booleans; anything else as text, as in `vars`
    (an empty text is no value)."""
    columns = []
    for name in key:
        column, dtype = pl.col(name), frame.schema[name]
        if dtype.is_integer() and (dtype != pl.UInt64 or _fits_int64(frame[name])):
            columns.append(column.cast(pl.Int64))
        elif dtype.is_float():
            columns.append(column.cast(pl.Float64))
        elif dtype == pl.Boolean:
            columns.append(column)
        else:
            text = column.cast(pl.String)
            columns.append(pl.when(text == "").then(None).otherwise(text).alias(name))
    return frame.select(columns)


def _fits_int64(series: pl.Series) -> bool:
    biggest = series.max()
    return biggest is None or int(biggest) < 2**63  # type: ignore[arg-type]


class _KeyCheck:
    """One pass of key rules over the key columns: rows without a key, repeated keys (the
    `duplicates` rule), keys that differ only in case. `run` returns the rows to keep."""

    def __init__(self, keys: pl.DataFrame, key: tuple[str, ...], lines: Lines,
                 duplicates: str) -> None:
        self.keys = keys.with_row_index(_ROW)
        self.key = key
        self.lines = lines
        self.duplicates = duplicates
        self.problems: list[str] = []
        self.dropped = 0
        self.dropped_example = ""
        self.blank = 0
        self.blank_example = ""

    def run(self) -> list[int]:
        present = self.without_key(self.without_values())
        unique = self.repeated(present)
        return self.case_only(unique)[_ROW].to_list()

    def without_values(self) -> pl.DataFrame:
        """Blank rows (blank lines, `,,,`) are no product: left out, counted for a note."""
        found = self.keys.filter(pl.col("_blank"))[_ROW]
        self.blank = found.len()
        if self.blank:
            self.blank_example = self.lines.where(found[0])
        return self.keys.filter(~pl.col("_blank")).drop("_blank")

    def without_key(self, keys: pl.DataFrame) -> pl.DataFrame:
        """A row with values but no key cannot be told apart from others: a problem."""
        empty = pl.all_horizontal(pl.col(name).is_null() for name in self.key)
        found = keys.filter(empty)[_ROW]
        names = " and ".join(self.key)
        examples = [f"{self.lines.where(n)} has no {names}; every row needs its key"
                    for n in found.head(MAX_KEY_EXAMPLES).to_list()]
        self._report(examples, found.len(), f"rows have no {names}")
        return keys.filter(~empty)

    def repeated(self, keys: pl.DataFrame) -> pl.DataFrame:
        keep = "last" if self.duplicates == "last" else "first"
        group = list(self.key)
        marked = keys.with_columns(
            _first=pl.col(_ROW).first().over(group),
            _kept=getattr(pl.col(_ROW), keep)().over(group),
        )
        again = marked.filter(pl.col(_ROW) != pl.col("_first"))
        if self.duplicates == "fail":
            examples = [self._pair(row, first, "repeats the key of")
                        + "; a key identifies one row (or set dataset.duplicates: first or last)"
                        for row, first in again.select(_ROW, "_first").head(
                            MAX_KEY_EXAMPLES).iter_rows()]
            self._report(examples, again.height, "rows repeat the key of an earlier row")
        else:
            left = marked.filter(pl.col(_ROW) != pl.col("_kept")).select(_ROW, "_kept")
            self.dropped = left.height
            if left.height:
                row, kept = left.row(0)
                self.dropped_example = (f"{self.lines.where(row)} ({self._shown(row)}; "
                                        f"{self.lines.where(kept, short=True)} is kept)")
        return marked.filter(pl.col(_ROW) == pl.col("_kept")).drop("_first", "_kept")

    def case_only(self, keys: pl.DataFrame) -> pl.DataFrame:
        folded = {
            f"_fold{i}": pl.Series([None if v is None else fold_case(v)
                                    for v in keys[name].to_list()], dtype=pl.String)
            for i, name in enumerate(self.key) if keys.schema[name] == pl.String
        }
        if not folded:
            return keys
        groups = [f"_fold{i}" if f"_fold{i}" in folded else name
                  for i, name in enumerate(self.key)]
        marked = keys.with_columns(**folded).with_columns(
            _first=pl.col(_ROW).first().over(groups))
        again = marked.filter(pl.col(_ROW) != pl.col("_first"))
        examples = [self._pair(row, first, "differs only in case from")
                    + ": case-insensitive filesystems and databases take them for one"
                    for row, first in again.select(_ROW, "_first").head(
                        MAX_KEY_EXAMPLES).iter_rows()]
        self._report(examples, again.height, "rows have a key that differs only in case "
                                             "from an earlier row's")
        return marked.filter(pl.col(_ROW) == pl.col("_first")).select(keys.columns)

    def _pair(self, row: int, first: int, relation: str) -> str:
        return (f"{self.lines.where(row)} ({self._shown(row)}) {relation} "
                f"{self.lines.where(first, short=True)} ({self._shown(first)})")

    def _shown(self, row: int) -> str:
        values = self.keys.row(row, named=True)
        return ", ".join(f"{name}={_short(values[name])}" for name in self.key)

    def _report(self, examples: list[str], count: int, what: str) -> None:
        self.problems.extend(examples)
        if count > len(examples):
            self.problems.append(f"{count:,} {what} in all (the first {len(examples)} "
                                 "are listed)")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 42 else text[:39] + "..."
