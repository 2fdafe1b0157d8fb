"""The one table of a job: `{target}/manifest.parquet`, one row per cell, merged across runs.

Plain Parquet with plain types, so `polars.read_parquet`, duckdb or pandas read it with no nbp
code: strings, integers, floats, `references` as a list of strings, timestamps in UTC, and
`vars` as a JSON object in a string (polars: `pl.col("vars").str.json_path_match("$.sku")`;
duckdb: `vars::JSON ->> 'sku'`). `MANIFEST_DOC` is the documented schema (README).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import polars as pl

from outputs.sink import Sink

MANIFEST_NAME = "manifest.parquet"
STATUSES = ("succeeded", "failed", "skipped", "cancelled")

_TS = pl.Datetime("us", "UTC")

# column -> (dtype, meaning); the order is the column order of the file
_SCHEMA: dict[str, tuple[pl.DataType, str]] = {
    "cell_id": (pl.String(), "stable hash of everything that changes the image; the row key"),
    "job": (pl.String(), "job name from the spec"),
    "run_id": (pl.String(), "the run that last wrote this row"),
    "provider": (pl.String(), "reseller that served the cell (wiro, hiapi, runware, kie, apikley)"),
    "model": (pl.String(), "model id as the provider names it"),
    "prompt": (pl.String(), "prompt after templating"),
    "aspect_ratio": (pl.String(), 'requested aspect ratio, e.g. "4:5"'),
    "resolution": (pl.String(), '"1K", "2K" or "4K"'),
    "output_format": (pl.String(), "png, jpg or webp"),
    "references": (pl.List(pl.String()), "reference image URIs after templating, in order"),
    "vars": (pl.String(), "template variables (matrix axes + dataset columns) as a JSON object"),
    "replicate": (pl.Int32(), "replicate index, 0-based (spec `repeat`)"),
    "seed": (pl.Int64(), "seed sent to the provider, if any"),
    "dataset_row": (pl.Int64(), "0-based row of the dataset this cell came from, if any"),
    "status": (pl.String(), "succeeded, failed, skipped or cancelled"),
    "remote_task_id": (pl.String(), "the provider's task id of the last attempt"),
    "attempts": (pl.Int32(), "submissions made for this cell (retries and fallbacks included)"),
    "cost_usd": (pl.Float64(), "what the cell cost (USD); 0 or null when nothing was billed"),
    "submitted_at": (_TS, "when the last attempt was submitted (UTC)"),
    "completed_at": (_TS, "when the cell reached its final status (UTC)"),
    "latency_s": (pl.Float64(), "completed_at - submitted_at in seconds"),
    "output_path": (pl.String(), "image path relative to the target"),
    "output_uri": (pl.String(), "full URI of the image (local path or fsspec URL)"),
    "sha256": (pl.String(), "hex SHA-256 of the image bytes"),
    "bytes": (pl.Int64(), "size of the image file in bytes"),
    "width": (pl.Int32(), "image width in pixels"),
    "height": (pl.Int32(), "image height in pixels"),
    "error_code": (
        pl.String(),
        "machine-readable reason of a failure (our error class or the provider's code)",
    ),
    "error_message": (pl.String(), "human-readable reason of a failure"),
    "updated_at": (_TS, "when this row was written (UTC)"),
}

MANIFEST_COLUMNS: dict[str, pl.DataType] = {name: dtype for name, (dtype, _) in _SCHEMA.items()}

def _type_name(dtype: object) -> str:
    """Readable type names for the README: `list[str]`, `datetime[us, UTC]`, `int32`."""
    if isinstance(dtype, pl.List):
        return f"list[{_type_name(dtype.inner)}]"
    if isinstance(dtype, pl.Datetime):
        return f"datetime[{dtype.time_unit}, {dtype.time_zone}]"
    return {"String": "str"}.get(str(dtype), str(dtype).lower())


MANIFEST_DOC: list[tuple[str, str, str]] = [
    (name, _type_name(dtype), meaning) for name, (dtype, meaning) in _SCHEMA.items()
]


def manifest_doc_markdown() -> str:
    """`MANIFEST_DOC` as a Markdown table (for the README)."""
    lines = ["| column | type | meaning |", "|---|---|---|"]
    for name, kind, meaning in MANIFEST_DOC:
        escaped = meaning.replace("|", "\\|")
        lines.append(f"| `{name}` | `{kind}` | {escaped} |")
    return "\n".join(lines)


# -- rows -> frame -----------------------------------------------------------------------------


def rows_to_frame(rows: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    """A manifest frame from row dicts: missing keys are null, dtypes exactly MANIFEST_COLUMNS.

    Accepted value shapes beyond the column types: `references` any sequence of str, `vars` a
    mapping (stored as JSON) or a JSON string, timestamps aware datetimes (converted to UTC),
    naive datetimes (taken as UTC), ISO-8601 strings or epoch seconds; `updated_at` defaults to
    now. Unknown keys and unknown statuses raise ValueError (a typo should fail a test, not
    silently drop a column); a value of the wrong type raises TypeError.
    """
    now = datetime.now(UTC)
    rows = [{**row, "updated_at": row.get("updated_at") or now} for row in rows]
    unknown = sorted({key for row in rows for key in row} - MANIFEST_COLUMNS.keys())
    if unknown:
        raise ValueError(f"unknown manifest columns: {', '.join(unknown)}")
    columns = {}
    for name, dtype in MANIFEST_COLUMNS.items():
        values = [_normalise(name, row.get(name)) for row in rows]
        columns[name] = pl.Series(name, values, dtype=dtype)
    frame = pl.DataFrame(columns)
    bad = frame.filter(pl.col("status").is_not_null() & ~pl.col("status").is_in(STATUSES))
    if bad.height:
        raise ValueError(f"unknown status {bad['status'][0]!r} (expected one of {STATUSES})")
    if frame["cell_id"].null_count():
        raise ValueError("every manifest row needs a cell_id")
    return frame


def _normalise(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name == "vars" and not isinstance(value, str):
        return json.dumps(dict(value), ensure_ascii=False, default=str)
    if name == "references":
        return [str(item) for item in value]
    if MANIFEST_COLUMNS[name] == _TS:
        return _utc(value)
    return value


def _utc(value: datetime | str | float) -> datetime:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    stamp = datetime.fromisoformat(value) if isinstance(value, str) else value
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def conform(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with exactly the manifest columns, in order, with their dtypes.

    Older manifests gain new columns as nulls; columns nbp no longer writes are dropped.
    """
    return frame.select(
        pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
        for name, dtype in MANIFEST_COLUMNS.items()
    )


