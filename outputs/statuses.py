"""The statuses a manifest row can have (its `status` column), in one place.

    succeeded   the image is written and verified
    failed      the provider failed the task or refused its content
    skipped     nothing was sent (the budget, fail_fast, a stop request)
    cancelled   the provider confirmed the cancel of its task
    pending     a created task the next run collects (the engine's live-task states)
    uncertain   a create that may have reached a provider that cannot be asked

A run always reports the settled ones (no task of the cell is left open, no create is in
doubt), and pages draw each of them in its own style; the unsettled ones wait for a later run.
"""

from __future__ import annotations

SETTLED = ("succeeded", "failed", "skipped", "cancelled")
UNSETTLED = ("pending", "uncertain")
STATUSES = SETTLED + UNSETTLED
