"""`--emulate` reaches the engine as a hook: `serve_emulators` serves the spec's providers on
loopback for one run, gives every channel a key of its own there, and hands the tasks it
knew to the next emulated run on the target; an engine run asked to emulate without the
hook is refused before anything starts."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import httpx
import pytest
import yaml

from nbp.flows.engine.job import RunOptions, run_job
from nbp.flows.engine.policy import RunConfigurationError
from nbp.flows.orchestration.emulation import serve_emulators
from nbp.flows.spec.channels import Channel, channels
from nbp.flows.spec.loader import load_spec
from nbp.flows.spec.model import JobSpec
from nbp.outputs.layout import EMULATED_TASKS, JOURNAL_DIR
from nbp.providers import registry
from nbp.providers.base import ImageRequest, Pending, Submitted


def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "name": "hook", "provider": "kie",
        "accounts": {"kie": ["KIE_API_KEY", "KIE_API_KEY_2"]},
        "matrix": {"prompt": ["a pear"]},
        "output": {"target": str(tmp_path / "out")},
    }))
    return path


async def submit(channel: Channel, environ: dict[str, str]) -> Submitted:
    cls = registry.get_class("kie")
    adapter = cls(cls.settings_from_env(channel.environ(environ)))
    try:
        return await adapter.submit(ImageRequest(prompt="kept for the next run"))
    finally:
        await adapter.aclose()


async def poll(channel: Channel, environ: dict[str, str], task: Submitted) -> object:
    cls = registry.get_class("kie")
    adapter = cls(cls.settings_from_env(channel.environ(environ)))
    try:
        return await adapter.poll(task)
    finally:
        await adapter.aclose()


def test_the_hook_serves_the_channels_and_hands_its_tasks_to_the_next_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    spec: JobSpec = load_spec(str(spec_file(tmp_path)))
    used = channels(spec)
    extra = next(c for c in used if not c.documented)

    async def first() -> tuple[dict[str, str], Submitted]:
        async with serve_emulators(spec, used, 30.0) as served:
            environ = dict(served)
            return environ, await submit(extra, environ)

    environ, task = asyncio.run(first())
    assert environ["NBP_KIE_BASE_URL"].startswith("http://127.0.0.1:")
    assert environ["KIE_API_KEY_2"] not in ("", environ["KIE_API_KEY"])  # a key of its own
    with pytest.raises(httpx.ConnectError):  # stopped with the block
        httpx.get(environ["NBP_KIE_BASE_URL"], timeout=2)
    kept = json.loads((tmp_path / "out" / EMULATED_TASKS).read_text())
    assert [t["task_id"] for t in kept["kie"]] == [task.task_id]

    async def second() -> object:
        async with serve_emulators(spec, used, 30.0) as served:
            return await poll(extra, dict(served), task)

    with caplog.at_level(logging.INFO, logger="nbp.emulation"):
        assert isinstance(asyncio.run(second()), Pending)  # the same task, still running
    assert "the emulators remember 1 task(s)" in caplog.text


def test_an_emulated_run_without_the_hook_is_refused(tmp_path: Path) -> None:
    options = RunOptions(spec=str(spec_file(tmp_path)), emulate=True)
    with pytest.raises(RunConfigurationError, match="needs the emulators"):
        asyncio.run(run_job(options))
    assert not (tmp_path / "out" / JOURNAL_DIR).exists()
