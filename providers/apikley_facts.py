"""Apikley's documented facts: Kie's (`providers.kie_facts`) on Apikley's host, with its own
prompt limit, key variable and unpublished price, without an HTTP client
(`providers.apikley` is the adapter).

Sources: seeds/apikley.txt (S4), protocols.md §5.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from nbp.providers import kie_facts
from nbp.providers.base import ProviderFacts
from nbp.providers.model import GOOGLE_STANDARD_PRICES_USD

DOCUMENTED_BASE_URL = "https://api.apikley.ru"
API_KEY_ENV = "APIKLEY_API_KEY"
MAX_PROMPT_CHARS = 10_000  # S4: prompt maxLength 10000
# Unpublished (§8): Google's standard price (§6.4) as the estimate, flagged as such.
ESTIMATED_PRICES_USD: Mapping[str, float] = GOOGLE_STANDARD_PRICES_USD

# Options: Kie's (`kie_facts.OPTION_SCHEMA`): S4 documents `callBackUrl` beside `model` and
# `input`. No seed either (S4's `input` schema: prompt, image_input, aspect_ratio,
# resolution, output_format); recordInfo and its times are Kie's (protocols.md §5 [C AD]).
FACTS = ProviderFacts(
    name="apikley",
    model=kie_facts.MODEL_ID,
    base_url=DOCUMENTED_BASE_URL,  # uploads follow it: no upload host of its own
    capabilities=dataclasses.replace(
        kie_facts.FACTS.capabilities,
        max_prompt_chars=MAX_PROMPT_CHARS,
        prices_usd=ESTIMATED_PRICES_USD,
        price_is_published=False,
        # Kie's 20/10s: Apikley says its limits "may differ from upstream" without numbers.
        default_rate="20/10s",
        env_vars=(API_KEY_ENV,),
    ),
)
