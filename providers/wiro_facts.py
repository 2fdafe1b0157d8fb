"""Wiro's documented facts for `google/nano-banana-pro`: limits, prices, URLs, credential
variables and option schema, without an HTTP client (`providers.wiro` is the adapter).

Sources: seeds/wiro.txt (S0), protocols.md §1, WD = github wiroai/Wiro-Docs markdown/.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nbp.providers.base import Capabilities, ProviderFacts
from nbp.providers.model import ASPECT_RATIOS, GOOGLE_STANDARD_PRICES_USD, RESOLUTIONS

DOCUMENTED_BASE_URL = "https://api.wiro.ai/v1"
MODEL_OWNER, MODEL_PROJECT = "google", "nano-banana-pro"
API_KEY_ENV, API_SECRET_ENV = "WIRO_API_KEY", "WIRO_API_SECRET"

# `inputImage` combinefileinput "up to 14 reference images" (seed, protocols.md §1.2).
MAX_REFERENCES = 14
# Wiro documents no prompt limit (seed: `textarea`); the longest prompt another reseller
# documents for this same model is Runware's 45000 characters (protocols.md §3.2).
MAX_PROMPT_CHARS = 45_000
# Wiro returns the model's PNG (seed outputs `0.png`, `image/png`); no output-format input.
OUTPUT_FORMATS: tuple[str, ...] = ("png",)
# Price unpublished (protocols.md §1.7, §8): Google's standard price as the estimate (§6.4).
ESTIMATED_PRICES_USD: Mapping[str, float] = GOOGLE_STANDARD_PRICES_USD
# Concurrency = max(1, floor(balance_usd * 0.10)) up to $250 of balance, unlimited above
# (protocols.md §1.5, WD concurrency-limits.md): 10 in flight is what a $100 balance allows.
DEFAULT_MAX_IN_FLIGHT = 10
# No seed: S0's Model Inputs are inputImage, prompt, aspectRatio and resolution, and WD's
# model-parameters.md lists no common seed parameter; nothing is sent.
SEED = False
# Task/Detail reports the task's own times (S0, protocols.md §1.3), unix seconds as strings,
# "0" while not reached: `createtime`, `starttime` (task_start), `endtime` (task_end). The
# seed's example has elapsedseconds "6.0000" = endtime - createtime.
TASK_TIMES = True
POLL_INTERVAL_S = 3.0  # "start at 3 seconds" (WD concurrency-limits.md, protocols.md §1.3)

OPTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        # Common Run parameter: Wiro POSTs the task result there (WD run-a-model.md).
        "callbackUrl": {"type": "string", "format": "uri", "pattern": "^https?://"},
    },
    "additionalProperties": False,
}

FACTS = ProviderFacts(
    name="wiro",
    model=f"{MODEL_OWNER}/{MODEL_PROJECT}",
    base_url=DOCUMENTED_BASE_URL,
    capabilities=Capabilities(
        aspect_ratios=ASPECT_RATIOS,
        resolutions=RESOLUTIONS,
        output_formats=OUTPUT_FORMATS,
        max_prompt_chars=MAX_PROMPT_CHARS,
        max_references=MAX_REFERENCES,
        reference_delivery="upload",
        can_cancel=True,
        prices_usd=ESTIMATED_PRICES_USD,
        price_is_published=False,
        default_rate=None,
        default_max_in_flight=DEFAULT_MAX_IN_FLIGHT,
        poll_interval_s=POLL_INTERVAL_S,
        option_schema=OPTION_SCHEMA,
        seed=SEED,
        task_times=TASK_TIMES,
        env_vars=(API_KEY_ENV,),
        optional_env_vars=(API_SECRET_ENV,),
    ),
)
