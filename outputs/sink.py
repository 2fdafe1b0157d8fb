"""One job target on any fsspec filesystem: atomic writes, no clobbering, no escaping the root.

    sink = Sink("s3://bucket/runs/spring", {"anon": False})
    sink.write_bytes("sku-1/4_5_1K.png", data, overwrite=False)   # -> "s3://bucket/runs/..."

Atomicity, by filesystem:
- local disk: the bytes go to a hidden temp file in the destination folder, are fsynced, then
  renamed into place (`os.replace`; `os.link` when the file must not exist yet, which fails
  atomically if another writer got there first). A reader sees the old file or the new one.
- object stores (s3, gcs, azure, memory, ...): one `pipe_file`, i.e. a single PUT, which the
  store commits whole; `mode="create"` makes "do not overwrite" a server-side precondition
  (S3 `If-None-Match: *`) where the store has one, and an exists-check where it has not.
  On s3 and gcs the PUT carries a Content-Type, so index.html opens in a browser.

Relative paths are checked, not rewritten: templated paths are made safe upstream by
`outputs.paths.sanitise_relative_path`; here anything that could leave the target (`..`,
absolute paths, URLs, backslashes) is refused with `ValueError`. All methods are synchronous
and thread-safe (the runner calls them through `asyncio.to_thread`).
"""

from __future__ import annotations

import contextlib
import json
import mimetypes
import os
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import fsspec.core
from fsspec.implementations.local import LocalFileSystem

from nbp.outputs.layout import TEMP_MARKER, in_state


class FilesystemMissing(ImportError):
    """A URL's protocol needs a Python package that is not installed (`gs://` needs gcsfs):
    `package` is the module to install, when fsspec's error names it."""

    def __init__(self, url: str, protocol: str, package: str | None, detail: str) -> None:
        super().__init__(f"{url}: {protocol}:// needs the Python package {package}, which is "
                         "not installed" if package else f"{url}: {detail}")
        self.url, self.protocol, self.package = url, protocol, package

    @classmethod
    def of(cls, url: str, exc: ImportError) -> FilesystemMissing:
        """The fsspec `ImportError` that opening `url` raised, told as which protocol of it
        needs which package."""
        cause = exc.__cause__
        package = cause.name if isinstance(cause, ImportError) and cause.name else None
        protocol = next((p for p in _protocols(url) if not _importable(p)), "this")
        return cls(url, protocol, package and package.split(".")[0], str(exc))


def _protocols(url: str) -> list[str]:
    """The protocols of a (possibly chained, `zip://a::s3://b`) fsspec URL."""
    found = (fsspec.core.split_protocol(part)[0] for part in url.split("::"))
    return [p for p in found if p]


def _importable(protocol: str) -> bool:
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError:
        return False
    except ValueError:  # not a protocol fsspec knows: not what failed to import
        return True
    return True


