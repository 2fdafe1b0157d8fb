"""The cancel hook of a flow run cancels the tasks that flow run created, and nobody else's:
other shards and runs on the same target keep theirs; a cell is cancelled only on the
provider's word."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import yaml

from nbp.flows.engine.job import RunOptions, run_job
from nbp.flows.engine.journal import Journal, JournalEntry
from nbp.flows.engine.policy import RetryPolicy
from nbp.flows.orchestration.cancel import cancel_submitted
from nbp.outputs.sink import Sink
from nbp.providers import registry
from nbp.providers.base import ImageRequest
from nbp.providers.emulator.hub import EmulatorHub


def test_the_cancel_hook_touches_only_its_own_flow_runs_tasks(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "version": 1, "name": "cancel", "provider": "wiro",
        "matrix": {"prompt": ["mine", "theirs"]},
        "output": {"target": str(tmp_path / "out")},
    }))
    with EmulatorHub.start(["wiro"], latency_s=30.0) as hub:
        saved = dict(os.environ)
        os.environ.update(hub.environ())
        try:
            cls = registry.get_class("wiro")

            async def create_two() -> list[JournalEntry]:
                provider = cls(cls.settings_from_env())
                try:
                    entries = []
                    for prompt, holder in (("mine", "flow-run-a"), ("theirs", "flow-run-b")):
                        task = await provider.submit(ImageRequest(prompt=prompt))
                        entries.append(JournalEntry(
                            cell_id=f"cell-{prompt}", state="created", run_id="weekly",
                            provider="wiro", holder=holder, task=task.to_json()))
                    return entries
                finally:
                    await provider.aclose()

            journal = Journal(Sink(str(tmp_path / "out")))
            for entry in asyncio.run(create_two()):
                journal.write(entry)
            assert asyncio.run(cancel_submitted(str(spec), None, holder="flow-run-a")) == 1
        finally:
            os.environ.clear()
            os.environ.update(saved)
        cancelled = {t.prompt: t.cancelled_at is not None for t in hub["wiro"].tasks.values()}
    assert cancelled == {"mine": True, "theirs": False}
    states = {e.cell_id: e.state for e in journal.load().values()}
    assert states == {"cell-mine": "cancelled", "cell-theirs": "created"}


def test_a_refused_cancel_leaves_the_task_to_collect_and_nothing_is_paid_twice(
    tmp_path: Path,
) -> None:
    """Wiro refuses Task/Cancel once a task left the queue and Task/Kill before it is
    assigned: nothing confirms the cancel, so the cells stay `created` and the next run
    collects the three tasks instead of creating three more."""
    prompts = ["in between 1", "in between 2", "in between 3"]
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "version": 1, "name": "refused", "provider": "wiro",
        "matrix": {"prompt": prompts},
        "output": {"target": str(tmp_path / "out")},
        "limits": {"wiro": {"poll_interval": 0.1}},
    }))
    with EmulatorHub.start(["wiro"], latency_s=5.0) as hub:
        hub["wiro"].configure(queue_s=0.0, assign_after_s=4.0, kill_before_assign="refuse",
                              poll_5xx_prob=1.0)
        saved = dict(os.environ)
        os.environ.update(hub.environ())
        try:
            first = asyncio.run(run_job(RunOptions(
                spec=str(spec), holder="flow-run-a", retry=RetryPolicy(patience_s=0.3))))
            assert first.counts["pending"] == 3
            hub["wiro"].configure(poll_5xx_prob=0.0)
            assert asyncio.run(cancel_submitted(str(spec), None, holder="flow-run-a")) == 0
            states = {e.state for e in Journal(Sink(str(tmp_path / "out"))).load().values()}
            assert states == {"created"}
            again = asyncio.run(run_job(RunOptions(spec=str(spec))))
        finally:
            os.environ.clear()
            os.environ.update(saved)
        assert again.counts["succeeded"] == 3
        assert [hub["wiro"].creates_for(p) for p in prompts] == [1, 1, 1]
