"""`nbp export TARGET`: a target's manifest as the table a product database takes back.

    frame = read_for_export(Sink("runs/spring"))           # None: there is no manifest
    export = build_export(frame, url_prefix="https://cdn.example.com/spring")
    sink, name = export_location("week-12.csv", "csv", target=Sink("runs/spring"))
    sink.write_bytes(name, to_csv(export.table), overwrite=True)   # atomic, any fsspec URL

Columns, in this order (`export_columns`):

- `key_*`: every dataset key column of the manifest (`dataset.key`), typed as it is there; a
  manifest without any is keyed by `cell_id` alone (`Export.keys` is then empty);
- `aspect_ratio`, `resolution`;
- `image_url`: `url_prefix` + the row's `output_path`, each path segment percent-quoted
  (`TSH%2FRED XL/1_1_1K.png` -> `TSH%252FRED%20XL/1_1_1K.png`) with exactly one `/` between;
  without a prefix, the row's `output_uri`. Empty unless the row succeeded (a failed cell's
  `output_path` holds no image of its own), and with a prefix empty for a superseded row
  too: its `output_path` now holds the cell that took it (its `output_uri` names the history
  copy), and for a path that is not a safe relative one (`outputs.sink.check_relative`: a
  manifest is input, and `..` in a URL climbs out of the prefix);
- `sha256`, `status`, `review`;
- `cell_id` (unless it is the key), `output_path`;
- `superseded_by`, `stale`: only with `include_all`, so that the extra rows can be told apart.

Rows: by default only the rows a catalog should publish, the current ones. A superseded row's
path was taken by another cell in a refresh, and a stale row is a cell the job's current spec no
longer produces (a product dropped from the export): writing either back would restore an
image the catalog replaced or a product it removed, and a superseded row shares its key, ratio
and resolution with the row that replaced it. `include_all` keeps them (an audit, a
rollback). Every status stays: `status` and `review` are columns the database filters on
(`succeeded`, and not `rejected`). Sorted by the key columns, then ratio and resolution, then
cell id (replicates and other axes), nulls last.

CSV (`to_csv`) is opened by people too, so it is safe in a spreadsheet: a text cell starting
with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading `'` (a SKU or a title from
a product export is input, and such a cell is a formula: OWASP "CSV injection"). Typed
numbers, booleans and dates are written as values: `-5` is no formula, and a quote would make
it text in the database. UTF-8 without a byte-order mark, `,`-separated, quoted where needed
(RFC 4180), a null as an empty field and an empty text as `""`. Parquet (`to_parquet`) keeps
every type and every value exactly as the manifest has it.
"""

from __future__ import annotations

import io
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import polars as pl

from nbp.outputs.layout import in_state
from nbp.outputs.manifest import MANIFEST_NAME, ManifestInvalid, conform
from nbp.outputs.sink import Sink, check_relative, file_location

FORMATS = ("csv", "parquet")
STDOUT = "-"
DEFAULT_OUT = {"csv": STDOUT, "parquet": "export.parquet"}  # `--out` when not given
DEFAULT_NAME = {"csv": "export.csv", "parquet": "export.parquet"}  # in a folder given as --out
KEY_PREFIX = "key_"
FALLBACK_KEY = "cell_id"
COLUMNS = ("aspect_ratio", "resolution", "image_url", "sha256", "status", "review")
HISTORY_COLUMNS = ("superseded_by", "stale")
# A spreadsheet reads a cell starting with one of these as a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_FORMULA = "^[=+\\-@\t\r]"
# What nbp itself keeps in a target: an export never overwrites it.
_TARGET_FILES = (MANIFEST_NAME, "index.html")


