"""Layers import one way only (design.md "Layout"); this test reads every import, including
the ones inside functions, and fails on any against the direction.

    flows.cli, flows.display          on top: may import anything below
    flows.orchestration               Prefect; may import engine, spec, providers, outputs
    flows.engine                      plain asyncio; never Prefect, orchestration, the CLI or
                                      the emulators (they reach it as a hook: RunHooks.emulation)
    flows.spec                        pure: no Prefect, HTTP client, asyncio or engine
    providers, outputs                never flows; an emulator never imports an adapter

Names here are the repository's folders; the code imports them under the installed name
(`nbp.flows.spec`), and a first-party import without `nbp.` is itself a violation: it would
load a second copy of the module, or a user's own `flows` package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# module prefix -> imports it must never make (prefix match on the dotted name)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "flows.spec": (
        "prefect", "httpx", "asyncio", "uvicorn", "starlette", "flows.engine",
        "flows.orchestration", "flows.cli", "flows.display", "providers.adapter",
        "providers.http", "providers.emulator",
    ),
    "flows.engine": ("prefect", "flows.orchestration", "flows.cli", "flows.display",
                     "providers.emulator"),
    "flows.orchestration": ("flows.cli", "flows.display"),
    "providers": ("flows", "prefect"),
    "outputs": ("flows", "providers", "prefect"),
}
# What the spec layer may read of providers (facts only, no clients).
SPEC_MAY_READ = ("providers.base", "providers.registry", "providers.model", "providers.errors",
                 "providers.limits", "providers.options")


def _modules() -> Iterator[tuple[str, Path]]:
    for package in ("flows", "providers", "outputs"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield name, path


FIRST_PARTY = ("flows", "providers", "outputs", "schemas")
NAMESPACE = "nbp."


def _imports(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """Every module `path` imports, by its name in the repository (`nbp.` taken off)."""
    for line, name in _absolute_imports(path, module):
        yield line, name.removeprefix(NAMESPACE)


def _absolute_imports(path: Path, module: str) -> Iterator[tuple[int, str]]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:  # `from flows import engine` imports flows.engine
                yield node.lineno, f"{base}.{alias.name}"


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _where(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def _outside_namespace(path: Path) -> list[str]:
    """Absolute first-party imports written without `nbp.`."""
    first: dict[int, str] = {}  # `from flows import x` names flows and flows.x: say it once
    for line, name in _absolute_imports(path, ""):
        if name.split(".")[0] in FIRST_PARTY:
            first.setdefault(line, name)
    return [f"{_where(path)}:{line}: imports {name} outside the nbp namespace"
            for line, name in first.items()]


def _violations(module: str, path: Path) -> list[str]:
    found = _outside_namespace(path)
    rules = [banned for prefix, banned in FORBIDDEN.items() if _matches(module, prefix)]
    for line, name in _imports(path, module):
        for banned in (b for group in rules for b in group):
            if _matches(name, banned) and not _matches(name, module):
                found.append(f"{_where(path)}:{line}: {module} imports {name}")
        if _matches(module, "flows.spec") and _matches(name, "providers") and not any(
            _matches(name, allowed) for allowed in SPEC_MAY_READ
        ) and name != "providers":
            found.append(f"{_where(path)}:{line}: spec layer imports {name}")
        if _matches(module, "providers.emulator") and _matches(name, "providers") and not (
            _matches(name, "providers.emulator") or name == "providers"
        ):
            found.append(f"{_where(path)}:{line}: emulator imports {name}")
    return found


@pytest.mark.parametrize(("module", "path"), list(_modules()), ids=lambda v: str(v))
def test_imports_follow_the_layers(module: str, path: Path) -> None:
    assert _violations(module, path) == []


@pytest.mark.parametrize("path", sorted(
    p for folder in ("tests", "bench") for p in (ROOT / folder).rglob("*.py")
), ids=lambda p: str(p.relative_to(ROOT)))
def test_tests_and_benchmarks_import_through_nbp(path: Path) -> None:
    assert _outside_namespace(path) == []


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    """A test that cannot fail is a defect: a hidden Prefect import in the engine is caught,
    so is the engine reaching for the emulators, an emulator importing the adapter it
    emulates, and a first-party import outside the `nbp` namespace."""
    engine = tmp_path / "job.py"
    engine.write_text("def f():\n    from prefect.blocks.system import Secret\n    return Secret\n")
    assert _violations("flows.engine.job", engine)[0] == (
        "job.py:2: flows.engine.job imports prefect.blocks.system"
    )
    emulating = tmp_path / "emulating.py"
    emulating.write_text("async def serve():\n    from nbp.providers.emulator import hub\n")
    assert _violations("flows.engine.job", emulating) == [
        "emulating.py:2: flows.engine.job imports providers.emulator",
        "emulating.py:2: flows.engine.job imports providers.emulator.hub",
    ]
    emulator = tmp_path / "kie.py"
    emulator.write_text("from nbp.providers import kie\n")
    assert _violations("providers.emulator.kie", emulator) == [
        "kie.py:1: emulator imports providers.kie"
    ]
    outside = tmp_path / "cells.py"
    outside.write_text("import flows.spec.model\nfrom nbp.flows.spec import model\n")
    assert _violations("flows.spec.cells", outside) == [
        "cells.py:1: imports flows.spec.model outside the nbp namespace"
    ]
