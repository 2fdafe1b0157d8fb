"""Apikley adapter: Kie's protocol on Apikley's host.

Wire format: exactly Kie's (`providers.kie`), with these differences and nothing else: base
`https://api.apikley.ru`, uploads under `{base}/file-upload`, prompts up to 10000
characters, body codes 455 (maintenance), 501 (generation failed) and 505 (feature
disabled), no published price or credits.

Sources: seeds/apikley.txt (S4), protocols.md §5.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from providers.errors import ProviderError, Rejected, TaskFailed, TransientError
from providers.kie import KieProvider
from providers.model import GOOGLE_STANDARD_PRICES_USD

# -- documented constants --------------------------------------------------------------------

DOCUMENTED_BASE_URL = "https://api.apikley.ru"
UPLOAD_PREFIX = "/file-upload"  # §5: {base}/file-upload/api/...
API_KEY_ENV = "APIKLEY_API_KEY"
MAX_PROMPT_CHARS = 10_000  # S4: prompt maxLength 10000
# Unpublished (§8): Google's standard price (§6.4) as the estimate, flagged as such.
ESTIMATED_PRICES_USD: Mapping[str, float] = GOOGLE_STANDARD_PRICES_USD
# S4 `ApiResponse.code` enum: the codes whose meaning is not the HTTP status's.
APIKLEY_OWN_CODES: Mapping[int, type[ProviderError]] = {
    455: TransientError,  # service unavailable: maintenance
    501: TaskFailed,      # generation failed
    505: Rejected,        # feature disabled
}

# -- options ---------------------------------------------------------------------------------
# Kie's (`providers.kie.OPTION_SCHEMA`): S4 documents `callBackUrl` beside `model` and `input`.

# -- adapter ---------------------------------------------------------------------------------


class ApikleyProvider(KieProvider):
    """Apikley's Kie-compatible market API."""

    name = "apikley"
    default_base_url = DOCUMENTED_BASE_URL
    extra_url_defaults: ClassVar[Mapping[str, str]] = {}  # uploads follow the base URL
    capabilities = dataclasses.replace(
        KieProvider.capabilities,
        max_prompt_chars=MAX_PROMPT_CHARS,
        prices_usd=ESTIMATED_PRICES_USD,
        price_is_published=False,
        # Kie's 20/10s: Apikley says its limits "may differ from upstream" without numbers.
        default_rate="20/10s",
        env_vars=(API_KEY_ENV,),
    )
    own_codes: ClassVar[Mapping[int, type[ProviderError]]] = APIKLEY_OWN_CODES
    usd_per_credit: ClassVar[float | None] = None  # credits not documented

    def upload_url(self, path: str) -> str:
        """`{base}/file-upload/api/...` on the API host (protocols.md §5)."""
        base = self.settings.extra_urls.get("upload") or f"{self.base_url}{UPLOAD_PREFIX}"
        return f"{base.rstrip('/')}{path}"


# -- wire format -----------------------------------------------------------------------------
# Kie's (`providers.kie`).

# -- errors ----------------------------------------------------------------------------------
# Kie's `raise_for_error`, with `APIKLEY_OWN_CODES` first.