class ExportInputError(ValueError):
    """A `--url-prefix` or `--out` that cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class Export:
    """The table to write and what the command says about it."""

    table: pl.DataFrame
    keys: tuple[str, ...]  # the `key_*` columns; () when rows are keyed by cell_id
    left_out: int          # superseded or stale rows not exported (0 with include_all)
    unsafe_paths: int      # succeeded rows given no image_url: output_path not a safe one
    emulated: int          # exported rows from emulated runs: placeholder images

    def notes(self) -> list[str]:
        """What a user should know before writing this table back, one sentence each."""
        notes = []
        if not self.keys:
            notes.append("the manifest has no key_* columns (its spec sets no dataset.key): "
                         "rows are keyed by cell_id")
        if self.left_out:
            notes.append(f"{self.left_out} superseded or stale row(s) left out (--all keeps "
                         "them)")
        if self.unsafe_paths:
            notes.append(f"{self.unsafe_paths} succeeded row(s) have no image_url: their "
                         "output_path is not a safe relative path")
        if self.emulated:
            notes.append(f"{self.emulated} row(s) ran against the emulators (nbp run "
                         "--emulate): placeholder images, not for a catalog")
        return notes


# -- reading -----------------------------------------------------------------------------------


def read_for_export(sink: Sink) -> pl.DataFrame | None:
    """The target's manifest conformed to the schema, plus its `key_*` columns as typed there;
    None when there is none. `ManifestInvalid` when it does not parse as a manifest, or a key
    column holds no plain value (a list, a struct, bytes)."""
    data = sink.read_bytes(MANIFEST_NAME)
    if data is None:
        return None
    try:
        raw = pl.read_parquet(io.BytesIO(data))
        frame = conform(raw)
    except (pl.exceptions.PolarsError, OSError, ValueError, TypeError) as exc:
        raise ManifestInvalid(
            f"{sink.uri(MANIFEST_NAME)} is not a manifest nbp can read "
            f"({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    keys = [name for name in raw.columns if name.startswith(KEY_PREFIX)]
    for name in keys:
        if not _plain(raw.schema[name]):
            raise ManifestInvalid(
                f"{sink.uri(MANIFEST_NAME)}: key column {name!r} is {raw.schema[name]}; "
                "a key column holds text, numbers, booleans or dates"
            )
    # `conform` keeps only the fixed columns: the key columns come from the file as it is.
    return frame.with_columns(raw[name] for name in keys)


def _plain(dtype: pl.DataType) -> bool:
    return (
        dtype.is_numeric() or dtype.is_temporal()
        or isinstance(dtype, pl.String | pl.Boolean | pl.Null | pl.Categorical | pl.Enum)
    )


# -- the table ---------------------------------------------------------------------------------


def export_columns(keys: Collection[str], *, include_all: bool = False) -> list[str]:
    """The export's columns in order (see the module docstring)."""
    key = list(keys) or [FALLBACK_KEY]
    tail = [name for name in (FALLBACK_KEY, "output_path") if name not in key]
    return [*key, *COLUMNS, *tail, *(HISTORY_COLUMNS if include_all else ())]


def build_export(
    manifest: pl.DataFrame, *, url_prefix: str | None = None, include_all: bool = False
) -> Export:
    """The export of `manifest` (as `read_for_export` gives it). `url_prefix` must be checked
    first (`check_url_prefix`); None: image URLs are the rows' `output_uri`."""
    keys = tuple(name for name in manifest.columns if name.startswith(KEY_PREFIX))
    current = (pl.col("superseded_by").fill_null("") == "") & ~pl.col("stale").fill_null(False)
    rows = manifest if include_all else manifest.filter(current)
    urls, unsafe = _image_urls(rows, url_prefix)
    order = list(dict.fromkeys([*(keys or (FALLBACK_KEY,)), "aspect_ratio", "resolution",
                                FALLBACK_KEY]))
    table = (
        rows.with_columns(pl.Series("image_url", urls, dtype=pl.String))
        .sort(order, nulls_last=True, maintain_order=True)
        .select(export_columns(keys, include_all=include_all))
    )
    emulated = int(rows["emulated"].fill_null(False).sum())
    return Export(table, keys, manifest.height - rows.height, unsafe, emulated)


def _image_urls(rows: pl.DataFrame, prefix: str | None) -> tuple[list[str | None], int]:
    """Each row's image URL (None where it has none), and how many succeeded rows got none
    because their `output_path` is not a safe relative path."""
    if prefix is None:
        own = pl.when(pl.col("status") == "succeeded").then(pl.col("output_uri"))
        return rows.select(own).to_series().to_list(), 0
    urls: list[str | None] = []
    unsafe = 0
    for status, path, superseded in rows.select("status", "output_path", "superseded_by").rows():
        url = None
        if status == "succeeded" and path and not superseded:
            try:
                check_relative(path)
                url = join_url(prefix, path)
            except ValueError:
                unsafe += 1
        urls.append(url)
    return urls, unsafe


