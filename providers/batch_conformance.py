"""The batch provider conformance suite: one set of tests every `BatchProvider` passes
against its emulator over real HTTP, as `providers.conformance` is for providers of one task
per request. Import it from a test module only (it imports pytest).

An adapter opts in with a subclass named `Test...` that supplies three fixtures:

    class TestToyBatchConformance(BatchProviderConformance):
        @pytest.fixture
        def provider_name(self) -> str:
            return "toy-batch"                    # resolvable by `providers.registry`

        @pytest.fixture
        def provider_environ(self, toy_hub) -> Mapping[str, str]:
            return toy_hub.environ()              # base URL + credentials it accepts

        @pytest.fixture
        def emulator(self, toy_hub) -> BatchEmulatorControls:
            toy_hub.reset()                       # a fresh emulator for every test
            return toy_hub["toy"]

What the engine relies on, each a behaviour below: a batch is created once with every
request and named; found again by its display name after its create's answer was lost (and
not found when nothing was created); followed from pending to its end in the provider's own
states mapped to `BatchState`; its results streamed one per request, in request order, each
an image of the size asked or that request's own refusal; cancelled only when the provider
confirms it; limits checked and credentials refused before anything is created. Lifetimes:
a batch that expires says so and holds results only for requests that ran; results the
provider no longer serves are `ResultsExpired`; a batch counts its failed requests
(`BatchJob.failed_requests`) as its results' error lines (`BatchResult.failed`); a priority
option goes with the batch.

Where the provider's documentation allows more than one reading of the batch API, the
behaviours that depend on it run once per reading the emulator serves: `batch_readings`
returns {point: {reading id: switch values}} for the points `BATCH_STATES` (how states are
spelt), `BATCH_LIST_PAGES` (how listings are paged) and `BATCH_EXPIRY` (what an expired
batch holds), and `use_reading` applies one (default: `emulator.configure(**switches)`).
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar, Protocol, TypeVar

import pytest
from PIL import Image

from nbp.providers import registry
from nbp.providers.base import (
    BATCH_DONE,
    BatchJob,
    BatchProvider,
    BatchResult,
    ImageRequest,
    Reference,
)
from nbp.providers.conformance import DOCUMENTED, CreatedTask, under_readings
from nbp.providers.emulator.core import CONTENT_MARKER, FAIL_MARKER, Readings
from nbp.providers.errors import (
    AuthError,
    ContentRejected,
    LimitExceeded,
    ResultsExpired,
    SubmitUncertain,
    TaskFailed,
    TaskNotFound,
)
from nbp.providers.model import pixel_size

T = TypeVar("T")
BATCH_STATES = "batch_states"          # how the provider spells a batch's states
BATCH_LIST_PAGES = "batch_list_pages"  # how many batches a page of its listing holds
BATCH_EXPIRY = "batch_expiry"          # what an expired batch holds: no results, or some
_READING_POINT = "_nbp_reading_point"  # as `providers.conformance.under_readings` marks
FINISH_WITHIN_S = 15.0


class BatchEmulatorControls(Protocol):
    """What the suite reads and turns on a batch provider's emulator (`ProviderEmulator`
    has all of it): one `creates` record per batch created (`task_id`: the batch's name),
    `requests` one entry per request received, `configure` the `FaultConfig` knobs
    latency_s (a batch's turnaround), fail_prob (a whole batch fails), submit_5xx_prob (the
    create refused, nothing made), drop_after_create_prob and create_5xx_after_create_prob
    (the batch made, its answer lost); and the lifetime switches expire_after_s (a batch
    whose turnaround is longer expires then) and results_gone (results files are no longer
    served)."""

    @property
    def creates(self) -> Sequence[CreatedTask]: ...
    @property
    def requests(self) -> Sequence[object]: ...
    def configure(self, **changes: Any) -> None: ...


class BatchProviderConformance:
    """The behaviours every batch provider shares, run against its emulator. Fixtures to
    supply: `provider_name`, `provider_environ`, `emulator` (see the module docstring)."""

    latency_s: ClassVar[float] = 0.4     # long enough to see a batch pending
    fail_marker: ClassVar[str] = FAIL_MARKER        # prompt text: that request fails
    content_marker: ClassVar[str] = CONTENT_MARKER  # ... is refused for its content
    unknown_batch: ClassVar[str] = "batches/nbp-conformance-unknown"
    priority_option: ClassVar[str | None] = None  # the option that sets a batch's priority

    def recorded_priority(self, emulator: BatchEmulatorControls, job: BatchJob) -> int | None:
        """The priority the emulator received for `job` (with `priority_option`)."""
        raise NotImplementedError

    def batch_readings(self) -> Readings:
        """The readings the emulator serves, per point (`BATCH_STATES`,
        `BATCH_LIST_PAGES`); none by default."""
        return {}

    def use_reading(self, emulator: BatchEmulatorControls, switches: Mapping[str, Any]) -> None:
        """Turn the emulator to one reading."""
        emulator.configure(**switches)

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Parametrise each `@under_readings` behaviour by the emulator's batch readings."""
        point = getattr(metafunc.function, _READING_POINT, None)
        if point is None or "reading" not in metafunc.fixturenames:
            return
        readings = self.batch_readings().get(point) or {DOCUMENTED: {}}
        metafunc.parametrize("reading", [
            pytest.param(dict(switches), id=reading) for reading, switches in readings.items()
        ])

    @pytest.fixture(autouse=True)
    def _fault_free(self, emulator: BatchEmulatorControls) -> None:
        emulator.configure(
            latency_s=self.latency_s, fail_prob=0.0, submit_5xx_prob=0.0, poll_5xx_prob=0.0,
            drop_after_create_prob=0.0, create_5xx_after_create_prob=0.0, rate_limit=None,
        )

    # -- what the provider declares ----------------------------------------------------------

    def test_capabilities_declare_the_batch_limits(self, provider_name: str) -> None:
        caps = registry.capabilities(provider_name)
        limits = caps.batch
        assert limits is not None, "a batch provider declares `Capabilities.batch`"
        assert limits.max_requests >= 1 and limits.turnaround_s > 0
        assert set(caps.resolutions) <= set(limits.expected_result_bytes)
        assert all(limits.result_bytes(r) <= limits.max_result_bytes for r in caps.resolutions)
        assert limits.max_input_bytes > 0

    # -- create and find ---------------------------------------------------------------------

    @under_readings(BATCH_LIST_PAGES)
    def test_a_batch_is_created_once_and_found_by_its_display_name(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: BatchEmulatorControls, reading: dict[str, Any],
    ) -> None:
        self.use_reading(emulator, reading)
        name = _display_name("found")
        requests = self.requests_for(provider_name, ["a lemon", "a lime"])

        async def go(provider: BatchProvider) -> tuple[BatchJob, BatchJob | None, Any]:
            others = [await provider.create_batch(_display_name("other"), requests[:1])
                      for _ in range(3)]  # more than one page of some listings
            job = await provider.create_batch(name, requests)
            assert job.name not in {o.name for o in others}
            return job, await provider.find_batch(name), await provider.find_batch("nbp-none")

        job, found, missing = _run(provider_name, provider_environ, go)
        assert job.display_name == name and job.state in ("pending", "running")
        assert found is not None and found.name == job.name
        assert missing is None
        assert [c.task_id for c in emulator.creates][-1] == job.name
        assert len(emulator.creates) == 4

    @pytest.mark.parametrize("fault", [
        pytest.param("drop_after_create_prob", id="dropped"),
        pytest.param("create_5xx_after_create_prob", id="5xx-after-create"),
    ])
    @under_readings(BATCH_LIST_PAGES)
    def test_a_lost_create_answer_is_uncertain_and_the_batch_found_by_its_name(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: BatchEmulatorControls, fault: str, reading: dict[str, Any],
    ) -> None:
        """Creating is not idempotent: after a lost answer the batch is found by listing,
        never by creating again."""
        self.use_reading(emulator, reading)
        name = _display_name("lost")

        async def go(provider: BatchProvider) -> BatchJob | None:
            for i in range(3):
                await provider.create_batch(_display_name(f"before-{i}"),
                                            self.requests_for(provider_name, ["a pear"]))
            emulator.configure(**{fault: 1.0})
            with pytest.raises(SubmitUncertain):
                await provider.create_batch(name, self.requests_for(provider_name, ["lost"]))
            emulator.configure(**{fault: 0.0})
            return await provider.find_batch(name)

        found = _run(provider_name, provider_environ, go)
        assert found is not None and found.display_name == name
        assert found.name == emulator.creates[-1].task_id
        assert len(emulator.creates) == 4

    def test_a_create_that_made_nothing_is_not_found(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: BatchEmulatorControls,
    ) -> None:
        """A create refused with a server error may not be taken as made or as not made:
        it is `SubmitUncertain`, and the listing then says there is no such batch."""
        emulator.configure(submit_5xx_prob=1.0)
        name = _display_name("refused")

        async def go(provider: BatchProvider) -> BatchJob | None:
            with pytest.raises(SubmitUncertain):
                await provider.create_batch(name, self.requests_for(provider_name, ["none"]))
            emulator.configure(submit_5xx_prob=0.0)
            return await provider.find_batch(name)

        assert _run(provider_name, provider_environ, go) is None
        assert list(emulator.creates) == []

    # -- following a batch -------------------------------------------------------------------

    @under_readings(BATCH_STATES)
    def test_a_batch_is_pending_then_succeeded(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: BatchEmulatorControls, reading: dict[str, Any],
    ) -> None:
        self.use_reading(emulator, reading)

        async def go(provider: BatchProvider) -> tuple[BatchJob, BatchJob]:
            job = await provider.create_batch(_display_name("states"),
                                              self.requests_for(provider_name, ["a quince"]))
            return await provider.get_batch(job.name), await _until_done(provider, job)

        first, last = _run(provider_name, provider_environ, go)
        assert first.state in ("pending", "running")
        assert last.state == "succeeded" and last.error is None

    @under_readings(BATCH_STATES)
    def test_a_failed_batch_says_why_and_has_no_results(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: BatchEmulatorControls, reading: dict[str, Any],
    ) -> None:
        self.use_reading(emulator, reading)
        emulator.configure(fail_prob=1.0, latency_s=0.1)

        async def go(provider: BatchProvider) -> BatchJob:
            job = await _until_done(provider, await provider.create_batch(
                _display_name("failed"), self.requests_for(provider_name, ["a plum"])))
            with pytest.raises(TaskFailed):
                await _results(provider, job)
            return job

        job = _run(provider_name, provider_environ, go)
        assert job.state == "failed" and job.error

    def test_results_are_streamed_one_per_request_in_order(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: BatchEmulatorControls,
    ) -> None:
        emulator.configure(latency_s=0.1)
        asked = [("16:9", "1K"), ("1:1", "2K"), ("3:4", "1K")]
        requests = [(f"cell-{i}", ImageRequest(f"fruit {i}", ratio, size))
                    for i, (ratio, size) in enumerate(asked)]

        async def go(provider: BatchProvider) -> list[BatchResult]:
            job = await _until_done(provider, await provider.create_batch(
                _display_name("results"), requests))
            stream = provider.batch_results(job)
            assert hasattr(stream, "__anext__"), "results are streamed, not a list"
            return [result async for result in stream]

        results = _run(provider_name, provider_environ, go)
        assert [r.key for r in results] == [key for key, _ in requests]
        for result, (ratio, size) in zip(results, asked, strict=True):
            assert result.error is None and result.finished is not None
            data = result.finished.images[0].data
            assert data is not None
            with Image.open(io.BytesIO(data)) as image:
                assert image.size == pixel_size(ratio, size)

    def test_a_refused_request_is_its_own_result(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: BatchEmulatorControls,
    ) -> None:
        """A request the provider refuses or fails is that request's result alone: the
        batch succeeds, its other requests bring their images."""
        emulator.configure(latency_s=0.1)
        requests = self.requests_for(provider_name, [
            "a fig", f"a statue {self.content_marker}", f"a pear {self.fail_marker}", "a kiwi"])

        async def go(provider: BatchProvider) -> tuple[BatchJob, list[BatchResult]]:
            job = await _until_done(provider, await provider.create_batch(
                _display_name("refusals"), requests))
            return job, await _results(provider, job)

        job, results = _run(provider_name, provider_environ, go)
        assert job.state == "succeeded"
        fig, statue, pear, kiwi = results
        assert fig.finished is not None and kiwi.finished is not None
        assert isinstance(statue.error, ContentRejected) and statue.finished is None
        assert isinstance(pear.error, TaskFailed) and not isinstance(pear.error, ContentRejected)
        assert pear.finished is None
        # the batch counts as failed the requests its results answer with an error line (a
        # refused image is a response)
        assert [r.failed for r in results] == [False, False, True, False]
        assert job.failed_requests == 1

    def test_an_unknown_batch_is_not_found(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: BatchEmulatorControls,
    ) -> None:
        async def go(provider: BatchProvider) -> None:
            with pytest.raises(TaskNotFound):
                await provider.get_batch(self.unknown_batch)

        _run(provider_name, provider_environ, go)

    # -- lifetimes ---------------------------------------------------------------------------

    @under_readings(BATCH_EXPIRY)
    def test_an_expired_batch_holds_results_only_for_what_ran(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: BatchEmulatorControls, reading: dict[str, Any],
    ) -> None:
        """A batch pending or running past its lifetime ends expired, saying why; results,
        if the provider names any, only for some of its requests: the others never ran."""
        self.use_reading(emulator, reading)
        emulator.configure(latency_s=30.0, expire_after_s=0.2)
        requests = self.requests_for(provider_name, ["a fig", "a pear", "a kiwi"])

        async def go(provider: BatchProvider) -> tuple[BatchJob, list[BatchResult] | None]:
            job = await _until_done(provider, await provider.create_batch(
                _display_name("expired"), requests))
            if not job.results:
                with pytest.raises(TaskFailed) as caught:
                    await _results(provider, job)
                assert not isinstance(caught.value, ResultsExpired)
                return job, None
            return job, await _results(provider, job)

        job, results = _run(provider_name, provider_environ, go)
        assert job.state == "expired" and job.error
        if results is not None:
            keys = [r.key for r in results]
            assert set(keys) < {key for key, _ in requests}, keys
            assert all(r.finished is not None for r in results)
        assert len(emulator.creates) == 1

    def test_results_no_longer_served_are_results_expired(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: BatchEmulatorControls,
    ) -> None:
        """A succeeded batch whose results the provider no longer serves (kept for weeks):
        `ResultsExpired` (billed, never to be created again), not a failed task."""
        emulator.configure(latency_s=0.1, results_gone=True)

        async def go(provider: BatchProvider) -> BatchJob:
            job = await _until_done(provider, await provider.create_batch(
                _display_name("gone"), self.requests_for(provider_name, ["a plum"])))
            with pytest.raises(ResultsExpired) as caught:
                await _results(provider, job)
            assert caught.value.code == "results_expired"
            return job

        assert _run(provider_name, provider_environ, go).state == "succeeded"
        assert len(emulator.creates) == 1

    def test_a_priority_goes_with_the_batch(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: BatchEmulatorControls,
    ) -> None:
        """`priority_option` reaches the provider with the batch; one batch, one priority."""
        option = self.priority_option
        if option is None:
            pytest.skip("this provider's batches take no priority")

        def at(priority: int, prompts: Sequence[str]) -> list[tuple[str, ImageRequest]]:
            return [(key, replace(request, options={option: priority}))
                    for key, request in self.requests_for(provider_name, prompts)]

        async def go(provider: BatchProvider) -> tuple[BatchJob, BatchJob]:
            urgent = await provider.create_batch(_display_name("urgent"), at(7, ["a", "b"]))
            plain = await provider.create_batch(_display_name("plain"),
                                                self.requests_for(provider_name, ["later"]))
            mixed = [*at(7, ["a"]), *[(f"x-{k}", r) for k, r in at(1, ["b"])]]
            with pytest.raises(LimitExceeded):
                await provider.create_batch(_display_name("mixed"), mixed)
            return urgent, plain

        urgent, plain = _run(provider_name, provider_environ, go)
        assert self.recorded_priority(emulator, urgent) == 7
        assert self.recorded_priority(emulator, plain) in (None, 0)
        assert len(emulator.creates) == 2

    # -- cancel ------------------------------------------------------------------------------

    @under_readings(BATCH_STATES)
    def test_a_cancel_is_confirmed_only_by_the_provider(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: BatchEmulatorControls, reading: dict[str, Any],
    ) -> None:
        """True when the provider reports the batch cancelled; a batch that has ended is
        refused without an error (False) and stays as it was."""
        self.use_reading(emulator, reading)

        async def go(provider: BatchProvider) -> tuple[bool, BatchJob, bool, BatchJob]:
            emulator.configure(latency_s=30.0)
            running = await provider.create_batch(
                _display_name("cancel"), self.requests_for(provider_name, ["stop"]))
            stopped = await provider.cancel_batch(running.name)
            emulator.configure(latency_s=0.1)
            done = await _until_done(provider, await provider.create_batch(
                _display_name("too-late"), self.requests_for(provider_name, ["late"])))
            refused = await provider.cancel_batch(done.name)
            return (stopped, await provider.get_batch(running.name), refused,
                    await provider.get_batch(done.name))

        stopped, running, refused, done = _run(provider_name, provider_environ, go)
        assert stopped is True and running.state == "cancelled"
        assert refused is False and done.state == "succeeded"

    # -- before anything is sent -------------------------------------------------------------

    def test_limits_are_checked_before_anything_is_sent(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: BatchEmulatorControls,
    ) -> None:
        caps = registry.capabilities(provider_name)
        too_many = tuple(Reference(f"https://example.com/{i}.png")
                         for i in range(caps.max_references + 1))
        refused: list[list[tuple[str, ImageRequest]]] = [
            [],
            [("k", ImageRequest("x" * (caps.max_prompt_chars + 1)))],
            [("k", ImageRequest("refs", references=too_many))],
            [("same", ImageRequest("a")), ("same", ImageRequest("b"))],
        ]

        async def go(provider: BatchProvider) -> None:
            for requests in refused:
                with pytest.raises(LimitExceeded):
                    await provider.create_batch(_display_name("limits"), requests)

        _run(provider_name, provider_environ, go)
        assert list(emulator.requests) == [] and list(emulator.creates) == []

    def test_a_wrong_key_is_an_auth_error_and_creates_nothing(
        self, provider_name: str, provider_environ: Mapping[str, str],
        emulator: BatchEmulatorControls,
    ) -> None:
        key = registry.capabilities(provider_name).env_vars[0]
        environ = {**provider_environ, key: "not-the-key"}

        async def go(provider: BatchProvider) -> None:
            with pytest.raises(AuthError) as caught:
                await provider.create_batch(_display_name("auth"),
                                            self.requests_for(provider_name, ["a"]))
            assert "not-the-key" not in str(caught.value)

        _run(provider_name, environ, go)
        assert list(emulator.creates) == []

    # -- helpers -----------------------------------------------------------------------------

    def requests_for(
        self, provider_name: str, prompts: Sequence[str]
    ) -> list[tuple[str, ImageRequest]]:
        """(key, request) pairs the provider accepts, one per prompt."""
        caps = registry.capabilities(provider_name)
        return [(f"cell-{i}", ImageRequest(prompt, caps.aspect_ratios[0], caps.resolutions[0],
                                           caps.output_formats[0]))
                for i, prompt in enumerate(prompts)]


def _display_name(what: str) -> str:
    return f"nbp-conformance-{what}-{uuid.uuid4().hex[:8]}"


def _run(
    name: str, environ: Mapping[str, str], go: Callable[[BatchProvider], Awaitable[T]]
) -> T:
    """`go` with the provider built through the registry from `environ`, closed after."""

    async def main() -> T:
        provider = registry.create(name, environ=environ)
        assert isinstance(provider, BatchProvider), f"{name} is not a BatchProvider"
        try:
            return await go(provider)
        finally:
            await provider.aclose()

    return asyncio.run(main())


async def _until_done(provider: BatchProvider, job: BatchJob) -> BatchJob:
    deadline = time.monotonic() + FINISH_WITHIN_S
    while time.monotonic() < deadline:
        job = await provider.get_batch(job.name)
        if job.state in BATCH_DONE:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"batch {job.name} did not finish")


async def _results(provider: BatchProvider, job: BatchJob) -> list[BatchResult]:
    return [result async for result in provider.batch_results(job)]


__all__ = ["BATCH_EXPIRY", "BATCH_LIST_PAGES", "BATCH_STATES", "BatchEmulatorControls",
           "BatchProviderConformance"]