class Sink:
    """A target folder (`target` is any fsspec URL or local path) seen through fsspec."""

    def __init__(self, target: str, storage_options: Mapping[str, Any] | None = None) -> None:
        if not target:
            raise ValueError("empty output target")
        self.target = target
        try:
            fs, root = fsspec.core.url_to_fs(target, **dict(storage_options or {}))
        except ImportError as exc:
            raise FilesystemMissing.of(target, exc) from None
        self.fs: Any = fs
        self.root: str = root.rstrip("/") or root
        self.local = isinstance(fs, LocalFileSystem)

    def __repr__(self) -> str:  # storage options may hold credentials: never shown
        return f"Sink({self.target!r})"

    # -- paths -------------------------------------------------------------------------------

    def path(self, rel: str) -> str:
        """The filesystem path (no protocol) of `rel`, after checking it stays inside the root."""
        check_relative(rel)
        return f"{self.root}/{rel}" if self.root != "/" else f"/{rel}"

    def uri(self, rel: str) -> str:
        """Full location of `rel`: an absolute path for local targets, else a URL (`s3://...`)."""
        path = self.path(rel)
        return path if self.local else str(self.fs.unstrip_protocol(path))

    # -- bytes -------------------------------------------------------------------------------

    def write_bytes(
        self, rel: str, data: bytes, *, overwrite: bool, durable: bool = True
    ) -> str:
        """Write `data` at `rel` atomically; returns `uri(rel)`.

        Raises FileExistsError when `overwrite` is false and the file exists (also when another
        writer creates it concurrently, on local disks and stores with conditional writes).
        `durable=False` skips the fsync on local disks, for markers whose loss in a power cut
        is harmless (a claim or heartbeat of a process that died with the machine).
        """
        path = self.path(rel)
        if self.local:
            _write_local(path, data, overwrite=overwrite, durable=durable)
            return self.uri(rel)
        extra = self._content_type(rel)
        if overwrite:
            self.fs.pipe_file(path, data, **extra)
        else:
            self.fs.pipe_file(path, data, mode="create", **extra)
        return self.uri(rel)

    def write_chunks(self, rel: str, chunks: Iterable[bytes], *, overwrite: bool) -> str:
        """`write_bytes` for content made piece by piece (a page, a file read in blocks): on
        a local disk the pieces go straight to the temp file and are never all in memory;
        elsewhere they are joined for the one atomic PUT."""
        if not self.local:
            return self.write_bytes(rel, b"".join(chunks), overwrite=overwrite)
        _write_local(self.path(rel), chunks, overwrite=overwrite)
        return self.uri(rel)

    def _content_type(self, rel: str) -> dict[str, str]:
        """Content-Type for stores that serve files over HTTP, so a browser opens index.html
        from the bucket instead of downloading it (the default is binary/octet-stream)."""
        kind = mimetypes.guess_type(rel)[0]
        if kind is None:
            return {}
        if kind.startswith("text/"):
            kind += "; charset=utf-8"
        protocol = self.fs.protocol
        protocols = {protocol} if isinstance(protocol, str) else set(protocol)
        if protocols & {"s3", "s3a"}:
            return {"ContentType": kind}
        if protocols & {"gs", "gcs"}:
            return {"content_type": kind}
        return {}

    def read_bytes(self, rel: str) -> bytes | None:
        """The content of `rel`, or None when there is no such file."""
        try:
            data: bytes = self.fs.cat_file(self.path(rel))
        except (FileNotFoundError, IsADirectoryError):
            return None
        return data

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def delete(self, rel: str) -> None:
        """Remove `rel`; a missing file is not an error."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(rel))

    # -- JSON --------------------------------------------------------------------------------

    def put_json(self, rel: str, obj: Any, *, durable: bool = True) -> None:
        """Write `obj` as JSON at `rel` (atomic, replaces any previous version)."""
        data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        self.write_bytes(rel, data, overwrite=True, durable=durable)

    def get_json(self, rel: str) -> Any | None:
        data = self.read_bytes(rel)
        return None if data is None else json.loads(data)

    def json_names(self, rel_dir: str) -> set[str]:
        """Names (without `.json`) of the JSON files directly in `rel_dir`: one listing."""
        base = self.path(rel_dir)
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return set()
        names = (str(p).rsplit("/", 1)[-1] for p in found)
        return {n[: -len(".json")] for n in names if n.endswith(".json") and TEMP_MARKER not in n}

    def read_bytes_many(self, rels: Iterable[str]) -> dict[str, bytes]:
        """`rel -> content` for those of `rels` that exist, in one batched read."""
        strip = self.fs._strip_protocol
        paths = {strip(self.path(rel)): rel for rel in rels}
        if not paths:
            return {}
        contents: Mapping[str, bytes] = self.fs.cat(list(paths), on_error="omit")
        return {paths[strip(path)]: data for path, data in contents.items()}

    def listing(self) -> set[str]:
        """Every file under the target outside `.nbp/`, relative to it: one recursive
        listing (which images are still there)."""
        root = self.fs._strip_protocol(self.root).rstrip("/")
        self.fs.invalidate_cache(self.root)
        try:
            found = self.fs.find(self.root)
        except FileNotFoundError:
            return set()
        relative = (str(self.fs._strip_protocol(p))[len(root) + 1:] for p in found)
        return {rel for rel in relative if rel and not in_state(rel)
                and TEMP_MARKER not in rel}

    def list_json(self, rel_dir: str) -> list[Any]:
        """Every `*.json` file under `rel_dir` (recursively), parsed, in path order.

        One listing plus one batched read (`fs.cat` fetches concurrently on object stores), so
        thousands of journal entries cost a few round trips, not thousands. Files that vanish
        between listing and reading are skipped; a missing folder gives [].
        """
        base = self.path(rel_dir)
        self.fs.invalidate_cache(base)  # another process may have added entries since
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        names = sorted(p for p in found if p.endswith(".json") and TEMP_MARKER not in p)
        if not names:
            return []
        contents: Mapping[str, bytes] = self.fs.cat(names, on_error="omit")
        return [json.loads(contents[name]) for name in names if name in contents]


def file_location(out: str, default_name: str) -> tuple[Sink, str]:
    """The folder (a Sink, for its atomic write) and file name of one file nbp writes at
    `out` (`nbp export --out`, `nbp compare --out`): a local path or any fsspec URL; a folder
    (an existing one, or any ending in `/`) gets `default_name` in it. `ValueError` (or
    `ImportError`, a protocol whose package is missing) when it is no place for a file."""
    protocol, path = fsspec.core.split_protocol(out)
    if path.endswith("/") or (protocol is None and os.path.isdir(path)):
        path = path.rstrip("/") + "/" + default_name
    if protocol in (None, "file", "local"):
        folder, name = os.path.split(os.path.abspath(path))
    else:
        parent, _, name = path.rpartition("/")
        folder = f"{protocol}://{parent}"
    check_relative(name)
    return Sink(folder), name


def check_relative(rel: str) -> None:
    """Refuse any relative path that is empty, absolute, a URL or could climb out of the root."""
    if not rel or rel.startswith("/") or "\\" in rel or "\0" in rel or "://" in rel:
        raise ValueError(f"not a safe relative path: {rel!r}")
    if any(part in ("", ".", "..") for part in rel.split("/")):
        raise ValueError(f"not a safe relative path: {rel!r}")
    if ":" in rel.split("/", 1)[0]:  # "C:" drive letters, "s3:" without slashes
        raise ValueError(f"not a safe relative path: {rel!r}")


def _write_local(
    path: str, data: bytes | Iterable[bytes], *, overwrite: bool, durable: bool = True
) -> None:
    """Temp file in the same folder + fsync + rename: the final name only ever holds whole files."""
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(path)
    temp = os.path.join(folder, f".{name}{TEMP_MARKER}{uuid.uuid4().hex}")
    try:
        with open(temp, "xb") as handle:
            for chunk in (data,) if isinstance(data, bytes) else data:
                handle.write(chunk)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        if overwrite:
            os.replace(temp, path)
        else:
            _link_exclusive(temp, path)
    finally:
        if os.path.lexists(temp):
            os.unlink(temp)


def _link_exclusive(temp: str, path: str) -> None:
    """Give `temp` the name `path` unless `path` exists (atomically where hard links exist)."""
    try:
        os.link(temp, path)  # FileExistsError if another writer won the race
    except FileExistsError:
        raise
    except OSError:  # no hard links on this filesystem: best effort
        if os.path.lexists(path):
            raise FileExistsError(path) from None
        os.replace(temp, path)
