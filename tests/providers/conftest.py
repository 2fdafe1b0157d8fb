"""Fixtures shared by the provider tests: one emulator hub for the whole session (the five
emulators behind one loopback port), and the emulator of a test module's `PROVIDER`, reset
before every test that asks for it.

A per-provider test module sets `PROVIDER = "wiro"` (and `LATENCY_S` when its tasks should
take other than `DEFAULT_LATENCY_S`), then asks for `hub`, `emulator` and `env`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

if "nbp.providers.conformance" not in sys.modules:  # plain asserts there, rich reports here
    pytest.register_assert_rewrite("nbp.providers.conformance")
if "nbp.providers.batch_conformance" not in sys.modules:
    pytest.register_assert_rewrite("nbp.providers.batch_conformance")

from nbp.providers.emulator.core import FaultConfig, ProviderEmulator
from nbp.providers.emulator.hub import EmulatorHub, emulator_class

DEFAULT_LATENCY_S = 0.1


@pytest.fixture(scope="session")
def hub() -> Iterator[EmulatorHub]:
    """All five emulators on one real server for the session (each test resets them)."""
    with EmulatorHub.start(latency_s=DEFAULT_LATENCY_S) as running:
        yield running


@pytest.fixture
def emulator(hub: EmulatorHub, request: pytest.FixtureRequest) -> ProviderEmulator:
    """The module's `PROVIDER` emulator: no tasks, no records, no faults, `LATENCY_S`."""
    name: str = request.module.PROVIDER
    hub.reset()
    found = hub[name]
    assert isinstance(found, emulator_class(name))
    found.configure(**vars(FaultConfig(latency_s=getattr(request.module, "LATENCY_S",
                                                         DEFAULT_LATENCY_S))))
    return found


@pytest.fixture
def env(hub: EmulatorHub, emulator: ProviderEmulator) -> dict[str, str]:
    """Environment that points the real adapters at the hub, with credentials it accepts."""
    return hub.environ()
