"""Validating a spec reads provider facts only: no HTTP client and no adapter is imported, in a
fresh interpreter, through the public loader and through `nbp validate` (and `nbp plan`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nbp.providers import registry

REPO = Path(__file__).resolve().parents[3]
SPECS = sorted(str(p.relative_to(REPO)) for p in (REPO / "specs").glob("*.yaml"))
# What a client needs and facts must not: the HTTP stack and every adapter module.
CLIENT_MODULES = sorted(
    {"httpx", "httpcore", "nbp.providers.adapter", "nbp.providers.http"}
    | {target.partition(":")[0] for target in registry.known_implementations.values()}
)

PROBE = """
import json, sys
{load}
loaded = sorted(m for m in sys.modules if m in {client!r})
facts = sorted(m for m in sys.modules if m.startswith("nbp.providers.") and m.endswith("_facts"))
print(json.dumps({{"loaded": loaded, "facts": facts}}))
"""


def _probe(load: str) -> dict[str, list[str]]:
    code = PROBE.format(load=load, client=CLIENT_MODULES)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=120).stdout
    found: dict[str, list[str]] = json.loads(out.strip().splitlines()[-1])
    return found


def test_the_specs_folder_has_specs_to_validate() -> None:
    assert "specs/demo.yaml" in SPECS and len(SPECS) >= 3


@pytest.mark.parametrize("spec", SPECS)
def test_validating_and_loading_a_spec_imports_no_http_client_nor_adapter(spec: str) -> None:
    load = (
        "from nbp.flows.spec.loader import load_spec, validate_spec_file\n"
        f"assert validate_spec_file({spec!r}) == [], 'the example spec is valid'\n"
        f"load_spec({spec!r})"
    )
    found = _probe(load)
    assert found["loaded"] == []
    assert found["facts"]  # the providers' limits were read: from their facts modules


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_nbp_validate_and_plan_import_no_http_client_nor_adapter(command: str) -> None:
    load = (
        "from nbp.flows.cli import main\n"
        "try:\n"
        f"    main([{command!r}, 'specs/demo.yaml'])\n"
        "except SystemExit as stop:\n"
        "    assert not stop.code, stop.code"
    )
    found = _probe(load)
    assert found["loaded"] == []
    assert "nbp.providers.kie_facts" in found["facts"]  # specs/demo.yaml runs on kie


def test_planning_per_provider_and_model_reads_facts_only() -> None:
    """The plan's model ids come from the providers' facts, not their adapters."""
    load = (
        "from nbp.flows.cli import main\n"
        "try:\n"
        "    main(['plan', '--offline', 'specs/experiment-axes.yaml'])\n"
        "except SystemExit as stop:\n"
        "    assert not stop.code, stop.code"
    )
    found = _probe(load)
    assert found["loaded"] == []
    assert {"nbp.providers.gemini_facts", "nbp.providers.runware_facts"} <= set(found["facts"])
