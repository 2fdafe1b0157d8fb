"""API keys from Prefect Secret blocks: a spec's `credentials` names a block per env var."""

from __future__ import annotations

import os

from prefect.blocks.system import Secret

from nbp.flows.spec.credentials import block_name
from nbp.flows.spec.model import JobSpec


async def secret_blocks(spec: JobSpec) -> dict[str, str]:
    """Values of the spec's Secret blocks for env vars the environment does not set (a key
    exported on a worker wins). Values are returned, never logged. A block must be named
    after its variable (`flows.spec.credentials.block_name`, as validation checks):
    `ValueError` otherwise, before any block is read, so a spec built in code cannot hand a
    provider a block that holds another secret."""
    wrong = [var for var, block in spec.credentials.items() if block != block_name(var)]
    if wrong:
        raise ValueError(f"Secret blocks must be named after their variables: "
                         f"{', '.join(f'{v} -> {block_name(v)}' for v in wrong)}")
    values: dict[str, str] = {}
    for var, block in spec.credentials.items():
        if os.environ.get(var):
            continue
        secret: Secret[str] = await Secret.aload(block)
        values[var] = str(secret.get())
    return values
