"""What nbp accepts from a spec it did not write: size limits, and where inputs may be read.

A spec, its dataset and the values in it may come from someone else (a shared repository,
a catalog export), so validation is bounded and reads only from places the user allowed:

    policy = InputPolicy(allow_paths=("/data/photos",), max_cells=50_000)
    load_job("specs/catalog.yaml", policy=policy)
    check_location("HTTP://cdn.example.com/a.jpg", base_dir=".", policy=policy)
    # -> "http://cdn.example.com/a.jpg" (passed to the provider as it is)
    check_location("/etc/passwd", base_dir="specs", policy=policy)
    # -> raises InputRefused: outside the spec's folder and every allowed path

Where a reference image or a dataset may come from (`check_location`):

- http(s) URLs, any case of the scheme (`HTTP://x` becomes `http://x`): passed to the
  provider as they are (a dataset is read from them);
- local paths, after resolving `~`, `..` and symlinks, under the spec file's folder or under
  a folder of `InputPolicy.allow_paths` (`--allow-path DIR`);
- other fsspec URLs only for the protocols of `InputPolicy.allow_protocols`
  (`DEFAULT_PROTOCOLS`: s3, gs, gcs, az, abfs, memory) whose package is installed, and never
  chained with `::` (`simplecache::http://...` could reach anything).

The limits, all documented defaults of `InputPolicy`, keep `nbp validate` within about a
second and a few hundred MB whatever the spec holds.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

MB = 1_000_000
MiB = 1 << 20
DEFAULT_PROTOCOLS = ("s3", "gs", "gcs", "az", "abfs", "memory")
HTTP_PROTOCOLS = ("http", "https")
LOCAL_PROTOCOLS = ("file", "local")
MAX_CELLS_ENV = "NBP_MAX_CELLS"
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")


@dataclass(frozen=True)
class InputPolicy:
    """Every limit on untrusted input, with its documented default.

        InputPolicy()                                   # the defaults below
        InputPolicy(allow_paths=("/mnt/photos",))       # local files there are fine too
        InputPolicy.from_environ()                      # max_cells from NBP_MAX_CELLS
    """

    allow_paths: tuple[str, ...] = ()
    """Folders besides the spec's own from which local references and datasets may be read
    (`--allow-path DIR`); relative ones resolve against the working directory."""
    allow_protocols: tuple[str, ...] = DEFAULT_PROTOCOLS
    """fsspec protocols a reference or dataset URL may use; http(s) is always allowed."""
    max_cells: int = 1_000_000
    """Cells a job may have: the matrix product before `exclude`, plus one per `include`
    entry, times dataset rows, times `repeat` (`--max-cells N`, `NBP_MAX_CELLS`)."""
    max_spec_bytes: int = 1 * MB
    """Size of the spec file."""
    max_yaml_values: int = 100_000
    """Values (scalars, lists, mappings) in the spec, counting every use of a YAML alias
    as a copy: a 400-byte alias bomb would otherwise expand to 10^9 values."""
    max_yaml_depth: int = 64
    """Nesting of lists and mappings in the spec."""
    max_dataset_rows: int = 1_000_000
    """Rows of the dataset."""
    max_dataset_bytes: int = 256 * MiB
    """Size of the dataset file."""
    max_reference_bytes: int = 20 * MiB
    """Size of one reference image read from a file or an fsspec URL (checked by
    `validate` for local files, and again by the run, which fails that cell)."""

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, **changes: Any
    ) -> InputPolicy:
        """The defaults, `max_cells` from `NBP_MAX_CELLS` when set, then `changes`.
        Raises `ValueError` for a value that is not a positive integer."""
        env = os.environ if environ is None else environ
        policy = cls()
        raw = env.get(MAX_CELLS_ENV, "").strip()
        if raw:
            policy = replace(policy, max_cells=positive_int(raw, MAX_CELLS_ENV))
        return replace(policy, **changes)


def positive_int(text: str, what: str) -> int:
    """`text` as an integer >= 1 (underscores allowed: 2_000_000); `ValueError` otherwise."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{what}={text!r} is not a positive integer")
    return value


