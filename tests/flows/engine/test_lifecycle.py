"""The cell lifecycle: every transition checks where it starts, writes its own journal entry
and moves the cell's budget hold; journals of version 1 are read and upgraded."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from nbp.flows.engine.budget import Budget
from nbp.flows.engine.journal import JOURNAL_VERSION, Journal, JournalEntry
from nbp.flows.engine.lease import Heartbeat
from nbp.flows.engine.ledger import Ledger
from nbp.flows.engine.lifecycle import TRANSITIONS, CellLife, Intent, LifecycleError
from nbp.outputs.manifest import ManifestRow
from nbp.outputs.sink import Sink
from nbp.providers.base import Finished, Submitted

STATES = ("unsent", "reserved", "create_sent", "created", "finished", "written", "succeeded",
          "failed", "uncertain", "cancelled", "unreadable")
ROW = ManifestRow(cell_id="c1", job="j", run_id="r", provider="kie", prompt="p",
                  aspect_ratio="1:1", resolution="1K", output_format="png", references=[],
                  vars={}, status="succeeded")
CALLS: dict[str, Callable[[CellLife], Awaitable[Any]]] = {
    "reserve": lambda life: life.reserve(Intent.new("kie", "kie", 0.09)),
    "release": lambda life: life.release("why"),
    "send": lambda life: life.send(),
    "not_sent": lambda life: life.not_sent("why"),
    "nothing_created": lambda life: life.nothing_created("why"),
    "created": lambda life: life.created(Submitted("kie", "t1")),
    "uncertain": lambda life: life.uncertain("why"),
    "finished": lambda life: life.finished(Finished(images=(), cost_usd=0.05)),
    "task_failed": lambda life: life.task_failed("why"),
    "pending": lambda life: life.pending("why"),
    "moved": lambda life: life.moved(ROW),
    "recollect": lambda life: _sync(life.recollect),
    "adopted": lambda life: life.adopted(ROW),
    "cancelled": lambda life: life.cancelled(),
    "written": lambda life: _sync(life.written),
    "succeeded": lambda life: life.succeeded(ROW),
}


async def _sync(call: Callable[[], None]) -> None:
    call()


def ledger_budget(target: str, cap: float | None = 1.0) -> Budget:
    sink = Sink(target)
    return Budget(max_total_usd=cap, run_id="r", ledger=Ledger(sink, Heartbeat(sink, "me")))


def life_in(state: str, tmp_path: Path, budget: Budget | None = None) -> CellLife:
    life = CellLife("c1", Journal(Sink(str(tmp_path))), budget or Budget(), run_id="r",
                    holder="h")
    life.state = state
    life.intent = Intent.new("kie", "kie", 0.09)
    life.submitted = Submitted("kie", "t1")
    return life


def entry(tmp_path: Path) -> dict[str, Any]:
    return dict(json.loads((tmp_path / ".nbp/cells/c1.json").read_text()))


@pytest.mark.parametrize(("transition", "state"), [
    pytest.param(t, s, id=f"{t}-from-{s}")
    for t, s in itertools.product(TRANSITIONS, STATES) if s not in TRANSITIONS[t]
])
def test_a_transition_from_a_state_it_cannot_start_from_is_refused_and_writes_nothing(
    transition: str, state: str, tmp_path: Path
) -> None:
    life = life_in(state, tmp_path)
    with pytest.raises(LifecycleError, match=f"{transition} from {state}"):
        asyncio.run(CALLS[transition](life))
    assert life.state == state and not (tmp_path / ".nbp").exists()


def test_a_cell_that_pays_once_writes_each_durable_state_before_the_next_step(
    tmp_path: Path,
) -> None:
    budget = ledger_budget(str(tmp_path))
    life = CellLife("c1", Journal(Sink(str(tmp_path))), budget, run_id="r", holder="h")
    seen: list[str] = []

    async def go() -> None:
        intent = Intent.new("kie", "kie", 0.09)
        await life.reserve(intent)
        seen.append(entry(tmp_path)["state"])
        await life.send()
        sent = entry(tmp_path)
        assert sent["intent"] == intent.id and sent["idempotency_key"] == intent.key
        assert sent["reserved_usd"] == 0.09 and sent["version"] == JOURNAL_VERSION
        seen.append(sent["state"])
        await life.created(Submitted("kie", "t1"))
        seen.append(entry(tmp_path)["state"])
        await life.finished(Finished(images=(), cost_usd=0.05))
        seen.append(entry(tmp_path)["state"])  # not yet: a rerun polls the task again
        life.written()
        await life.succeeded(ROW)
        seen.append(entry(tmp_path)["state"])

    asyncio.run(go())
    assert seen == ["reserved", "create_sent", "created", "created", "succeeded"]
    assert life.cost_usd == pytest.approx(0.05)
    data = budget.ledger.read() if budget.ledger else {}
    assert data["total_usd"] == pytest.approx(0.05) and data["open"] == {}


def test_a_finished_task_whose_image_waits_for_the_next_run_is_journalled_finished(
    tmp_path: Path,
) -> None:
    life = life_in("created", tmp_path)

    async def go() -> None:
        await life.finished(Finished(images=(), cost_usd=0.05))
        await life.pending("the download kept failing")

    asyncio.run(go())
    assert entry(tmp_path)["state"] == "finished" and life.cost_usd == pytest.approx(0.05)


def test_without_a_cap_the_first_reserve_is_not_journalled(tmp_path: Path) -> None:
    life = CellLife("c1", Journal(Sink(str(tmp_path))), Budget(), run_id="r", holder="h")
    asyncio.run(life.reserve(Intent.new("kie", "kie", 0.09)))
    assert life.state == "reserved" and not (tmp_path / ".nbp").exists()


def test_intents_get_random_keys_never_derived_from_the_cell() -> None:
    keys = {Intent.new("hiapi", "hiapi", 0.1).key for _ in range(100)}
    assert len(keys) == 100


def test_a_reserved_entry_found_by_the_next_run_releases_its_hold(tmp_path: Path) -> None:
    """A kill between the ledger and the create: the next run's resume of the cell settles
    the hold at 0, so the ledger counts nothing that no provider billed."""
    target = str(tmp_path)

    def ledger_data() -> dict[str, Any]:
        budget = ledger_budget(target)
        assert budget.ledger is not None
        return budget.ledger.read()

    async def go() -> None:
        first = CellLife("c1", Journal(Sink(target)), ledger_budget(target), run_id="r",
                         holder="h")
        await first.reserve(Intent.new("kie", "kie", 0.09))  # ... and the process dies
        assert ledger_data()["total_usd"] == pytest.approx(0.09)
        previous = Journal(Sink(target)).read(["c1"])["c1"]
        assert previous.state == "reserved"
        later = CellLife.resume(previous, Journal(Sink(target)), ledger_budget(target),
                                run_id="s", holder="h2")
        await later.release("never left")
        assert later.state == "unsent" and entry(tmp_path)["state"] == "unsent"

    asyncio.run(go())
    assert ledger_data()["total_usd"] == pytest.approx(0.0) and ledger_data()["open"] == {}


def test_uncertain_is_spent_at_its_price_and_keeps_it_through_reruns(tmp_path: Path) -> None:
    journal = Journal(Sink(str(tmp_path)))

    async def go() -> list[float]:
        life = CellLife("c1", journal, Budget(), run_id="r", holder="h")
        await life.reserve(Intent.new("kie", "kie", 0.09))
        await life.send()
        await life.uncertain("connection lost after sending")
        costs = [life.cost_usd]
        for run in ("s", "t"):
            again = CellLife.resume(journal.read(["c1"])["c1"], journal, Budget(), run_id=run,
                                    holder="h")
            costs.append(again.cost_usd)
        return costs

    assert asyncio.run(go()) == pytest.approx([0.09, 0.09, 0.09])
    assert entry(tmp_path)["state"] == "uncertain"


@pytest.mark.parametrize(("old", "state", "cost"), [
    pytest.param({"state": "submitted", "task": {"provider": "kie", "task_id": "t"}},
                 "created", 0.09, id="submitted-is-created"),
    pytest.param({"state": "cancelled", "task": {"provider": "wiro", "task_id": "t"}},
                 "created", 0.09, id="cancelled-with-a-task-is-polled"),
    pytest.param({"state": "cancelled", "task": None}, "cancelled", 0.0,
                 id="cancelled-without-a-task"),
    pytest.param({"state": "uncertain"}, "uncertain", 0.09, id="uncertain-keeps-its-price"),
])
def test_a_version_1_entry_is_read_and_upgraded(
    old: dict[str, Any], state: str, cost: float, tmp_path: Path
) -> None:
    data = {"cell_id": "c1", "run_id": "r", "provider": "kie", "attempts": 1,
            "idempotency_key": "nbp-c1-kie-1", "reserved_usd": 0.09, "reserved_by": "r",
            "spent_usd": 0.0, **old}
    if state == "cancelled":
        data["reserved_usd"] = 0.0
    parsed = JournalEntry.from_json(data)
    assert parsed.state == state and parsed.version == JOURNAL_VERSION
    life = CellLife.resume(parsed, Journal(Sink(str(tmp_path))), Budget(), run_id="s",
                           holder="h")
    assert life.cost_usd == pytest.approx(cost)
    assert life.intent is None or life.intent.key == "nbp-c1-kie-1"  # re-sent as journalled


def test_a_newer_journal_is_unreadable_not_guessed(tmp_path: Path) -> None:
    sink = Sink(str(tmp_path))
    sink.put_json(".nbp/cells/c1.json", {"version": JOURNAL_VERSION + 1, "cell_id": "c1",
                                         "state": "created", "run_id": "r", "provider": "kie"})
    found = Journal(sink).read(["c1"])["c1"]
    assert found.state == "unreadable" and "newer" in (found.reason or "")
