"""Adapters by name, fsspec style: a table of dotted paths imported on first use, plus the
`nbp.providers` entry-point group for adapters that live outside this package.

A provider's facts (`ProviderFacts`: capabilities, prices, model, URLs, variables) are
answered without its adapter: a built-in provider's come from `providers/<name>_facts.py`,
which imports no HTTP client, so validating and planning a spec never load httpx. The adapter
class is imported only to make a client (`create`, `get_class`). An adapter registered by
hand or through the entry-point group has its facts read from its class.

    from nbp.providers import registry
    registry.capabilities("kie").max_references   # imports providers.kie_facts only
    registry.facts("kie").base_url_variable       # "NBP_KIE_BASE_URL"
    cls = registry.get_class("kie")               # imports providers.kie on first use
    provider = registry.create("kie")             # settings from the environment
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from nbp.providers.base import Capabilities, Provider, ProviderFacts, ProviderSettings

ENTRY_POINT_GROUP = "nbp.providers"

known_implementations: dict[str, str] = {
    "wiro": "nbp.providers.wiro:WiroProvider",
    "hiapi": "nbp.providers.hiapi:HiapiProvider",
    "runware": "nbp.providers.runware:RunwareProvider",
    "kie": "nbp.providers.kie:KieProvider",
    "apikley": "nbp.providers.apikley:ApikleyProvider",
    "gemini": "nbp.providers.gemini:GeminiProvider",
    # A `providers.base.BatchProvider`, not a `Provider`: no submit/poll (the engine runs
    # its cells as batches). Its `capabilities` serve validation and planning as any other's.
    "gemini-batch": "nbp.providers.gemini_batch:GeminiBatchProvider",
}

# The built-in providers' facts, by the same names: modules that import no HTTP client.
known_facts: dict[str, str] = {
    "wiro": "nbp.providers.wiro_facts:FACTS",
    "hiapi": "nbp.providers.hiapi_facts:FACTS",
    "runware": "nbp.providers.runware_facts:FACTS",
    "kie": "nbp.providers.kie_facts:FACTS",
    "apikley": "nbp.providers.apikley_facts:FACTS",
    "gemini": "nbp.providers.gemini_facts:FACTS",
    "gemini-batch": "nbp.providers.gemini_batch_facts:FACTS",
}

_registry: dict[str, type[Any]] = {}


class UnknownProvider(KeyError):
    """No adapter is registered under this name."""

    def __str__(self) -> str:
        return f"unknown provider {self.args[0]!r}; known: {', '.join(available())}"


def register(name: str, cls: type[Any], *, clobber: bool = False) -> None:
    """Register an adapter class; refuses to replace an existing one unless `clobber`."""
    taken = name in _registry or name in known_implementations  # loaded or not yet
    if not clobber and taken and get_class(name) is not cls:
        raise ValueError(f"provider {name!r} is already registered; pass clobber=True")
    _registry[name] = cls


def available() -> list[str]:
    """Every name `get_class` can resolve, built-in and from entry points."""
    names = set(known_implementations) | set(_registry)
    names |= {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(names)


def get_class(name: str) -> type[Any]:
    """The adapter class for `name`, importing it on first use."""
    if name in _registry:
        return _registry[name]
    target = known_implementations.get(name)
    if target is None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == name:
                target = ep.value
                break
    if target is None:
        raise UnknownProvider(name)
    cls: type[Any] = _load(target)
    _registry[name] = cls
    return cls


def facts(name: str) -> ProviderFacts:
    """A provider's documented facts, without building a client: a built-in provider's
    without importing its adapter (nor httpx); an adapter registered by hand or through the
    entry-point group answers from its class."""
    cls = _registry.get(name)
    target = known_facts.get(name)
    if target is None or (cls is not None and _path(cls) != known_implementations.get(name)):
        return ProviderFacts.of(get_class(name))
    found: ProviderFacts = _load(target)
    return found


def capabilities(name: str) -> Capabilities:
    """A provider's documented limits, without building a client."""
    return facts(name).capabilities


def create(
    name: str,
    settings: ProviderSettings | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Provider:
    """Build an adapter; settings default to the documented base URL and env credentials."""
    cls = get_class(name)
    if settings is None:
        settings = cls.settings_from_env(environ)
    provider: Provider = cls(settings)
    return provider


def _load(target: str) -> Any:
    """The object a `module:attribute` path names, importing the module."""
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _path(cls: type[Any]) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"
