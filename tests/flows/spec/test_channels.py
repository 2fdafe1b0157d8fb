"""`routing`, `deadline` and `accounts`: validated with their place, resolved into channels."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from nbp.flows.spec.channels import channels, split_for_shard
from nbp.flows.spec.loader import load_spec, validate_spec_file
from nbp.flows.spec.shard import Shard

HEAD = """\
version: 1
name: routed
matrix: {prompt: [a fig]}
"""


def write(folder: Path, text: str) -> str:
    path = folder / "job.yaml"
    path.write_text(HEAD + textwrap.dedent(text))
    return str(path)


def test_accounts_become_channels_in_spec_order(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, """\
        provider: [kie, wiro]
        routing: spread
        accounts:
          kie: [KIE_API_KEY, KIE_API_KEY_2]
          wiro: [{WIRO_API_KEY: WIRO_API_KEY_B, WIRO_API_SECRET: WIRO_API_SECRET_B}]
        """))
    found = channels(spec)
    assert [c.key for c in found] == ["kie", "kie:KIE_API_KEY_2", "wiro:WIRO_API_KEY_B"]
    assert [c.account for c in found] == ["KIE_API_KEY", "KIE_API_KEY_2", "WIRO_API_KEY_B"]
    wiro = found[2].environ({"WIRO_API_KEY_B": "b", "WIRO_API_SECRET_B": "s",
                             "WIRO_API_KEY": "a"})
    assert wiro["WIRO_API_KEY"] == "b" and wiro["WIRO_API_SECRET"] == "s"
    kie = found[1].environ({"KIE_API_KEY": "first"})
    assert "KIE_API_KEY" not in kie  # never the other account's key
    assert found[1].missing({}) == ["KIE_API_KEY_2"]
    assert spec.routing == "spread"


def test_a_provider_without_accounts_has_its_documented_one(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "provider: [runware, kie]\n"))
    assert [(c.key, c.account) for c in channels(spec)] == [
        ("runware", "RUNWARE_API_KEY"), ("kie", "KIE_API_KEY")]
    assert spec.routing == "fallback" and spec.deadline_s is None


def test_shards_can_split_the_channels(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, """\
        provider: [kie, apikley]
        accounts: {kie: [KIE_API_KEY, KIE_API_KEY_2, KIE_API_KEY_3]}
        """))
    found = channels(spec)
    shards = [split_for_shard(found, Shard(i, 2)) for i in range(2)]
    assert [c.key for c in shards[0]] == ["kie", "kie:KIE_API_KEY_3"]
    assert [c.key for c in shards[1]] == ["kie:KIE_API_KEY_2", "apikley"]


def test_a_deadline_is_a_duration(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "provider: kie\nrouting: cheapest\ndeadline: 1h30m\n"))
    assert spec.deadline_s == 5400.0


@pytest.mark.parametrize(("text", "where", "says"), [
    ("provider: kie\nrouting: spread\ndeadline: 2h\n", "6:1: deadline",
     "deadline is for routing: cheapest"),
    ("provider: kie\nrouting: cheapest\ndeadline: soon\n", "6:11: deadline",
     "'soon' is not a duration like '2h'"),
    ("provider: kie\nrouting: fastest\n", "5:10: routing", "spread"),
    ("provider: kie\naccounts: {runware: [RUNWARE_KEY_2]}\n", "5:12: accounts.runware",
     "runware is not a provider of this job"),
    ("provider: kie\naccounts: {kie: [{KIE_TOKEN: X}]}\n", "5:19: accounts.kie[0].KIE_TOKEN",
     "kie reads no variable KIE_TOKEN"),
    ("provider: kie\naccounts: {kie: [KIE_API_KEY_2, {KIE_API_KEY: KIE_API_KEY_2}]}\n",
     "5:33: accounts.kie[1]", "listed twice"),
    ("provider: kie\naccounts: {kie: [kie-key]}\n", "5:18: accounts.kie[0]",
     "'kie-key' is not an environment variable name"),
    ("provider: kie\naccounts: {kie: [KIE_API_KEY_2]}\n"
     "credentials: {KIE_API_KEY_2: kie-api-key-2}\n", None, None),
])
def test_routing_mistakes_are_located(
    tmp_path: Path, text: str, where: str | None, says: str | None
) -> None:
    problems = validate_spec_file(write(tmp_path, text))
    if where is None:
        assert problems == []
        return
    shown = [str(p) for p in problems]
    assert any(where in line and says in line for line in shown), shown
