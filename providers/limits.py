"""A request against a provider's documented limits, in plain sentences.

Pure: no HTTP client, so spec validation (`flows/spec`) checks every cell with the very
rule adapters apply again before they send anything.

    problems = limit_problems("hiapi", registry.capabilities("hiapi"), request)  # [] if none
"""

from __future__ import annotations

from nbp.providers.base import Capabilities, ImageRequest, sent_seed


def limit_problems(name: str, caps: Capabilities, request: ImageRequest) -> list[str]:
    """Every documented limit `request` breaks, as plain sentences (empty when none)."""
    problems: list[str] = []
    if len(request.prompt) > caps.max_prompt_chars:
        problems.append(
            f"{name} accepts prompts of at most {caps.max_prompt_chars} characters; "
            f"this one has {len(request.prompt)}"
        )
    if len(request.prompt) < caps.min_prompt_chars:
        problems.append(f"{name} needs a prompt of at least {caps.min_prompt_chars} characters")
    if request.aspect_ratio not in caps.aspect_ratios:
        problems.append(
            f"{name} does not accept aspect ratio {request.aspect_ratio!r}; "
            f"accepted: {', '.join(caps.aspect_ratios)}"
        )
    if request.resolution not in caps.resolutions:
        problems.append(
            f"{name} does not accept resolution {request.resolution!r}; "
            f"accepted: {', '.join(caps.resolutions)}"
        )
    if request.output_format not in caps.output_formats:
        problems.append(
            f"{name} does not write {request.output_format!r}; "
            f"it writes: {', '.join(caps.output_formats)}"
        )
    if len(request.references) > caps.max_references:
        problems.append(
            f"{name} takes at most {caps.max_references} reference images; "
            f"this request has {len(request.references)}"
        )
    seed = sent_seed(caps, request)
    if seed is not None and not 0 <= seed <= caps.max_seed:
        problems.append(f"{name} takes seeds from 0 to {caps.max_seed}; this one is {seed}")
    if caps.reference_delivery == "url_only":
        local = [r.uri for r in request.references if not r.is_url]
        if local:
            problems.append(
                f"{name} takes reference images as http(s) URLs only; {local[0]!r} is a local "
                "file: publish it at a URL (or use a provider with uploads: wiro, runware, "
                "kie, apikley)"
            )
    return problems


__all__ = ["limit_problems"]
