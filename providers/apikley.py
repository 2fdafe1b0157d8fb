"""Apikley adapter: Kie's protocol on Apikley's host (seeds/apikley.txt, protocols.md §5).

Differences from Kie, and nothing else: base `https://api.apikley.ru`, uploads under
`{base}/file-upload`, prompts up to 10000 characters, body codes 455 (maintenance), 501
(generation failed) and 505 (feature disabled), no published price.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from providers.errors import ProviderError, Rejected, TaskFailed, TransientError
from providers.kie import KIE_BODY_CODES, KieProvider

# S4 `ApiResponse.code` enum, on top of Kie's.
APIKLEY_BODY_CODES: Mapping[int, type[ProviderError]] = {
    **KIE_BODY_CODES,
    455: TransientError,  # service unavailable: maintenance
    501: TaskFailed,      # generation failed
    505: Rejected,        # feature disabled
}


class ApikleyProvider(KieProvider):
    """Apikley's Kie-compatible market API."""

    name = "apikley"
    default_base_url = "https://api.apikley.ru"
    extra_url_defaults: ClassVar[Mapping[str, str]] = {}  # uploads follow the base URL
    capabilities = dataclasses.replace(
        KieProvider.capabilities,
        max_prompt_chars=10000,                           # S4: prompt maxLength 10000
        # Unpublished (§8): Google's standard price, flagged as such.
        prices_usd={"1K": 0.134, "2K": 0.134, "4K": 0.24},
        price_is_published=False,
        # Kie's 20/10s: Apikley says its limits "may differ from upstream" without numbers.
        default_rate="20/10s",
        env_vars=("APIKLEY_API_KEY",),
    )
    body_codes: ClassVar[Mapping[int, type[ProviderError]]] = APIKLEY_BODY_CODES
    usd_per_credit: ClassVar[float | None] = None  # credits not documented

    def upload_url(self, path: str) -> str:
        """`{base}/file-upload/api/...` on the API host (protocols.md §5)."""
        base = self.settings.extra_urls.get("upload") or f"{self.base_url}/file-upload"
        return f"{base.rstrip('/')}{path}"
