"""Dataset rows for a job: csv, parquet or jsonl from any fsspec URL, read with polars.

Every value becomes a string (templates insert text): nulls become "", numbers their usual
spelling. Columns keep the file's order; rows keep the file's order, counted from 0.
`max_bytes` and `max_rows` bound what a file may hold (`InputPolicy` has the defaults);
a parquet file's row count is read from its footer before any row is decoded.

    data = read_dataset("specs/data/products.csv")
    data.columns     # ("sku", "title", "colour", "image")
    data.rows[0]     # {"sku": "SKU-001", "title": "...", ...}
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import polars as pl

FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


class DatasetError(ValueError):
    """The dataset cannot be read or has values that cannot become template text."""


@dataclass(frozen=True)
class Dataset:
    columns: tuple[str, ...]
    rows: list[dict[str, str]]


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
) -> Dataset:
    """All rows of the file as strings; raises `DatasetError` with a plain explanation."""
    fmt = dataset_format(path, format)
    try:
        with fsspec.open(path, "rb", **dict(storage_options or {})) as handle:
            data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise DatasetError(f"dataset file {path!r} does not exist") from None
    except (OSError, ValueError, ImportError) as exc:
        raise DatasetError(f"cannot open dataset {path!r}: {exc}") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise DatasetError(
            f"dataset {path!r} is larger than {max_bytes:,} bytes, the most nbp reads "
            "(InputPolicy.max_dataset_bytes)"
        )
    try:
        frame = _read_frame(data, fmt, path, max_rows)
    except DatasetError:
        raise
    except Exception as exc:  # polars raises its own error types per format
        raise DatasetError(f"cannot read {path!r} as {fmt}: {exc}") from None
    if max_rows is not None and frame.height > max_rows:
        raise _too_many_rows(path, frame.height, max_rows)
    return Dataset(tuple(frame.columns), _as_text(frame, path).to_dicts())


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
