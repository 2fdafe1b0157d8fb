"""API keys from Prefect Secret blocks: a spec's `credentials` names a block per env var."""

from __future__ import annotations

import os

from prefect.blocks.system import Secret

from flows.spec.model import JobSpec


async def secret_blocks(spec: JobSpec) -> dict[str, str]:
    """Values of the spec's Secret blocks for env vars the environment does not set (a key
    exported on a worker wins). Values are returned, never logged."""
    values: dict[str, str] = {}
    for var, block in spec.credentials.items():
        if os.environ.get(var):
            continue
        secret: Secret[str] = await Secret.aload(block)
        values[var] = str(secret.get())
    return values
