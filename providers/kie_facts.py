"""Kie.ai's documented facts for `nano-banana-pro`: limits, prices, URLs, credential
variables and option schema, without an HTTP client (`providers.kie` is the adapter).

Sources: seeds/kie.txt (S3), protocols.md §4.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nbp.providers.base import Capabilities, ProviderFacts
from nbp.providers.model import ASPECT_RATIOS, RESOLUTIONS

MODEL_ID = "nano-banana-pro"
DOCUMENTED_BASE_URL = "https://api.kie.ai"
DOCUMENTED_UPLOAD_URL = "https://kieai.redpandaai.co"  # §4.6; NBP_KIE_UPLOAD_BASE_URL replaces it
API_KEY_ENV = "KIE_API_KEY"
MAX_PROMPT_CHARS = 20_000  # S3 prompt "Max Length"
MAX_REFERENCES = 8  # S3 image_input "up to 8 images"
OUTPUT_FORMATS: tuple[str, ...] = ("png", "jpg")  # S3 output_format
PRICES_USD: dict[str, float] = {"1K": 0.09, "2K": 0.09, "4K": 0.12}  # §4.8 [I KP]
# No seed: S3's input object is prompt, image_input, aspect_ratio, resolution and
# output_format; nothing is sent.
SEED = False
# recordInfo reports the task's times (S3 "Response Parameters", protocols.md §4.3):
# `createTime` "Creation timestamp", `completeTime` "Completion timestamp", `costTime` "Task
# duration in milliseconds" (on success). Readings ([I], `providers.kie.task_times`):
# - the timestamps' unit is not stated: S3's example createTime (1757584164490) and the common
#   get-task-detail page say milliseconds; seconds are read too (by magnitude, < 1e11);
# - costTime is read as the time the task ran; the rest of completeTime - createTime as the
#   wait before it. The docs do not say whether the duration counts the wait: if it does,
#   queue_s reads 0 and generation_s holds the wait too.
TASK_TIMES = True

# Only `callBackUrl` is documented beside `model` and `input` (S3 "Request Parameters").
OPTION_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "callBackUrl": {"type": "string", "format": "uri", "pattern": "^https?://\\S+$"},
    },
    "additionalProperties": False,
}

FACTS = ProviderFacts(
    name="kie",
    model=MODEL_ID,
    base_url=DOCUMENTED_BASE_URL,
    extra_urls={"upload": DOCUMENTED_UPLOAD_URL},
    capabilities=Capabilities(
        aspect_ratios=ASPECT_RATIOS,   # "auto" too upstream, but its pixel size is unknown
        resolutions=RESOLUTIONS,
        output_formats=OUTPUT_FORMATS,
        max_prompt_chars=MAX_PROMPT_CHARS,
        max_references=MAX_REFERENCES,
        reference_delivery="upload",
        prices_usd=PRICES_USD,
        default_rate="20/10s",                            # §4.5
        default_max_in_flight=100,                        # "typically 100+ running" (§4.5)
        poll_interval_s=3.0,                              # "2-3 s for 30 s" (§4.3)
        option_schema=OPTION_SCHEMA,
        seed=SEED,
        task_times=TASK_TIMES,
        env_vars=(API_KEY_ENV,),
    ),
)
