"""Channels: where a cell can be created. A channel is a provider x account (design.md,
"Channels and routing"): each has its own throttle, and a task created on one is collected
with that account's key, on that channel only.

    channels(spec)      # every channel of the job, in the spec's order
    # provider: [kie, apikley] + accounts: {kie: [KIE_API_KEY, KIE_API_KEY_2]}
    #   -> kie (KIE_API_KEY), kie:KIE_API_KEY_2, apikley (APIKLEY_API_KEY)

A provider without an `accounts` entry has one account: its documented variables. An
account written as a name stands for the provider's first credential variable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from nbp.flows.spec.credentials import allowed, owner, provider_variables
from nbp.flows.spec.model import Account, Cell, JobSpec
from nbp.flows.spec.shard import Shard
from nbp.providers import registry
from nbp.providers.base import Capabilities


@dataclass(frozen=True)
class Channel:
    """One provider account. `key` names its throttle and its tasks in the journal: the
    provider's name for its documented account (as before accounts existed), else
    `provider:LABEL`."""

    provider: str
    account: str                                  # label: a variable name, never a key
    variables: Mapping[str, str] = field(default_factory=dict)  # documented -> this account's
    documented: bool = True                       # the provider's own variables

    @property
    def key(self) -> str:
        return self.provider if self.documented else f"{self.provider}:{self.account}"

    def environ(self, environ: Mapping[str, str]) -> dict[str, str]:
        """`environ` as this account's adapter must see it: its variables under the
        documented names (an unset one is left out, so the adapter names it missing).
        `ValueError` for a variable that is not the provider's own (`flows.spec.credentials`):
        validation refuses such a spec, and a spec built in code must not send one either."""
        if not self.variables:
            return dict(environ)
        documented = provider_variables(registry.capabilities(self.provider))
        foreign = [own for own in self.variables.values() if owner(documented, own) is None]
        if foreign:
            raise ValueError(f"{self.provider}: account {self.account}: "
                             f"{', '.join(foreign)}: not {self.provider}'s own credential "
                             f"variable(s) ({allowed(documented)})")
        renamed = {documented: environ.get(own) for documented, own in self.variables.items()}
        base = {k: v for k, v in environ.items() if k not in renamed}
        return {**base, **{k: v for k, v in renamed.items() if v}}

    def missing(self, environ: Mapping[str, str]) -> list[str]:
        """This account's variables that `environ` lacks (only renamed ones are checked
        here; the adapter reports its documented ones itself)."""
        return [own for own in self.variables.values() if not environ.get(own)]


def missing_credentials(
    used: Sequence[Channel], environ: Mapping[str, str]
) -> dict[str, list[str]]:
    """Variable -> the providers whose channels need it and find it unset in `environ`:
    each account's required variables under its own names; the provider's own account may
    use a documented alternative (`Capabilities.env_alternatives`). Each variable once."""
    missing: dict[str, list[str]] = {}
    for channel in used:
        caps = registry.capabilities(channel.provider)
        for documented in caps.env_vars:
            own = channel.variables.get(documented, documented)
            if environ.get(own):
                continue
            stand_ins = caps.env_alternatives.get(documented, ()) if own == documented else ()
            if any(environ.get(other) for other in stand_ins):
                continue
            needing = missing.setdefault(own, [])
            if channel.provider not in needing:
                needing.append(channel.provider)
    return missing


def channels(spec: JobSpec) -> tuple[Channel, ...]:
    """Every channel of `spec`: providers in spec order, each provider's accounts in the
    order listed."""
    found: list[Channel] = []
    for provider in spec.providers:
        listed = spec.accounts.get(provider)
        if not listed:
            found.append(Channel(provider, documented_label(provider)))
            continue
        for account in listed:
            found.append(_channel(provider, account))
    return tuple(found)


def account_from_entry(entry: str | Mapping[str, str], caps: Capabilities | None) -> Account:
    """An `accounts` list item: a variable name (for the provider's first credential
    variable) or a mapping of the provider's variables to this account's."""
    primary = _primary_variable(caps)
    if isinstance(entry, str):
        return Account(entry, {primary: entry} if primary and entry != primary else {})
    variables = {k: v for k, v in entry.items() if k != v}
    label = entry.get(primary, "") if primary else ""
    return Account(label or next(iter(entry.values())), variables)


def documented_label(provider: str) -> str:
    """The label of a provider's documented account: its first credential variable."""
    try:
        caps = registry.capabilities(provider)
    except Exception:  # an unloadable provider: validation reports it
        caps = None
    return _primary_variable(caps) or provider


def split_for_shard(found: Sequence[Channel], shard: Shard) -> tuple[Channel, ...]:
    """The channels shard "i/n" owns when shards split the accounts: every n-th from the
    i-th, so each channel belongs to exactly one shard (the same on every machine)."""
    return shard.every_nth(found)


def shard_owners(spec: JobSpec, count: int) -> Callable[[Cell], Sequence[int]]:
    """When shards split the accounts (`split_for_shard`): the shards owning a channel the
    cell may use (its pinned provider's, else the `provider:` list's), in order."""
    found: dict[str, set[int]] = {}
    for j, channel in enumerate(channels(spec)):
        found.setdefault(channel.provider, set()).add(j % count)
    owners = {name: sorted(shards) for name, shards in found.items()}
    routed = sorted({i for name in spec.routed for i in found.get(name, ())})

    def of(cell: Cell) -> Sequence[int]:
        return owners.get(cell.provider, ()) if cell.provider else routed

    return of


def _channel(provider: str, account: Account) -> Channel:
    documented = not account.variables
    return Channel(provider, account.label, dict(account.variables), documented)


def _primary_variable(caps: Capabilities | None) -> str | None:
    names = provider_variables(caps) if caps is not None else ()
    return names[0] if names else None
