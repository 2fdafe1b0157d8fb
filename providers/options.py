"""Provider options (`options.<provider>` in a spec, `ImageRequest.options` in an adapter)
checked against the provider's JSON Schema (`Capabilities.option_schema`): one validator and
one message format for spec loading and every adapter.

    for problem in option_problems(caps.option_schema, {"settings": {"temperature": 3}}):
        print(problem.where("runware"), problem.message)
    # options.runware.settings.temperature must be at most 1
    check_options("runware", caps.option_schema, options)  # LimitExceeded naming every problem

Writing a schema: plain JSON Schema (2020-12 unless its `$schema` says otherwise; `format` is
checked). A rule of nbp's own beyond the provider's documentation is a schema rule too
(Runware's `numberResults` is `{"const": 1}`): a `description` on such a value is shown with
any problem of it, so write it as the reason. Pure: no HTTP client.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema

from providers.errors import LimitExceeded

OptionPath = tuple[str | int, ...]

_TYPE_NAMES = {
    "string": "a string", "integer": "an integer", "number": "a number",
    "boolean": "true or false", "object": "a mapping", "array": "a list", "null": "nothing",
}


@dataclass(frozen=True)
class OptionProblem:
    """One thing wrong with a provider's options. `path` is relative to the options object;
    `at_key` when the key itself is wrong (unknown), not its value."""

    path: OptionPath
    message: str
    at_key: bool = False

    def where(self, provider: str) -> str:
        """`options.runware.settings.temperature`, as a spec would write it."""
        return format_path(("options", provider, *self.path))

    def describe(self, provider: str) -> str:
        return f"{self.where(provider)}: {self.message}"


def option_problems(schema: Mapping[str, Any], options: Any) -> list[OptionProblem]:
    """Every problem of `options` against `schema`, in path order (empty when they fit or
    when the provider has no schema)."""
    if not schema:
        return []
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator = cls(dict(schema), format_checker=cls.FORMAT_CHECKER)
    found: dict[tuple[str, str], OptionProblem] = {}
    for error in validator.iter_errors(options):
        for problem in _problems(error):
            found.setdefault((format_path(problem.path), problem.message), problem)
    return [found[key] for key in sorted(found)]


def check_options(
    provider: str, schema: Mapping[str, Any], options: Mapping[str, Any]
) -> Mapping[str, Any]:
    """`options` when they fit `schema`; otherwise `LimitExceeded` naming every problem."""
    problems = option_problems(schema, options)
    if problems:
        listed = "; ".join(problem.describe(provider) for problem in problems)
        raise LimitExceeded(f"{provider}: invalid options: {listed}")
    return options


def format_path(path: OptionPath) -> str:
    """`settings.temperature`, `refs[0]`; keys that are not plain names in brackets."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.replace("_", "a").replace("-", "a").isalnum():
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


# -- one jsonschema error in plain words ---------------------------------------------------


def _problems(error: Any) -> list[OptionProblem]:
    path: OptionPath = tuple(error.absolute_path)
    kind, value, instance = error.validator, error.validator_value, error.instance
    if kind == "additionalProperties" and value is False and isinstance(instance, Mapping):
        allowed = list(error.schema.get("properties", {}))
        return [
            OptionProblem((*path, key), _unknown_key(str(key), allowed), at_key=True)
            for key in instance if key not in allowed
        ]
    if kind == "required" and isinstance(instance, Mapping):
        return [OptionProblem((*path, k), f"missing required key {k!r}")
                for k in value if k not in instance]
    if kind in ("anyOf", "oneOf") and error.context:
        return _problems(jsonschema.exceptions.best_match(error.context))
    message = _plain_message(kind, value, instance, str(error.message))
    description = error.schema.get("description") if isinstance(error.schema, Mapping) else None
    if description:
        message = f"{message} ({description})"
    return [OptionProblem(path, message)]


def _plain_message(kind: str, value: Any, instance: Any, fallback: str) -> str:
    if kind == "type":
        names = [value] if isinstance(value, str) else list(value)
        wanted = " or ".join(_TYPE_NAMES.get(n, n) for n in names)
        return f"expected {wanted}, got {_describe(instance)}"
    if kind == "enum":
        close = difflib.get_close_matches(str(instance), [str(v) for v in value], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{instance!r} is not one of {', '.join(map(repr, value))}{hint}"
    simple = {
        "const": f"must be {value!r}",
        "pattern": f"{instance!r} does not match {value}",
        "format": f"{instance!r} is not a valid {value}",
        "minimum": f"must be at least {value}",
        "maximum": f"must be at most {value}",
        "exclusiveMinimum": f"must be greater than {value}",
        "exclusiveMaximum": f"must be less than {value}",
        "minLength": "must not be empty" if value == 1 else f"needs at least {value} characters",
        "maxLength": f"must be at most {value} characters",
        "minItems": "must not be empty" if value == 1 else f"needs at least {value} items",
        "maxItems": f"takes at most {value} items",
    }
    return simple.get(kind, fallback)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    for kind, name in ((int, "an integer"), (float, "a number"), (str, "a string"),
                       (list, "a list"), (Mapping, "a mapping")):
        if isinstance(value, kind):
            return name
    return "nothing" if value is None else type(value).__name__


def _unknown_key(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key {key!r}; {hint}allowed here: {', '.join(allowed) or 'none'}"


__all__ = ["OptionPath", "OptionProblem", "check_options", "format_path", "option_problems"]
