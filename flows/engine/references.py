"""Reference images as providers receive them: http(s) URLs pass through, anything else
(local paths, fsspec URLs) is read once and handed to the adapter as bytes to upload.

The run checks every reference again, with the rule `nbp validate` applies
(`flows.spec.inputs.check_location`), because a file can change between the two: a local
file must still lie under the spec's folder or an allowed path once symlinks are resolved,
an fsspec URL must use an allowed protocol and no `::` chaining, and at most
`InputPolicy.max_reference_bytes` (20 MiB by default) are read. A reference that breaks a
rule, or cannot be read, raises `ReferenceRefused`, a `Rejected`: that cell fails, the run
goes on.

http(s) references are the provider's to fetch; nbp never reads them here. Once the run has
asked them (`flows.engine.reference_check.check_references`) and handed the answers over
(`use_check`), one that did not answer, or was not asked, raises `ReferenceRefused` too:
its cell fails before anything is created or paid for (`reference_check.payable_problem`).

    loader = ReferenceLoader.for_spec(job.spec)
    loader.load("HTTP://cdn.example.com/a.jpg")   # Reference("http://cdn.example.com/a.jpg")
    loader.load("/etc/passwd")                    # raises ReferenceRefused
    loader.use_check(await check_references(http_references(job.cells), job.spec.policy))
    loader.load("https://cdn.example.com/gone.jpg")  # raises ReferenceRefused: answers 404
"""

from __future__ import annotations

import mimetypes
import os
import stat
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import fsspec

from nbp.flows.engine.reference_check import ReferenceState, payable_problem
from nbp.flows.spec.inputs import InputPolicy, InputRefused, check_location, is_http, split_protocol
from nbp.flows.spec.model import JobSpec
from nbp.providers.base import Reference
from nbp.providers.errors import Rejected

_CACHE_ENTRIES = 256
_CACHE_BYTES = 256 << 20  # a catalog's photos, not 256 references of 20 MiB each


class ReferenceRefused(Rejected):
    """A reference image nbp will not send: outside the allowed places, over the size
    limit, or unreadable. Never retried; the cell fails with this message."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="reference_refused")


class ReferenceLoader:
    """Loads reference images, keeping the most recently used in memory (at most 256 or
    256 MiB): a catalog job reuses each product photo for every ratio and resolution.

    `base_dir` is the spec's folder; without it (the bare constructor) local files are not
    confined to any folder, only the protocol and size rules apply. Use `for_spec`."""

    def __init__(
        self,
        storage_options: Mapping[str, Any] | None = None,
        *,
        base_dir: str | None = None,
        policy: InputPolicy | None = None,
    ) -> None:
        self.storage_options = dict(storage_options or {})
        self.base_dir = base_dir
        self.policy = policy or InputPolicy()
        self._cache: OrderedDict[str, Reference] = OrderedDict()
        self._cached_bytes = 0
        self._checked: Mapping[str, ReferenceState] | None = None

    def use_check(self, states: Mapping[str, ReferenceState]) -> None:
        """From now on an http(s) reference is sent only when `states` says it answered
        (`reference_check.payable_problem`); one missing from `states` was not asked and
        is refused too."""
        self._checked = states

    @classmethod
    def for_spec(
        cls, spec: JobSpec, storage_options: Mapping[str, Any] | None = None
    ) -> ReferenceLoader:
        """A loader with the folder and the `InputPolicy` the spec was validated under."""
        return cls(storage_options, base_dir=spec.base_dir, policy=spec.policy)

    def load(self, uri: str) -> Reference:
        """The reference to send for `uri`; raises `ReferenceRefused`."""
        location = self.check(uri)
        if is_http(location):
            if self._checked is not None:
                problem = payable_problem((location,), self._checked)
                if problem is not None:
                    raise ReferenceRefused(problem)
            return Reference(location)
        cached = self._cache.get(location)
        if cached is not None:
            self._cache.move_to_end(location)
            return cached
        data = self.read(uri, location)
        mime = mimetypes.guess_type(location)[0] or "image/png"
        reference = Reference(location, data=data, mime_type=mime)
        self._remember(location, reference)
        return reference

    def check(self, uri: str) -> str:
        """`uri` as it will be read (protocol in lower case, local paths absolute)."""
        try:
            # without a folder every local path is allowed: "/" holds them all
            return check_location(uri, base_dir=self.base_dir or os.sep, policy=self.policy)
        except InputRefused as exc:
            raise ReferenceRefused(str(exc)) from None

    def read(self, uri: str, location: str) -> bytes:
        limit = self.policy.max_reference_bytes
        if split_protocol(location)[0] is None:
            # the file that was checked, not whatever a symlink points to a moment later
            location = os.path.realpath(location)
            self._check_file(uri, location, limit)
        try:
            with fsspec.open(location, "rb", **self.storage_options) as handle:
                data: bytes = handle.read(limit + 1)
        except FileNotFoundError:
            raise ReferenceRefused(f"reference image {uri!r} does not exist") from None
        except (OSError, ValueError, ImportError) as exc:
            raise ReferenceRefused(f"cannot read reference image {uri!r}: {exc}") from None
        if len(data) > limit:
            raise ReferenceRefused(
                f"reference image {uri!r} is larger than {limit:,} bytes, the most nbp reads "
                "(InputPolicy.max_reference_bytes)"
            )
        return data

    @staticmethod
    def _check_file(uri: str, path: str, limit: int) -> None:
        try:
            info = os.stat(path)
        except FileNotFoundError:
            raise ReferenceRefused(f"reference image {uri!r} does not exist") from None
        except OSError as exc:
            raise ReferenceRefused(f"cannot read reference image {uri!r}: {exc}") from None
        if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
            raise ReferenceRefused(f"reference image {uri!r} is not a regular file")
        if info.st_size > limit:
            raise ReferenceRefused(
                f"reference image {uri!r} is {info.st_size:,} bytes, more than the "
                f"{limit:,} nbp reads (InputPolicy.max_reference_bytes)"
            )

    def _remember(self, key: str, reference: Reference) -> None:
        self._cache[key] = reference
        self._cached_bytes += len(reference.data or b"")
        while self._cache and (
            len(self._cache) > _CACHE_ENTRIES or self._cached_bytes > _CACHE_BYTES
        ):
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= len(old.data or b"")
