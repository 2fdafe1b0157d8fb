"""The manifest's statuses against the engine's lifecycle: each is a journal state of the
same name, except `pending`, the manifest's name for a task still live."""

from __future__ import annotations

from nbp.flows.engine.journal import LIVE_TASK, STATES
from nbp.outputs.manifest import MANIFEST_DOC
from nbp.outputs.statuses import SETTLED, STATUSES, UNSETTLED


def test_every_status_but_pending_is_a_journal_state() -> None:
    assert set(STATUSES) - {"pending"} <= STATES


def test_pending_stands_for_the_live_task_states_which_never_reach_the_manifest() -> None:
    assert "pending" in UNSETTLED and "pending" not in STATES
    assert LIVE_TASK <= STATES and not LIVE_TASK & set(STATUSES)


def test_settled_and_unsettled_split_the_statuses() -> None:
    assert not set(SETTLED) & set(UNSETTLED)
    assert len(set(STATUSES)) == len(STATUSES) == 6


def test_the_manifest_documents_every_status() -> None:
    meaning = next(meaning for name, _, meaning in MANIFEST_DOC if name == "status")
    assert [name for name in STATUSES if name not in meaning] == []
