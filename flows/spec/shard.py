"""Which share of a job one worker takes: shard `i/n`, parsed once where it comes in (the
`--shard` flag, the flow's `shard` parameter) and passed on as a value."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
_FORM = re.compile(r"([0-9]+)/([0-9]+)")


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0 <= index < count); `str()` writes it as "i/n" again.

        Shard.parse("1/4")          # Shard(index=1, count=4)
        Shard.parse("4/4")          # ValueError: '4/4' is not of the form i/n ...
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"{str(self)!r} is not of the form i/n with 0 <= i < n, e.g. 0/4")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """The shard `text` names ("i/n"); `ValueError` saying the form when it is not one."""
        found = _FORM.fullmatch(text)
        if found is None:
            raise ValueError(f"{text!r} is not of the form i/n with 0 <= i < n, e.g. 0/4")
        return cls(int(found[1]), int(found[2]))

    def every_nth(self, items: Sequence[T]) -> tuple[T, ...]:
        """Every n-th of `items` from the i-th: the n shards split them, each item to one."""
        return tuple(items[self.index::self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
