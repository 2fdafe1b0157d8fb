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
# Both ids are documented (§ head). `gemini-3-pro-image` is GA since 2026-05-28 and the
# preview id had an earliest shutdown date of 2026-06-25 (§10 [C DEP]; a third party says the
# preview ids "were shut down" [I PF]), so the GA id is the default and the preview id stays
# selectable (`options.gemini.model`, a `model` axis). An id Google no longer serves answers
# 404 NOT_FOUND "models/... is not found" (§3 [C ERR]): `ModelNotFound`, and the engine drops
# that model on that channel for the run.
MODELS: tuple[str, ...] = ("gemini-3-pro-image", "gemini-3-pro-image-preview")
DEFAULT_MODEL = MODELS[0]
API_KEY_ENV = "GEMINI_API_KEY"
FALLBACK_KEY_ENV = "GOOGLE_API_KEY"  # read when GEMINI_API_KEY is unset (google-genai's names)

# No prompt limit is published in characters (the model's limit is in tokens). nbp uses the
# 45,000 characters resellers relaying this model document (protocols.md: Runware).
MAX_PROMPT_CHARS = 45_000
MAX_REFERENCES = 14                     # §2 "up to 14" [C IMG]
OUTPUT_FORMATS: tuple[str, ...] = ("png",)  # the Developer API has no outputMimeType (§2 [C PY])

PRICES_USD: dict[str, float] = {"1K": 0.134, "2K": 0.134, "4K": 0.24}  # per image, §7 [C PRC]
# The price per image is its image output tokens (1120 at 1K/2K: $0.1344 at $120/M; 2000 at
# 4K: $0.24), but Google bills every token of the answer (§7 [C PRC]): input at $2/M (560 per
# input image, ~4 characters a text token), text and thinking output at $12/M, and thinking is
# always on (§2 [C IMG]). So a create costs more than its price, and the budget holds the
# price times this until answers say by how much (`Capabilities.initial_markup`). 10 % of
# $0.134 is $0.0134: 1,000 thinking and text tokens ($0.012), 500 prompt tokens ($0.001) and
# the image tokens' $0.0004 over the rounded price. The docs give no thinking-token count for
# this model [I]: 1,000 is nbp's allowance (the emulator thinks 240). Reference images are
# priced on their own: 560 input tokens each, $0.0011 (§7 [C IMG]).
INITIAL_MARKUP = 1.1
PRICE_PER_REFERENCE_USD = 0.0011

# Service tiers (§10 [C OPT]: ai.google.dev/gemini-api/docs/flex-inference and
# .../priority-inference). The request field is top-level in the GenerateContentRequest:
# google-genai writes `GenerateContentConfig.service_tier` to the request's `serviceTier`
# [C PY models.py `_GenerateContentConfig_to_mldev`], Google's REST examples write
# `"service_tier": "FLEX"` and `"service_tier": "priority"` beside `contents` [C OPT]; the
# SDK's values are lowercase `flex`, `standard`, `priority` [C PY types.ServiceTier] and its
# tests send both casings. nbp sends `serviceTier` in lowerCamel like the rest of the body,
# lowercase like the SDK, and only for flex or priority (omitted is standard [C OPT]).
SERVICE_TIERS: tuple[str, ...] = ("standard", "flex", "priority")
SENT_TIERS: frozenset[str] = frozenset({"flex", "priority"})
TIER_FIELD = "serviceTier"
# Which tier served a request: response header, lowercase ("standard" when priority was over
# its limit and fell back silently, billed at the standard rate) [C OPT priority-inference].
TIER_HEADER = "x-gemini-service-tier"
# Price factors on the standard price, ESTIMATES: Google publishes them as "50 % discount"
# (flex) and "75-100 % more than Standard" (priority) [C OPT], not as prices of this model,
# and does not confirm that flex serves it (priority-inference lists "Gemini 3 Pro Image
# Preview"; a third party quotes flex at $0.067 per 1K/2K image [I]). Priority counts the top
# of its range, so nbp never counts less than Google may bill.
TIER_PRICE_FACTORS: dict[str, float] = {"standard": 1.0, "flex": 0.5, "priority": 2.0}
# Flex has a target latency of 1-15 min and may be shed under load (429 or 503) [C OPT]: a
# flex request is waited for those 15 minutes on top of the 5 any generation is given, and
# the plan times flex cells at 1 min each and says what 15 would take.
FLEX_LATENCY_S: tuple[float, float] = (60.0, 15 * 60.0)
FLEX_TIMEOUT_S = FLEX_LATENCY_S[1] + 5 * 60.0

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
# `gemini`'s options: the shared ones and the service tier (synchronous generateContent only;
# a batch line has no tier, `gemini-batch` keeps `OPTION_SCHEMA`).
TIER_OPTION_SCHEMA: dict[str, Any] = {
    **OPTION_SCHEMA,
    "properties": {
        **OPTION_SCHEMA["properties"],
        "service_tier": {
            "enum": list(SERVICE_TIERS),
            "description": "Google's service tier: standard (the default), flex (half price, "
                           "up to 15 minutes, may be shed) or priority (75-100 % dearer, "
                           "falls back to standard silently); tier prices are estimates",
        },
        "flex_fallback": {
            "type": "boolean",
            "description": "when Google sheds a flex request (429/503), send it again at the "
                           "standard tier and price at once instead of waiting for flex",
        },
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
        price_per_reference_usd=PRICE_PER_REFERENCE_USD,
        initial_markup=INITIAL_MARKUP,  # billed by tokens: price + input and thinking
        default_rate=None,             # §4: no Nano Banana Pro numbers published
        # No limit is published; RPM for preview image models is low (§4). Ten calls of
        # 10-60 s each stay near one create every few seconds, and a 429 slows nbp down.
        default_max_in_flight=10,
        option_schema=TIER_OPTION_SCHEMA,
        price_factors={"service_tier": TIER_PRICE_FACTORS},
        latency_ranges_s={"service_tier": {"flex": FLEX_LATENCY_S}},
        seed=SEED,
        max_seed=MAX_SEED,
        task_times=TASK_TIMES,
        models=MODELS,
        env_vars=(API_KEY_ENV,),
        optional_env_vars=(FALLBACK_KEY_ENV,),
        env_alternatives={API_KEY_ENV: (FALLBACK_KEY_ENV,)},
    ),
)
