"""Reference images as providers receive them: http(s) URLs pass through, anything else
(local paths, fsspec URLs) is read once and handed to the adapter as bytes to upload."""

from __future__ import annotations

import mimetypes
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import fsspec

from providers.base import Reference

_CACHE_ENTRIES = 256


class ReferenceLoader:
    """Loads reference images, keeping the most recently used few in memory: a catalog job
    reuses each product photo for every ratio and resolution of that product."""

    def __init__(self, storage_options: Mapping[str, Any] | None = None) -> None:
        self.storage_options = dict(storage_options or {})
        self._cache: OrderedDict[str, Reference] = OrderedDict()

    def load(self, uri: str) -> Reference:
        if uri.startswith(("http://", "https://")):
            return Reference(uri)
        cached = self._cache.get(uri)
        if cached is not None:
            self._cache.move_to_end(uri)
            return cached
        with fsspec.open(uri, "rb", **self.storage_options) as handle:
            data = handle.read()
        mime = mimetypes.guess_type(uri)[0] or "image/png"
        reference = Reference(uri, data=data, mime_type=mime)
        self._cache[uri] = reference
        if len(self._cache) > _CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return reference
