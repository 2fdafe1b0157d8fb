"""`nbp compare --by`'s axes: which there are, and each row's value as text."""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pytest

from nbp.outputs.compare_axes import (
    AxisError,
    available_axes,
    axis_values,
    check_axes,
    parse_axes,
    template_names,
)


def rows(*variables: dict[str, Any] | str | None, **columns: list[Any]) -> pl.DataFrame:
    texts = [v if v is None or isinstance(v, str) else json.dumps(v) for v in variables]
    return pl.DataFrame({"vars": texts, **columns}, schema_overrides={"vars": pl.String})


def test_axes_are_given_comma_separated_or_repeated() -> None:
    assert parse_axes(["style, provider", "template", "style,", ""]) == (
        "style", "provider", "template")


def test_a_variable_is_text_whatever_its_json_type() -> None:
    frame = rows({"style": "ink", "n": 1, "f": 2.5, "ok": True, "tags": ["a", "b"]},
                 {"style": "photo", "n": "two"}, None, "not json")
    values = axis_values(frame, ["style", "n", "f", "ok", "tags"])
    assert values.rows() == [("ink", "1", "2.5", "true", '["a","b"]'),
                             ("photo", "two", None, None, None),
                             (None, None, None, None, None), (None, None, None, None, None)]


def test_a_name_json_path_cannot_spell_is_read_row_by_row() -> None:
    name = "it's [odd]\\"
    frame = rows({name: "x"}, {name: 3}, {"other": 1})
    assert axis_values(frame, [name])[name].to_list() == ["x", "3", None]


def test_built_ins_read_their_column_and_fall_back_to_the_variable() -> None:
    """A cell skipped before a provider served it has no provider column, but its axis."""
    frame = rows({"provider": "kie", "prompt": "{style} shoe"},
                 {"provider": "gemini", "prompt": "{style} hat"},
                 provider=["kie", None], replicate=[0, 1])
    values = axis_values(frame, ["provider", "replicate", "template"])
    assert values.rows() == [("kie", "0", "{style} shoe"), ("gemini", "1", "{style} hat")]


def test_template_is_the_name_where_both_sides_name_it() -> None:
    named = rows({"prompt": "{style} shoe"}, {"prompt": "{style} hat"},
                 template=["t1", None])
    assert axis_values(named, ["template"])["template"].to_list() == ["t1", "{style} hat"]
    assert axis_values(named, ["template"], template_names=False)["template"].to_list() == [
        "{style} shoe", "{style} hat"]
    assert not template_names(named) and not template_names(rows({"prompt": "x"}))
    assert template_names(named.with_columns(template=pl.lit("t2")))


def test_an_axis_no_side_has_names_those_there_are() -> None:
    a, b = rows({"style": "ink", "prompt": "p"}), rows({"lighting": "soft"}, None)
    check_axes([a, b], ["style", "lighting", "provider", "template"])  # each side may lack one
    assert available_axes([a, b]) == ["template", "provider", "model", "replicate",
                                      "aspect_ratio", "resolution", "account", "lighting",
                                      "prompt", "style"]
    with pytest.raises(AxisError, match=r"^no axis 'mood' on either side; the axes there "
                                        r"are: template, provider, .*, lighting, prompt, "
                                        r"style$"):
        check_axes([a, b], ["style", "mood"])
