"""Where each dataset record starts in its file, so a message can send a person to the line
their editor shows, not to a 0-based row index.

    lines = record_lines(b'sku,title\\nA,"two\\nlines"\\nB,x\\n', "csv", rows=2)
    lines                                  # [2, 4]: the header is line 1; A spans 2-3
    place(1, lines, "products.csv")        # "products.csv line 4"
    place(1, None, "products.parquet")     # "products.parquet record 2" (no lines)

CSV is read with Python's `csv` module (quoted fields may span lines; a blank line is a record,
as polars reads it); JSON Lines counts non-blank lines (polars skips blank ones). Parquet has
no lines. When the count of records found differs from the rows the dataset has (a file that
polars and `csv` read differently), there are no lines and messages fall back to records
counted from 1: a wrong line would be worse than none.

Lines are found only when a message needs them, by reading the file again (at most
`InputPolicy.max_dataset_bytes`, the limit the dataset was read under).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec

from nbp.flows.spec.dataset import dataset_format
from nbp.flows.spec.model import DatasetSpec

MAX_LISTED = 10  # records a message names; the rest are counted


def record_lines(data: bytes, fmt: str, rows: int | None) -> list[int] | None:
    """The 1-based file line where each record starts, or None when the file has no lines
    (parquet) or they cannot be told for sure: the count found is not `rows`, the count the
    dataset was read with (None: not known, not compared)."""
    text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
    if fmt == "csv":
        found = _csv_lines(text)
    elif fmt == "jsonl":
        found = [n for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    else:
        return None
    return found if rows is None or len(found) == rows else None


def _csv_lines(text: str) -> list[int]:
    reader = csv.reader(io.StringIO(text, newline=""))
    starts: list[int] = []
    before = 0
    try:
        for _ in reader:
            starts.append(before + 1)
            before = reader.line_num
    except csv.Error:
        return []
    return starts[1:]  # the header is not a record


def dataset_lines(
    spec: DatasetSpec, rows: int | None, max_bytes: int | None = None
) -> list[int] | None:
    """`record_lines` of the dataset file, read again; None when it cannot be read now."""
    fmt = dataset_format(spec.path, spec.format)
    if fmt == "parquet":
        return None
    options: Mapping[str, Any] = spec.storage_options
    try:
        with fsspec.open(spec.path, "rb", **dict(options)) as handle:
            data: bytes = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    except (OSError, ValueError, ImportError):
        return None
    if max_bytes is not None and len(data) > max_bytes:
        return None
    return record_lines(data, fmt, rows)


def file_name(spec: DatasetSpec) -> str:
    """The dataset's file name as messages show it (the last part of its path or URL,
    without a query string)."""
    path = spec.path.split("?", 1)[0].rstrip("/")
    return path.rsplit("/", 1)[-1] or os.path.basename(path) or path


def place(row: int, lines: Sequence[int] | None, name: str) -> str:
    """Where record `row` (0-based) is: `products.csv line 11`, or `record 10` without
    lines."""
    if lines is not None and 0 <= row < len(lines):
        return f"{name} line {lines[row]}"
    return f"{name} record {row + 1}"


def places(rows: Sequence[int], total: int, lines: Sequence[int] | None, name: str) -> str:
    """Up to `MAX_LISTED` records as one phrase, with the count of the rest:
    `products.csv lines 4, 9 and 11` or `products.csv lines 4, 9, ... (25 rows in all)`."""
    shown = list(rows[:MAX_LISTED])
    if lines is not None and all(0 <= row < len(lines) for row in shown):
        numbers = [str(lines[row]) for row in shown]
        unit = "line" if len(numbers) == 1 else "lines"
    else:
        numbers = [str(row + 1) for row in shown]
        unit = "record" if len(numbers) == 1 else "records"
    if total > len(shown):
        listed = ", ".join(numbers) + f", ... ({total:,} rows in all)"
    elif len(numbers) > 1:
        listed = ", ".join(numbers[:-1]) + f" and {numbers[-1]}"
    else:
        listed = numbers[0] if numbers else ""
    return f"{name} {unit} {listed}"
