"""Relative output paths that can never leave the target.

Output paths are templates filled with prompts and dataset values, so any character can
arrive: every component is reduced to a safe file name, and `..`, absolute paths, drive letters
and empty components disappear.
"""

from __future__ import annotations

import re
import unicodedata

MAX_COMPONENT_CHARS = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+@-]+")


def sanitise_relative_path(path: str) -> str:
    """A safe `a/b/c.png` from any string: separators kept, everything else made harmless.

    >>> sanitise_relative_path("../../etc/passwd")
    'etc/passwd'
    >>> sanitise_relative_path("Red: shoes / 4:5_1K.png")
    'Red_shoes/4_5_1K.png'
    """
    parts = []
    for raw in re.split(r"[/\\]+", path):
        text = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode()
        part = _UNSAFE.sub("_", text.strip()).strip("_ ")
        if not part.strip("."):
            continue
        if part.startswith("."):  # never a hidden file, never a bare extension
            part = "_" + part
        if len(part) > MAX_COMPONENT_CHARS:
            stem, dot, ext = part.rpartition(".")
            keep = MAX_COMPONENT_CHARS - len(ext) - 1
            part = f"{stem[:keep]}.{ext}" if dot and len(ext) <= 8 else part[:MAX_COMPONENT_CHARS]
        parts.append(part)
    if not parts:
        raise ValueError(f"output path {path!r} has no usable file name")
    return "/".join(parts)
