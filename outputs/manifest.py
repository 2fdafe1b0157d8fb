"""The one table of a job: `{target}/manifest.parquet`, one row per cell, merged across runs.

Plain Parquet with plain types, so `polars.read_parquet`, duckdb or pandas read it with no nbp
code: strings, integers, floats, `references` as a list of strings, timestamps in UTC, and
`vars` as a JSON object in a string (polars: `pl.col("vars").str.json_path_match("$.sku")`;
duckdb: `vars::JSON ->> 'sku'`). `MANIFEST_DOC` is the documented schema (README).

Two kinds of columns follow `vars` besides the fixed ones, both depending on the rows a
manifest holds: a job with a `dataset.key` adds one column per key column, `key_<column>`
(`key_columns`), typed as the dataset has it: str, int64, float64 or bool; and every template
variable but those with a fixed column is a `var_<name>` column (`outputs.variables`: matrix
axes, include keys, dataset columns), typed by how its values are written. So the schema of
a manifest is the fixed columns plus the key and variable columns of its rows
(`manifest_schema`): key columns first, then variable columns, each in the order first seen;
a row without one holds null there, and one such column of two types becomes one type (int64
and float64 make float64, any other mix text; a merge then types variable columns again over
all rows: `merge_manifest`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import polars as pl

from nbp.outputs.sink import Sink
from nbp.outputs.statuses import STATUSES as STATUSES  # outputs.status reads it here
from nbp.outputs.variables import is_var_column, retyped, var_series, variables_of

MANIFEST_NAME = "manifest.parquet"
KEY_PREFIX = "key_"  # no fixed column starts with it (nor with `var_`): no clash with one

_TS = pl.Datetime("us", "UTC")
Timestamp = datetime | str | float  # aware or naive (UTC) datetime, ISO 8601, epoch seconds


def _column(dtype: pl.DataType, meaning: str, default: Any = None) -> Any:
    """A manifest column: its Parquet dtype and its meaning (the README's table) on the field."""
    return field(default=default, metadata={"dtype": dtype, "meaning": meaning})


@dataclass
class ManifestRow:
    """One cell's row of the manifest, the only shape a row has inside nbp.

    The Parquet schema (`MANIFEST_COLUMNS`) and the README's table (`MANIFEST_DOC`) are read
    off these fields, in this order. `vars` may be a mapping or its JSON text; timestamps any
    `Timestamp`; `rows_to_frame` normalises both.
    """

    cell_id: str = _column(
        pl.String(),
        "stable hash of everything that changes the image; the row key", ""
    )
    job: str | None = _column(pl.String(), "job name from the spec")
    run_id: str | None = _column(pl.String(), "the run that last wrote this row")
    provider: str | None = _column(
        pl.String(),
        "provider that served the cell (wiro, hiapi, runware, kie, apikley)"
    )
    model: str | None = _column(pl.String(), "model id as the provider names it")
    prompt: str | None = _column(pl.String(), "prompt after templating")
    aspect_ratio: str | None = _column(pl.String(), 'requested aspect ratio, e.g. "4:5"')
    resolution: str | None = _column(pl.String(), '"1K", "2K" or "4K"')
    output_format: str | None = _column(pl.String(), "png, jpg or webp")
    references: Sequence[str] | None = _column(
        pl.List(pl.String()),
        "reference image URIs after templating, in order"
    )
    vars: Mapping[str, Any] | str | None = _column(
        pl.String(),
        "template variables (matrix axes + dataset columns) as a JSON object"
    )
    # Not a column: its entries become the `key_<column>` columns (`key_columns`). The docs
    # are those of the columns after `vars` that depend on the rows: key, then variable ones.
    key: Mapping[str, Any] | None = field(default=None, metadata={"docs": (
        ("key_*", "str, int64, float64 or bool",
         "one column per `dataset.key` column (`key_sku`, ...), typed as the dataset has it "
         "(csv: text as written); null in rows of jobs without that key column"),
        ("var_*", "str, int64, float64 or bool",
         "one column per template variable but prompt, aspect_ratio, resolution, provider and "
         "model (`var_style`, `var_sku`, ...): matrix axes, include keys, dataset columns; "
         "typed by how all its values are written (integers, numbers, true/false, else text; "
         "empty: null); null in rows without that variable"),
    )})
    replicate: int | None = _column(pl.Int32(), "replicate index, 0-based (spec `repeat`)")
    seed: int | None = _column(
        pl.Int64(),
        "seed of the request (spec `seed` + replicate), if any"
    )
    dataset_row: int | None = _column(
        pl.Int64(),
        "0-based row of the dataset this cell came from, if any"
    )
    status: str | None = _column(
        pl.String(),
        "succeeded, failed, skipped, cancelled, pending (a created task the next run collects) "
        "or uncertain (a create that may have reached a provider that cannot be asked: never "
        "re-sent unless asked)",
    )
    remote_task_id: str | None = _column(pl.String(), "the provider's task id of the last attempt")
    attempts: int | None = _column(
        pl.Int32(),
        "submissions made for this cell (retries and fallbacks included)"
    )
    cost_usd: float | None = _column(
        pl.Float64(),
        "what the cell cost (USD): reported costs, else the price of every task that may be "
        "billed; 0 when nothing was"
    )
    submitted_at: Timestamp | None = _column(_TS, "when the last attempt was submitted (UTC)")
    completed_at: Timestamp | None = _column(_TS, "when the cell reached its final status (UTC)")
    latency_s: float | None = _column(pl.Float64(), "completed_at - submitted_at in seconds")
    output_path: str | None = _column(pl.String(), "image path relative to the target")
    output_uri: str | None = _column(
        pl.String(),
        "full URI of the image (local path or fsspec URL)"
    )
    sha256: str | None = _column(pl.String(), "hex SHA-256 of the image bytes")
    bytes: int | None = _column(pl.Int64(), "size of the image file in bytes")
    width: int | None = _column(pl.Int32(), "image width in pixels")
    height: int | None = _column(pl.Int32(), "image height in pixels")
    error_code: str | None = _column(
        pl.String(),
        "machine-readable reason of a failure (our error class or the provider's code)"
    )
    error_message: str | None = _column(pl.String(), "human-readable reason of a failure")
    updated_at: Timestamp | None = _column(_TS, "when this row was written (UTC)")
    account: str | None = _column(
        pl.String(),
        "the provider account that served the cell: the environment variable holding its key "
        "(spec `accounts`), never the key"
    )
    image_tokens: int | None = _column(
        pl.Int64(), "image output tokens the provider reported (Gemini's usage metadata)"
    )
    thinking_tokens: int | None = _column(
        pl.Int64(), "thinking tokens the provider reported (Gemini's usage metadata)"
    )
    emulated: bool | None = _column(
        pl.Boolean(),
        "true when the cell ran against the local emulators (`nbp run --emulate`): its image "
        "is a placeholder and nothing was paid"
    )
    spec_cell_id: str | None = _column(
        pl.String(),
        "the spec's cell this row's cell makes: `cell_id`, unless a redo (a new seed) or a "
        "reference photo that changed behind its URL made it anew"
    )
    superseded_by: str | None = _column(
        pl.String(),
        "the cell that took this cell's output path in a refresh (this row's `output_uri` then "
        "points at its image kept as history)"
    )
    stale: bool | None = _column(
        pl.Boolean(), "true when the job's current spec no longer produces this cell"
    )
    review: str | None = _column(
        pl.String(), "the review decision on this cell's image: approved or rejected (empty: none)"
    )
    task_group: str | None = _column(
        pl.String(),
        "the remote job the cell's task travels in: its batch's name (`batches/…`) for a "
        "`gemini-batch` cell, null for a task of its own"
    )
    template: str | None = _column(
        pl.String(),
        "the name of the cell's prompt template (`matrix.prompt` written as a mapping of "
        "names to texts); null for prompts written as a list"
    )
    seed_sent: bool | None = _column(
        pl.Boolean(),
        "whether the create request carried the seed: true where the provider documents a "
        "seed for the model and the cell has one (README, Providers), else false; null when "
        "no create was sent"
    )
    queue_s: float | None = _column(
        pl.Float64(),
        "seconds the task waited at the provider before it ran, as the provider reports them "
        "(Kie, Apikley, Wiro); null where it reports none"
    )
    generation_s: float | None = _column(
        pl.Float64(),
        "seconds the task ran at the provider, as the provider reports them; null where it "
        "reports none. `latency_s` less both is nbp's share: sending, polling, downloading"
    )
    service_tier: str | None = _column(
        pl.String(),
        "the service tier that served the image (`gemini`: standard, flex or priority, as "
        "Google's `x-gemini-service-tier` header says, else the tier asked); its cost is that "
        "tier's; null for other providers"
    )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ManifestRow:
        """A row from a mapping (a journal entry, a manifest row, a test): `key_<column>`
        entries join `key`; `var_<name>` entries are left out (`vars` holds them); unknown
        keys raise ValueError."""
        fields_ = {name: value for name, value in values.items()
                   if not is_key_column(name) and not is_var_column(name)}
        keys = {name.removeprefix(KEY_PREFIX): value for name, value in values.items()
                if is_key_column(name)}
        if keys:
            fields_["key"] = {**(fields_.get("key") or {}), **keys}
        unknown = sorted(set(fields_) - _FIELD_NAMES)
        if unknown:
            raise ValueError(f"unknown manifest columns: {', '.join(unknown)}")
        return cls(**fields_)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe values (timestamps as ISO 8601 text), for the journal."""
        out = {}
        for name in MANIFEST_COLUMNS:
            value = getattr(self, name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif name == "references":
                value = list(value)
            elif name == "vars" and isinstance(value, Mapping):
                value = dict(value)
            out[name] = value
        if self.key:
            out["key"] = dict(self.key)
        return out


# The fixed columns, in order (`key_*`, then `var_*` columns follow `vars`: `manifest_schema`).
MANIFEST_COLUMNS: dict[str, pl.DataType] = {
    f.name: f.metadata["dtype"] for f in fields(ManifestRow) if "dtype" in f.metadata
}
_FIELD_NAMES = frozenset(f.name for f in fields(ManifestRow))
_KEYS_AFTER = "vars"


def key_column(name: str) -> str:
    """The manifest column of dataset key column `name`: `sku` -> `key_sku`."""
    return KEY_PREFIX + name


def key_columns(key: Mapping[str, Any] | None) -> dict[str, Any]:
    """The manifest columns of a dataset key: `{"sku": "A-1"}` -> `{"key_sku": "A-1"}`."""
    return {key_column(name): value for name, value in (key or {}).items()}


def is_key_column(name: str) -> bool:
    return name.startswith(KEY_PREFIX)


def manifest_schema(*schemas: Mapping[str, pl.DataType]) -> dict[str, pl.DataType]:
    """The columns of a manifest holding frames with these schemas: the fixed ones, and
    after `vars` every key column, then every variable column, any of them has (first seen
    first), each with one dtype: the one they share; int64 and float64 make float64;
    null-only takes the other's; any other mix, or null alone, makes str."""
    keys: dict[str, pl.DataType] = {}
    variables: dict[str, pl.DataType] = {}
    for schema in schemas:
        for name, dtype in schema.items():
            found = keys if is_key_column(name) else variables if is_var_column(name) else None
            if found is not None:
                found[name] = _common(found[name], dtype) if name in found else dtype
    out: dict[str, pl.DataType] = {}
    for name, dtype in MANIFEST_COLUMNS.items():
        out[name] = dtype
        if name == _KEYS_AFTER:
            for dynamic in (keys, variables):
                out.update({k: pl.String() if v == pl.Null else v for k, v in dynamic.items()})
    return out


def _common(a: pl.DataType, b: pl.DataType) -> pl.DataType:
    if a == b or b == pl.Null:
        return a
    if a == pl.Null:
        return b
    if {a, b} == {pl.Int64, pl.Float64}:
        return pl.Float64()
    return pl.String()


def _type_name(dtype: object) -> str:
    """Readable type names for the README: `list[str]`, `datetime[us, UTC]`, `int32`."""
    if isinstance(dtype, pl.List):
        return f"list[{_type_name(dtype.inner)}]"
    if isinstance(dtype, pl.Datetime):
        return f"datetime[{dtype.time_unit}, {dtype.time_zone}]"
    return {"String": "str"}.get(str(dtype), str(dtype).lower())


MANIFEST_DOC: list[tuple[str, str, str]] = [
    entry for f in fields(ManifestRow)
    for entry in ([(f.name, _type_name(f.metadata["dtype"]), f.metadata["meaning"])]
                  if "dtype" in f.metadata else f.metadata["docs"])
]


def manifest_doc_markdown() -> str:
    """`MANIFEST_DOC` as a Markdown table (for the README)."""
    lines = ["| column | type | meaning |", "|---|---|---|"]
    for name, kind, meaning in MANIFEST_DOC:
        escaped = meaning.replace("|", "\\|")
        lines.append(f"| `{name}` | `{kind}` | {escaped} |")
    return "\n".join(lines)


# -- rows -> frame -----------------------------------------------------------------------------


def rows_to_frame(rows: Iterable[ManifestRow | Mapping[str, Any]]) -> pl.DataFrame:
    """A manifest frame from rows, column by column: dtypes exactly MANIFEST_COLUMNS, and
    after `vars` a `key_<column>` column for each key column of any row (`key_columns`),
    then a `var_<name>` column for each variable of any row (`outputs.variables`).

    Mappings go through `ManifestRow.from_mapping` (unknown keys raise ValueError);
    `updated_at` defaults to now. Unknown statuses raise ValueError; a value of the wrong
    type raises TypeError.
    """
    now = datetime.now(UTC)
    typed = [r if isinstance(r, ManifestRow) else ManifestRow.from_mapping(r) for r in rows]
    columns = {}
    for name, dtype in MANIFEST_COLUMNS.items():
        values = [_normalise(name, getattr(row, name)) for row in typed]
        if name == "updated_at":
            values = [now if value is None else value for value in values]
        columns[name] = pl.Series(name, values, dtype=dtype)
        if name == _KEYS_AFTER:
            columns.update(_key_series(typed))
            columns.update(var_series([variables_of(row.vars) for row in typed]))
    frame = pl.DataFrame(columns)
    bad = frame.filter(pl.col("status").is_not_null() & ~pl.col("status").is_in(STATUSES))
    if bad.height:
        raise ValueError(f"unknown status {bad['status'][0]!r} (expected one of {STATUSES})")
    if frame["cell_id"].null_count() or (frame["cell_id"] == "").any():
        raise ValueError("every manifest row needs a cell_id")
    return frame


def _key_series(rows: Sequence[ManifestRow]) -> dict[str, pl.Series]:
    """One `key_<column>` series per key column the rows have, typed by its values (a key
    travels as JSON through the journal: str, int, float or bool; anything else is text)."""
    names = dict.fromkeys(name for row in rows if row.key for name in row.key)
    series = {}
    for name in names:
        column = key_column(name)
        values = [row.key.get(name) if row.key else None for row in rows]
        dtype = _key_dtype(values)
        if dtype == pl.String:
            values = [None if value is None else str(value) for value in values]
        series[column] = pl.Series(column, values, dtype=dtype)
    return series


def _key_dtype(values: Sequence[Any]) -> pl.DataType:
    kinds = {type(value) for value in values if value is not None}
    if not kinds:
        return pl.Null()
    if kinds == {bool}:
        return pl.Boolean()
    if kinds == {int}:
        return pl.Int64()
    if kinds <= {int, float}:
        return pl.Float64()
    return pl.String()


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


def _utc(value: Timestamp) -> datetime:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    stamp = datetime.fromisoformat(value) if isinstance(value, str) else value
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def conform(
    frame: pl.DataFrame, schema: Mapping[str, pl.DataType] | None = None
) -> pl.DataFrame:
    """`frame` with exactly the columns of `schema` (default: the manifest columns and the
    frame's own key columns, `manifest_schema`), in order, with their dtypes.

    Older manifests gain new columns as nulls; columns nbp no longer writes are dropped.
    """
    wanted = manifest_schema(frame.schema) if schema is None else schema
    return frame.select(_columns(wanted, frame.columns))


def conform_lazy(
    frame: pl.LazyFrame, schema: Mapping[str, pl.DataType] | None = None
) -> pl.LazyFrame:
    """`conform` for a lazy frame (a scanned Parquet file): nothing is read until collected."""
    found = frame.collect_schema()
    wanted = manifest_schema(found) if schema is None else schema
    return frame.select(_columns(wanted, found.names()))


def _columns(schema: Mapping[str, pl.DataType], names: Iterable[str]) -> list[pl.Expr]:
    present = set(names)
    return [
        pl.col(name).cast(dtype) if name in present else pl.lit(None, dtype).alias(name)
        for name, dtype in schema.items()
    ]


# -- merge, read, write ------------------------------------------------------------------------


def merge_manifest(old: pl.DataFrame | None, new: pl.DataFrame) -> pl.DataFrame:
    """One row per cell_id: the latest row wins, cells absent from `new` keep their old row.

    Order is stable: cells keep the position they first had (old rows first, then cells new
    to this run in the order of `new`). Within `new`, the last row of a cell wins. Variable
    columns are typed again over the merged rows (`outputs.variables.retyped`).
    """
    frames = [old, new] if old is not None else [new]
    schema = manifest_schema(*(frame.schema for frame in frames))
    combined = pl.concat([conform(frame, schema) for frame in frames], how="vertical")
    if not combined["cell_id"].is_unique().all():
        combined = combined.with_row_index("_pos")
        first = combined.group_by("cell_id").agg(pl.col("_pos").min().alias("_first"))
        latest = combined.unique(subset="cell_id", keep="last")
        combined = latest.join(first, on="cell_id").sort("_first").drop("_pos", "_first")
    return retyped(combined.lazy()).collect()


def retype_variables(frame: pl.LazyFrame) -> pl.LazyFrame | None:
    """`frame` (a merged manifest) with its variable columns typed over all its rows, or None
    when each has its type already: what `merge_manifest` does last, for a merge that
    streams (`outputs.parts.merge_parts`)."""
    typed = retyped(frame)
    return None if typed is frame else typed


def write_manifest(sink: Sink, frame: pl.DataFrame) -> str:
    """Write `frame` (conformed to the schema) to `{target}/manifest.parquet` atomically."""
    buffer = io.BytesIO()
    conform(frame).write_parquet(buffer, compression="zstd", statistics=True)
    return sink.write_bytes(MANIFEST_NAME, buffer.getvalue(), overwrite=True)


class ManifestInvalid(ValueError):
    """The target's manifest.parquet is not a manifest nbp can read (it is input)."""


def read_manifest(sink: Sink) -> pl.DataFrame | None:
    """The target's manifest (conformed to the current schema), or None when there is none;
    `ManifestInvalid` when it does not parse as Parquet or its columns are not a manifest's."""
    data = sink.read_bytes(MANIFEST_NAME)
    if data is None:
        return None
    try:
        return conform(pl.read_parquet(io.BytesIO(data)))
    except (pl.exceptions.PolarsError, OSError, ValueError, TypeError) as exc:
        raise ManifestInvalid(
            f"{sink.uri(MANIFEST_NAME)} is not a manifest nbp can read "
            f"({type(exc).__name__}: {str(exc)[:200]}); move it away or delete it: the "
            "journal keeps every cell's state and the next run writes a new manifest"
        ) from None


def update_manifest(sink: Sink, new: pl.DataFrame) -> pl.DataFrame:
    """Read, merge `new` in, write back; returns the merged manifest.

    Not a lock: two runs on one target at the same time would each write their own merge.
    """
    merged = merge_manifest(read_manifest(sink), new)
    write_manifest(sink, merged)
    return merged
