"""The axes `nbp compare --by` pairs cells on: each row's value of a named axis, as text.

    axis_values(rows, ["template", "style", "provider"])   # one String column per axis
    check_axes([a.rows, b.rows], ["style"])               # AxisError: no side has it

An axis is a built-in (`BUILTIN_AXES`: a manifest column, falling back to the row's template
variable of that name when the column is empty, as for a cell skipped before a provider
served it) or any template variable in the manifest's `vars` (a matrix axis, an include key,
a dataset column). `template` is the manifest's `template` column (the name of a named
prompt template) where a manifest has one, else the prompt's template text (`vars.prompt`).

Values are text, written alike on both sides: a string as it is, a number or boolean as JSON
writes it (`1`, `2.5`, `true`), a list or object as compact JSON; an axis a row lacks is null.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

import polars as pl

# Built-in axis -> the manifest column it reads.
BUILTIN_AXES = {
    "template": "template", "provider": "provider", "model": "model",
    "replicate": "replicate", "aspect_ratio": "aspect_ratio", "resolution": "resolution",
    "account": "account",
}  # fmt: skip
# A variable name polars' JSONPath reads as `$['name']` (others are read one row at a time).
_PLAIN_NAME = re.compile(r"[^'\\\[\]]+")


class AxisError(ValueError):
    """An axis that no side has; the message lists the axes there are."""


def parse_axes(values: Iterable[str]) -> tuple[str, ...]:
    """`--by a,b --by c` as ("a", "b", "c"): comma-separated or repeated, each name once."""
    names = (name.strip() for value in values for name in value.split(","))
    return tuple(dict.fromkeys(name for name in names if name))


def available_axes(frames: Iterable[pl.DataFrame]) -> list[str]:
    """The axes the rows of `frames` have: the built-ins, then every template variable
    (sorted)."""
    names: set[str] = set()
    for frame in frames:
        for text in frame["vars"].drop_nulls().unique().to_list():
            names.update(_decoded(text))
    return [*BUILTIN_AXES, *sorted(names - set(BUILTIN_AXES))]


def check_axes(frames: Sequence[pl.DataFrame], axes: Sequence[str]) -> None:
    """`AxisError` naming each of `axes` that no row of any of `frames` has, and the axes
    there are."""
    missing = [name for name in axes if name not in BUILTIN_AXES
               and not any(_variable(frame["vars"], name).is_not_null().any()
                           for frame in frames)]
    if missing:
        there = ", ".join(available_axes(frames))
        raise AxisError(f"no axis {', '.join(map(repr, missing))} on either side; the axes "
                        f"there are: {there}")


def axis_values(rows: pl.DataFrame, axes: Sequence[str], *,
                template_names: bool = True) -> pl.DataFrame:
    """One String column per axis of `axes` (named as the axis), a row per row of `rows`.
    `template_names`: `template` reads the manifest's `template` column where a row has a
    name there (False: always the template text, to pair with a side that has no names)."""
    columns = []
    for name in axes:
        variable = _variable(rows["vars"], "prompt" if name == "template" else name)
        column = BUILTIN_AXES.get(name)
        if column in rows.columns and (name != "template" or template_names):
            variable = rows[column].cast(pl.String).fill_null(variable)
        columns.append(variable.alias(name))
    return pl.DataFrame(columns, schema=dict.fromkeys(axes, pl.String))


def template_names(frame: pl.DataFrame) -> bool:
    """Whether every row of `frame` names its prompt template (the `template` column)."""
    return "template" in frame.columns and frame["template"].null_count() == 0


def _variable(variables: pl.Series, name: str) -> pl.Series:
    """Each row's template variable `name` as text (null where it has none)."""
    texts = variables.cast(pl.String)
    if _PLAIN_NAME.fullmatch(name):
        try:
            return texts.str.json_path_match(f"$['{name}']").alias(name)
        except pl.exceptions.PolarsError:
            pass  # text that is not JSON: row by row
    unique = texts.drop_nulls().unique().to_list()
    found = {text: _value(_decoded(text).get(name)) for text in unique}
    return texts.replace_strict(found, default=None, return_dtype=pl.String).alias(name)


def _decoded(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _value(value: object) -> str | None:
    """A variable's value as text, the way polars' JSONPath writes it."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
