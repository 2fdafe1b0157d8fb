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

Two additions are nbp's own, not GitHub's; without them expansion is exactly GitHub's:

- A `Dependent` axis takes its values from the value of another axis (`on`): nbp's
  `matrix.model` written per provider (`{gemini: [A, B], runware: [default]}`) is the axis
  `model` dependent on `provider`. Its values come right after the value they depend on
  (`provider` kie, then gemini A, gemini B, ...), and it is an axis like any other for
  exclude and include.
- Each combination records where an include entry overwrote a value an earlier entry had
  added (`Combination.overwrites`): GitHub allows it silently; nbp says so (a note).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Overwrite:
    """Include entry `later` set `key` to `new` where entry `earlier` had set it to `old`."""

    key: str
    earlier: int
    later: int
    old: Any
    new: Any


@dataclass(slots=True)
class Combination:
    """One combination; `added_by` is the include entry that created it (None: the product);
    `overwrites`: where an include entry replaced a value an earlier one had added (None:
    nowhere)."""

    values: dict[str, Any]
    added_by: int | None = None
    overwrites: list[Overwrite] | None = None


@dataclass(frozen=True)
class Dependent:
    """An axis whose values depend on the value of the axis `on` (nbp's, not GitHub's):
    `values[v]` where `on` is v, else `default`.

        model = Dependent("provider", {"gemini": ("A", "B")}, default=("default",))
        product({"provider": ["kie", "gemini"]}, {"model": model})
        # [{provider: kie, model: default}, {provider: gemini, model: A}, {... model: B}]
    """

    on: str
    values: Mapping[Any, Sequence[Any]]
    default: Sequence[Any] = ()

    def of(self, value: Any) -> Sequence[Any]:
        return self.values.get(value, self.default)


def product(
    axes: Mapping[str, Sequence[Any]], dependent: Mapping[str, Dependent] | None = None
) -> list[dict[str, Any]]:
    """The cartesian product of the axes; no axes means no combinations. A `dependent` axis
    is crossed with the axis it depends on only (its entry in `axes`, if any, is ignored)."""
    if not axes:
        return []
    if not dependent:
        keys = list(axes)
        return [dict(zip(keys, values, strict=True))
                for values in itertools.product(*axes.values())]
    keys, columns = _columns(axes, dependent)
    return [dict(zip(keys, itertools.chain.from_iterable(parts), strict=True))
            for parts in itertools.product(*columns)]


def size(axes: Mapping[str, Sequence[Any]], dependent: Mapping[str, Dependent] | None = None
         ) -> int:
    """How many combinations `product` makes, without making them."""
    if not axes:
        return 0
    if not dependent:
        return math.prod(len(values) for values in axes.values())
    return math.prod(len(column) for column in _columns(axes, dependent)[1])


def _columns(
    axes: Mapping[str, Sequence[Any]], dependent: Mapping[str, Dependent]
) -> tuple[list[str], list[list[tuple[Any, ...]]]]:
    """The product's keys and its columns: an axis with the axes that depend on it is one
    column of value tuples."""
    for key, axis in dependent.items():
        if axis.on not in axes or axis.on in dependent:
            raise ValueError(f"axis {key!r} depends on {axis.on!r}, which is not an axis")
    keys: list[str] = []
    columns: list[list[tuple[Any, ...]]] = []
    for key, values in axes.items():
        if key in dependent:
            continue
        children = [(name, axis) for name, axis in dependent.items() if axis.on == key]
        keys += [key, *(name for name, _ in children)]
        columns.append([(value, *rest) for value in values
                        for rest in itertools.product(*(axis.of(value) for _, axis in children))])
    return keys, columns


def matches(combination: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    """A partial match: every key of `entry` is in `combination` with the same value."""
    return all(key in combination and combination[key] == value for key, value in entry.items())


def expand(
    axes: Mapping[str, Sequence[Any]],
    include: Sequence[Mapping[str, Any]] = (),
    exclude: Sequence[Mapping[str, Any]] = (),
    dependent: Mapping[str, Dependent] | None = None,
) -> list[Combination]:
    """Every combination of the matrix, in GitHub Actions' order (`dependent` axes: see the
    module docstring)."""
    originals = [
        Combination(values)
        for values in product(axes, dependent)
        if not any(matches(values, entry) for entry in exclude)
    ]
    names = {*axes, *(dependent or ())}
    added: list[Combination] = []
    for index, entry in enumerate(include):
        merged = False
        extra = [key for key in entry if key not in names]  # what it adds, may overwrite
        for combination in originals:
            values = combination.values
            if all(key not in names or values[key] == value for key, value in entry.items()):
                for key in extra:
                    if key in values and values[key] != entry[key]:
                        _overwrite(combination, include, index, key, names)
                values.update(entry)
                merged = True
        if not merged:
            added.append(Combination(dict(entry), added_by=index))
    return originals + added


def _overwrite(
    combination: Combination, include: Sequence[Mapping[str, Any]], index: int, key: str,
    names: Container[str],
) -> None:
    """Record that include entry `index` overwrites `key` of `combination`: the value the
    latest earlier entry that merged into it set (axis values never change, so whether an
    entry merged is known again from them)."""
    values = combination.values
    for earlier in range(index - 1, -1, -1):
        entry = include[earlier]
        if key in entry and all(k not in names or values[k] == v for k, v in entry.items()):
            if combination.overwrites is None:
                combination.overwrites = []
            combination.overwrites.append(
                Overwrite(key, earlier, index, values[key], include[index][key]))
            return
