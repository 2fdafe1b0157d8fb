"""Apikley emulator: Kie's API on another host with Apikley's own constants.

Built from seeds/apikley.txt (S4) and protocols.md §5: same endpoints and states as Kie,
prompt limit 10000, an error enum without 400 but with 455 (maintenance), 501 (generation
failed) and 505 (feature disabled), and the upload API under `{base}/file-upload/api/...`
on the same host (so nothing is mounted outside `/apikley`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from starlette.routing import BaseRoute, Mount

from nbp.providers.emulator.kie import KieEmulator

# S4 `ApiResponse.code` enum.
APIKLEY_BODY_CODES: frozenset[int] = frozenset(
    {200, 401, 402, 404, 422, 429, 455, 500, 501, 505}
)


class ApikleyEmulator(KieEmulator):
    """Apikley's Kie-compatible API (`force_code(455)` emulates maintenance, and so on)."""

    name = "apikley"
    max_prompt_chars: ClassVar[int] = 10000          # S4: prompt maxLength 10000
    body_codes: ClassVar[frozenset[int]] = APIKLEY_BODY_CODES
    bad_json_code: ClassVar[int] = 422               # S4's enum has no 400
    # docs.apikley.ru/market/common/get-task-detail (the page S4 links for polling) names
    # the envelope key `message`, where Kie's seed says `msg` (protocols.md §4.3).
    record_message_key: ClassVar[str] = "message"
    credits: ClassVar[Mapping[str, int] | None] = None  # pricing/credits undocumented

    def routes(self) -> Sequence[BaseRoute]:
        return [*super().routes(), Mount("/file-upload", routes=self.upload_routes())]

    def extra_mounts(self) -> dict[str, Sequence[BaseRoute]]:
        return {}

    def upload_base_url(self) -> str:
        return f"{self.hub.base_url(self.name)}/file-upload"

    def make_task_id(self) -> str:
        """`task_nano-banana-pro_<ms>`, as in S4's example."""
        return f"task_nano-banana-pro_{self.unique_ms()}"
