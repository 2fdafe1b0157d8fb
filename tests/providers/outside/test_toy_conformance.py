"""An outside adapter runs the conformance suite: `toy_nbp` (beside this file) is installed
the way pip would install a third party's package (the package plus a dist-info declaring an
`nbp.providers` entry point, on sys.path), reached only through the registry, checked against
its own emulator on an `EmulatorHub`, and uninstalled afterwards."""

from __future__ import annotations

import importlib
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from nbp.providers import registry
from nbp.providers.conformance import EmulatorControls, ProviderConformance
from nbp.providers.emulator.hub import EmulatorHub

PACKAGE = Path(__file__).resolve().parent / "toy_nbp"


@pytest.fixture(scope="module")
def toy_installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    site = tmp_path_factory.mktemp("site-packages")
    shutil.copytree(PACKAGE, site / "toy_nbp", ignore=shutil.ignore_patterns("__pycache__"))
    dist = site / "toy_nbp-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-nbp\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{registry.ENTRY_POINT_GROUP}]\ntoy = toy_nbp.adapter:ToyProvider\n"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(site))
        try:
            yield
        finally:
            for name in [m for m in sys.modules if m == "toy_nbp" or m.startswith("toy_nbp.")]:
                del sys.modules[name]
            registry._registry.pop("toy", None)  # other tests list the known providers
    assert "toy" not in registry.available()  # uninstalled: nothing left behind


@pytest.fixture(scope="module")
def toy_hub(toy_installed: None) -> Iterator[EmulatorHub]:
    emulator = importlib.import_module("toy_nbp.emulator").ToyEmulator()
    with EmulatorHub.start([], emulators=[emulator]) as hub:
        yield hub


def test_the_toy_comes_from_its_entry_point(toy_installed: None) -> None:
    assert "toy" in registry.available() and "toy" not in registry.known_implementations
    assert registry.get_class("toy").__module__ == "toy_nbp.adapter"


class TestToyConformance(ProviderConformance):
    @pytest.fixture
    def provider_name(self) -> str:
        return "toy"

    @pytest.fixture
    def provider_environ(self, toy_hub: EmulatorHub) -> Mapping[str, str]:
        return {**toy_hub.environ(), "TOY_API_KEY": toy_hub["toy"].api_key}

    @pytest.fixture
    def emulator(self, toy_hub: EmulatorHub) -> EmulatorControls:
        toy_hub.reset()
        return toy_hub["toy"]