def join_url(prefix: str, path: str) -> str:
    """`prefix` + `/` + `path` with each segment percent-quoted (UTF-8; only letters, digits
    and `_.-~` stay as they are), exactly one `/` between them.

    >>> join_url("https://cdn.example.com/cat/", "TSH%2FRED XL/1_1_1K.png")
    'https://cdn.example.com/cat/TSH%252FRED%20XL/1_1_1K.png'
    """
    quoted = "/".join(quote(segment, safe="") for segment in path.lstrip("/").split("/"))
    return f"{prefix.rstrip('/')}/{quoted}"


def check_url_prefix(prefix: str, *, protocols: Collection[str]) -> str:
    """`prefix` with its scheme in lower case and no trailing `/`, ready for `join_url`.

    `ExportInputError` unless it is a URL of one of `protocols` (the CLI passes http(s) and
    the fsspec protocols `flows.spec.inputs` allows) with a host or bucket, and nothing an
    appended path would break or leak: no spaces or control characters, no `?` or `#`, no
    user or password (they would be published in every row), no `::` chain.
    """
    allowed = ", ".join(protocols)
    if any(ch.isspace() or not ch.isprintable() for ch in prefix):
        raise ExportInputError(f"--url-prefix {prefix!r} holds spaces or control characters")
    try:
        parts = urlsplit(prefix)
    except ValueError as exc:
        raise ExportInputError(f"--url-prefix {prefix!r} is not a URL: {exc}") from None
    if parts.scheme not in protocols or "::" in prefix:
        raise ExportInputError(
            f"--url-prefix {prefix!r} is not an http(s) URL or an fsspec URL of an allowed "
            f"protocol (allowed: {allowed})"
        )
    if not parts.netloc:
        raise ExportInputError(f"--url-prefix {prefix!r} names no host or bucket "
                               f"(write it as {parts.scheme}://host/path)")
    if "@" in parts.netloc:
        raise ExportInputError(
            f"--url-prefix {prefix.split('://', 1)[0]}://...@{parts.netloc.rsplit('@', 1)[1]}"
            " holds a user or password: they would be written into every row"
        )
    if "?" in prefix or "#" in prefix:
        raise ExportInputError(f"--url-prefix {prefix!r} has a query or fragment: an image "
                               "path appended to it would not be a path")
    return f"{parts.scheme}://{prefix[len(parts.scheme) + 3:]}".rstrip("/")


# -- writing -----------------------------------------------------------------------------------


def to_csv(table: pl.DataFrame) -> bytes:
    """`table` as CSV bytes, safe to open in a spreadsheet (see the module docstring)."""
    text = [name for name, dtype in table.schema.items()
            if isinstance(dtype, pl.String | pl.Categorical | pl.Enum)]
    safe = table.with_columns(
        pl.when(pl.col(name).cast(pl.String).str.contains(_FORMULA))
        .then(pl.lit("'") + pl.col(name).cast(pl.String))
        .otherwise(pl.col(name).cast(pl.String))
        .alias(name)
        for name in text
    )
    buffer = io.BytesIO()
    safe.write_csv(buffer)
    return buffer.getvalue()


def to_parquet(table: pl.DataFrame) -> bytes:
    """`table` as Parquet bytes, types and values as they are."""
    buffer = io.BytesIO()
    table.write_parquet(buffer, compression="zstd", statistics=True)
    return buffer.getvalue()


def export_location(out: str, fmt: str, *, target: Sink) -> tuple[Sink, str]:
    """The folder (a Sink, for its atomic write) and file name of the export at `out`: a local
    path or any fsspec URL; a folder (an existing one, or any ending in `/`) gets
    `DEFAULT_NAME[fmt]` in it. `ExportInputError` when unusable, or when it is a file nbp
    keeps in `target` (its manifest, gallery or `.nbp/` state)."""
    try:
        sink, name = file_location(out, DEFAULT_NAME[fmt])
        where = sink.uri(name)
    except (ImportError, ValueError) as exc:
        raise ExportInputError(f"--out {out}: not a place for the export: {exc}") from exc
    base = target.uri(MANIFEST_NAME)[: -len(MANIFEST_NAME)]
    inside = where[len(base):].lower() if where.startswith(base) else None
    if inside is not None and (inside in _TARGET_FILES or in_state(inside)):
        raise ExportInputError(f"--out {out} is the target's own {inside}; write the export "
                               "beside the target, not over what nbp keeps in it")
    return sink, name
