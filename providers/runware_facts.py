"""Runware's documented facts for `google:4@2` (Nano Banana Pro): limits, prices, URLs,
credential variables and option schema, without an HTTP client (`providers.runware` is the
adapter).

Sources: seeds/runware.txt (S2), protocols.md §3, runware.ai/docs (RD).
"""

from __future__ import annotations

from typing import Any

from nbp.providers.base import Capabilities, ProviderFacts
from nbp.providers.model import ASPECT_RATIOS, OUTPUT_FORMATS, RESOLUTIONS

DOCUMENTED_BASE_URL = "https://api.runware.ai/v1"
MODEL_ID = "google:4@2"
API_KEY_ENV = "RUNWARE_API_KEY"
MIN_PROMPT_CHARS, MAX_PROMPT_CHARS = 3, 45_000      # S2 positivePrompt
MAX_REFERENCES = 14                                 # S2 inputs.referenceImages 1..14
PRICES_USD: dict[str, float] = {"1K": 0.138, "2K": 0.138, "4K": 0.244}       # §3.8 / RD
PRICE_PER_REFERENCE_USD = 0.0011  # §3.8 [I]: S2 shows 0.1424 for 2K with 4 references
# providerSettings.google.safetyTolerance: RD lists 5 values, default "none", "off" = Google's
# defaults; "none" and "off" also appear in public clients. The other three are inferred from
# Google's HarmBlockThreshold (BLOCK_LOW_AND_ABOVE / MEDIUM_AND_ABOVE / ONLY_HIGH) [I].
SAFETY_TOLERANCES: tuple[str, ...] = ("none", "low", "medium", "high", "off")
DELIVERY_METHODS: tuple[str, ...] = ("sync", "async")  # S2 deliveryMethod
# S2 `seed`: "integer min: 0 max: 9223372036854776000 ... Random seed for reproducible
# generation"; the item sent back echoes it (S2 responses). Sent.
SEED = True
MAX_SEED = 2**63 - 1
# No time is documented in imageInference or getResponse items (S2, protocols.md §3.3).
TASK_TIMES = False

OPTION_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "settings": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "systemPrompt": {"type": "string", "minLength": 1, "maxLength": 50_000},
                "temperature": {"type": "number", "minimum": 0, "maximum": 1},
                "topP": {"type": "number", "minimum": 0, "maximum": 1},
            },
        },
        "providerSettings": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "google": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "safetyTolerance": {"enum": list(SAFETY_TOLERANCES)},
                        "webSearch": {"type": "boolean"},
                    },
                },
            },
        },
        # S2 takes 1..20; nbp's rule, stated where spec loading and the adapter both read it.
        "numberResults": {
            "const": 1,
            "description": "nbp makes one image per cell, so only 1 is supported; use "
                           "`repeat` in the spec for more images",
        },
        "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
        "outputQuality": {"type": "integer", "minimum": 20, "maximum": 99},
        "deliveryMethod": {"enum": list(DELIVERY_METHODS)},
        "safety": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "checkContent": {"type": "boolean"},
                "mode": {"enum": ["none", "fast"]},
            },
        },
        "ttl": {"type": "integer", "minimum": 60},
        "includeCost": {"type": "boolean"},
    },
}

FACTS = ProviderFacts(
    name="runware",
    model=MODEL_ID,
    base_url=DOCUMENTED_BASE_URL,
    capabilities=Capabilities(
        aspect_ratios=ASPECT_RATIOS,
        resolutions=RESOLUTIONS,
        output_formats=OUTPUT_FORMATS,
        max_prompt_chars=MAX_PROMPT_CHARS,
        min_prompt_chars=MIN_PROMPT_CHARS,
        max_references=MAX_REFERENCES,
        reference_delivery="upload",
        recoverable_submit=True,  # taskUUID is ours: getResponse finds a lost create
        can_cancel=False,         # no cancel task documented
        prices_usd=PRICES_USD,
        price_per_reference_usd=PRICE_PER_REFERENCE_USD,
        default_rate=None,        # "no hard rate limits", fair queue (§3.6)
        default_max_in_flight=50,
        poll_interval_s=1.5,      # RD task-polling: start with 1-2 s, back off
        option_schema=OPTION_SCHEMA,
        seed=SEED,
        max_seed=MAX_SEED,
        task_times=TASK_TIMES,
        env_vars=(API_KEY_ENV,),
    ),
)
