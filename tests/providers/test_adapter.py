"""Shared adapter helpers: documented limits and the one content-rejection classifier."""

from __future__ import annotations

import pytest

from providers.adapter import limit_problems, looks_like_content_rejection
from providers.base import ImageRequest, Reference
from providers.registry import capabilities


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
