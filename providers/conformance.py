"""The provider conformance suite: one set of tests every adapter passes against its emulator
over real HTTP (fsspec's `tests/abstract` pattern). Import it from a test module only: it is
the one module of `providers` that imports pytest, a development dependency.

An adapter opts in with a subclass named `Test...` that supplies three fixtures:

    class TestToyConformance(ProviderConformance):
        @pytest.fixture
        def provider_name(self) -> str:
            return "toy"                          # resolvable by `providers.registry`

        @pytest.fixture
        def provider_environ(self, toy_hub) -> Mapping[str, str]:
            return {**toy_hub.environ(), "TOY_API_KEY": "toy-key"}  # base URL + credentials

        @pytest.fixture
        def emulator(self, toy_hub) -> EmulatorControls:
            toy_hub.reset()                       # a fresh emulator for every test
            return toy_hub["toy"]

The adapter is built through the registry (`registry.create(name, environ=...)`), so an
outside adapter is reached through its `nbp.providers` entry point, exactly as `nbp run` does.
An emulator built on `providers.emulator.core.ProviderEmulator` has every control the suite
needs (`EmulatorControls`) and honours the prompt markers (`fail_marker`, ...); a subclass may
change the class attributes below when its emulator differs. Its create handler calls
`created_fault()` once the task exists, and its status handler `status_fault()` first; the
hub applies download faults and image markers by itself.

Where a provider's documentation allows more than one reading (protocols.md §11), the
behaviours that depend on it run once per reading its emulator serves: `emulator_readings`
returns the emulator's `READINGS` (point -> reading id -> switch values for `configure`), and
each behaviour marked `@under_readings(point)` is parametrised by them (a test id such as
`[code-400]`; `[documented]` where the emulator serves one reading only). A subclass whose
emulator serves readings overrides `emulator_readings`. Three points go beyond §11, named
where Google's emulator serves them (`providers.emulator.gemini`): `RETIRED_MODEL` (model ids
the provider no longer serves), `SERVICE_TIER` (how a price-changing option is served: as
asked, downgraded, shed, refused) and `BARE_503` (a made image whose answer is lost as an
empty 503); an emulator that serves none of them skips those behaviours.

Credentials are checked against a pair of loopback servers (`RedirectPair`): the first
redirects everything to the second, which records what it received.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import io
import logging
import os
import struct
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Protocol, TypeVar

import pytest
from PIL import Image

from nbp.providers import registry
from nbp.providers.base import (
    Finished,
    ImageRequest,
    Pending,
    Provider,
    Reference,
    ResultImage,
    Submitted,
    sent_seed,
)
from nbp.providers.emulator.core import (
    BOMB_MARKER,
    BOMB_SIZE,
    CANCEL,
    CONTENT_MARKER,
    DEFAULT_OVERSIZE_BYTES,
    FAIL_MARKER,
    NO_IMAGE_MARKER,
    OVERLOAD,
    OVERSIZE_MARKER,
    POLL_FAILURE,
    RESENT_CREATE,
    TASK_TIMES,
    UNKNOWN_TASK,
    WRONG_SIZE_MARKER,
    Readings,
)
from nbp.providers.emulator.gemini import BARE_503, RETIRED_MODEL, SERVICE_TIER
from nbp.providers.errors import (
    AuthError,
    ContentRejected,
    LimitExceeded,
    ModelNotFound,
    ProviderError,
    RateLimited,
    Rejected,
    RequestNotSent,
    ResultMismatch,
    SubmitUncertain,
    TaskFailed,
    TaskNotFound,
    TransientError,
)
from nbp.providers.http import CREDENTIAL_HEADERS, TOO_LARGE
from nbp.providers.model import PILLOW_FORMAT, pixel_size

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
QUICK_LATENCY_S = 0.05  # for tests that never need to see a task pending
DOCUMENTED = "documented"  # the reading id of an emulator that serves only one
_READING_POINT = "_nbp_reading_point"


def under_readings(point: str) -> Callable[[F], F]:
    """Mark a behaviour that takes a `reading` (switch values) to run once per reading the
    emulator serves at `point` of protocols.md §11 (`providers.emulator.core.READING_POINTS`)."""

    def mark(function: F) -> F:
        setattr(function, _READING_POINT, point)
        return function

    return mark


class CreatedTask(Protocol):
    """One create the emulator accepted; `body` as it received it (parsed JSON, form fields)."""

    @property
    def task_id(self) -> str: ...
    @property
    def prompt(self) -> str: ...
    @property
    def body(self) -> Any: ...


class EmulatedTask(Protocol):
    """A remote task as the emulator received it (`references`: as delivered, e.g. the URL
    of an upload) and whether it was cancelled."""

    @property
    def prompt(self) -> str: ...
    @property
    def aspect_ratio(self) -> str: ...
    @property
    def resolution(self) -> str: ...
    @property
    def output_format(self) -> str: ...
    @property
    def references(self) -> Sequence[str]: ...
    @property
    def cancelled_at(self) -> float | None: ...


class EmulatorControls(Protocol):
    """What the suite reads and turns on an emulator (`ProviderEmulator` has all of it).

    `configure` takes `FaultConfig` knobs: latency_s, queue_s (of it, waiting), fail_prob,
    rate_limit (N, window_s), max_concurrency, submit_5xx_prob, create_5xx_after_create_prob,
    poll_5xx_prob,
    poll_outage_s, poll_403_count, drop_after_create_prob, truncate_download_prob,
    download_fail_count, download_outage_s, download_chunked, oversize_bytes; and the
    switches of the emulator's readings (`emulator_readings`). `requests` logs every request
    the emulator received, one entry each. Task ids are the ones the adapter reports in
    `Submitted.task_id`.
    """

    @property
    def creates(self) -> Sequence[CreatedTask]: ...
    @property
    def tasks(self) -> Mapping[str, EmulatedTask]: ...
    @property
    def requests(self) -> Sequence[object]: ...
    def configure(self, **changes: Any) -> None: ...


class ProviderConformance:
    """The behaviours every adapter shares, run against its emulator. Fixtures to supply:
    `provider_name`, `provider_environ`, `emulator` (see the module docstring)."""

    latency_s: ClassVar[float] = 0.3  # long enough to see a task pending, short for the suite
    fail_marker: ClassVar[str] = FAIL_MARKER        # prompt text: the task fails
    content_marker: ClassVar[str] = CONTENT_MARKER  # ... fails as a content rejection
    no_image_marker: ClassVar[str] = NO_IMAGE_MARKER  # ... "succeeds" without an image
    bomb_marker: ClassVar[str] = BOMB_MARKER          # ... delivers a decompression bomb
    oversize_marker: ClassVar[str] = OVERSIZE_MARKER  # ... delivers more than the byte cap
    wrong_size_marker: ClassVar[str] = WRONG_SIZE_MARKER  # ... delivers another pixel size
    remote_reference: ClassVar[str] = "https://example.com/nbp-conformance/reference.png"

    def emulator_readings(self) -> Readings:
        """The readings the emulator serves, per point of protocols.md §11 (an emulator
        built on `ProviderEmulator`: its `READINGS`); none by default."""
        return {}

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Parametrise each `@under_readings` behaviour by the emulator's readings."""
        point = getattr(metafunc.function, _READING_POINT, None)
        if point is None or "reading" not in metafunc.fixturenames:
            return
        readings = self.emulator_readings().get(point) or {DOCUMENTED: {}}
        metafunc.parametrize("reading", [
            pytest.param(dict(switches), id=reading) for reading, switches in readings.items()
        ])

    @pytest.fixture(autouse=True)
    def _fault_free(self, emulator: EmulatorControls) -> None:
        emulator.configure(
            latency_s=self.latency_s, rate_limit=None, submit_5xx_prob=0.0, poll_5xx_prob=0.0,
            drop_after_create_prob=0.0, fail_prob=0.0, max_concurrency=None,
            create_5xx_after_create_prob=0.0, poll_outage_s=0.0, poll_403_count=0,
            truncate_download_prob=0.0, download_fail_count=0, download_outage_s=0.0,
            download_chunked=False, oversize_bytes=DEFAULT_OVERSIZE_BYTES, queue_s=None,
        )

    # -- auth and settings --------------------------------------------------------------

    def test_wrong_key_is_an_auth_error_and_creates_nothing(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        key_var = registry.capabilities(provider_name).env_vars[0]
        provider = _make(provider_name, {**provider_environ, key_var: "not-the-key"})

        async def go() -> None:
            try:
                with pytest.raises(AuthError) as caught:
                    await provider.submit(self.request_for(provider_name))
                assert "not-the-key" not in str(caught.value)
            finally:
                await provider.aclose()

        _run(go)
        assert list(emulator.creates) == []

    def test_missing_key_is_an_auth_error(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        caps = registry.capabilities(provider_name)
        names = {*caps.env_vars, *caps.optional_env_vars}
        provider = _make(provider_name, {k: v for k, v in provider_environ.items()
                                         if k not in names})

        async def go() -> None:
            try:
                with pytest.raises(AuthError):
                    await provider.submit(self.request_for(provider_name))
            finally:
                await provider.aclose()

        _run(go)
        assert list(emulator.creates) == []

    def test_base_url_comes_from_the_environment(self, provider_name: str) -> None:
        cls = registry.get_class(provider_name)
        override = "http://127.0.0.1:9/x"
        variable = f"NBP_{provider_name.upper()}_BASE_URL"
        assert cls.settings_from_env({variable: override}).base_url == override
        documented = cls.settings_from_env({}).base_url
        assert documented != override and documented.startswith("https://")
        if hasattr(cls, "default_base_url"):
            assert documented == cls.default_base_url

    # -- a task from create to image ----------------------------------------------------

    @pytest.mark.parametrize(
        ("ratio", "resolution"), [("16:9", "1K"), ("3:4", "2K"), ("21:9", "1K")]
    )
    def test_fields_reach_the_provider_and_the_image_is_what_was_asked(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls, ratio: str, resolution: str,
    ) -> None:
        caps = registry.capabilities(provider_name)
        if ratio not in caps.aspect_ratios or resolution not in caps.resolutions:
            pytest.skip(f"{provider_name} does not document {ratio} at {resolution}")
        for output_format in caps.output_formats:
            request = self.request_for(
                provider_name, f"fields {ratio} {resolution} {output_format}",
                aspect_ratio=ratio, resolution=resolution, output_format=output_format,
            )
            outcome = self.one_submit(provider_name, provider_environ, request)
            assert isinstance(outcome, tuple), outcome
            submitted, finished, data = outcome
            task = emulator.tasks[submitted.task_id]
            assert (task.prompt, task.aspect_ratio, task.resolution, task.output_format) == (
                request.prompt, ratio, resolution, output_format
            )
            with Image.open(io.BytesIO(data)) as image:
                assert image.format == PILLOW_FORMAT[output_format]
                assert image.size == pixel_size(ratio, resolution)
            assert finished.cost_usd is None or finished.cost_usd >= 0

    def test_the_seed_goes_out_where_the_provider_documents_one(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        """`Capabilities.seed`: the create carries the request's seed, in the field the
        provider documents; where it documents none, nothing named seed goes out at all."""
        caps = registry.capabilities(provider_name)
        emulator.configure(latency_s=QUICK_LATENCY_S)
        request = self.request_for(provider_name, "a seeded lemon", seed=1234567)
        outcome = self.one_submit(provider_name, provider_environ, request)
        assert isinstance(outcome, tuple), outcome
        assert values_named("seed", emulator.creates[-1].body) == (
            [1234567] if caps.seed else [])
        assert sent_seed(caps, request) == (1234567 if caps.seed else None)

    @under_readings(TASK_TIMES)
    def test_a_finished_task_reports_the_providers_own_times(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls, reading: dict[str, Any],
    ) -> None:
        """`Capabilities.task_times`: how long the task waited and ran, as the provider
        reports them (to the resolution of its clock: whole seconds at worst), none of nbp's
        own time; both None where the provider reports none."""
        queue_s = self.latency_s / 3
        emulator.configure(latency_s=self.latency_s, queue_s=queue_s, **reading)
        outcome = self.one_submit(provider_name, provider_environ,
                                  self.request_for(provider_name, "a timed lemon"))
        assert isinstance(outcome, tuple), outcome
        finished = outcome[1]
        if not registry.capabilities(provider_name).task_times:
            assert (finished.queue_s, finished.generation_s) == (None, None)
            return
        assert finished.queue_s is not None and finished.generation_s is not None
        assert abs(finished.queue_s - queue_s) <= 1.0
        assert abs(finished.generation_s - (self.latency_s - queue_s)) <= 1.0
        assert finished.queue_s + finished.generation_s <= self.latency_s + 1.0

    def test_a_task_is_pending_before_it_finishes(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        _skip_if_synchronous(provider_name, "it has no pending state")

        async def go() -> tuple[Any, Any]:
            provider = _make(provider_name, provider_environ)
            try:
                submitted = await provider.submit(
                    self.request_for(provider_name, "pending then finished")
                )
                first = await provider.poll(submitted)
                last = await _until_done(provider, submitted)
                return first, last
            finally:
                await provider.aclose()

        first, last = _run(go)
        assert isinstance(first, Pending) and first.state
        assert isinstance(last, Finished) and len(last.images) == 1

    @pytest.mark.parametrize(
        ("outcome_kind", "error", "not_error", "code"),
        [
            pytest.param("fail", TaskFailed, ContentRejected, None, id="failed"),
            pytest.param("content", ContentRejected, None, None, id="content"),
            pytest.param("no_image", TaskFailed, ContentRejected, "no_image", id="no-image"),
        ],
    )
    @under_readings(POLL_FAILURE)
    def test_failures_arrive_as_the_exception_tree(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls, outcome_kind: str, error: type[Exception],
        not_error: type[Exception] | None, code: str | None, reading: dict[str, Any],
    ) -> None:
        emulator.configure(latency_s=QUICK_LATENCY_S, **reading)
        marker = {"fail": self.fail_marker, "content": self.content_marker,
                  "no_image": self.no_image_marker}[outcome_kind]
        request = self.request_for(provider_name, f"please {marker} now")
        outcome = self.one_submit(provider_name, provider_environ, request)
        assert isinstance(outcome, error), outcome
        if not_error is not None:
            assert not isinstance(outcome, not_error)
        if code is not None:
            assert isinstance(outcome, ProviderError) and outcome.code == code
        assert len(emulator.creates) == 1

    @pytest.mark.parametrize("refused", [False, True], ids=["failed", "refused"])
    @under_readings(POLL_FAILURE)
    def test_a_poll_that_reports_the_task_failed_ends_it_at_once(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls, refused: bool, reading: dict[str, Any],
    ) -> None:
        """Whatever the HTTP status of the answer, the provider's word that the task failed
        (or was refused) is `TaskFailed` (`ContentRejected`) at the first poll after the end:
        never `Rejected` or transient, which a caller would retry for many minutes."""
        emulator.configure(latency_s=QUICK_LATENCY_S, **reading)
        marker = self.content_marker if refused else self.fail_marker
        request = self.request_for(provider_name, f"please {marker} now")

        async def go() -> ProviderError:
            provider = _make(provider_name, provider_environ)
            try:
                submitted = await provider.submit(request)
                await asyncio.sleep(QUICK_LATENCY_S + 0.1)  # over, whatever the phase
                with pytest.raises(ProviderError) as caught:
                    await provider.poll(submitted)
                return caught.value
            finally:
                await provider.aclose()

        error = _run(go)
        assert isinstance(error, TaskFailed), error
        assert isinstance(error, ContentRejected) is refused, error
        assert len(emulator.creates) == 1

    @under_readings(UNKNOWN_TASK)
    def test_an_unknown_task_is_not_found(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls, reading: dict[str, Any],
    ) -> None:
        """A task id the provider does not know (never created, expired, another account's)
        is `TaskNotFound`, however the provider words it."""
        emulator.configure(**reading)

        async def go() -> None:
            provider = _make(provider_name, provider_environ)
            try:
                with pytest.raises(TaskNotFound):
                    await provider.poll(Submitted(provider_name, _RUNWARE_SHAPED_ID))
            finally:
                await provider.aclose()

        _run(go)

    # -- faults and limits --------------------------------------------------------------

    def test_rate_limit_excess_is_rate_limited(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        emulator.configure(rate_limit=(1, 60.0))

        async def go() -> None:
            provider = _make(provider_name, provider_environ)
            try:
                await provider.submit(self.request_for(provider_name, "first"))
                with pytest.raises(RateLimited) as caught:
                    await provider.submit(self.request_for(provider_name, "second"))
                assert caught.value.retry_after is None or caught.value.retry_after >= 0
            finally:
                await provider.aclose()

        _run(go)
        assert len(emulator.creates) == 1

    def test_server_errors_on_submit_are_transient_and_create_nothing(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        emulator.configure(submit_5xx_prob=1.0)
        outcome = self.one_submit(
            provider_name, provider_environ, self.request_for(provider_name)
        )
        assert isinstance(outcome, TransientError) and not isinstance(outcome, RateLimited)
        assert list(emulator.creates) == []

    def test_server_errors_on_poll_are_transient(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        async def go() -> None:
            provider = _make(provider_name, provider_environ)
            try:
                submitted = await provider.submit(self.request_for(provider_name, "poll trouble"))
                emulator.configure(poll_5xx_prob=1.0)
                if submitted.finished is None:
                    with pytest.raises(TransientError):
                        await provider.poll(submitted)
            finally:
                await provider.aclose()

        _run(go)

    @under_readings(RESENT_CREATE)
    def test_a_lost_create_answer_is_uncertain_and_created_once(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls, reading: dict[str, Any],
    ) -> None:
        emulator.configure(drop_after_create_prob=1.0, **reading)
        request = self.request_for(provider_name, "dropped answer")

        async def go() -> Submitted | None:
            provider = _make(provider_name, provider_environ)
            try:
                with pytest.raises(SubmitUncertain):
                    await provider.submit(request)
                emulator.configure(drop_after_create_prob=0.0)
                caps = provider.capabilities
                if caps.recoverable_submit:
                    return await provider.recover(request)
                if caps.idempotent_submit:
                    return await _resubmit(provider, request)
                return None
            finally:
                await provider.aclose()

        found = _run(go)
        assert len(emulator.creates) == 1
        if found is not None:
            assert found.task_id == emulator.creates[0].task_id

    @under_readings(RESENT_CREATE)
    def test_a_resent_create_of_the_same_intent_returns_the_same_task(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls, reading: dict[str, Any],
    ) -> None:
        """Where a create can be sent again (an idempotency key, a client-chosen task id),
        sending the same intent (the same key) again names the task it already created,
        whichever way the provider words it; nothing is created twice."""
        caps = registry.capabilities(provider_name)
        if not (caps.idempotent_submit or caps.recoverable_submit):
            pytest.skip(f"{provider_name} cannot recognise a re-sent create")
        emulator.configure(**reading)
        request = self.request_for(provider_name, "sent twice")

        async def go() -> tuple[Submitted, Submitted, Pending | Finished]:
            provider = _make(provider_name, provider_environ)
            try:
                first = await provider.submit(request)
                again = await _resubmit(provider, request)
                return first, again, await provider.poll(again)
            finally:
                await provider.aclose()

        first, again, outcome = _run(go)
        assert again.task_id == first.task_id
        assert isinstance(outcome, Pending | Finished)
        assert len(emulator.creates) == 1

    def test_two_intents_are_two_tasks(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        """Keys are per create intent: the same request under two keys is two tasks."""
        emulator.configure(latency_s=QUICK_LATENCY_S)
        first = self.request_for(provider_name, "two intents")
        second = dataclasses.replace(first, idempotency_key=str(uuid.uuid4()))

        async def go() -> list[Submitted]:
            provider = _make(provider_name, provider_environ)
            try:
                return [await provider.submit(first), await provider.submit(second)]
            finally:
                await provider.aclose()

        tasks = _run(go)
        assert tasks[0].task_id != tasks[1].task_id
        assert len(emulator.creates) == 2

    @under_readings(OVERLOAD)
    def test_an_overloaded_create_creates_nothing(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls, reading: dict[str, Any],
    ) -> None:
        """An overloaded model refuses the create: `RateLimited` (nothing was created, so
        the caller slows down and sends it again), with the provider's wait when it gave
        one; no image, nothing billed."""
        if not reading:
            pytest.skip(f"{provider_name}'s emulator serves no overload")
        emulator.configure(**reading)
        outcome = self.one_submit(provider_name, provider_environ,
                                  self.request_for(provider_name, "a busy day"))
        assert isinstance(outcome, RateLimited), outcome
        assert outcome.retry_after is None or outcome.retry_after >= 0
        assert list(emulator.creates) == []

    @under_readings(BARE_503)
    def test_a_5xx_without_the_providers_error_body_is_no_overload(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls, reading: dict[str, Any],
    ) -> None:
        """An empty 503 after the image was made says nothing of what was created: a
        transient fault, never `RateLimited` (the engine sends an overload again, so this
        create must stay one that may exist)."""
        if not reading:
            pytest.skip(f"{provider_name}'s emulator serves no bare 503")
        emulator.configure(**reading)
        outcome = self.one_submit(provider_name, provider_environ,
                                  self.request_for(provider_name, "made, answer lost"))
        assert isinstance(outcome, TransientError), outcome
        assert not isinstance(outcome, RateLimited | RequestNotSent)
        assert len(emulator.creates) == 1

    @under_readings(RETIRED_MODEL)
    def test_a_model_id_the_provider_does_not_serve_is_model_not_found(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls, reading: dict[str, Any],
    ) -> None:
        """With one documented model id retired, a request for it is `ModelNotFound` (code
        `model_not_found`) naming it and the ids that remain, and creates nothing; the
        others serve."""
        caps = registry.capabilities(provider_name)
        if not reading or len(caps.models) < 2:
            pytest.skip(f"{provider_name} serves one model or its emulator retires none")
        emulator.configure(latency_s=QUICK_LATENCY_S, **reading)
        outcomes = {model: self.one_submit(provider_name, provider_environ, self.request_for(
            provider_name, f"asking for {model}", options={"model": model}))
            for model in caps.models}
        gone = {m: o for m, o in outcomes.items() if isinstance(o, ModelNotFound)}
        served = [o for o in outcomes.values() if isinstance(o, tuple)]
        assert gone and served and len(gone) + len(served) == len(caps.models), outcomes
        for model, error in gone.items():
            assert (error.model, error.code) == (model, "model_not_found")
            assert error.others and model not in error.others and model in str(error)
        assert len(emulator.creates) == len(served)

    @under_readings(SERVICE_TIER)
    def test_an_option_that_changes_the_price_is_priced_by_the_tier_that_served(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls, reading: dict[str, Any],
    ) -> None:
        """`Capabilities.price_factors`: each value of such an option is sent; the image
        reports the tier that served it (`Finished.service_tier`, one of the option's
        values) and costs the default tier's cost times that tier's factor, whatever was
        asked; a tier shed under load is `RateLimited` and creates nothing."""
        caps = registry.capabilities(provider_name)
        if not caps.price_factors:
            pytest.skip(f"{provider_name} has no option that changes the price")
        emulator.configure(latency_s=QUICK_LATENCY_S, **reading)
        prompt = "a lemon, at some price"
        base = self.one_submit(provider_name, provider_environ,
                               self.request_for(provider_name, prompt))
        assert isinstance(base, tuple), base
        base_cost = base[1].cost_usd
        for option, factors in caps.price_factors.items():
            for value in factors:
                before = len(emulator.creates)
                outcome = self.one_submit(provider_name, provider_environ, self.request_for(
                    provider_name, prompt, options={option: value}))
                if isinstance(outcome, RateLimited):
                    assert len(emulator.creates) == before
                    continue
                assert isinstance(outcome, tuple), (value, outcome)
                served = outcome[1].service_tier
                assert served is not None and served in factors, (value, served)
                cost = outcome[1].cost_usd
                if base_cost is not None and cost is not None:
                    assert cost == pytest.approx(base_cost * factors[served], abs=1e-5)

    def test_limits_are_checked_before_anything_is_sent(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        caps = registry.capabilities(provider_name)
        too_long = "x" * (caps.max_prompt_chars + 1)
        too_many = tuple(
            Reference(f"https://example.com/{i}.png") for i in range(caps.max_references + 1)
        )
        bad = [
            self.request_for(provider_name, too_long),
            self.request_for(provider_name, references=too_many),
            self.request_for(provider_name, resolution="8K"),
            self.request_for(provider_name, options={"no_such_option": 1}),
        ]

        async def go() -> None:
            provider = _make(provider_name, provider_environ)
            try:
                for request in bad:
                    with pytest.raises(LimitExceeded):
                        await provider.submit(request)
            finally:
                await provider.aclose()

        _run(go)
        assert list(emulator.creates) == []
        assert list(emulator.requests) == []

    # -- faults after the create: the task exists, the step fails -----------------------

    @under_readings(RESENT_CREATE)
    def test_a_create_answered_5xx_after_creating_is_transient_and_the_task_runs(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls, reading: dict[str, Any],
    ) -> None:
        emulator.configure(latency_s=QUICK_LATENCY_S, create_5xx_after_create_prob=1.0,
                           **reading)
        request = self.request_for(provider_name, "created then answered 5xx")

        async def go() -> tuple[str, Finished | None, Submitted | None]:
            provider = _make(provider_name, provider_environ)
            try:
                with pytest.raises(TransientError) as caught:
                    await provider.submit(request)
                assert not isinstance(caught.value, RequestNotSent | RateLimited)
                emulator.configure(create_5xx_after_create_prob=0.0)
                [created] = list(emulator.creates)
                if provider.capabilities.synchronous:  # the image went with the lost answer
                    return created.task_id, None, None
                finished = await _until_done(provider, Submitted(provider_name, created.task_id))
                caps = provider.capabilities
                found = None
                if caps.recoverable_submit:
                    found = await provider.recover(request)
                elif caps.idempotent_submit:
                    found = await _resubmit(provider, request)
                return created.task_id, finished, found
            finally:
                await provider.aclose()

        task_id, finished, found = _run(go)
        assert finished is None or len(finished.images) == 1
        assert len(emulator.creates) == 1
        if found is not None:
            assert found.task_id == task_id

    def test_a_poll_outage_is_transient_until_it_ends(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        outage_s = 0.6

        async def go() -> tuple[int, float, Pending | Finished] | None:
            provider = _make(provider_name, provider_environ)
            try:
                submitted = await provider.submit(self.request_for(provider_name, "outage"))
                if submitted.finished is not None:
                    return None  # answered at once: there is nothing to poll
                emulator.configure(poll_outage_s=outage_s)
                began, failures = time.monotonic(), 0
                while True:
                    try:
                        outcome = await provider.poll(submitted)
                    except TransientError as exc:
                        assert not isinstance(exc, RateLimited)
                        failures += 1
                        await asyncio.sleep(0.05)
                        continue
                    return failures, time.monotonic() - began, outcome
            finally:
                await provider.aclose()

        result = _run(go)
        if result is None:
            pytest.skip(f"{provider_name} answered the create with its result")
        failures, elapsed, outcome = result
        assert failures >= 3
        assert elapsed >= outage_s - 0.05
        assert isinstance(outcome, Pending | Finished)

    def test_a_proxy_403_on_a_poll_is_an_auth_error_for_that_poll_only(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        async def go() -> tuple[list[ProviderError], Finished] | None:
            provider = _make(provider_name, provider_environ)
            try:
                submitted = await provider.submit(self.request_for(provider_name, "refused"))
                if submitted.finished is not None:
                    return None
                emulator.configure(poll_403_count=2)
                errors = []
                for _ in range(2):
                    try:
                        await provider.poll(submitted)
                    except ProviderError as exc:
                        errors.append(exc)
                return errors, await _until_done(provider, submitted)
            finally:
                await provider.aclose()

        result = _run(go)
        if result is None:
            pytest.skip(f"{provider_name} answered the create with its result")
        errors, finished = result
        assert [type(e) for e in errors] == [AuthError, AuthError]
        assert len(finished.images) == 1
        assert len(emulator.creates) == 1

    def test_failing_downloads_are_transient_until_they_pass(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        emulator.configure(latency_s=QUICK_LATENCY_S)
        request = self.request_for(provider_name, "download trouble")

        async def go() -> tuple[list[ProviderError], bytes, int, bytes]:
            provider = _make(provider_name, provider_environ)
            try:
                submitted = await provider.submit(request)
                image = (await _until_done(provider, submitted)).images[0]
                if image.url is None:
                    pytest.skip(f"{provider_name} delivers its images inline")
                emulator.configure(download_fail_count=2)
                errors = []
                for _ in range(2):
                    try:
                        await provider.download(image)
                    except ProviderError as exc:
                        errors.append(exc)
                after_count = await provider.download(image)
                emulator.configure(download_outage_s=0.4)
                failures = 0
                while True:
                    try:
                        after_outage = await provider.download(image)
                        break
                    except TransientError:
                        failures += 1
                        await asyncio.sleep(0.05)
                return errors, after_count, failures, after_outage
            finally:
                await provider.aclose()

        errors, after_count, failures, after_outage = _run(go)
        assert [type(e) for e in errors] == [TransientError, TransientError]
        assert failures >= 3
        for data in (after_count, after_outage):
            with Image.open(io.BytesIO(data)) as decoded:
                assert decoded.size == pixel_size(request.aspect_ratio, request.resolution)

    def test_a_truncated_download_is_transient(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        emulator.configure(latency_s=QUICK_LATENCY_S)
        async def go() -> tuple[ProviderError | None, bytes]:
            provider = _make(provider_name, provider_environ)
            try:
                submitted = await provider.submit(self.request_for(provider_name, "cut short"))
                image = (await _until_done(provider, submitted)).images[0]
                if image.url is None:
                    pytest.skip(f"{provider_name} delivers its images inline")
                emulator.configure(truncate_download_prob=1.0)
                error = None
                try:
                    await provider.download(image)
                except ProviderError as exc:
                    error = exc
                emulator.configure(truncate_download_prob=0.0)
                return error, await provider.download(image)
            finally:
                await provider.aclose()

        error, data = _run(go)
        assert isinstance(error, TransientError)
        with Image.open(io.BytesIO(data)) as decoded:
            decoded.load()

    # -- images that are not what was asked ----------------------------------------------

    def test_a_decompression_bomb_arrives_small_and_claims_30000_pixels_square(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        emulator.configure(latency_s=QUICK_LATENCY_S)
        request = self.request_for(provider_name, f"please {self.bomb_marker}")
        outcome = self.one_submit(provider_name, provider_environ, request)
        assert isinstance(outcome, tuple), outcome
        data = outcome[2]
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR"
        assert struct.unpack(">II", data[16:24]) == BOMB_SIZE
        assert len(data) < 200_000  # a 900-megapixel image in ~110 KB
        with pytest.raises(Image.DecompressionBombError):
            Image.open(io.BytesIO(data))

    def test_an_oversize_image_is_refused_by_its_length(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        """The default cap (`MAX_IMAGE_BYTES`) against the default oversize image."""
        emulator.configure(latency_s=QUICK_LATENCY_S)
        request = self.request_for(provider_name, f"please {self.oversize_marker}")
        began = time.monotonic()
        outcome = self.one_submit(provider_name, provider_environ, request)
        assert isinstance(outcome, ResultMismatch) and outcome.code == TOO_LARGE, outcome
        assert time.monotonic() - began < 10  # refused by Content-Length, not read
        assert len(emulator.creates) == 1

    def test_an_oversize_image_without_length_is_cut_at_the_cap(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        cap = 1024 * 1024
        emulator.configure(latency_s=QUICK_LATENCY_S, download_chunked=True,
                           oversize_bytes=3 * cap)
        request = self.request_for(provider_name, f"please {self.oversize_marker}")
        outcome = self.one_submit(provider_name, provider_environ, request,
                                  max_image_bytes=cap)
        assert isinstance(outcome, ResultMismatch) and outcome.code == TOO_LARGE, outcome
        normal = self.one_submit(provider_name, provider_environ,
                                 self.request_for(provider_name, "a chunked image"),
                                 max_image_bytes=cap)
        assert isinstance(normal, tuple), normal  # under the cap, chunked: delivered whole
        with Image.open(io.BytesIO(normal[2])) as decoded:
            decoded.load()

    def test_a_wrong_size_image_decodes_at_another_size(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        emulator.configure(latency_s=QUICK_LATENCY_S)
        request = self.request_for(provider_name, f"please {self.wrong_size_marker}")
        outcome = self.one_submit(provider_name, provider_environ, request)
        assert isinstance(outcome, tuple), outcome
        with Image.open(io.BytesIO(outcome[2])) as image:
            assert image.format == PILLOW_FORMAT[request.output_format]
            assert image.size != pixel_size(request.aspect_ratio, request.resolution)

    # -- credentials stay with the configured hosts ----------------------------------------

    def test_credentials_never_follow_a_redirect_to_another_host(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        caps = registry.capabilities(provider_name)
        secrets = [provider_environ[k] for k in (*caps.env_vars, *caps.optional_env_vars)
                   if provider_environ.get(k)]
        with RedirectPair() as pair:
            environ = {**provider_environ,
                       f"NBP_{provider_name.upper()}_BASE_URL": f"{pair.first.url}/api"}

            async def go() -> tuple[list[ProviderError], bytes]:
                provider = _make(provider_name, environ)
                errors: list[ProviderError] = []
                calls: list[Callable[[], Awaitable[object]]] = [
                    lambda: provider.submit(self.request_for(provider_name, "redirected")),
                    lambda: provider.poll(Submitted(provider_name, _RUNWARE_SHAPED_ID)),
                ]
                if caps.synchronous:  # a poll asks nothing of the provider
                    calls.pop()
                try:
                    for call in calls:
                        try:
                            await call()
                        except ProviderError as exc:
                            errors.append(exc)
                    image = ResultImage(url=f"{pair.first.url}/files/result.png")
                    return errors, await provider.download(image)
                finally:
                    await provider.aclose()

            errors, data = _run(go)
        assert [type(e) for e in errors] == [Rejected] * (1 if caps.synchronous else 2)
        assert all(e.code == "redirect" and not any(s in str(e) for s in secrets)
                   for e in errors)
        # The API calls reached the configured host with their credentials ...
        assert any(_credentials_in(h, secrets) for _, _, h in pair.first.received)
        # ... never the other host: only the (credential-free) image download went there.
        assert [(m, p) for m, p, _ in pair.second.received] == [("GET", "/files/result.png")]
        assert not any(_credentials_in(h, secrets) for _, _, h in pair.second.received)
        assert data == RedirectPair.IMAGE

    # -- references, cancel, secrets ----------------------------------------------------

    def test_reference_images_arrive_as_the_provider_accepts_them(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        caps = registry.capabilities(provider_name)
        photo = io.BytesIO()
        Image.new("RGB", (64, 48), (200, 40, 40)).save(photo, format="PNG")
        local = Reference("specs/data/shoe.png", data=photo.getvalue(), mime_type="image/png")
        remote = Reference(self.remote_reference)
        if caps.reference_delivery == "url_only":
            refused = self.one_submit(provider_name, provider_environ,
                                      self.request_for(provider_name, "with refs",
                                                       references=(local,)))
            assert isinstance(refused, LimitExceeded)
            assert "URL" in str(refused)
            request = self.request_for(provider_name, "url ref only", references=(remote,))
            outcome = self.one_submit(provider_name, provider_environ, request)
            assert isinstance(outcome, tuple), outcome
            assert list(emulator.tasks[outcome[0].task_id].references) == [remote.uri]
            return
        request = self.request_for(provider_name, "with refs", references=(local, remote))
        outcome = self.one_submit(provider_name, provider_environ, request)
        assert isinstance(outcome, tuple), outcome
        received = list(emulator.tasks[outcome[0].task_id].references)
        assert len(received) == 2
        assert received[1] == remote.uri
        assert received[0] != local.uri  # delivered as an upload / inline data, not a path

    def test_after_prepare_the_create_is_one_request(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        """`prepare` does everything a create needs except the create (reference uploads)
        and creates no task; `submit` of the prepared request sends exactly one request."""
        caps = registry.capabilities(provider_name)
        emulator.configure(latency_s=QUICK_LATENCY_S)
        local = Reference("specs/data/large.png", data=_large_png(), mime_type="image/png")
        remote = Reference(self.remote_reference)
        references = (remote,) if caps.reference_delivery == "url_only" else (local, remote)
        request = self.request_for(provider_name, "prepared first", references=references)

        async def go() -> tuple[int, int, Finished]:
            provider = _make(provider_name, provider_environ)
            try:
                prepared = await provider.prepare(request)
                assert list(emulator.creates) == [] and len(emulator.tasks) == 0
                before = len(emulator.requests)
                submitted = await provider.submit(prepared)
                sent = len(emulator.requests) - before
                before = len(emulator.requests)
                await provider.prepare(request)  # uploads are kept per content
                again = len(emulator.requests) - before
                return sent, again, await _until_done(provider, submitted)
            finally:
                await provider.aclose()

        sent, again, finished = _run(go)
        assert (sent, again) == (1, 0)
        assert len(emulator.creates) == 1 and len(finished.images) == 1

    def test_cancel_where_the_api_can(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        caps = registry.capabilities(provider_name)
        # still running when the cancel comes; a synchronous create answers once it is done
        emulator.configure(latency_s=0.2 if caps.synchronous else 5.0)

        async def go() -> tuple[str, bool]:
            provider = _make(provider_name, provider_environ)
            try:
                submitted = await provider.submit(self.request_for(provider_name, "cancel me"))
                return submitted.task_id, await provider.cancel(submitted)
            finally:
                await provider.aclose()

        task_id, confirmed = _run(go)
        assert confirmed is caps.can_cancel
        assert _cancelled(emulator, task_id) is confirmed

    @under_readings(CANCEL)
    def test_a_cancel_is_confirmed_only_by_the_provider(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls, reading: dict[str, Any],
    ) -> None:
        """`cancel` is True exactly when the provider has stopped the task (then a poll
        ends it), False when it refused or has not stopped it yet (then the task runs on
        and the next poll still sees it); never an error for a refusal."""
        caps = registry.capabilities(provider_name)
        emulator.configure(latency_s=0.2 if caps.synchronous else 5.0, **reading)

        async def go() -> tuple[bool, bool, Pending | Finished | ProviderError]:
            provider = _make(provider_name, provider_environ)
            try:
                submitted = await provider.submit(self.request_for(provider_name, "stop it"))
                confirmed = await provider.cancel(submitted)
                stopped = _cancelled(emulator, submitted.task_id)
                try:
                    after: Pending | Finished | ProviderError = await provider.poll(submitted)
                except ProviderError as exc:
                    after = exc
                return confirmed, stopped, after
            finally:
                await provider.aclose()

        confirmed, stopped, after = _run(go)
        assert confirmed is stopped
        assert caps.can_cancel or not confirmed
        if confirmed:
            assert isinstance(after, TaskFailed) and not isinstance(after, ContentRejected)
        else:
            assert isinstance(after, Pending | Finished), after

    def test_a_refused_cancel_returns_false_and_leaves_the_task_as_it_is(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls,
    ) -> None:
        """Every provider refuses to stop a task that has ended: False, no error, and the
        next poll still sees the task (its image)."""
        emulator.configure(latency_s=QUICK_LATENCY_S)

        async def go() -> tuple[bool, Finished]:
            provider = _make(provider_name, provider_environ)
            try:
                submitted = await provider.submit(self.request_for(provider_name, "too late"))
                await _until_done(provider, submitted)
                confirmed = await provider.cancel(submitted)
                return confirmed, await _until_done(provider, submitted)
            finally:
                await provider.aclose()

        confirmed, finished = _run(go)
        assert confirmed is False
        assert len(finished.images) == 1

    def test_secrets_never_appear_in_errors_or_logs(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: EmulatorControls, caplog: pytest.LogCaptureFixture,
    ) -> None:
        caps = registry.capabilities(provider_name)
        secrets = [provider_environ[k] for k in (*caps.env_vars, *caps.optional_env_vars)
                   if provider_environ.get(k)]
        assert secrets, "provider_environ must carry the credentials the emulator accepts"
        caplog.set_level(logging.DEBUG)
        provider = _make(provider_name, provider_environ)
        texts = [repr(provider), repr(getattr(provider, "settings", ""))]
        for marker in (self.fail_marker, self.content_marker):
            request = self.request_for(provider_name, marker)
            texts.append(repr(self.one_submit(provider_name, provider_environ, request)))
        emulator.configure(submit_5xx_prob=1.0)
        request = self.request_for(provider_name)
        texts.append(repr(self.one_submit(provider_name, provider_environ, request)))
        _run(provider.aclose)
        texts.append(caplog.text)
        for secret in secrets:
            assert all(secret not in text for text in texts)

    # -- helpers ------------------------------------------------------------------------

    def request_for(
        self, provider_name: str, prompt: str = "a lemon on a plate", **changes: Any
    ) -> ImageRequest:
        """A request the provider accepts (its last output format), with `changes`."""
        caps = registry.capabilities(provider_name)
        fields: dict[str, Any] = {  # a key per create intent, as the engine sends
            "prompt": prompt, "aspect_ratio": "16:9", "resolution": "1K",
            "output_format": caps.output_formats[-1], "idempotency_key": str(uuid.uuid4()),
        }
        if fields["aspect_ratio"] not in caps.aspect_ratios:
            fields["aspect_ratio"] = caps.aspect_ratios[0]
        fields.update(changes)
        return ImageRequest(**fields)

    def one_submit(
        self, provider_name: str, environ: Mapping[str, str], request: ImageRequest,
        **settings: Any,
    ) -> tuple[Submitted, Finished, bytes] | ProviderError:
        """Submit and follow to the end: (submitted, finished, image bytes) or the error.
        `settings` replace fields of the adapter's `ProviderSettings` (`max_image_bytes`)."""

        async def go() -> tuple[Submitted, Finished, bytes] | ProviderError:
            provider = _make(provider_name, environ, settings=settings)
            try:
                submitted = await provider.submit(request)
                finished = await _until_done(provider, submitted)
                data = await provider.download(finished.images[0]) if finished.images else b""
                return submitted, finished, data
            except ProviderError as exc:
                return exc
            finally:
                await provider.aclose()

        return _run(go)


def _skip_if_synchronous(name: str, why: str) -> None:
    if registry.capabilities(name).synchronous:
        pytest.skip(f"{name} answers the create with its image: {why}")


def _make(
    name: str, environ: Mapping[str, str], *, settings: Mapping[str, Any] | None = None
) -> Provider:
    """An adapter through the registry, from `environ`; `settings` replace fields of the
    `ProviderSettings` built from it."""
    if not settings:
        return registry.create(name, environ=environ)
    built = registry.get_class(name).settings_from_env(environ)
    return registry.create(name, dataclasses.replace(built, **settings))


# A poll id every adapter sends as it is (Runware checks for a UUID v4 before sending).
_RUNWARE_SHAPED_ID = "0b6f8f3e-5c1e-4f7a-9d2b-3c4d5e6f7a8b"
_LARGE_REFERENCE_BYTES = 1_200_000  # above what some providers take inline (Runware: 1 MB)


@functools.lru_cache(maxsize=1)
def _large_png() -> bytes:
    """A PNG of random pixels over `_LARGE_REFERENCE_BYTES` (noise does not compress)."""
    side = int((_LARGE_REFERENCE_BYTES / 3) ** 0.5) + 8
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(
        buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _cancelled(emulator: EmulatorControls, task_id: str) -> bool:
    """Whether the emulator has stopped the task by now (a stop may be set for later)."""
    at = emulator.tasks[task_id].cancelled_at
    return at is not None and at <= time.time()


async def _resubmit(provider: Provider, request: ImageRequest) -> Submitted:
    """Send a create again, waiting out a provider's "the first is still in flight"
    (`RateLimited` with its Retry-After, shortened for tests)."""
    for _ in range(40):
        try:
            return await provider.submit(request)
        except RateLimited as exc:
            await asyncio.sleep(min(exc.retry_after or 0.1, 0.25))
    raise AssertionError("the re-sent create was refused for too long")


def _credentials_in(headers: Mapping[str, str], secrets: Sequence[str]) -> bool:
    """Whether a request's headers carried a credential header or a secret's value."""
    return any(name.lower() in CREDENTIAL_HEADERS for name in headers) or any(
        secret in value for value in headers.values() for secret in secrets
    )


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 that records every request's (method, path,
    headers) and answers with `respond(method, path) -> (status, headers, body)`."""

    def __init__(self, respond: Callable[[str, str], tuple[int, dict[str, str], bytes]]) -> None:
        self.received: list[tuple[str, str, dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                server.received.append((self.command, self.path, dict(self.headers.items())))
                status, headers, body = respond(self.command, self.path)
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class RedirectPair:
    """Two loopback servers on different ports (two origins): `first` answers every request
    with a redirect to the same path on `second` (307 for API calls, 302 for `/files/`),
    `second` answers `IMAGE` to a GET and `{}` otherwise. Both record what they received.

        with RedirectPair() as pair:
            ...  # point an adapter at pair.first.url
        assert pair.second.received == [...]
    """

    IMAGE: ClassVar[bytes] = b"\x89PNG\r\n\x1a\n nbp redirect test"

    def __init__(self) -> None:
        self.second = LoopbackServer(self._second)
        self.first = LoopbackServer(self._first)

    def _first(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        status = 302 if path.startswith("/files/") else 307
        return status, {"Location": f"{self.second.url}{path}"}, b""

    def _second(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        if method == "GET":
            return 200, {"Content-Type": "image/png"}, self.IMAGE
        return 200, {"Content-Type": "application/json"}, b"{}"

    def __enter__(self) -> RedirectPair:
        self.second.start()
        self.first.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.first.stop()
        self.second.stop()


def values_named(name: str, body: Any) -> list[Any]:
    """Every value under a key `name` anywhere in a request body (objects and lists)."""
    found: list[Any] = []
    if isinstance(body, Mapping):
        for key, value in body.items():
            if key == name:
                found.append(value)
            found += values_named(name, value)
    elif isinstance(body, list | tuple):
        for item in body:
            found += values_named(name, item)
    return found


def _run(factory: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await factory()

    return asyncio.run(main())


async def _until_done(provider: Provider, submitted: Submitted) -> Finished:
    if submitted.finished is not None:
        return submitted.finished
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        outcome = await provider.poll(submitted)
        if isinstance(outcome, Finished):
            return outcome
        await asyncio.sleep(0.05)
    raise AssertionError("task did not finish")


__all__ = [
    "CreatedTask", "EmulatedTask", "EmulatorControls", "LoopbackServer", "ProviderConformance",
    "RedirectPair", "values_named",
]
