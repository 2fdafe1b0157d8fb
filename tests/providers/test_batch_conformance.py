"""The batch conformance suite (`providers.batch_conformance`) for `gemini-batch` against
the Gemini emulator on the session hub, under each reading of the Batch API the emulator
serves: both spellings of the states (protocols-gemini.md §6: the REST API's
`BATCH_STATE_*`, the SDKs' and docs' `JOB_STATE_*`) and listings paged small or large (§9:
the page size is not documented)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from nbp.providers.base import BatchJob
from nbp.providers.batch_conformance import (
    BATCH_EXPIRY,
    BATCH_LIST_PAGES,
    BATCH_STATES,
    BatchEmulatorControls,
    BatchProviderConformance,
)
from nbp.providers.emulator.core import Readings
from nbp.providers.emulator.gemini import GeminiEmulator
from nbp.providers.emulator.hub import EmulatorHub

# The emulator's switches of the readings: attributes of `GeminiEmulator` (reset per test).
GEMINI_BATCH_READINGS: Readings = {
    BATCH_STATES: {
        "batch-state": {"state_prefix": "BATCH_STATE_"},
        "job-state": {"state_prefix": "JOB_STATE_"},
    },
    BATCH_LIST_PAGES: {
        "pages-of-1": {"max_page_size": 1},
        "pages-of-100": {"max_page_size": 100},
    },
    BATCH_EXPIRY: {  # §6 [C BAT]: no results; or the results of the lines that ran [I]
        "expired-without-results": {"expired_results": "none"},
        "expired-with-partial-results": {"expired_results": "partial"},
    },
}


class TestGeminiBatch(BatchProviderConformance):
    priority_option = "priority"  # options.gemini-batch.priority -> batch.priority

    def batch_readings(self) -> Readings:
        return GEMINI_BATCH_READINGS

    def use_reading(self, emulator: BatchEmulatorControls, switches: Mapping[str, Any]) -> None:
        assert isinstance(emulator, GeminiEmulator)
        for name, value in switches.items():
            if hasattr(emulator, name):
                setattr(emulator, name, value)
            else:
                emulator.configure(**{name: value})  # a switch of `switches()`

    def recorded_priority(self, emulator: BatchEmulatorControls, job: BatchJob) -> int | None:
        assert isinstance(emulator, GeminiEmulator)
        return emulator.batches[job.name.removeprefix("batches/")].priority

    @pytest.fixture
    def provider_name(self) -> str:
        return "gemini-batch"

    @pytest.fixture
    def provider_environ(self, hub: EmulatorHub) -> Mapping[str, str]:
        return hub.environ()

    @pytest.fixture
    def emulator(self, hub: EmulatorHub) -> GeminiEmulator:
        hub.reset()
        found = hub["gemini"]
        assert isinstance(found, GeminiEmulator)
        return found
