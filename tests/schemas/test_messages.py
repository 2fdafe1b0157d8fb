"""JSON Schema errors in plain words: one translation for the job spec and provider options."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from nbp.providers.options import option_problems
from nbp.schemas.messages import JsonPath, Wording, schema_problems


def problems(schema: dict[str, Any], instance: Any, wording: Wording | None = None
             ) -> list[tuple[JsonPath, str, bool]]:
    validator = jsonschema.Draft202012Validator(schema)
    return sorted(
        (p.path, p.message, p.at_key)
        for error in validator.iter_errors(instance)
        for p in schema_problems(error, wording=wording or Wording())
    )


LIST_OF_RATIOS = {"type": "array", "items": {"enum": ["1:1", "16:9"]}, "minItems": 1,
                  "uniqueItems": True}


@pytest.mark.parametrize(
    ("schema", "instance", "expected"),
    [
        pytest.param({"type": "integer"}, "3", "expected an integer, got a string", id="type"),
        pytest.param(LIST_OF_RATIOS, [], "must not be empty", id="empty"),
        pytest.param(LIST_OF_RATIOS, ["1:1", "1:1"], "lists the same value twice", id="unique"),
        pytest.param({"enum": [True, "auto"]}, "ture",
                     "'ture' is not one of True, 'auto'; did you mean 'true'?", id="enum-yaml"),
        pytest.param({"type": "integer", "minimum": 1}, 0, "must be at least 1", id="minimum"),
        pytest.param({"maxLength": 3}, "abcd", "must be at most 3 characters", id="maxLength"),
        pytest.param({"format": "email"}, "nobody", "'nobody' is not a valid email",
                     id="format"),
    ],
)
def test_each_rule_reads_as_plain_words(schema: dict[str, Any], instance: Any,
                                        expected: str) -> None:
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    messages = [p.message for e in validator.iter_errors(instance) for p in schema_problems(e)]
    assert expected in messages


def test_unknown_and_missing_keys_are_located_at_the_key() -> None:
    schema = {"type": "object", "required": ["prompt"], "additionalProperties": False,
              "properties": {"prompt": {"type": "string"}, "repeat": {"type": "integer"}}}
    assert problems(schema, {"repet": 2}) == [
        (("prompt",), "missing required key 'prompt'", False),
        (("repet",), "unknown key 'repet'; did you mean 'repeat'? allowed here: prompt, repeat",
         True),
    ]


def test_an_any_of_is_explained_by_the_branch_of_the_values_own_type() -> None:
    schema = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
    assert problems(schema, 3) == [((), "expected a string or a list, got an integer", False)]
    assert problems(schema, ["kie", 3]) == [((1,), "expected a string, got an integer", False)]


def test_a_schema_words_its_own_patterns_and_key_names() -> None:
    class Job(Wording):
        def pattern(self, path: JsonPath, instance: Any, pattern: str) -> str:
            return f"{instance!r} is not a rate" if path[-1:] == ("rate",) else \
                super().pattern(path, instance, pattern)

        def key_name(self, path: JsonPath, key: str) -> str:
            return f"{key!r} is not a provider name"

    schema = {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"},
              "properties": {"rate": {"pattern": "^[0-9]+/"}, "id": {"pattern": "^x"}}}
    assert problems(schema, {"rate": "fast", "id": "y", "Kie": 1}, Job()) == [
        (("Kie",), "'Kie' is not a provider name", True),
        (("id",), "'y' does not match ^x", False),
        (("rate",), "'fast' is not a rate", False),
    ]


def test_descriptions_are_shown_where_they_state_a_rules_reason() -> None:
    schema = {"properties": {"n": {"const": 1, "description": "one image per cell"}}}
    assert problems(schema, {"n": 2}) == [(("n",), "must be 1", False)]
    assert problems(schema, {"n": 2}, Wording(show_descriptions=True)) == [
        (("n",), "must be 1 (one image per cell)", False)]
    [option] = option_problems(schema, {"n": 2})  # provider options show them
    assert option.message == "must be 1 (one image per cell)"
