"""Output paths: template values made safe by one readable, injective encoding.

Output paths are templates filled with prompts and dataset values, so any character can
arrive. The template's own text is the job's layout (its `/` separate folders) and is checked
once (`template_text_problem`); every value goes through `encode_segment`, the same on every
target, which keeps it readable and escapes only what could change the layout or mean
something to a filesystem or to fsspec, as `%XX` (UTF-8 bytes, upper-case hex):

- separators `/` and `\\` (a value never makes folders: `TSH/RED XL` -> `TSH%2FRED XL`);
- `%` itself (so the encoding can be undone, hence injective: two values, two paths);
- `:` (a drive letter or a protocol to `outputs.sink.check_relative`, which refuses it in a
  first folder; an NTFS stream separator);
- `*`, `?`, `[` (glob patterns to fsspec: `fs.cat` of a list, `rm`, `copy` and `mv` expand
  them; `?versionId=` is a version to s3fs);
- control characters (C0, DEL, C1), line and paragraph separators and bidi controls (a name
  that prints as another);
- a leading or trailing space or dot (`.` and `..` never climb, a value never makes a hidden
  file or nbp's own `.nbp/`, and Windows, which drops trailing dots and spaces, never makes two
  values one file).

Everything else stays as it is: `ÉTÉ-Ünï` stays `ÉTÉ-Ünï`, `4:5` becomes `4%3A5`. A path is
then checked whole (`check_output_path`): no empty, `.` or `..` folder, no name longer than
`MAX_COMPONENT_BYTES`. Case is not changed: paths that differ only in case (or in Unicode
normalisation) are one file on macOS and Windows, so validation refuses them (`fold_case`).

    >>> encode_segment("../../etc")
    '%2E.%2F..%2Fetc'
    >>> decode_segment(encode_segment("TSH/RED XL"))
    'TSH/RED XL'
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence

# 255 bytes: a file name's limit on ext4, APFS and NTFS (in bytes or UTF-16 units: a UTF-8
# byte count bounds both). outputs.sink writes a local file as `.{name}.nbp-tmp-{32 hex}`
# first (42 bytes more), so a name may have 213 bytes; 200 leaves room to spare.
MAX_COMPONENT_BYTES = 200
_CONTROLS = "\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_ESCAPED = re.compile(f"[%/\\\\:*?\\[{_CONTROLS}]")
_EDGES = " ."
_ESCAPE_RUN = re.compile(r"(?:%[0-9A-F]{2})+")
# What the template's own text may not hold: what values have escaped (but `/`, its folders)
_TEXT_REFUSED = re.compile(f"[%\\\\:*?\\[{_CONTROLS}]")


def _percent(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode())


def encode_segment(value: str) -> str:
    """`value` as text inside one path component: readable, and never the encoding of
    another value (`decode_segment` undoes it)."""
    if _ESCAPED.search(value) is None and value[:1] not in _EDGES and value[-1:] not in _EDGES:
        return value  # most values: nothing to escape (a SKU, a style)
    return _escaped(value)


@functools.lru_cache(maxsize=4096)  # `1:1` and the like: the same few values in every cell
def _escaped(value: str) -> str:
    text = _ESCAPED.sub(lambda m: _percent(m.group()), value)
    if text[:1] in _EDGES and text:
        text = _percent(text[0]) + text[1:]
    if text[-1:] in _EDGES and text:
        text = text[:-1] + _percent(text[-1])
    return text


def decode_segment(text: str) -> str:
    """The value `encode_segment` made `text` from."""
    return _ESCAPE_RUN.sub(
        lambda m: bytes.fromhex(m.group().replace("%", "")).decode(), text
    )


def template_text_problem(literals: Sequence[str]) -> str | None:
    """Why the text of an output path template around its placeholders (`literals`, in
    order) cannot be a path's layout, or None. It is the spec author's, so it is refused
    rather than rewritten; `.`, `..` and empty names are left to `check_output_path`."""
    if literals and literals[0].startswith("/"):
        return "output.path is relative to the target: it may not start with '/'"
    for text in literals:
        bad = _TEXT_REFUSED.search(text)
        if bad is not None:
            return (f"output.path may not hold {_shown(bad.group())} outside its placeholders "
                    "(only '/' separates folders; values are escaped, the path's own text "
                    "is not)")
    return None


def check_output_path(path: str) -> None:
    """Raise ValueError unless `path` (a rendered template) is a relative path whose every
    folder and file name is non-empty, not `.` or `..`, and at most `MAX_COMPONENT_BYTES`."""
    for part in path.split("/"):
        if part in ("", ".", ".."):
            shown = "an empty" if not part else f"a {part!r}"
            raise ValueError(f"output path {path!r} has {shown} folder or file name")
        size = len(part.encode())
        if size > MAX_COMPONENT_BYTES:
            raise ValueError(
                f"output path {path!r} has a name of {size:,} bytes; nbp writes names of at "
                f"most {MAX_COMPONENT_BYTES} (filesystems take 255, with room for a temporary "
                "name): use shorter values in output.path, e.g. a key instead of a title"
            )


def fold_case(path: str) -> str:
    """`path` as a filesystem that ignores case and Unicode normalisation sees it (APFS and
    HFS+ by default, NTFS, SMB shares): two paths with one folded form are one file there."""
    if path.isascii():
        return path.lower()
    return unicodedata.normalize("NFC", path).casefold()


def _shown(char: str) -> str:
    return repr(char) if char.isprintable() else f"U+{ord(char):04X}"
