"""Checks for JSON read from a target: typed values back, or a short reason that never echoes
a large value."""

from __future__ import annotations

import re
from typing import Any

import pytest

from nbp.outputs.fields import (
    Unfit,
    amount,
    count,
    describe,
    document,
    flag,
    identifier,
    list_of,
    mapping_of,
    matching,
    object_of,
    optional,
    text,
    timestamp,
)


def test_a_value_is_described_in_a_few_words() -> None:
    assert describe("a b") == "'a b'"
    assert describe("\x1b[2J") == "'\\x1b[2J'"  # quoted: no control character reaches a terminal
    assert describe("x" * 1_000_000) == "text of 1,000,000 characters"
    assert describe(None) == "null" and describe(True) == "true" and describe(1.5) == "1.5"
    assert describe(10**100) == "a number"
    assert describe([1, 2]) == "a list of 2 items" and describe({"a": 1}) == "an object of 1 keys"


@pytest.mark.parametrize(("check", "value"), [
    pytest.param(identifier(), "a b", id="identifier-space"),
    pytest.param(identifier(), ".hidden", id="identifier-dot-first"),
    pytest.param(identifier(4), "abcde", id="identifier-too-long"),
    pytest.param(text(10), "x" * 11, id="text-too-long"),
    pytest.param(text(10), "a\nb", id="text-newline"),
    pytest.param(text(10), "\ud800", id="text-lone-surrogate"),
    pytest.param(document(4), "ééé", id="document-bytes"),
    pytest.param(matching(re.compile(r"\d+"), "digits"), "12a", id="matching"),
    pytest.param(timestamp, "2026-01-01", id="timestamp-no-offset"),
    pytest.param(flag, 1, id="flag-a-number"),
    pytest.param(count, True, id="count-a-bool"),
    pytest.param(count, 1.0, id="count-a-float"),
    pytest.param(amount, float("inf"), id="amount-infinite"),
    pytest.param(amount, -0.01, id="amount-negative"),
    pytest.param(list_of(count, 2), [1, 2, 3], id="list-too-long"),
    pytest.param(mapping_of(identifier(), count, 1), {"a": 1, "b": 2}, id="mapping-too-big"),
    pytest.param(object_of({}), [], id="object-a-list"),
])  # fmt: skip
def test_a_value_that_does_not_fit_is_refused(check: Any, value: Any) -> None:
    with pytest.raises(Unfit, match=r"^expected "):
        check(value)


def test_a_value_that_fits_comes_back_typed() -> None:
    assert amount(3) == 3.0 and isinstance(amount(3), float)
    assert optional(count)(None) is None and optional(count)(2) == 2
    assert timestamp("2026-01-01T10:00:00.123+00:00") == "2026-01-01T10:00:00.123+00:00"
    assert document(1_000)("line\n\ttab\n") == "line\n\ttab\n"
    assert list_of(identifier(), 3)(["a", "b"]) == ("a", "b")


def test_where_inside_a_value_the_problem_is() -> None:
    channels = list_of(object_of({"model": text(5), "provider": text(5)}), 10)
    with pytest.raises(Unfit) as caught:
        channels([{"provider": "kie", "model": "x", "extra": object()}, {"model": 5}])
    assert caught.value.at == "[1].model" and str(caught.value).startswith("[1].model: expected")
    assert channels([{"provider": "kie", "extra": 1}]) == ({"provider": "kie"},)  # extra: left out
    counts = mapping_of(identifier(), count, 10)
    with pytest.raises(Unfit) as caught:
        counts({"ok": 1, "y" * 1_000: -1})
    assert caught.value.at == ".text of 1,000 characters"  # a long name is not echoed
