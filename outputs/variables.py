"""The manifest's `var_<name>` columns: each template variable of a cell (matrix axes, include
keys, dataset columns) as a column of its own, typed, so that a query by axis needs no JSON
functions (`pl.read_parquet(m).group_by("var_style").agg(pl.col("cost_usd").mean())`).

    var_columns(["style", "Product Title", "prompt"])  # {"style": "var_style",
                                                       #  "Product Title": "var_product_title"}
    var_series([{"style": "photo", "n": "2"}, {"style": "ink", "n": ""}])
    # {"var_style": ["photo", "ink"] (str), "var_n": [2, None] (int64)}

Which variables: all but those with a fixed column of their own (`FIXED`: prompt,
aspect_ratio, resolution, provider, model); `vars` keeps every one as JSON, as before.

Names (`column_name`): `var_` and the variable's name lowercased, each run of characters other
than letters and digits made one `_`, none at either end (`Product Title` -> `var_product_title`,
`Größe (cm)` -> `var_größe_cm`); a name with no letter or digit is `x`. Lowercase, because
duckdb compares column names without case. Two variables that come out the same (`Colour`,
`colour`) are told apart by a suffix, deterministically (`var_columns`): the one already
written that way keeps the plain name, the others `_2`, `_3`, ... in sorted order of their
names. No fixed column starts with `var_`, and key columns start with `key_`: no other clash.

Types: template variables are text (a dataset's numbers, a YAML axis' `true`,
are filled into prompts as text), so a column is typed by how all its values are written:
every value an integer as JSON writes one (`12`, `-3`; not `007` or `+1`: such a value is an
id, kept as text) within int64 -> int64; every value a JSON number (`2.5`, `1e3`) -> float64;
every value `true` or `false` (any case) -> bool; otherwise str. An empty value is null. This
is not the rule of the `key_*` columns, which keep the type the dataset file gives them
(`flows.spec.dataset`): by the time a variable reaches a cell, that type is gone. A column is
typed over the rows of a frame (`var_series`) and again over a whole manifest after a merge
(`retyped`), so the same variable has the same type in every row, whichever run wrote it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import polars as pl

VAR_PREFIX = "var_"
# Variables with a fixed manifest column of their own.
FIXED: frozenset[str] = frozenset({"prompt", "aspect_ratio", "resolution", "provider", "model"})
INT_TEXT = r"^-?(?:0|[1-9][0-9]*)$"                               # JSON's integer spelling
NUMBER_TEXT = r"^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?$"  # JSON's number
BOOL_TEXT = r"^(?i:true|false)$"
_OTHER = re.compile(r"[\W_]+")  # not a letter or digit (`\w` less the underscore)


def is_var_column(name: str) -> bool:
    return name.startswith(VAR_PREFIX)


def column_name(variable: str) -> str:
    """`var_` + the variable's name made a plain lowercase identifier (module docstring)."""
    core = _OTHER.sub("_", variable.lower()).strip("_")
    return VAR_PREFIX + (core or "x")


def var_columns(variables: Iterable[str]) -> dict[str, str]:
    """Variable -> its column, for the variables that get one, in the order given: names that
    come out the same get `_2`, `_3`, ... (the one already in that form first, then sorted)."""
    wanted = [v for v in dict.fromkeys(variables) if v not in FIXED]
    groups: dict[str, list[str]] = {}
    for variable in wanted:
        groups.setdefault(column_name(variable), []).append(variable)
    taken = set(groups)
    found: dict[str, str] = {}
    for plain, group in groups.items():
        ordered = sorted(group, key=lambda v: (column_name(v) != VAR_PREFIX + v, v))
        found[ordered[0]] = plain
        n = 1
        for variable in ordered[1:]:
            while True:
                n += 1
                candidate = f"{plain}_{n}"
                if candidate not in taken:
                    break
            taken.add(candidate)
            found[variable] = candidate
    return {variable: found[variable] for variable in wanted}


