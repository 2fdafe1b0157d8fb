"""JSON Schemas shipped as package data, so they are found after `pip install .` too.

    from nbp.schemas import load_job_schema
    schema = load_job_schema()      # dict, JSON Schema 2020-12 of a job spec

Editors use the same file through `# yaml-language-server: $schema=../schemas/job.schema.json`.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

JOB_SCHEMA_FILE = "job.schema.json"


@cache
def load_job_schema() -> dict[str, Any]:
    """The job spec schema (parsed once per process; treat it as read-only)."""
    text = resources.files(__name__).joinpath(JOB_SCHEMA_FILE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
