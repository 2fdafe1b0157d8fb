"""Routing policies: one class per `routing:` value, looked up by name, and the names the
schema accepts are exactly the registry's."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from nbp.flows.spec.allocation import LaneEstimate, allocate
from nbp.flows.spec.policies import (
    DEADLINE_ROUTINGS,
    DEFAULT_ROUTING,
    POLICIES,
    ROUTINGS,
    Cheapest,
    RoutingPolicy,
    routing_policy,
)
from nbp.flows.spec.rate import Rate

L = TypeVar("L")
SCHEMA = Path(__file__).resolve().parents[3] / "schemas" / "job.schema.json"


def test_the_schemas_routing_enum_is_the_registrys_names() -> None:
    routing = json.loads(SCHEMA.read_text())["properties"]["routing"]
    assert routing["enum"] == list(ROUTINGS) == list(POLICIES)
    assert routing["default"] == DEFAULT_ROUTING


def test_the_schema_describes_every_policy_and_the_deadline_names_its_policies() -> None:
    properties = json.loads(SCHEMA.read_text())["properties"]
    assert all(f"{name}:" in properties["routing"]["description"] for name in ROUTINGS)
    assert all(name in properties["deadline"]["title"] for name in DEADLINE_ROUTINGS)


@pytest.mark.parametrize("name", ROUTINGS)
def test_each_name_finds_its_own_policy(name: str) -> None:
    policy = routing_policy(name)
    assert isinstance(policy, RoutingPolicy) and policy.name == name
    assert routing_policy(policy) is policy


def test_an_unknown_routing_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="fallback, spread, cheapest"):
        routing_policy("random")


@pytest.mark.parametrize(("name", "deadline", "dynamic"), [
    pytest.param("fallback", True, False, id="fallback"),
    pytest.param("spread", False, True, id="spread"),
    pytest.param("cheapest", False, False, id="cheapest"),
    pytest.param("cheapest", True, True, id="cheapest-by-a-deadline"),
])
def test_which_policies_place_cells_where_there_is_room(
    name: str, deadline: bool, dynamic: bool,
) -> None:
    assert routing_policy(name).dynamic(deadline=deadline) is dynamic


def test_cheapest_admits_dearer_channels_only_while_the_cheaper_cannot_finish() -> None:
    cheapest = routing_policy("cheapest")
    ranked = ["cheap", "middle", "dear"]
    can = {"cheap": 40.0, "middle": 40.0, "dear": 40.0}
    assert cheapest.admit(ranked, can.__getitem__, lambda: 30) == ["cheap"]
    assert cheapest.admit(ranked, can.__getitem__, lambda: 70) == ["cheap", "middle"]
    assert cheapest.admit(ranked, can.__getitem__, lambda: 500) == ranked
    assert cheapest.admit(ranked, None, lambda: 500) == ranked  # no deadline: all, in order
    assert routing_policy("spread").admit(ranked, can.__getitem__, lambda: 1) == ranked


class Dearest(Cheapest):
    """A policy of one's own: the dearest channel first."""

    name = "dearest"

    def rank(self, lanes: Sequence[L], price: Callable[[L], float]) -> list[L]:
        return sorted(lanes, key=price, reverse=True)


def test_a_policys_ranking_also_decides_its_allocation() -> None:
    lanes = [LaneEstimate("cheap", 0.05, Rate(20, 10.0), 10, 20.0),
             LaneEstimate("dear", 0.2, None, 10, 20.0)]
    assert allocate(Cheapest(), lanes, 100) == [100, 0]
    assert allocate(Dearest(), lanes, 100) == [0, 100]
