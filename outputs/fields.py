"""Checks for JSON read from a target: the expected type and shape, bounded, never echoed whole.

A target can come from anyone, so what nbp reads back from it (run records today) is input,
checked like a spec: each check takes a decoded JSON value and returns it typed, or raises
`Unfit` saying what was expected and what came, in a few words (a 1 GB string is "text of
1,000,000,000 characters", never the text).

    run_id = identifier()("a1b2")                            # -> "a1b2"
    shards = list_of(matching(SHARD, "i/n"), 100)(["0/2"])   # -> ("0/2",)
    text(10)("x" * 11)     # Unfit: expected text of at most 10 characters, got text of 11 ...
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")
Check = Callable[[Any], T]

# A run id, a job name, a status, a Prefect id, a package name: what can name a file anywhere.
IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_IDENTIFIER_CHARS = 128
# Terminal controls (C0, DEL, C1): text that is printed must not drive the terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SHOWN_CHARS = 60  # a text value this short is shown (quoted) in a message; longer: its size


class Unfit(ValueError):
    """A value that does not fit its check; `at` is where inside it (`[2].model`)."""

    def __init__(self, problem: str, at: str = "") -> None:
        super().__init__(f"{at}: {problem}" if at else problem)
        self.problem, self.at = problem, at

    def within(self, at: str) -> Unfit:
        """The same problem, one level further out (`at` prefixed)."""
        return Unfit(self.problem, at + self.at)


def describe(value: Any) -> str:
    """`value` as a message may show it: short text quoted, anything else by kind and size."""
    if isinstance(value, str):
        return repr(value) if len(value) <= _SHOWN_CHARS else f"text of {len(value):,} characters"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int | float):
        shown = repr(value)
        return shown if len(shown) <= _SHOWN_CHARS else "a number"
    if isinstance(value, dict):
        return f"an object of {len(value):,} keys"
    if isinstance(value, list):
        return f"a list of {len(value):,} items"
    return type(value).__name__


def _unfit(expected: str, value: Any) -> Unfit:
    return Unfit(f"expected {expected}, got {describe(value)}")


def _string(value: Any, max_chars: int, expected: str) -> str:
    """`value` when it is text of at most `max_chars` characters that UTF-8 can encode (JSON
    lets lone surrogates through, which no file or terminal can take)."""
    if not isinstance(value, str) or len(value) > max_chars:
        raise _unfit(expected, value)
    try:
        value.encode()
    except UnicodeEncodeError:
        raise Unfit(f"expected {expected}, got text that is not valid Unicode") from None
    return value


def text(max_chars: int) -> Check[str]:
    """One line of printable text of at most `max_chars` characters (a path, a model id)."""
    expected = f"text of at most {max_chars:,} characters, without control characters"

    def check(value: Any) -> str:
        found = _string(value, max_chars, expected)
        if _CONTROL.search(found):
            raise Unfit(f"expected {expected}, got text with control characters")
        return found

    return check


def document(max_bytes: int) -> Check[str]:
    """Text of any lines, at most `max_bytes` bytes in UTF-8 (a spec as written)."""
    expected = f"text of at most {max_bytes:,} bytes"

    def check(value: Any) -> str:
        found = _string(value, max_bytes, expected)  # a character is at least a byte
        if len(found.encode()) > max_bytes:
            raise Unfit(f"expected {expected}, got {len(found.encode()):,} bytes")
        return found

    return check


def matching(pattern: re.Pattern[str], expected: str, max_chars: int = 256) -> Check[str]:
    """Text that is all of `pattern` (described to the reader as `expected`)."""

    def check(value: Any) -> str:
        found = _string(value, max_chars, expected)
        if not pattern.fullmatch(found):
            raise _unfit(expected, value)
        return found

    return check


def identifier(max_chars: int = MAX_IDENTIFIER_CHARS) -> Check[str]:
    """Letters, digits, '.', '_' and '-', starting with a letter or digit."""
    return matching(IDENTIFIER, f"an id (letters, digits, '.', '_' and '-', starting with a "
                                f"letter or digit, at most {max_chars})", max_chars)


def timestamp(value: Any) -> str:
    """An ISO 8601 time with its UTC offset, as text."""
    expected = "an ISO 8601 time with its offset"
    found = _string(value, 40, expected)
    try:
        parsed = datetime.fromisoformat(found)
    except ValueError:
        raise _unfit(expected, value) from None
    if parsed.tzinfo is None:
        raise _unfit(expected, value)
    return found


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _unfit("true or false", value)
    return value


def count(value: Any) -> int:
    """A whole number, 0 or more (JSON's `true` is not 1 here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _unfit("a whole number, 0 or more", value)
    return value


def amount(value: Any) -> float:
    """A finite number, 0 or more (Python's JSON reads `NaN` and `Infinity`)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and value >= 0
    ):
        raise _unfit("a finite number, 0 or more", value)
    return float(value)


def optional(check: Check[T]) -> Check[T | None]:
    """`check`, or null."""

    def check_optional(value: Any) -> T | None:
        return None if value is None else check(value)

    return check_optional


def list_of(check: Check[T], max_items: int) -> Check[tuple[T, ...]]:
    """A list of at most `max_items` values that each pass `check`."""

    def check_list(value: Any) -> tuple[T, ...]:
        if not isinstance(value, list) or len(value) > max_items:
            raise _unfit(f"a list of at most {max_items:,} items", value)
        found = []
        for i, item in enumerate(value):
            try:
                found.append(check(item))
            except Unfit as exc:
                raise exc.within(f"[{i}]") from None
        return tuple(found)

    return check_list


def mapping_of(key: Check[K], check: Check[V], max_items: int) -> Check[dict[K, V]]:
    """An object of at most `max_items` entries whose names pass `key`, values `check`."""

    def check_mapping(value: Any) -> dict[K, V]:
        if not isinstance(value, dict) or len(value) > max_items:
            raise _unfit(f"an object of at most {max_items:,} entries", value)
        found = {}
        for name, item in value.items():
            try:
                found[key(name)] = check(item)
            except Unfit as exc:
                short = len(name) <= _SHOWN_CHARS and IDENTIFIER.fullmatch(name)
                raise exc.within(f".{name if short else describe(name)}") from None
        return found

    return check_mapping


def object_of(fields: Mapping[str, Check[Any]]) -> Check[dict[str, Any]]:
    """An object whose entries named in `fields` pass their check; other entries are left
    out (a newer nbp may write more), missing ones are absent from the result."""

    def check_object(value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _unfit("an object", value)
        found = {}
        for name, check in fields.items():
            if name in value:
                try:
                    found[name] = check(value[name])
                except Unfit as exc:
                    raise exc.within(f".{name}") from None
        return found

    return check_object
