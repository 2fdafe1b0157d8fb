"""`--emulate`: the provider emulators served in-process for one run, handed to the engine as
its emulation hook (`flows.engine.job.RunHooks.emulation`), so the engine never imports them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING

from nbp.flows.spec.channels import Channel
from nbp.flows.spec.model import JobSpec
from nbp.outputs.layout import EMULATED_TASKS
from nbp.outputs.sink import Sink

if TYPE_CHECKING:
    from nbp.providers.emulator.hub import EmulatorHub

log = logging.getLogger("nbp.emulation")


@contextlib.asynccontextmanager
async def serve_emulators(
    spec: JobSpec, used: Sequence[Channel], latency_s: float | None,
) -> AsyncIterator[Mapping[str, str]]:
    """The emulators of the spec's providers on loopback while the block runs, and the
    environment that points the real clients at them: base URLs and test keys, each extra
    account (`used`) a key of its own. Each task takes `latency_s` (None: the emulators'
    default). They start with the tasks earlier emulated runs left on the target and give
    theirs back to it at the end (`EMULATED_TASKS`): a real provider keeps a task when its
    client stops, so the next run collects what an interrupted one left."""
    from nbp.providers.emulator.hub import DEFAULT_LATENCY_S, EmulatorHub  # uvicorn: when used

    hub = EmulatorHub(list(spec.providers), latency_s=latency_s or DEFAULT_LATENCY_S)
    target = Sink(spec.output.target, spec.output.storage_options)
    await asyncio.to_thread(_remember_tasks, hub, target)
    await asyncio.to_thread(hub.serve_in_thread)
    try:
        yield {**hub.environ(), **hub.accounts_environ(
            [(c.provider, c.variables) for c in used if not c.documented])}
    finally:
        await asyncio.to_thread(hub.stop)
        with contextlib.suppress(OSError):  # the next emulated run collects its tasks
            await asyncio.to_thread(target.put_json, EMULATED_TASKS, hub.export_tasks())


def shell_exports(environ: Mapping[str, str]) -> list[str]:
    """`export NAME=value` lines a shell takes as they are, for `nbp emulate` to print: the
    emulators' base URLs first, then their test credentials. `environ` is the hub's own
    (`EmulatorHub.environ`: constants, never the process's environment), so a real key the
    user has exported is never printed."""
    ordered = sorted(environ, key=lambda name: (not name.startswith("NBP_"), name))
    return [f"export {name}={shlex.quote(environ[name])}" for name in ordered]


def _remember_tasks(hub: EmulatorHub, target: Sink) -> None:
    """The file is the target's, so it is read as input (bad entries skipped)."""
    try:
        taken = hub.import_tasks(target.get_json(EMULATED_TASKS))
    except (OSError, ValueError):
        log.warning("%s could not be read; the emulators start without earlier tasks",
                    EMULATED_TASKS)
        return
    if taken:
        log.info("the emulators remember %d task(s) of earlier emulated runs", taken)
