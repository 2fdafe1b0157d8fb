"""Shared adapter helpers: documented limits, the one content-rejection classifier and the one
HTTP status ladder."""

from __future__ import annotations

import httpx
import pytest

from nbp.providers import http
from nbp.providers.adapter import looks_like_content_rejection
from nbp.providers.base import ImageRequest, Reference
from nbp.providers.errors import (
    AuthError,
    InsufficientBalance,
    ProviderError,
    RateLimited,
    Rejected,
    TaskNotFound,
    TransientError,
)
from nbp.providers.limits import limit_problems
from nbp.providers.registry import capabilities


@pytest.mark.parametrize(
    "text",
    ["finishReason: IMAGE_SAFETY", "PROHIBITED_CONTENT", "CONTENT_POLICY_VIOLATION",
     "Your prompt was flagged by our moderation system", "blocked by BLOCKLIST", "SPII"],
)
def test_content_refusals_are_recognised(text: str) -> None:
    assert looks_like_content_rejection(text)


@pytest.mark.parametrize(
    "text",
    ["Internal server error", "Request parameter [prompt] required", "TASK_TIMEOUT",
     "recordInfo is null", "", None],
)
def test_other_failures_are_not_content_refusals(text: str | None) -> None:
    assert not looks_like_content_rejection(text)


def test_limit_problems_lists_every_problem_at_once() -> None:
    request = ImageRequest(
        prompt="x" * 10_001, aspect_ratio="7:3", resolution="8K", output_format="webp",
        references=tuple(Reference(f"/photos/{i}.png", data=b"x") for i in range(9)),
    )
    problems = limit_problems("hiapi", capabilities("hiapi"), request)
    assert len(problems) == 6
    assert any("URLs only" in p and "/photos/0.png" in p for p in problems)


# -- the one HTTP status ladder ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        pytest.param(400, Rejected, id="400"), pytest.param(401, AuthError, id="401"),
        pytest.param(402, InsufficientBalance, id="402"), pytest.param(403, AuthError, id="403"),
        pytest.param(404, TaskNotFound, id="404"), pytest.param(409, TransientError, id="409"),
        pytest.param(422, Rejected, id="422"), pytest.param(429, RateLimited, id="429"),
        pytest.param(500, TransientError, id="500"), pytest.param(503, TransientError, id="503"),
    ],
)
def test_the_status_ladder(status: int, error: type[ProviderError]) -> None:
    response = httpx.Response(status, headers={"Retry-After": "7"})
    with pytest.raises(error) as caught:
        http.raise_for_http_status(response, "it went wrong")
    assert type(caught.value) is error and caught.value.code == str(status)
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after == 7 and not caught.value.concurrency


def test_the_ladder_takes_a_status_from_the_body_and_a_provider_code() -> None:
    ok = httpx.Response(200)
    http.raise_for_http_status(ok, "fine")  # 2xx: quiet
    with pytest.raises(InsufficientBalance) as caught:
        http.raise_for_http_status(ok, "no credits", status=402, code="NO_MONEY")
    assert caught.value.code == "NO_MONEY"
    # An error the adapter found in an HTTP 200 body that no code explains: a rejection.
    assert type(http.status_error(ok, "odd", code="weird")) is Rejected
