"""JSON Schema errors in plain words, the same for every schema nbp checks: the job spec
(`flows.spec.loader`) and each provider's options (`providers.options`).

    for error in validator.iter_errors(data):
        for problem in schema_problems(error):
            print(problem.path, problem.message)   # ("repeat",) must be at least 1

What a schema means by its own patterns and key rules (a job name, a rate, an environment
variable) is worded by a `Wording` subclass; every other rule reads alike wherever it is
checked.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

JsonPath = tuple[str | int, ...]

TYPE_NAMES = {
    "string": "a string", "array": "a list", "object": "a mapping", "integer": "an integer",
    "number": "a number", "boolean": "true or false", "null": "nothing",
}


@dataclass(frozen=True)
class SchemaProblem:
    """One thing wrong, at `path` (absolute in the checked document); `at_key` when the key
    itself is wrong (unknown, badly named), not its value."""

    path: JsonPath
    message: str
    at_key: bool = False


class Wording:
    """How a schema words what is its own; the defaults fit any schema.

    `show_descriptions` appends a failing value's `description` to its message: for schemas
    whose descriptions state the reason of a rule (provider options: Runware's
    `numberResults` is 1 because nbp makes one image per cell), not for ones whose
    descriptions document the field (the job spec's)."""

    def __init__(self, *, show_descriptions: bool = False) -> None:
        self.show_descriptions = show_descriptions

    def pattern(self, path: JsonPath, instance: Any, pattern: str) -> str:
        """A string that does not match the `pattern` at `path`."""
        return f"{instance!r} does not match {pattern}"

    def key_name(self, path: JsonPath, key: str) -> str:
        """A key of the mapping at `path` that its `propertyNames` refuses."""
        return f"{key!r} is not an allowed key here"

    def either_type(self, path: JsonPath, wanted: str) -> str:
        """The types an `anyOf` of types at `path` accepts ("a string or a list")."""
        return wanted


PLAIN = Wording()


def schema_problems(
    error: Any, base: JsonPath | None = None, wording: Wording = PLAIN
) -> list[SchemaProblem]:
    """The problems one `jsonschema.ValidationError` stands for (an unknown key or a missing
    one each, an `anyOf` by the branches that explain it), at `base` (default: the error's
    absolute path)."""
    path: JsonPath = tuple(error.absolute_path) if base is None else base
    kind, value, instance = error.validator, error.validator_value, error.instance
    if "propertyNames" in error.schema_path:
        return [SchemaProblem((*path, instance), wording.key_name(path, instance), True)]
    if kind == "additionalProperties" and value is False and isinstance(instance, Mapping):
        allowed = [str(k) for k in error.schema.get("properties", {})]
        return [SchemaProblem((*path, key), unknown_key(str(key), allowed), True)
                for key in instance if key not in allowed]
    if kind == "required" and isinstance(instance, Mapping):
        return [SchemaProblem((*path, key), f"missing required key {key!r}")
                for key in value if key not in instance]
    if kind in ("anyOf", "oneOf"):
        # the branch of the instance's own type explains best: `provider: [kie, 3]`
        deeper = [e for e in error.context or [] if e.path or e.validator != "type"]
        if deeper:
            return [problem for sub in deeper
                    for problem in schema_problems(sub, (*path, *sub.path), wording)]
        return [SchemaProblem(path, _either_type(error, path, wording))]
    message = _plain_message(error, path, wording)
    description = error.schema.get("description") if isinstance(error.schema, Mapping) else None
    if wording.show_descriptions and description:
        message = f"{message} ({description})"
    return [SchemaProblem(path, message)]


def unknown_key(key: str, allowed: list[str]) -> str:
    """An unknown key, with the closest allowed one and the whole list."""
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key {key!r}; {hint}allowed here: {', '.join(allowed) or 'none'}"


def describe(value: Any) -> str:
    """What kind of value this is, as a spec's reader calls it: "a list", "a mapping"."""
    if isinstance(value, bool):
        return "true or false"
    for kind, name in ((int, "an integer"), (float, "a number"), (str, "a string"),
                       (list, "a list"), (Mapping, "a mapping")):
        if isinstance(value, kind):
            return name
    return "nothing" if value is None else type(value).__name__


def type_names(types: Any) -> str:
    names = [types] if isinstance(types, str) else list(types)
    return " or ".join(TYPE_NAMES.get(t, t) for t in names)


def _either_type(error: Any, path: JsonPath, wording: Wording) -> str:
    branches = list(error.context or [])
    if not branches:
        return str(error.message)
    wanted = " or ".join(type_names(e.validator_value) for e in branches)
    return f"expected {wording.either_type(path, wanted)}, got {describe(error.instance)}"


def _plain_message(error: Any, path: JsonPath, wording: Wording) -> str:
    kind, value, instance = error.validator, error.validator_value, error.instance
    if kind == "type":
        return f"expected {type_names(value)}, got {describe(instance)}"
    if kind == "enum":
        close = difflib.get_close_matches(_yaml_text(instance), [_yaml_text(v) for v in value], 1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{instance!r} is not one of {', '.join(map(repr, value))}{hint}"
    if kind == "pattern":
        return wording.pattern(path, instance, value)
    if kind in ("minItems", "minLength", "minProperties") and value == 1:
        return "must not be empty"
    simple = {
        "const": f"must be {value!r}",
        "format": f"{instance!r} is not a valid {value}",
        "minimum": f"must be at least {value}",
        "maximum": f"must be at most {value}",
        "exclusiveMinimum": f"must be greater than {value}",
        "exclusiveMaximum": f"must be less than {value}",
        "minLength": f"needs at least {value} characters",
        "maxLength": f"must be at most {value} characters",
        "minItems": f"needs at least {value} items",
        "maxItems": f"takes at most {value} items",
        "uniqueItems": "lists the same value twice",
    }
    return simple.get(kind, str(error.message))


def _yaml_text(value: Any) -> str:
    """A scalar as YAML spells it (true, not True), for matching a near miss."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


__all__ = [
    "PLAIN", "TYPE_NAMES", "JsonPath", "SchemaProblem", "Wording", "describe",
    "schema_problems", "type_names", "unknown_key",
]
