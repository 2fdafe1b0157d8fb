"""Values in output paths: one readable encoding, the same on every target, that never maps
two values to one name and never lets a value make a folder, climb or hide."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from nbp.outputs.paths import (
    MAX_COMPONENT_BYTES,
    check_output_path,
    decode_segment,
    encode_segment,
    fold_case,
    template_text_problem,
)
from nbp.outputs.sink import Sink, check_relative

# Characters that matter to the encoding, and ones that look like its escapes.
TRICKY = ["a", "A", ".", " ", "/", "\\", "%", "2", "F", ":", "*", "\x00", "\n", "é", "e\u0301",
          "\u202e"]
ADVERSARIAL = [
    "etc", "../../etc", "..%2F..%2Fetc", "%2E.%2F..%2Fetc", "a/b", "a%2Fb", "a%252Fb", "a\\b",
    "a%5Cb", ".", "..", "...", "%2E", "%2E%2E", " ", "%20", ".hidden", "%2Ehidden", "trailing.",
    "trailing%2E", "1:1", "1%3A1", "C:", "s3://bucket", "TSH/RED XL", "TSH%2FRED XL", "ÉTÉ-Ünï",
    "ETE-Uni", "a\x00b", "a%00b", "a\nb", "a%0Ab", "*", "%2A", "?versionId=1", "[ab]",
    "x\u202egnp.exe", ".nbp", "%", "%%", "%25", "",
]


def is_one_safe_name(text: str) -> bool:
    return (
        "/" not in text and "\\" not in text and text not in (".", "..")
        and text[:1] not in (" ", ".") and text[-1:] not in (" ", ".")
        and all(ch.isprintable() or ch == " " for ch in text)
        and "\u202e" not in text and not any(ch in text for ch in ":*?[")
    )


def test_every_short_string_of_tricky_characters_has_its_own_safe_name() -> None:
    """Exhaustive up to 3 characters over the characters the encoding treats specially and
    those its escapes are made of: injective, undone by decode_segment, one safe name."""
    seen: dict[str, str] = {}
    for size in range(4):
        for chars in itertools.product(TRICKY, repeat=size):
            value = "".join(chars)
            encoded = encode_segment(value)
            assert decode_segment(encoded) == value
            assert seen.setdefault(encoded, value) == value, (value, seen[encoded])
            if value:
                assert is_one_safe_name(encoded), (value, encoded)


def test_adversarial_values_are_distinct_names_that_decode_back() -> None:
    encoded = [encode_segment(value) for value in ADVERSARIAL]
    assert len(set(encoded)) == len(ADVERSARIAL)
    assert [decode_segment(text) for text in encoded] == ADVERSARIAL


@pytest.mark.parametrize(("value", "encoded"), [
    pytest.param("TSH/RED XL", "TSH%2FRED XL", id="separator-kept-readable"),
    pytest.param("ÉTÉ-Ünï", "ÉTÉ-Ünï", id="unicode-unchanged"),
    pytest.param("../../etc", "%2E.%2F..%2Fetc", id="traversal"),
    pytest.param("etc", "etc", id="plain"),
    pytest.param("a\\b", "a%5Cb", id="backslash"),
    pytest.param("50%", "50%25", id="percent"),
    pytest.param("1:1", "1%3A1", id="colon"),
    pytest.param("line\nbreak\ttab\x7f", "line%0Abreak%09tab%7F", id="controls"),
    pytest.param("\x85", "%C2%85", id="c1-control-as-utf8"),
    pytest.param("abc\u202egpj.exe", "abc%E2%80%AEgpj.exe", id="bidi-override"),
    pytest.param(".", "%2E", id="dot"),
    pytest.param("..", "%2E%2E", id="dot-dot"),
    pytest.param(" padded ", "%20padded%20", id="edge-spaces"),
    pytest.param("Inc.", "Inc%2E", id="trailing-dot"),
    pytest.param("a.b c", "a.b c", id="inner-dot-and-space"),
    pytest.param("*?[x]", "%2A%3F%5Bx]", id="glob"),
    pytest.param("SKU-001", "SKU-001", id="old-safe-value"),
])
def test_encoding(value: str, encoded: str) -> None:
    assert encode_segment(value) == encoded


def test_etc_and_a_climb_to_etc_are_two_files_inside_the_target(tmp_path: Path) -> None:
    sink = Sink(str(tmp_path / "target"))
    for value in ("etc", "../../etc", "a/b", "a%2Fb"):
        rel = f"{encode_segment(value)}/1%3A1_1K.png"
        check_output_path(rel)
        check_relative(rel)  # the sink takes it
        sink.write_bytes(rel, value.encode(), overwrite=False)
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert len(written) == 4
    assert all(p.resolve().is_relative_to((tmp_path / "target").resolve()) for p in written)
    assert {p.parent.name for p in written} == {"etc", "%2E.%2F..%2Fetc", "a%2Fb", "a%252Fb"}


@pytest.mark.parametrize("path", [
    pytest.param("/x.png", id="empty-first"),
    pytest.param("a//x.png", id="empty-middle"),
    pytest.param("a/", id="empty-last"),
    pytest.param("./x.png", id="dot"),
    pytest.param("a/../x.png", id="dot-dot"),
    pytest.param("a" * (MAX_COMPONENT_BYTES + 1), id="too-long"),
    pytest.param("é" * (MAX_COMPONENT_BYTES // 2 + 1), id="too-many-bytes"),
])
def test_unwritable_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match="output path"):
        check_output_path(path)


def test_a_name_of_the_longest_size_fits_with_the_sinks_temporary_name(tmp_path: Path) -> None:
    name = "x" * (MAX_COMPONENT_BYTES - 4) + ".png"
    check_output_path(f"a/{name}")
    Sink(str(tmp_path)).write_bytes(f"a/{name}", b"img", overwrite=False)
    assert (tmp_path / "a" / name).read_bytes() == b"img"


@pytest.mark.parametrize(("literals", "problem"), [
    pytest.param(("/abs/", ".png"), "may not start with '/'", id="absolute"),
    pytest.param(("", "\\", ".png"), "'\\\\'", id="backslash"),
    pytest.param(("", ":", ".png"), "':'", id="colon"),
    pytest.param(("", "%2F", ""), "'%'", id="percent"),
    pytest.param(("", "\t", ""), "U+0009", id="control"),
    pytest.param(("", "/", "_", ".", ""), None, id="folders-are-fine"),
])
def test_the_templates_own_text_is_checked_not_rewritten(
    literals: tuple[str, ...], problem: str | None
) -> None:
    found = template_text_problem(literals)
    assert (found is None) if problem is None else (found is not None and problem in found)


@pytest.mark.parametrize(("a", "b"), [
    ("SKU-1/x.png", "sku-1/x.png"),
    ("ÉTÉ/x.png", "été/x.png"),
    ("\u00e9/x.png", "e\u0301/x.png"),  # NFC and NFD: one file on macOS
    ("STRASSE.png", "straße.png"),
])
def test_fold_case_is_how_case_insensitive_filesystems_compare(a: str, b: str) -> None:
    assert a != b and fold_case(a) == fold_case(b)


def test_fold_case_keeps_what_differs_by_more_than_case() -> None:
    assert fold_case("a1/x.png") != fold_case("a2/x.png")
    assert fold_case("é/x.png") != fold_case("e/x.png")
