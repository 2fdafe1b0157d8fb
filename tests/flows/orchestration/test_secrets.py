"""`secret_blocks`: a block is read only when its variable is unset, and only when it is named
after its variable (the rule validation applies too), so a spec built in code cannot hand a
provider a block that holds another secret; blocks the Prefect API lacks are named."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from prefect.blocks.system import Secret

from nbp.flows.orchestration.secrets import SecretBlockMissing, check_secret_blocks, secret_blocks
from nbp.flows.spec.loader import parse_spec
from nbp.flows.spec.model import JobSpec

SPEC = """\
version: 1
name: blocks
provider: kie
accounts: {kie: [KIE_API_KEY, KIE_API_KEY_2]}
matrix: {prompt: [a fig]}
credentials: {KIE_API_KEY: kie-api-key, KIE_API_KEY_2: kie-api-key-2}
"""


class FakeSecret:
    def __init__(self, value: str) -> None:
        self.value = value

    def get(self) -> str:
        return self.value


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the blocks read (from memory: no Prefect server)."""
    names: list[str] = []

    async def aload(name: str) -> FakeSecret:
        names.append(name)
        return FakeSecret(f"value-of-{name}")

    monkeypatch.setattr(Secret, "aload", staticmethod(aload))
    return names


def spec(tmp_path: Path) -> JobSpec:
    return parse_spec(SPEC, base_dir=str(tmp_path))


def test_blocks_are_read_for_unset_variables(
    tmp_path: Path, loaded: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIE_API_KEY", "exported-on-the-worker")
    monkeypatch.delenv("KIE_API_KEY_2", raising=False)
    assert asyncio.run(secret_blocks(spec(tmp_path))) == {
        "KIE_API_KEY_2": "value-of-kie-api-key-2"}
    assert loaded == ["kie-api-key-2"]


def test_a_block_named_after_another_variable_is_never_read(
    tmp_path: Path, loaded: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KIE_API_KEY", raising=False)
    built = dataclasses.replace(spec(tmp_path), credentials={
        "KIE_API_KEY_2": "kie-api-key-2", "KIE_API_KEY": "aws-secret-access-key"})
    with pytest.raises(ValueError, match=r"KIE_API_KEY -> kie-api-key$"):
        asyncio.run(secret_blocks(built))
    assert loaded == []  # not even the well-named one


@pytest.mark.prefect
def test_blocks_the_api_lacks_are_named_all_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api_url: str,
) -> None:
    """On a real Prefect server: the one block there is read, the missing one is named
    (`SecretBlockMissing`, which `nbp run` asks about before the flow run starts)."""
    monkeypatch.delenv("KIE_API_KEY", raising=False)
    monkeypatch.delenv("KIE_API_KEY_2", raising=False)
    Secret(value="the-second-key").save("kie-api-key-2", overwrite=True)
    try:
        with pytest.raises(SecretBlockMissing) as raised:
            asyncio.run(secret_blocks(spec(tmp_path)))
        assert raised.value.missing == {"KIE_API_KEY": "kie-api-key"}
        assert "the-second-key" not in str(raised.value)
        with pytest.raises(SecretBlockMissing) as asked:
            asyncio.run(check_secret_blocks(spec(tmp_path), ["KIE_API_KEY", "KIE_API_KEY_2"]))
        assert asked.value.missing == raised.value.missing
        asyncio.run(check_secret_blocks(spec(tmp_path), ["KIE_API_KEY_2"]))  # there: no error
    finally:
        Secret.delete("kie-api-key-2")
