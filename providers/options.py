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
any problem of it, so write it as the reason. Problems read as the job spec's do
(`schemas.messages`). Pure: no HTTP client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema

from nbp.providers.errors import LimitExceeded
from nbp.schemas.messages import Wording, schema_problems

OptionPath = tuple[str | int, ...]
# An option schema's `description` on a value states the reason of its rule.
_WORDING = Wording(show_descriptions=True)


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
        for plain in schema_problems(error, wording=_WORDING):
            problem = OptionProblem(plain.path, plain.message, plain.at_key)
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


__all__ = ["OptionPath", "OptionProblem", "check_options", "format_path", "option_problems"]
