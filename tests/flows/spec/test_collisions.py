"""Collisions found from compact keys are the ones comparing every cell with every earlier
cell finds (the check validation made with a dict of cells until it held too much memory)."""

from __future__ import annotations

import random

import pytest

from nbp.flows.spec.collisions import CellKeys, Pairs, find_collisions
from nbp.outputs.paths import fold_case

Found = tuple[set[int], list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]]


def pairwise(cells: list[tuple[int, str, str]], *, ids_meaningful: bool) -> Found:
    """The reference: (merged, identical requests, shared paths, paths differing only in
    case) the way dicts of cells by id, by path and by case-folded path find them, one cell
    at a time in order."""
    by_id: dict[str, tuple[int, str]] = {}
    by_path: dict[str, tuple[int, str]] = {}
    by_folded: dict[str, tuple[int, str, str]] = {}
    merged: set[int] = set()
    identical: list[tuple[int, int]] = []
    shared: list[tuple[int, int]] = []
    case: list[tuple[int, int]] = []
    for position, cell_id, path in cells:
        first = by_id.setdefault(cell_id, (position, path))
        if first[0] != position and ids_meaningful:
            if first[1] == path:
                merged.add(position)
            else:
                identical.append((first[0], position))
            continue
        # Without meaningful ids, a stand-in id proves nothing: the same id on one path
        # is not reported.
        owner, owner_id = by_path.setdefault(path, (position, cell_id))
        if owner != position and (ids_meaningful or owner_id != cell_id):
            shared.append((owner, position))
        folded_owner, folded_path, folded_id = by_folded.setdefault(
            fold_case(path), (position, path, cell_id))
        if folded_path != path and (ids_meaningful or folded_id != cell_id):
            case.append((folded_owner, position))
    return merged, identical, shared, case


def keys_of(cells: list[tuple[int, str, str]]) -> CellKeys:
    keys = CellKeys()
    for position, cell_id, path in cells:
        keys.add(position, cell_id, path)
    return keys


@pytest.mark.parametrize("ids_meaningful", [True, False], ids=["ids", "verbatim-prompts"])
def test_compact_keys_find_what_pairwise_comparison_finds(ids_meaningful: bool) -> None:
    rng = random.Random(7)
    for _ in range(200):
        ids = [f"{rng.getrandbits(64):016x}" for _ in range(rng.randint(1, 8))]
        names = [f"{rng.choice('pP')}{i}.{rng.choice(['png', 'PNG'])}"
                 for i in range(rng.randint(1, 8))]
        paths = [*names, *(rng.choice([name.upper(), name.lower()]) for name in names)]
        positions = sorted(rng.sample(range(1, 200), rng.randint(0, 60)))  # gaps: failed cells
        cells = [(p, rng.choice(ids), rng.choice(paths)) for p in positions]
        merged, identical, shared, case = pairwise(cells, ids_meaningful=ids_meaningful)
        found = find_collisions(keys_of(cells), ids_meaningful=ids_meaningful, examples=5)
        assert found.merged == merged
        assert found.identical == Pairs(len(identical), tuple(identical[:5]))
        assert found.shared == Pairs(len(shared), tuple(shared[:5]))
        assert found.case == Pairs(len(case), tuple(case[:5]))
        assert found.positions() == {
            p for pair in identical[:5] + shared[:5] + case[:5] for p in pair}


def test_paths_that_differ_only_in_case_or_normalisation_collide() -> None:
    cells = [(1, "1" * 16, "SKU-1/a.png"), (2, "2" * 16, "sku-1/a.png"),
             (3, "3" * 16, "\u00e9/a.png"), (4, "4" * 16, "e\u0301/a.png"),
             (5, "5" * 16, "SKU-2/a.png"), (6, "6" * 16, "SKU-1/a.png")]
    found = find_collisions(keys_of(cells), ids_meaningful=True, examples=5)
    assert found.case == Pairs(2, ((1, 2), (3, 4)))
    assert found.shared == Pairs(1, ((1, 6),))


def test_no_collisions_at_scale_costs_32_bytes_a_cell() -> None:
    cells = [(i + 1, f"{i:016x}", f"{i}.png") for i in range(100_000)]
    keys = keys_of(cells)
    arrays = (keys.positions, keys.ids, keys.paths, keys.folded)
    size = sum(a.itemsize * len(a) for a in arrays)
    assert size == 32 * 100_000
    assert find_collisions(keys, ids_meaningful=True, examples=100) == find_collisions(
        CellKeys(), ids_meaningful=True, examples=100)
