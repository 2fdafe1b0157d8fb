"""Every adapter module reads the same way (same sections, same order, the contract methods in
contract order), and the provider package keeps its dependencies where they belong."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from nbp.providers import registry
from nbp.providers.adapter import SECTIONS

ROOT = Path(__file__).resolve().parents[2]
# Module names of the built-in adapters ("gemini_batch"): a new one is held to the layout too.
ADAPTERS = [target.partition(":")[0].rpartition(".")[2]
            for target in registry.known_implementations.values()]
CONTRACT = ("prepare", "submit", "poll", "recover", "download", "cancel")


@pytest.mark.parametrize("name", ADAPTERS)
def test_adapter_modules_have_the_same_sections_in_the_same_order(name: str) -> None:
    source = (ROOT / "providers" / f"{name}.py").read_text()
    tree = ast.parse(source)
    docstring = ast.get_docstring(tree)
    assert docstring and "\n\nWire format: " in docstring  # the wire format in one paragraph
    sources = docstring.split("\n\nSources: ", 1)[-1]
    if name.startswith("gemini"):  # Google's own API: its own protocol notes, no seed
        assert "protocols-gemini.md" in sources
    else:
        assert "protocols.md" in sources and "seeds/" in sources
    assert [line for line in source.splitlines() if line.startswith("# -- ")] == list(SECTIONS)
    first_section = source.index(SECTIONS[0])
    last_import = max(n.end_lineno or 0 for n in tree.body
                      if isinstance(n, ast.Import | ast.ImportFrom))
    assert source[:first_section].count("\n") >= last_import  # imports come first
    adapter_at = source.index(SECTIONS[1])
    wire_at = source.index(SECTIONS[2])
    [adapter] = [n for n in tree.body if isinstance(n, ast.ClassDef)
                 and n.name.endswith("Provider")]
    class_at = sum(len(line) + 1 for line in source.splitlines()[: adapter.lineno - 1])
    assert adapter_at < class_at < wire_at
    methods = [n.name for n in adapter.body
               if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    contract = [m for m in methods if m in CONTRACT]
    assert contract == [m for m in CONTRACT if m in contract]  # in contract order ...
    rest = [m for m in methods if m != "__init__"]
    assert rest[: len(contract)] == contract  # ... and before the adapter's own helpers


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


# What a facts module may import: values and other facts, never a client or an adapter.
FACTS_MAY_IMPORT = ("__future__", "collections.abc", "dataclasses", "typing",
                    "nbp.providers.base", "nbp.providers.model")


@pytest.mark.parametrize("name", ADAPTERS)
def test_facts_modules_import_only_values_and_other_facts(name: str) -> None:
    tree = ast.parse((ROOT / "providers" / f"{name}_facts.py").read_text())
    docstring = ast.get_docstring(tree)
    assert docstring and "\n\nSources: " in docstring
    imported = [alias.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                for alias in n.names]
    imported += [n.module if n.module != "nbp.providers" else f"nbp.providers.{alias.name}"
                 for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                 for alias in n.names]
    assert all(m in FACTS_MAY_IMPORT or (m.startswith("nbp.providers.") and m.endswith("_facts"))
               for m in imported), imported


def test_only_the_conformance_suites_import_pytest() -> None:
    importers = sorted(
        str(path.relative_to(ROOT)) for path in (ROOT / "providers").rglob("*.py")
        if any(n == "pytest" or n.startswith("pytest.") for n in _imports(path))
    )
    assert importers == ["providers/batch_conformance.py", "providers/conformance.py"]


def test_what_spec_validation_reads_loads_no_http_client() -> None:
    probe = (
        "import sys, providers.limits, providers.options, providers.registry, providers.model;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('httpx', 'httpcore',"
        " 'pytest', 'starlette', 'uvicorn')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"
