from __future__ import annotations

import pytest

from nbp.flows.spec.shard import Shard


@pytest.mark.parametrize(("text", "index", "count"), [
    pytest.param("0/1", 0, 1, id="the-only-shard"),
    pytest.param("3/4", 3, 4, id="the-last-of-four"),
    pytest.param("007/10", 7, 10, id="leading-zeros"),
])
def test_a_shard_is_parsed_once_and_written_back(text: str, index: int, count: int) -> None:
    shard = Shard.parse(text)
    assert (shard.index, shard.count) == (index, count)
    assert Shard.parse(str(shard)) == shard


@pytest.mark.parametrize("text", [
    pytest.param("4/4", id="index-past-the-end"),
    pytest.param("0/0", id="no-shards"),
    pytest.param("1", id="no-count"),
    pytest.param("-1/4", id="negative"),
    pytest.param(" 0/4", id="space"),
    pytest.param("0/4/8", id="three-parts"),
    pytest.param("²/4", id="a-digit-int-refuses"),
    pytest.param("", id="empty"),
])
def test_a_bad_shard_says_the_form(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not of the form i/n with 0 <= i < n, e\.g\. 0/4"):
        Shard.parse(text)


def test_a_shard_made_directly_is_checked_too() -> None:
    with pytest.raises(ValueError, match="'2/2' is not of the form i/n"):
        Shard(2, 2)


def test_shards_split_items_between_them_each_to_one() -> None:
    items = list(range(7))
    taken = [Shard(i, 3).every_nth(items) for i in range(3)]
    assert taken == [(0, 3, 6), (1, 4), (2, 5)]
    assert sorted(x for part in taken for x in part) == items
