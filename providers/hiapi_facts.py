"""HiAPI's documented facts for `Nano-Banana-Pro`: limits, prices, URLs, credential
variables and option schema, without an HTTP client (`providers.hiapi` is the adapter).

Sources: seeds/hiapi.txt (S1), protocols.md §2.
"""

from __future__ import annotations

from typing import Any

from nbp.providers.base import Capabilities, ProviderFacts
from nbp.providers.model import ASPECT_RATIOS, GOOGLE_STANDARD_PRICES_USD, RESOLUTIONS

DOCUMENTED_BASE_URL = "https://api.hiapi.ai"
MODEL_ID = "Nano-Banana-Pro"
API_KEY_ENV = "HIAPI_API_KEY"
MAX_PROMPT_CHARS = 10_000                     # S1 input.prompt
MAX_REFERENCES = 8                            # S1 input.image_input
OUTPUT_FORMATS: tuple[str, ...] = ("png", "jpg")  # S1 input.output_format

# No seed: S1's input parameters are prompt, image_input, aspect_ratio, resolution and
# output_format; nothing is sent.
SEED = False
# GET /v1/tasks/{id} reports `created` and `completed` (unix seconds, protocols.md §2.3) but
# not when the task began to run: no queue or generation time can be told apart.
TASK_TIMES = False

OPTION_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "callback": {  # S1: top level of the body, never inside `input`
            "type": "object",
            "additionalProperties": False,
            "required": ["url"],
            "properties": {
                # S1: "HTTPS URL that receives terminal task notifications"
                "url": {"type": "string", "format": "uri", "pattern": r"^https://\S+$"},
                "when": {"enum": ["final"]},
            },
        },
    },
}

FACTS = ProviderFacts(
    name="hiapi",
    model=MODEL_ID,
    base_url=DOCUMENTED_BASE_URL,
    capabilities=Capabilities(
        aspect_ratios=ASPECT_RATIOS,
        resolutions=RESOLUTIONS,
        output_formats=OUTPUT_FORMATS,
        max_prompt_chars=MAX_PROMPT_CHARS,
        max_references=MAX_REFERENCES,
        reference_delivery="url_only",
        idempotent_submit=True,
        can_cancel=False,  # no cancel endpoint documented
        # Unpublished (§8): Google's standard price as the estimate.
        prices_usd=GOOGLE_STANDARD_PRICES_USD,
        price_is_published=False,
        default_rate=None,  # no numeric limit published (§2.4)
        default_max_in_flight=50,
        poll_interval_s=3.0,
        option_schema=OPTION_SCHEMA,
        seed=SEED,
        task_times=TASK_TIMES,
        env_vars=(API_KEY_ENV,),
    ),
)
