"""What every page nbp writes may load and run: one content security policy for them all.

    policy = content_security_policy(styles=[CSS], scripts=[SCRIPT])
    head = policy_meta(policy)          # <meta http-equiv="Content-Security-Policy" ...>

A page is made of values from manifests and specs, and a target can come from anyone, so
escaping is not the only wall: the policy lets the page run only its own inline script and
style (by their sha256) and load images only from where the page itself lies (`'self'`, and
`file:` for a page opened from disk). Were a value ever to slip past the escaping, the
browser would still run none of it and ask no other host for anything.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Sequence

# Where images may come from: the page's own origin (a bucket served over HTTP) and, for a
# page opened from disk, files (Chromium gives file:// pages an opaque origin, not 'self').
IMAGE_SOURCES = "'self' file:"


def digest(text: str) -> str:
    """`text`'s CSP hash source (`'sha256-…'`): the one inline script or style it allows."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def content_security_policy(*, styles: Sequence[str], scripts: Sequence[str] = ()) -> str:
    """The policy of a page whose inline `<style>`s are `styles` and `<script>`s `scripts`
    (each exactly as written between its tags): nothing else runs, images only from beside
    the page, and nothing at all from anywhere else (`default-src 'none'`)."""
    script_src = " ".join(digest(s) for s in scripts) or "'none'"
    style_src = " ".join(digest(s) for s in styles) or "'none'"
    return (f"default-src 'none'; script-src {script_src}; style-src {style_src}; "
            f"img-src {IMAGE_SOURCES}")


def policy_meta(policy: str) -> str:
    """The `<meta>` element that puts `policy` in force; it must come before any content."""
    return f'<meta http-equiv="Content-Security-Policy" content="{html.escape(policy)}">\n'
