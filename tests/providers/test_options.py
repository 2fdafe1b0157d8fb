"""One option validator (`providers.options`) for spec loading and every adapter: JSON paths
relative to the options object, one message format, every problem at once."""

from __future__ import annotations

import pytest

from nbp.providers import registry
from nbp.providers.errors import LimitExceeded
from nbp.providers.options import OptionProblem, check_options, option_problems

RUNWARE = registry.capabilities("runware").option_schema


def test_every_problem_with_its_path_and_plain_message() -> None:
    problems = option_problems(RUNWARE, {
        "settings": {"temperature": 3, "topk": 1},
        "providerSettings": {"google": {"safetyTolerance": "of"}},
        "ttl": "long",
    })
    assert [(p.where("runware"), p.message) for p in problems] == [
        ("options.runware.providerSettings.google.safetyTolerance",
         "'of' is not one of 'none', 'low', 'medium', 'high', 'off'; did you mean 'off'?"),
        ("options.runware.settings.temperature", "must be at most 1"),
        ("options.runware.settings.topk",
         "unknown key 'topk'; did you mean 'topP'? allowed here: systemPrompt, temperature, topP"),
        ("options.runware.ttl", "expected an integer, got a string"),
    ]
    assert [p.at_key for p in problems] == [False, False, True, False]


def test_an_nbp_rule_is_a_schema_rule_with_its_reason() -> None:
    [problem] = option_problems(RUNWARE, {"numberResults": 2})
    assert problem == OptionProblem(
        ("numberResults",),
        "must be 1 (nbp makes one image per cell, so only 1 is supported; use `repeat` in "
        "the spec for more images)",
    )


def test_required_keys_and_formats_are_checked() -> None:
    schema = registry.capabilities("hiapi").option_schema
    assert [p.describe("hiapi") for p in option_problems(schema, {"callback": {}})] == [
        "options.hiapi.callback.url: missing required key 'url'"
    ]
    assert option_problems(schema, {"callback": {"url": "https://hooks.example.com/x"}}) == []
    assert option_problems({}, {"anything": 1}) == []  # no schema: nothing to check


def test_adapters_raise_the_same_words_joined() -> None:
    options = {"settings": {"temperature": 3}, "steps": 4}
    with pytest.raises(LimitExceeded) as caught:
        check_options("runware", RUNWARE, options)
    expected = "; ".join(p.describe("runware") for p in option_problems(RUNWARE, options))
    assert str(caught.value) == f"runware: invalid options: {expected}"
    assert check_options("runware", RUNWARE, {"ttl": 60}) == {"ttl": 60}


@pytest.mark.parametrize("name", ["wiro", "hiapi", "runware", "kie", "apikley"])
def test_every_provider_refuses_an_unknown_option(name: str) -> None:
    schema = registry.capabilities(name).option_schema
    [problem] = option_problems(schema, {"no_such_option": 1})
    assert problem.path == ("no_such_option",) and problem.at_key
    assert problem.message.startswith("unknown key 'no_such_option'; ")
