"""The provider registry: names, lazy imports, no silent overwrite, outside adapters by entry
point (a real dist-info on sys.path, as pip would install it)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nbp.providers import registry
from nbp.providers.base import BatchProvider, Provider, ProviderFacts
from nbp.providers.kie import KieProvider


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
        "from nbp.providers.kie import KieProvider\n"
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
        facts = registry.facts("acme")  # an outside adapter's facts come from its class
        assert facts.name == "acme" and facts.base_url_variable == "NBP_ACME_BASE_URL"
        assert registry.capabilities("acme") is KieProvider.capabilities
    finally:
        sys.modules.pop("acme_nbp", None)
        registry._registry.pop("acme", None)


ROOT = Path(__file__).resolve().parents[2]


def test_facts_of_every_built_in_provider_load_without_its_adapter() -> None:
    probe = (
        "import json, sys\n"
        "from nbp.providers import registry\n"
        "answers = {name: [registry.capabilities(name).max_references,\n"
        "                  *registry.facts(name).url_variables]\n"
        "           for name in registry.known_facts}\n"
        "adapters = [t.partition(':')[0] for t in registry.known_implementations.values()]\n"
        "loaded = [m for m in ('httpx', 'nbp.providers.adapter', *adapters) if m in sys.modules]\n"
        "print(json.dumps({'answers': answers, 'loaded': loaded}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    found = json.loads(out)
    assert found["loaded"] == []
    assert found["answers"]["kie"] == [8, "NBP_KIE_BASE_URL", "NBP_KIE_UPLOAD_BASE_URL"]
    assert found["answers"]["gemini-batch"] == [14, "NBP_GEMINI_BASE_URL"]
    assert set(found["answers"]) == set(registry.known_implementations)


@pytest.mark.parametrize("name", sorted(registry.known_implementations))
def test_an_adapter_class_says_what_its_facts_say(name: str) -> None:
    facts = registry.facts(name)
    cls = registry.get_class(name)
    assert ProviderFacts.of(cls) == facts
    assert cls.capabilities is facts.capabilities and cls.name == facts.name == name
    assert registry.facts(name) is facts  # the built-in facts, also once the class is loaded


def test_a_class_registered_under_a_built_in_name_answers_for_it() -> None:
    class Narrow(KieProvider):
        capabilities = dataclasses.replace(KieProvider.capabilities, max_references=1)

    registry.register("kie", Narrow, clobber=True)
    try:
        assert registry.capabilities("kie").max_references == 1
    finally:
        registry.register("kie", KieProvider, clobber=True)
    assert registry.capabilities("kie").max_references == 8


# The README's provider table, by column (its header names them for people).
README_COLUMNS = ("wiro", "hiapi", "runware", "kie", "apikley", "gemini", "gemini-batch")


def readme_row(label: str) -> dict[str, str]:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith(f"| {label} |"))
    cells = [cell.strip() for cell in line.strip("|").split("|")][1:]
    return dict(zip(README_COLUMNS, cells, strict=True))


def test_the_readme_says_where_the_seed_goes_and_who_reports_task_times() -> None:
    """One place holds each fact (`Capabilities.seed`, `task_times`, from the provider's
    documentation); the README's table says the same."""
    seeds, times = readme_row("seed (`seed_sent`)"), readme_row(
        "task times (`queue_s`, `generation_s`)")
    for name in README_COLUMNS:
        caps = registry.capabilities(name)
        assert seeds[name].startswith(("sent", "as Gemini")) == caps.seed, name
        assert (not times[name].startswith("—")) == caps.task_times, name
    assert {n for n in README_COLUMNS if registry.capabilities(n).seed} == {
        "runware", "gemini", "gemini-batch"}
