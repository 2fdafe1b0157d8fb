"""Apikley adapter: Kie's protocol on Apikley's host.

Wire format: exactly Kie's (`providers.kie`), with these differences and nothing else: base
`https://api.apikley.ru`, uploads under `{base}/file-upload`, prompts up to 10000
characters, body codes 455 (maintenance), 501 (generation failed) and 505 (feature
disabled), no published price or credits.

Sources: seeds/apikley.txt (S4), protocols.md §5.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from nbp.providers.apikley_facts import FACTS
from nbp.providers.base import Capabilities
from nbp.providers.errors import ProviderError, Rejected, TaskFailed, TransientError
from nbp.providers.kie import KieProvider

# -- documented constants --------------------------------------------------------------------

UPLOAD_PREFIX = "/file-upload"  # §5: {base}/file-upload/api/...
# S4 `ApiResponse.code` enum: the codes whose meaning is not the HTTP status's.
APIKLEY_OWN_CODES: Mapping[int, type[ProviderError]] = {
    455: TransientError,  # service unavailable: maintenance
    501: TaskFailed,      # generation failed
    505: Rejected,        # feature disabled
}

# -- adapter ---------------------------------------------------------------------------------


class ApikleyProvider(KieProvider):
    """Apikley's Kie-compatible market API."""

    name: ClassVar[str] = FACTS.name
    model: ClassVar[str] = FACTS.model
    default_base_url: ClassVar[str] = FACTS.base_url
    # None besides the base: uploads follow it (`upload_url`).
    extra_url_defaults: ClassVar[Mapping[str, str]] = FACTS.extra_urls
    capabilities: ClassVar[Capabilities] = FACTS.capabilities
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
