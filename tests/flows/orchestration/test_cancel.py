"""The cancel hook of a flow run cancels the tasks that flow run created, and nobody else's:
other shards and runs on the same target keep theirs."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import yaml

from flows.engine.journal import Journal, JournalEntry
from flows.orchestration.cancel import cancel_submitted
from outputs.sink import Sink
from providers import registry
from providers.base import ImageRequest
from providers.emulator.hub import EmulatorHub


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
