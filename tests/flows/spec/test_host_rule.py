"""The host rule of every fetch nbp makes itself (an http dataset, the reference check):
public addresses only, the name resolved first, unless `allow_private_hosts`."""

from __future__ import annotations

import argparse

import pytest

from nbp.flows.orchestration.run_options import INPUT_OPTIONS, add_flags, input_policy
from nbp.flows.spec.inputs import (
    HostRefused,
    InputPolicy,
    address_problem,
    fetch_allowed,
    fetch_target,
)

PUBLIC = "93.184.216.34"


def resolver(*addresses: str):  # type: ignore[no-untyped-def]
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(("url", "kind"), [
    pytest.param("http://127.0.0.1/a.png", "loopback", id="loopback"),
    pytest.param("http://127.8.9.10:8080/a.png", "loopback", id="loopback-block"),
    pytest.param("http://10.1.2.3/a.png", "private", id="10.x"),
    pytest.param("http://192.168.1.1/a.png", "private", id="192.168.x"),
    pytest.param("http://169.254.169.254/latest/meta-data/", "link-local", id="metadata"),
    pytest.param("http://[::1]/a.png", "loopback", id="ipv6-loopback"),
    pytest.param("http://[::ffff:10.0.0.1]/a.png", "private", id="ipv4-mapped"),
    pytest.param("http://[fe80::1]/a.png", "link-local", id="ipv6-link-local"),
    pytest.param("http://0.0.0.0/a.png", "unspecified", id="unspecified"),
    pytest.param("http://224.0.0.1/a.png", "multicast", id="multicast"),
    pytest.param("http://100.64.0.1/a.png", "not a public", id="shared-cgnat"),
    pytest.param("http://localhost:8080/a.png", "loopback", id="localhost"),
    pytest.param("http://img.localhost/a.png", "loopback", id="dot-localhost"),
])
def test_non_public_hosts_are_refused(url: str, kind: str) -> None:
    problem = fetch_allowed(url, InputPolicy(), resolve=resolver(PUBLIC))
    assert problem is not None and kind in problem and "--allow-private-hosts" in problem
    assert fetch_allowed(url, InputPolicy(allow_private_hosts=True)) is None


def test_a_name_counts_by_every_address_it_resolves_to() -> None:
    policy = InputPolicy()
    assert fetch_allowed("https://cdn.example.com/a.png", policy,
                         resolve=resolver(PUBLIC)) is None
    assert fetch_allowed("https://cdn.example.com/a.png", policy,
                         resolve=resolver("127.0.0.1")) == (
        "host cdn.example.com resolves to 127.0.0.1, which is a loopback address; nbp "
        "fetches only from public hosts unless you allow private ones (--allow-private-hosts)")
    mixed = fetch_allowed("https://cdn.example.com/a.png", policy,
                          resolve=resolver(PUBLIC, "10.0.0.7"))
    assert mixed is not None and "resolves to 10.0.0.7" in mixed


def test_the_target_pins_the_checked_addresses() -> None:
    target = fetch_target("https://cdn.example.com/a.png", InputPolicy(),
                          resolve=resolver(PUBLIC, PUBLIC))
    assert (target.host, target.port, target.addresses) == ("cdn.example.com", 443, (PUBLIC,))
    free = fetch_target("http://10.0.0.1:81/x", InputPolicy(allow_private_hosts=True))
    assert free.addresses == ()  # allowed: connect by name, nothing resolved


def test_what_cannot_be_resolved_or_is_not_http_is_a_reason() -> None:
    def nowhere(host: str, port: int) -> list[str]:
        raise OSError(-2, "Name or service not known")

    assert fetch_allowed("https://gone.example/a.png", InputPolicy(), resolve=nowhere) == (
        "host gone.example cannot be resolved (Name or service not known)")
    with pytest.raises(HostRefused, match="not an http"):
        fetch_target("s3://bucket/a.png", InputPolicy())


def test_messages_name_the_host_only() -> None:
    problem = fetch_allowed("http://user:secret@10.0.0.1/a.png?token=abc", InputPolicy())
    assert problem is not None and "secret" not in problem and "abc" not in problem


@pytest.mark.parametrize(("address", "problem"), [
    pytest.param(PUBLIC, None, id="public"),
    pytest.param("2606:4700:4700::1111", None, id="public-v6"),
    pytest.param("2002:7f00:1::1", "a loopback address", id="6to4-of-loopback"),
    pytest.param("not-an-ip", "'not-an-ip' is not an IP address", id="garbage"),
])
def test_address_problem(address: str, problem: str | None) -> None:
    assert address_problem(address) == problem


def test_the_flag_reaches_the_policy() -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser, INPUT_OPTIONS)
    assert input_policy(vars(parser.parse_args([]))).allow_private_hosts is False
    assert input_policy(vars(parser.parse_args(["--allow-private-hosts"]))).allow_private_hosts
