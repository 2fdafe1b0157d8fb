"""The shared conformance suite (`providers.conformance`) for the built-in adapters, each
against its emulator on the session hub, under every reading of protocols.md §11 the emulator
serves. What only one provider has lives in its own file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import pytest

from nbp.providers.conformance import ProviderConformance
from nbp.providers.emulator.core import ProviderEmulator, Readings
from nbp.providers.emulator.hub import EmulatorHub, emulator_class


class _BuiltIn(ProviderConformance):
    provider: ClassVar[str]

    def emulator_readings(self) -> Readings:
        return emulator_class(self.provider).READINGS

    @pytest.fixture
    def provider_name(self) -> str:
        return self.provider

    @pytest.fixture
    def provider_environ(self, hub: EmulatorHub) -> Mapping[str, str]:
        return hub.environ()

    @pytest.fixture
    def emulator(self, hub: EmulatorHub) -> ProviderEmulator:
        hub.reset()
        return hub[self.provider]


class TestWiro(_BuiltIn):
    provider = "wiro"


class TestHiapi(_BuiltIn):
    provider = "hiapi"


class TestRunware(_BuiltIn):
    provider = "runware"


class TestKie(_BuiltIn):
    provider = "kie"


class TestApikley(_BuiltIn):
    provider = "apikley"


class TestGemini(_BuiltIn):
    provider = "gemini"
