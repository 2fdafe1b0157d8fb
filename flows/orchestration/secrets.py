"""API keys from Prefect Secret blocks: a spec's `credentials` names a block per env var."""

from __future__ import annotations

import os
from collections.abc import Iterable

from prefect.blocks.system import Secret
from prefect.exceptions import ObjectNotFound

from nbp.flows.engine.policy import RunConfigurationError
from nbp.flows.spec.credentials import block_name
from nbp.flows.spec.model import JobSpec


class SecretBlockMissing(RunConfigurationError):
    """The Prefect API has no Secret block by a name the spec's `credentials` gives, and the
    environment does not set its variable. `missing`: variable -> block name."""

    def __init__(self, missing: dict[str, str]) -> None:
        named = " and ".join(f"{block!r} (for {var})" for var, block in missing.items())
        super().__init__(f"no Prefect Secret block {named} on this Prefect API, and the "
                         f"environment does not set {' or '.join(missing)}; nothing was sent")
        self.missing = missing


async def secret_blocks(spec: JobSpec) -> dict[str, str]:
    """Values of the spec's Secret blocks for env vars the environment does not set (a key
    exported on a worker wins). Values are returned, never logged. A block must be named
    after its variable (`flows.spec.credentials.block_name`, as validation checks):
    `ValueError` otherwise, before any block is read, so a spec built in code cannot hand a
    provider a block that holds another secret. `SecretBlockMissing` names every block the
    API does not have."""
    wrong = [var for var, block in spec.credentials.items() if block != block_name(var)]
    if wrong:
        raise ValueError(f"Secret blocks must be named after their variables: "
                         f"{', '.join(f'{v} -> {block_name(v)}' for v in wrong)}")
    values: dict[str, str] = {}
    missing: dict[str, str] = {}
    for var, block in spec.credentials.items():
        if os.environ.get(var):
            continue
        try:
            secret: Secret[str] = await Secret.aload(block)
        except ValueError as exc:  # Prefect's "Unable to find block document named ..."
            if not isinstance(exc.__cause__, ObjectNotFound):
                raise
            missing[var] = block
            continue
        values[var] = str(secret.get())
    if missing:
        raise SecretBlockMissing(missing)
    return values


async def check_secret_blocks(spec: JobSpec, variables: Iterable[str]) -> None:
    """`SecretBlockMissing` unless the Prefect API has the Secret block the spec names for
    each of `variables` (those a run reads from blocks: unset in the environment). Reads
    whether each exists, never its value; `nbp run` asks before the flow run starts, so a
    missing block is one line, not a failed flow run."""
    from prefect.client.orchestration import get_client

    missing: dict[str, str] = {}
    async with get_client() as client:
        for var in variables:
            block = spec.credentials[var]
            try:
                await client.read_block_document_by_name(
                    block, block_type_slug="secret", include_secrets=False)
            except ObjectNotFound:
                missing[var] = block
    if missing:
        raise SecretBlockMissing(missing)
