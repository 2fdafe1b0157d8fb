"""The provider registry: names, lazy imports, no silent overwrite, outside adapters by entry
point (a real dist-info on sys.path, as pip would install it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from providers import registry
from providers.base import BatchProvider, Provider
from providers.kie import KieProvider


def test_the_five_providers_are_known_and_implement_the_contract() -> None:
    assert {"wiro", "hiapi", "runware", "kie", "apikley"} <= set(registry.available())
    for name in ("wiro", "hiapi", "runware", "kie", "apikley"):
        cls = registry.get_class(name)
        assert cls.name == name
        provider = registry.create(name, cls.settings_from_env({}))
        assert isinstance(provider, Provider)


def test_gemini_is_a_provider_and_gemini_batch_a_batch_provider() -> None:
    gemini = registry.create("gemini", environ={})
    batch = registry.create("gemini-batch", environ={})
    assert isinstance(gemini, Provider) and not isinstance(gemini, BatchProvider)
    assert isinstance(batch, BatchProvider)
    limits = registry.capabilities("gemini-batch").batch
    assert limits is not None and limits.turnaround_s == 24 * 3600
    assert registry.capabilities("gemini").batch is None


def test_unknown_provider_names_the_known_ones() -> None:
    with pytest.raises(registry.UnknownProvider) as caught:
        registry.get_class("dalle")
    assert "dalle" in str(caught.value) and "kie" in str(caught.value)


def test_register_refuses_to_overwrite_silently() -> None:
    class Other(KieProvider):
        pass

    with pytest.raises(ValueError, match="already registered"):
        registry.register("kie", Other)
    try:
        registry.register("kie-copy", Other)
        assert registry.get_class("kie-copy") is Other
    finally:
        registry._registry.pop("kie-copy", None)  # other tests list the known providers


def test_outside_adapters_come_from_the_entry_point_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "acme_nbp.py"
    package.write_text(
        "from providers.kie import KieProvider\n"
        "class AcmeProvider(KieProvider):\n"
        "    name = 'acme'\n"
    )
    dist = tmp_path / "acme_nbp-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-nbp\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{registry.ENTRY_POINT_GROUP}]\nacme = acme_nbp:AcmeProvider\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert "acme" in registry.available()
        assert registry.get_class("acme").__name__ == "AcmeProvider"
    finally:
        sys.modules.pop("acme_nbp", None)
        registry._registry.pop("acme", None)
