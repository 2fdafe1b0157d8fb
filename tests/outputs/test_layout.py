"""nbp.outputs.layout is the one place that spells a target's `.nbp/` paths: this test reads every
string in the code of flows/, outputs/ and providers/ (docstrings aside) and fails on any
other module that writes one out."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbp.outputs import layout
from nbp.outputs.layout import STATE_DIR, TEMP_MARKER, in_state

ROOT = Path(__file__).resolve().parents[2]
OWNER = ROOT / "outputs" / "layout.py"


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _spells_layout(text: str) -> bool:
    return text == STATE_DIR or f"{STATE_DIR}/" in text or TEMP_MARKER in text


def _spelled(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(), str(path))
    docs = _docstrings(tree)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in docs and _spells_layout(node.value)):
            yield f"{path.name}:{node.lineno}: {node.value!r}"


def _sources() -> list[Path]:
    return [path for package in ("flows", "providers", "outputs")
            for path in sorted((ROOT / package).rglob("*.py")) if path != OWNER]


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_layout_spells_the_state_folder(path: Path) -> None:
    assert list(_spelled(path)) == []


def test_the_checker_sees_literals_and_f_strings_but_not_docstrings(tmp_path: Path) -> None:
    """A test that cannot fail is a defect: a path written out, in a plain string or an
    f-string, is caught; a docstring that names the folder is not."""
    module = tmp_path / "m.py"
    module.write_text('"""Keeps `.nbp/cells/`."""\n'
                      'A = ".nbp/claims"\n'
                      'def f(x):\n'
                      '    """Reads .nbp/runs."""\n'
                      '    return f".nbp/holders/{x}.json", ".nbp", f"a{x}.nbp-tmp-b"\n')
    assert sorted(_spelled(module)) == [
        "m.py:2: '.nbp/claims'", "m.py:5: '.nbp'", "m.py:5: '.nbp-tmp-b'",
        "m.py:5: '.nbp/holders/'",
    ]


PATHS = {name: value for name, value in vars(layout).items()
         if name.isupper() and name not in ("STATE_DIR", "TEMP_MARKER")}


def test_every_path_is_in_the_state_folder_and_distinct() -> None:
    assert PATHS and all(in_state(path) for path in PATHS.values())
    assert len(set(PATHS.values())) == len(PATHS)
    assert layout.JOURNAL_DIR == ".nbp/cells"  # a contract: durable state under {target}/.nbp/
    assert layout.TARGET_KIND == ".nbp/target.json"


@pytest.mark.parametrize(("rel", "inside"), [
    pytest.param(".nbp/cells/a.json", True, id="journal-entry"),
    pytest.param(".nbp", False, id="the-folder-name-itself"),
    pytest.param(".nbpx/a.png", False, id="a-neighbour"),
    pytest.param("a/.nbp/b.png", False, id="deeper"),
])
def test_in_state(rel: str, inside: bool) -> None:
    assert in_state(rel) is inside
