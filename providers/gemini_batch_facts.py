"""Google's Batch API's documented facts (`gemini-batch`): Gemini's (`providers.gemini_facts`)
at batch prices and batch turnaround, without an HTTP client (`providers.gemini_batch` is the
adapter). Same host and key as `gemini`: `NBP_GEMINI_BASE_URL`, `GEMINI_API_KEY`.

Sources: /work/shared/protocols-gemini.md (§ numbers; its source tags in brackets).
"""

from __future__ import annotations

from typing import Any

from nbp.providers.base import BatchLimits, Capabilities, ProviderFacts
from nbp.providers.gemini_facts import (
    API_KEY_ENV,
    DEFAULT_MODEL,
    DOCUMENTED_BASE_URL,
    FALLBACK_KEY_ENV,
    INITIAL_MARKUP,
    MAX_PROMPT_CHARS,
    MAX_REFERENCES,
    MAX_SEED,
    MODELS,
    OUTPUT_FORMATS,
    SEED,
)
from nbp.providers.gemini_facts import OPTION_SCHEMA as GEMINI_OPTION_SCHEMA
from nbp.providers.model import ASPECT_RATIOS, RESOLUTIONS

PRICES_USD: dict[str, float] = {"1K": 0.067, "2K": 0.067, "4K": 0.12}  # §7 batch, 50 % [C PRC]
BATCH_PRICE_PER_REFERENCE_USD = 0.0006  # §7 [C IMG]: an input image in a batch line
TURNAROUND_S = 24 * 3600.0             # §6 target turnaround [C BAT]
EXPIRY_S = 48 * 3600.0                 # §6 pending or running longer: EXPIRED [C BAT]
RESULTS_KEPT_S = 6 * 7 * 86400.0       # §10 results are kept 6 weeks [C BAT2]
# §10 `batch.priority` [C BAT2; REF GenerateContentBatch: "Optional. The priority of the
# batch. Batches with a higher priority value will be processed before batches with a lower
# priority value. Negative values are allowed. Default is 0."]: an int64, written in JSON as
# a string as proto3 writes every int64 (numbers are read too).
PRIORITY_RANGE = (-(2**63), 2**63 - 1)
MAX_INPUT_FILE_BYTES = 2 * 1000**3     # §4, §5 2 GB per file [C RL, FIL]
MAX_INLINE_BATCH_BYTES = 20 * 1000**2  # §6 inline requests < 20 MB (nbp always uploads a file)
ENQUEUED_TOKENS_TIER_1 = 2_000_000     # §4 Gemini 3 Pro Image Preview, Tier 1 [C RL]
MAX_CONCURRENT_BATCHES = 100           # §4 [C RL]

# What nbp puts in one batch (`Capabilities.batch`): the engine closes a group before any of
# these is passed.
BATCH_LIMITS = BatchLimits(
    max_requests=500,                  # nbp's choice: a results file streamed in minutes
    max_input_bytes=3 * 2**29,         # 1.5 GiB: under the 2 GB per file (§4, §5) [C RL, FIL]
    max_result_bytes=2**30,            # nbp's choice: a results file that downloads reliably
    # §6: a 2K image is ~8 MB in base64 [I]; 1K and 4K are nbp's estimates
    expected_result_bytes={"1K": 3 * 2**20, "2K": 8 * 2**20, "4K": 30 * 2**20},
    turnaround_s=TURNAROUND_S,         # §6 [C BAT]
)
# Options: those of `gemini` (model, api_version, ...) and the batch's own `priority`; a batch
# runs one model at one priority, so every request of a batch names the same ones.
OPTION_SCHEMA: dict[str, Any] = {
    **GEMINI_OPTION_SCHEMA,
    "properties": {
        **GEMINI_OPTION_SCHEMA["properties"],
        "priority": {
            "type": "integer", "minimum": PRIORITY_RANGE[0], "maximum": PRIORITY_RANGE[1],
            "description": "batch.priority: batches with a higher value run first (default 0)",
        },
    },
}
FACTS = ProviderFacts(
    name="gemini-batch",
    env_name="gemini",  # same host, same NBP_GEMINI_BASE_URL
    model=DEFAULT_MODEL,
    base_url=DOCUMENTED_BASE_URL,
    capabilities=Capabilities(
        aspect_ratios=ASPECT_RATIOS,
        resolutions=RESOLUTIONS,
        output_formats=OUTPUT_FORMATS,
        max_prompt_chars=MAX_PROMPT_CHARS,
        max_references=MAX_REFERENCES,
        reference_delivery="upload",
        idempotent_submit=False,       # §6: the same create twice makes two jobs
        # A lost create is found again by display name (`find_batch`), not by `recover`,
        # which the `Provider` path would call: that flag stays False.
        recoverable_submit=False,
        can_cancel=True,               # §6 batches.cancel
        prices_usd=PRICES_USD,
        price_per_reference_usd=BATCH_PRICE_PER_REFERENCE_USD,  # §7 [C IMG]: batch input image
        # every token at half price (§7): the same allowance over the halved price
        initial_markup=INITIAL_MARKUP,
        default_rate=None,             # §4: batch creation has no published rate
        default_max_in_flight=MAX_CONCURRENT_BATCHES,  # §4: concurrent batches
        poll_interval_s=60.0,          # hours of turnaround: a minute between looks
        batch=BATCH_LIMITS,
        option_schema=OPTION_SCHEMA,
        seed=SEED,                     # each line is a GenerateContentRequest (§6)
        max_seed=MAX_SEED,
        task_times=False,              # createTime/updateTime are the batch's, not a line's
        models=MODELS,
        env_vars=(API_KEY_ENV,),
        optional_env_vars=(FALLBACK_KEY_ENV,),
        env_alternatives={API_KEY_ENV: (FALLBACK_KEY_ENV,)},
    ),
)