# -- merge, read, write ------------------------------------------------------------------------


def merge_manifest(old: pl.DataFrame | None, new: pl.DataFrame) -> pl.DataFrame:
    """One row per cell_id: the latest row wins, cells absent from `new` keep their old row.

    Order is stable: cells keep the position they first had (old rows first, then cells new
    to this run in the order of `new`). Within `new`, the last row of a cell wins.
    """
    parts = [conform(old)] if old is not None else []
    parts.append(conform(new))
    combined = pl.concat(parts, how="vertical").with_row_index("_pos")
    first = combined.group_by("cell_id").agg(pl.col("_pos").min().alias("_first"))
    latest = combined.unique(subset="cell_id", keep="last")
    return latest.join(first, on="cell_id").sort("_first").drop("_pos", "_first")


def write_manifest(sink: Sink, frame: pl.DataFrame) -> str:
    """Write `frame` (conformed to the schema) to `{target}/manifest.parquet` atomically."""
    buffer = io.BytesIO()
    conform(frame).write_parquet(buffer, compression="zstd", statistics=True)
    return sink.write_bytes(MANIFEST_NAME, buffer.getvalue(), overwrite=True)


def read_manifest(sink: Sink) -> pl.DataFrame | None:
    """The target's manifest (conformed to the current schema), or None when there is none."""
    data = sink.read_bytes(MANIFEST_NAME)
    return None if data is None else conform(pl.read_parquet(io.BytesIO(data)))


def update_manifest(sink: Sink, new: pl.DataFrame) -> pl.DataFrame:
    """Read, merge `new` in, write back; returns the merged manifest.

    Not a lock: two runs on one target at the same time would each write their own merge.
    """
    merged = merge_manifest(read_manifest(sink), new)
    write_manifest(sink, merged)
    return merged
