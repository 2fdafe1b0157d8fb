"""Cancel the remote tasks a flow run left running (Prefect's cancellation and crash hooks).

Reads the journal; for each cell whose live task this flow run created (its `holder` is the
flow run id: other runs and shards on the target are never touched) at a provider whose API
can cancel, asks the provider to cancel, and marks the cell `cancelled` only when the provider
confirms it (`Provider.cancel` is True). A refused or unanswered cancel, and tasks at
providers without a cancel API, stay as they are: the next run collects them instead of
paying again.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

from nbp.flows.engine.budget import Budget
from nbp.flows.engine.job import open_providers
from nbp.flows.engine.journal import Journal
from nbp.flows.engine.lease import Heartbeat
from nbp.flows.engine.ledger import Ledger
from nbp.flows.engine.lifecycle import CellLife
from nbp.flows.orchestration.run_options import engine_options
from nbp.flows.orchestration.secrets import secret_blocks
from nbp.flows.spec.loader import load_spec
from nbp.outputs.sink import Sink


async def cancel_submitted(spec_path: str, target: str | None, holder: str) -> int:
    """Cancel what `holder` left running and can be cancelled; returns how many the
    providers confirmed."""
    spec = load_spec(spec_path)
    if target:
        spec = replace(spec, output=replace(spec.output, target=target))
    sink = Sink(spec.output.target, spec.output.storage_options)
    journal = Journal(sink)
    running = [e for e in journal.load().values()
               if e.state == "created" and e.holder == holder and e.submitted]
    if not running:
        return 0
    budget = Budget(ledger=Ledger(sink, Heartbeat(sink, holder)))  # settles holds, caps none
    cancelled = 0
    options = engine_options({"spec": spec_path, "target": target}, holder=holder)
    async with open_providers(spec, options, secret_blocks) as (providers, _):
        for entry in running:
            provider = providers.get(entry.channel_key)
            submitted = entry.submitted
            if provider is None or submitted is None or not provider.capabilities.can_cancel:
                continue
            life = CellLife.resume(entry, journal, budget, run_id=entry.run_id, holder=holder)
            with contextlib.suppress(Exception):  # not confirmed: the next run collects it
                if await provider.cancel(submitted) is True:
                    await life.cancelled()
                    cancelled += 1
    return cancelled
