"""Matrix expansion with exactly GitHub Actions' `strategy.matrix` semantics.

1. The cartesian product of the axes, in the order they are written (first axis slowest).
2. `exclude`: a combination is removed when it matches *every* key of an exclude entry (a
   partial match: keys the entry does not name are ignored). Exclusion happens first.
3. `include`, entry by entry: the entry is merged into every *original* combination in which
   none of its keys would overwrite an original axis value (values added by earlier include
   entries may be overwritten). When it merges into none, it is appended as a new
   combination. Added combinations are never merge targets.

Reference: docs.github.com "Running variations of jobs in a workflow" (Expanding or adding
matrix configurations; Excluding matrix configurations).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Combination:
    """One combination; `added_by` is the include entry that created it (None: the product)."""

    values: dict[str, Any]
    added_by: int | None = None


def product(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of the axes; no axes means no combinations."""
    if not axes:
        return []
    keys = list(axes)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*axes.values())]


def matches(combination: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    """A partial match: every key of `entry` is in `combination` with the same value."""
    return all(key in combination and combination[key] == value for key, value in entry.items())


def expand(
    axes: Mapping[str, Sequence[Any]],
    include: Sequence[Mapping[str, Any]] = (),
    exclude: Sequence[Mapping[str, Any]] = (),
) -> list[Combination]:
    """Every combination of the matrix, in GitHub Actions' order."""
    originals = [
        Combination(values)
        for values in product(axes)
        if not any(matches(values, entry) for entry in exclude)
    ]
    added: list[Combination] = []
    for index, entry in enumerate(include):
        merged = False
        for combination in originals:
            if all(
                key not in axes or combination.values[key] == value
                for key, value in entry.items()
            ):
                combination.values.update(entry)
                merged = True
        if not merged:
            added.append(Combination(dict(entry), added_by=index))
    return originals + added
