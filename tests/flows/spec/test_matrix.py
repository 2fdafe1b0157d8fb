"""GitHub Actions' matrix semantics, pinned with the examples of GitHub's own documentation
("Running variations of jobs in a workflow", docs.github.com), reproduced exactly; then nbp's
two additions: dependent axes and the record of include entries that overwrite each other."""

from __future__ import annotations

from typing import Any

import pytest

from nbp.flows.spec.matrix import Dependent, Overwrite, expand, matches, product, size


def values(axes: dict[str, Any], include: Any = (), exclude: Any = ()) -> list[dict[str, Any]]:
    return [c.values for c in expand(axes, include, exclude)]


def test_docs_include_example_fruit_animal() -> None:
    # docs: "Expanding or adding matrix configurations"
    axes = {"fruit": ["apple", "pear"], "animal": ["cat", "dog"]}
    include = [
        {"color": "green"},
        {"color": "pink", "animal": "cat"},
        {"fruit": "apple", "shape": "circle"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]
    assert values(axes, include) == [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]


def test_docs_exclude_example_partial_match() -> None:
    # docs: "Excluding matrix configurations": 12 configurations, minus 1, minus 2 = 9 jobs
    axes = {
        "os": ["macos-latest", "windows-latest"],
        "version": [12, 14, 16],
        "environment": ["staging", "production"],
    }
    exclude = [
        {"os": "macos-latest", "version": 12, "environment": "production"},
        {"os": "windows-latest", "version": 16},
    ]
    result = values(axes, exclude=exclude)
    assert len(result) == 9
    assert {"os": "macos-latest", "version": 12, "environment": "production"} not in result
    assert {"os": "macos-latest", "version": 12, "environment": "staging"} in result
    assert not [r for r in result if r["os"] == "windows-latest" and r["version"] == 16]
    assert [r for r in result if r["os"] == "macos-latest" and r["version"] == 16]


def test_docs_order_example_first_variable_first() -> None:
    # docs: "Using a matrix strategy": version [10, 12, 14] x os [ubuntu, windows]
    result = values({"version": [10, 12, 14], "os": ["ubuntu-latest", "windows-latest"]})
    assert result == [
        {"version": 10, "os": "ubuntu-latest"},
        {"version": 10, "os": "windows-latest"},
        {"version": 12, "os": "ubuntu-latest"},
        {"version": 12, "os": "windows-latest"},
        {"version": 14, "os": "ubuntu-latest"},
        {"version": 14, "os": "windows-latest"},
    ]


def test_docs_include_merges_into_matching_original() -> None:
    # docs: "Example: Expanding configurations" (npm 6 only for windows-latest + node 16)
    axes = {"os": ["windows-latest", "ubuntu-latest"], "node": [14, 16]}
    result = values(axes, [{"os": "windows-latest", "node": 16, "npm": 6}])
    assert result == [
        {"os": "windows-latest", "node": 14},
        {"os": "windows-latest", "node": 16, "npm": 6},
        {"os": "ubuntu-latest", "node": 14},
        {"os": "ubuntu-latest", "node": 16},
    ]


def test_docs_include_only_matrix() -> None:
    # docs: a matrix of only include entries: each entry is one job
    include = [
        {"site": "production", "datacenter": "site-a"},
        {"site": "staging", "datacenter": "site-b"},
    ]
    assert values({}, include) == include


def test_exclude_happens_before_include_so_include_can_add_back() -> None:
    axes: dict[str, list[Any]] = {"a": [1, 2], "b": ["x", "y"]}
    result = expand(axes, include=[{"a": 1, "b": "y", "extra": True}], exclude=[{"a": 1}])
    assert [c.values for c in result] == [
        {"a": 2, "b": "x"},
        {"a": 2, "b": "y"},
        {"a": 1, "b": "y", "extra": True},
    ]
    assert [c.added_by for c in result] == [None, None, 0]


def test_added_values_can_be_overwritten_but_original_values_cannot() -> None:
    axes = {"a": [1, 2]}
    include = [{"tag": "first"}, {"tag": "second", "a": 2}, {"a": 3, "tag": "third"}]
    assert values(axes, include) == [
        {"a": 1, "tag": "first"},
        {"a": 2, "tag": "second"},
        {"a": 3, "tag": "third"},
    ]


def test_added_combination_is_not_a_merge_target() -> None:
    # {"a": 9} becomes a new combination; {"extra": 1} merges into the originals only
    result = values({"a": [1]}, [{"a": 9}, {"extra": 1}])
    assert result == [{"a": 1, "extra": 1}, {"a": 9}]


def test_product_order_first_axis_slowest() -> None:
    assert product({"x": [1, 2], "y": ["a", "b"]}) == [
        {"x": 1, "y": "a"}, {"x": 1, "y": "b"}, {"x": 2, "y": "a"}, {"x": 2, "y": "b"},
    ]
    assert product({}) == []


@pytest.mark.parametrize(
    ("combination", "entry", "expected"),
    [
        pytest.param({"a": 1, "b": 2}, {"a": 1}, True, id="partial"),
        pytest.param({"a": 1, "b": 2}, {"a": 1, "b": 3}, False, id="one-differs"),
        pytest.param({"a": 1}, {"c": 1}, False, id="missing-key"),
    ],
)
def test_matches_is_a_partial_match(
    combination: dict[str, Any], entry: dict[str, Any], expected: bool
) -> None:
    assert matches(combination, entry) is expected


# -- nbp's additions --------------------------------------------------------------------

MODELS = Dependent("provider", {"gemini": ("A", "B"), "runware": ("default",)},
                   default=("default",))


def test_a_dependent_axis_crosses_each_value_with_its_own_values_only() -> None:
    axes = {"style": ["ink", "oil"], "provider": ["kie", "gemini"], "model": ["ignored"]}
    result = product(axes, {"model": MODELS})
    assert result == [
        {"style": "ink", "provider": "kie", "model": "default"},
        {"style": "ink", "provider": "gemini", "model": "A"},
        {"style": "ink", "provider": "gemini", "model": "B"},
        {"style": "oil", "provider": "kie", "model": "default"},
        {"style": "oil", "provider": "gemini", "model": "A"},
        {"style": "oil", "provider": "gemini", "model": "B"},
    ]
    assert size(axes, {"model": MODELS}) == len(result) == 6
    assert size(axes) == 2 * 2 * 1 and size({}) == 0


def test_a_dependent_axis_needs_the_axis_it_depends_on() -> None:
    with pytest.raises(ValueError, match="depends on 'provider'"):
        product({"style": ["ink"]}, {"model": MODELS})


def test_exclude_and_include_see_a_dependent_axis_as_an_axis() -> None:
    axes = {"provider": ["kie", "gemini"]}
    result = expand(axes, include=[{"model": "A", "size": "big"}, {"model": "C"}],
                    exclude=[{"model": "B"}], dependent={"model": MODELS})
    assert [c.values for c in result] == [
        {"provider": "kie", "model": "default"},
        {"provider": "gemini", "model": "A", "size": "big"},
        {"model": "C"},  # matches no original model value: added, GitHub Actions semantics
    ]


def test_an_include_entry_that_overwrites_an_earlier_one_is_recorded() -> None:
    # the README pattern: two entries for one provider; the second wins everywhere
    axes = {"style": ["ink", "oil"], "provider": ["kie", "gemini"]}
    include = [{"provider": "gemini", "model": "A"}, {"provider": "gemini", "model": "B"},
               {"provider": "gemini", "model": "B", "tag": "x"}]
    result = expand(axes, include)
    gemini = [c for c in result if c.values["provider"] == "gemini"]
    assert [c.values["model"] for c in gemini] == ["B", "B"]
    assert [c.overwrites for c in gemini] == [[Overwrite("model", 0, 1, "A", "B")]] * 2
    assert all(c.overwrites is None for c in result if c.values["provider"] == "kie")


def test_matching_an_axis_value_or_setting_the_same_value_again_is_no_overwrite() -> None:
    result = expand({"a": [1, 2]}, [{"a": 1, "tag": "x"}, {"a": 1, "tag": "x"}, {"tag": "y"}])
    assert [c.values for c in result] == [{"a": 1, "tag": "y"}, {"a": 2, "tag": "y"}]
    assert result[0].overwrites == [Overwrite("tag", 1, 2, "x", "y")]
    assert result[1].overwrites is None  # tag was not set there before