def variables_of(value: Mapping[str, Any] | str | None) -> Mapping[str, Any]:
    """A row's `vars` as a mapping (its JSON text parsed; anything else: none)."""
    if isinstance(value, Mapping):
        return value
    if isinstance(value, str) and value:
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def var_series(rows: Sequence[Mapping[str, Any]]) -> dict[str, pl.Series]:
    """One typed `var_` series per variable any of `rows` (each a row's variables) has; a row
    without the variable holds null. A column without any value is of the null type (a merge
    gives it the type of the others: `outputs.manifest.manifest_schema`)."""
    columns = var_columns(name for row in rows for name in row)
    if not columns:
        return {}
    texts = pl.DataFrame(
        {column: [_text(row.get(variable)) for row in rows] for variable, column in
         columns.items()},
        schema=dict.fromkeys(columns.values(), pl.String()),
    )
    dtypes = _dtypes(texts.lazy(), texts.columns)
    typed = texts.select(_cast(column, dtype) for column, dtype in dtypes.items())
    return {column: typed[column] for column in typed.columns}


def retyped(frame: pl.LazyFrame) -> pl.LazyFrame:
    """`frame` with each `var_` column typed over all its rows (values kept): after a merge,
    where one run's int64 and another's text met as text. A column without any value is
    text, as in a written manifest. The same frame when every column has its type already."""
    found = frame.collect_schema()
    wanted = var_dtypes(frame)
    changes = [_cast(name, dtype) for name, dtype in wanted.items() if found[name] != dtype]
    return frame.with_columns(changes) if changes else frame


def var_dtypes(frame: pl.LazyFrame) -> dict[str, pl.DataType]:
    """The type each `var_` column of `frame` should have (`retyped`), read in one pass."""
    names = [name for name in frame.collect_schema().names() if is_var_column(name)]
    found = _dtypes(frame, names) if names else {}
    return {name: pl.String() if dtype == pl.Null else dtype for name, dtype in found.items()}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _as_text(name: str) -> pl.Expr:
    text = pl.col(name).cast(pl.String)
    return pl.when(text == "").then(None).otherwise(text)


def _dtypes(frame: pl.LazyFrame, names: Sequence[str]) -> dict[str, pl.DataType]:
    """The type of each column, from one aggregation over the frame."""
    checks = []
    for n, name in enumerate(names):
        text = _as_text(name)
        blank = text.is_null()
        checks += [
            text.is_not_null().any().alias(f"{n}:any"),
            (blank | (text.str.contains(INT_TEXT)
                      & text.cast(pl.Int64, strict=False).is_not_null())).all().alias(f"{n}:int"),
            (blank | text.str.contains(NUMBER_TEXT)).all().alias(f"{n}:num"),
            (blank | text.str.contains(BOOL_TEXT)).all().alias(f"{n}:bool"),
        ]
    flags = frame.select(checks).collect().row(0, named=True)
    dtypes: dict[str, pl.DataType] = {}
    for n, name in enumerate(names):
        if not flags[f"{n}:any"]:
            dtypes[name] = pl.Null()
        elif flags[f"{n}:int"]:
            dtypes[name] = pl.Int64()
        elif flags[f"{n}:num"]:
            dtypes[name] = pl.Float64()
        elif flags[f"{n}:bool"]:
            dtypes[name] = pl.Boolean()
        else:
            dtypes[name] = pl.String()
    return dtypes


def _cast(name: str, dtype: pl.DataType) -> pl.Expr:
    """Column `name` (any type) as `dtype`, by its text: the values `_dtypes` accepted."""
    text = _as_text(name)
    if dtype == pl.Null:
        return text.cast(pl.Null).alias(name)
    if dtype == pl.Boolean:
        return (pl.when(text.is_null()).then(None)
                .otherwise(text.str.to_lowercase() == "true").alias(name))
    return text.cast(dtype).alias(name)
