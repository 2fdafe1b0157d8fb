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

Which hosts nbp itself fetches from over http(s) (`fetch_target`, and `fetch_allowed` for
a yes or no: the one rule for an http dataset and for the reference check,
`flows.engine.reference_check`): only hosts whose every address is a public one, the host
name resolved first; never loopback, private, link-local (the cloud metadata service at
169.254.169.254), shared, multicast, reserved or unspecified addresses, unless
`InputPolicy.allow_private_hosts` (`--allow-private-hosts`). A value from someone else's
dataset must not make nbp probe the user's own network. http(s) references that only a
provider fetches are not judged by it: they leave from the provider's network, not yours.

    fetch_allowed("http://169.254.169.254/latest/meta-data/", policy)
    # -> "host 169.254.169.254 is a link-local address; nbp fetches only from public ..."

The limits, all documented defaults of `InputPolicy`, keep `nbp validate` within about a
second and a few hundred MB whatever the spec holds.
"""

from __future__ import annotations

import difflib
import importlib.util
import ipaddress
import os
import re
import socket
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

MB = 1_000_000
MiB = 1 << 20
DEFAULT_PROTOCOLS = ("s3", "gs", "gcs", "az", "abfs", "memory")
HTTP_PROTOCOLS = ("http", "https")
LOCAL_PROTOCOLS = ("file", "local")
MAX_CELLS_ENV = "NBP_MAX_CELLS"
HTTP_PORTS = {"http": 80, "https": 443}
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
    allow_private_hosts: bool = False
    """Let nbp fetch http(s) inputs from loopback, private and link-local hosts too
    (`--allow-private-hosts`): an emulator, a CDN on the office network. Off, a URL in
    someone else's dataset cannot make nbp probe the user's network (`fetch_allowed`)."""
    dataset: str | None = None
    """The dataset to read in place of the spec's `dataset.path` (`--dataset`, the flow's
    `dataset` parameter: this week's export): the user's own choice, so a local file there
    is allowed wherever it lies (give an absolute path or a URL)."""

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


Resolver = Callable[[str, int], Sequence[str]]
"""(host, port) -> the host's addresses, as text; raises `OSError` when it has none."""


def resolve_host(host: str, port: int) -> list[str]:
    """Every address the system resolver gives `host` (blocking: call it in a thread from
    async code)."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in found))


def address_problem(address: str) -> str | None:
    """Why nbp may not fetch from this IP address (which kind of non-public address it
    is), or None for a public one. An IPv4 address inside an IPv6 one (mapped, 6to4,
    Teredo) is judged as itself: `::ffff:127.0.0.1` is loopback."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # fe80::1%eth0: zone dropped
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is not None:
            return address_problem(str(inner))
    for kind, flag in (("loopback", ip.is_loopback), ("unspecified", ip.is_unspecified),
                       ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                       ("private", ip.is_private), ("reserved", ip.is_reserved)):
        if flag:
            return f"a {kind} address"
    if not ip.is_global:  # shared (100.64.0.0/10) and other special-purpose blocks
        return "not a public address"
    return None


@dataclass(frozen=True)
class FetchTarget:
    """Where a fetch of an allowed URL may connect: `addresses` are the host's checked
    addresses, to connect to exactly those (a name that resolves again a moment later
    could answer with a private one); empty under `allow_private_hosts` (connect by name)."""

    host: str
    port: int
    addresses: tuple[str, ...] = ()


class HostRefused(InputRefused):
    """nbp will not fetch from this host: not a public one, or it cannot be resolved."""


def fetch_target(
    url: str, policy: InputPolicy, *, resolve: Resolver = resolve_host
) -> FetchTarget:
    """Where nbp may connect to fetch `url` itself; raises `HostRefused` with the reason:
    not an http(s) URL, a host that cannot be resolved, or one with an address that is not
    public (`address_problem`) while `policy.allow_private_hosts` is off. Every address of
    the name counts, not only the first. The reason names the host, never the URL's path,
    query or user info (a signed URL's signature stays out of messages)."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        scheme, host = parts.scheme.lower(), (parts.hostname or "").rstrip(".")
    except ValueError:  # an unclosed [IPv6 address
        raise HostRefused("not a valid URL") from None
    if scheme not in HTTP_PORTS or not host:
        raise HostRefused("not an http(s) URL with a host")
    try:
        port = parts.port or HTTP_PORTS[scheme]
    except ValueError:
        raise HostRefused(f"host {host}: not a valid port") from None
    if policy.allow_private_hosts:
        return FetchTarget(host, port)
    literal = _is_ip(host)
    if literal or host == "localhost" or host.endswith(".localhost"):
        # `*.localhost` is loopback by RFC 6761, whatever a resolver answers for it
        addresses = [host if literal else "127.0.0.1"]
    else:
        try:
            addresses = list(dict.fromkeys(resolve(host, port)))
        except (OSError, UnicodeError) as exc:
            raise HostRefused(f"host {host} cannot be resolved ({_resolver_error(exc)})") \
                from None
        if not addresses:
            raise HostRefused(f"host {host} cannot be resolved (no address)")
    for address in addresses:
        problem = address_problem(address)
        if problem is not None:
            named = f"host {host}" if literal else f"host {host} resolves to {address}, which"
            raise HostRefused(f"{named} is {problem}; nbp fetches only from public hosts "
                              "unless you allow private ones (--allow-private-hosts)")
    return FetchTarget(host, port, tuple(addresses))


def fetch_allowed(
    url: str, policy: InputPolicy, *, resolve: Resolver = resolve_host
) -> str | None:
    """Why nbp may not fetch `url` itself (see `fetch_target`), or None when it may."""
    try:
        fetch_target(url, policy, resolve=resolve)
    except HostRefused as exc:
        return str(exc)
    return None


def _resolver_error(exc: BaseException) -> str:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return text or type(exc).__name__


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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
