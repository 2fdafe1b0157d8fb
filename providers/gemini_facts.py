"""The Gemini API's documented facts for Nano Banana Pro on Google's own host: limits,
prices, models, URLs, credential variables and option schema, without an HTTP client
(`providers.gemini` is the adapter; `providers.gemini_batch_facts` builds on these).

Sources: /work/shared/protocols-gemini.md (§ numbers; its source tags in brackets).
"""

from __future__ import annotations

from typing import Any

from nbp.providers.base import Capabilities, ProviderFacts
from nbp.providers.model import ASPECT_RATIOS, RESOLUTIONS

DOCUMENTED_BASE_URL = "https://generativelanguage.googleapis.com"  # §1 [C IMG]
# The docs use v1beta everywhere; google-genai 3.x talks v1 (§1, §8.7): `options.gemini
# .api_version` chooses per request, `GeminiProvider(settings, api_version=)` per adapter.
API_VERSIONS: tuple[str, ...] = ("v1beta", "v1")
DEFAULT_API_VERSION = "v1beta"
# Both ids are documented (§ head). The preview id is the one the image-generation guide, the
# rate-limit table and the Batch quota ("Gemini 3 Pro Image Preview") name [C IMG, RL]; the
# protocol notes recommend neither, so nbp defaults to what the docs' examples call.
MODELS: tuple[str, ...] = ("gemini-3-pro-image-preview", "gemini-3-pro-image")
DEFAULT_MODEL = MODELS[0]
API_KEY_ENV = "GEMINI_API_KEY"
FALLBACK_KEY_ENV = "GOOGLE_API_KEY"  # read when GEMINI_API_KEY is unset (google-genai's names)

# No prompt limit is published in characters (the model's limit is in tokens). nbp uses the
# 45,000 characters resellers relaying this model document (protocols.md: Runware).
MAX_PROMPT_CHARS = 45_000
MAX_REFERENCES = 14                     # §2 "up to 14" [C IMG]
OUTPUT_FORMATS: tuple[str, ...] = ("png",)  # the Developer API has no outputMimeType (§2 [C PY])

PRICES_USD: dict[str, float] = {"1K": 0.134, "2K": 0.134, "4K": 0.24}  # per image, §7 [C PRC]

# `generationConfig.seed`: "Optional. Seed used in decoding. If not set, the request uses a
# randomly generated seed." An int32 (GenerationConfig field 8 of the v1beta API, as Google's
# generated clients have it) [C API reference]. google-genai sends `GenerateContentConfig.seed`
# there in Developer API mode for any generateContent model ("the model makes a best effort to
# provide the same response for repeated requests") [C PY models.py
# `_GenerateContentConfig_to_mldev`, types.py], where it refuses seeds the API has no field for
# (Veo). The image-generation guide neither names nor excludes it for this model [C IMG:
# silent]: documented for the request this model takes, so it is sent; best effort, not a
# promise of the same image. A batch line is the same request (§6).
SEED = True
MAX_SEED = 2**31 - 1
# generateContent answers synchronously with no task times; a batch reports its own times,
# not each request's (§6).
TASK_TIMES = False

OPTION_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "model": {
            "enum": list(MODELS),
            "description": "the documented Nano Banana Pro model ids",
        },
        "api_version": {"enum": list(API_VERSIONS)},
    },
}

FACTS = ProviderFacts(
    name="gemini",
    model=DEFAULT_MODEL,
    base_url=DOCUMENTED_BASE_URL,
    capabilities=Capabilities(
        aspect_ratios=ASPECT_RATIOS,   # §2 [C IMG, VTX]
        resolutions=RESOLUTIONS,       # §2 uppercase K [C IMG]
        output_formats=OUTPUT_FORMATS,
        max_prompt_chars=MAX_PROMPT_CHARS,
        max_references=MAX_REFERENCES,
        reference_delivery="upload",   # local files inline (base64), URLs as fileData
        idempotent_submit=False,       # §3, §6: no idempotency key
        recoverable_submit=False,      # and no lookup: a lost answer is gone
        can_cancel=False,
        synchronous=True,
        prices_usd=PRICES_USD,
        default_rate=None,             # §4: no Nano Banana Pro numbers published
        # No limit is published; RPM for preview image models is low (§4). Ten calls of
        # 10-60 s each stay near one create every few seconds, and a 429 slows nbp down.
        default_max_in_flight=10,
        option_schema=OPTION_SCHEMA,
        seed=SEED,
        max_seed=MAX_SEED,
        task_times=TASK_TIMES,
        models=MODELS,
        env_vars=(API_KEY_ENV,),
        optional_env_vars=(FALLBACK_KEY_ENV,),
        env_alternatives={API_KEY_ENV: (FALLBACK_KEY_ENV,)},
    ),
)