class InputRefused(ValueError):
    """nbp will not read this input; the message says why and what to do instead."""


def split_protocol(uri: str) -> tuple[str | None, str]:
    """(protocol in lower case, rest) of a URL, (None, uri) of anything else.

    >>> split_protocol("S3://bucket/a.png")
    ('s3', 'bucket/a.png')
    """
    match = _URL.match(uri)
    if match is None:
        return None, uri
    return match.group(1).lower(), uri[match.end():]


def is_http(uri: str) -> bool:
    """An http(s) URL, in any case."""
    return split_protocol(uri)[0] in HTTP_PROTOCOLS


def check_location(
    uri: str, *, base_dir: str, policy: InputPolicy, what: str = "reference"
) -> str:
    """`uri` as nbp will use it: a URL with its protocol in lower case, or an absolute local
    path (`~` and `..` resolved, symlinks kept). Raises `InputRefused` for a place the
    policy does not allow (see the module docstring)."""
    protocol, rest = split_protocol(uri)
    if protocol in HTTP_PROTOCOLS:
        return f"{protocol}://{rest}"
    if "::" in uri:
        raise InputRefused(
            f"{what} {uri!r} chains fsspec protocols ('::'); name the file itself, "
            "with one protocol"
        )
    if protocol is not None and protocol not in LOCAL_PROTOCOLS:
        if protocol not in policy.allow_protocols:
            allowed = ", ".join(("http", "https", *policy.allow_protocols))
            raise InputRefused(
                f"{what} {uri!r}: protocol {protocol!r} is not allowed for inputs "
                f"(allowed: {allowed})"
            )
        missing = protocol_problem(protocol)
        if missing:
            raise InputRefused(f"{what} {uri!r}: {missing}")
        return f"{protocol}://{rest}"
    path = os.path.normpath(os.path.join(base_dir, os.path.expanduser(rest)))
    real = os.path.realpath(path)
    roots = allowed_roots(base_dir, policy)
    if not any(_inside(real, root) for root in roots):
        shown = f" (resolves to {real!r})" if real != path else ""
        raise InputRefused(
            f"{what} {uri!r}{shown} is outside the spec's folder {roots[0]!r}"
            + (f" and the allowed paths {', '.join(map(repr, roots[1:]))}" if roots[1:] else "")
            + "; move it under the spec's folder or allow its folder with --allow-path DIR"
        )
    return path


def allowed_roots(base_dir: str, policy: InputPolicy) -> list[str]:
    """The spec's folder, then every allowed path, each with symlinks resolved."""
    return [os.path.realpath(base_dir)] + [
        os.path.realpath(os.path.expanduser(root)) for root in policy.allow_paths
    ]


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def protocol_problem(protocol: str) -> str | None:
    """Why fsspec cannot use `protocol` here (not known, or its package is not installed),
    naming the package to install; None when it can. Outside packages are looked for, not
    imported (importing s3fs alone takes half a second)."""
    from fsspec.registry import get_filesystem_class, known_implementations, registry

    if protocol in LOCAL_PROTOCOLS or protocol in registry:
        return None
    known: Mapping[str, Mapping[str, str]] = known_implementations
    entry = known.get(protocol)
    if entry is None:
        close = difflib.get_close_matches(protocol, list(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown fsspec protocol {protocol!r}{hint}"
    module = entry["class"].rsplit(".", 1)[0]
    advice = entry.get("err") or f"install the package that provides {entry['class']}"
    if module.startswith("fsspec."):  # fsspec's own: importing it tells what it lacks
        try:
            get_filesystem_class(protocol)
        except ImportError:
            return f"protocol {protocol!r} needs a package that is not installed: {advice}"
        return None
    if _importable(module):
        return None
    package = module.split(".", 1)[0]
    return (
        f"protocol {protocol!r} needs a package that is not installed: {advice} "
        f"(pip install {package})"
    )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing
        return False
