"""`pip install .` (not editable) gives one import name, `nbp`: the schema ships as package data,
and a Prefect project with its own `flows/` package still imports and deploys nbp's flow. A
run needs nothing of the dev extras (`make demo` installs without them)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """The wheel `pip wheel .` builds, and a folder it is installed into (`--target`)."""
    folder = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
         "-q", "-w", str(folder / "dist")],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((folder / "dist").glob("nbp-*.whl"))
    site = folder / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
         str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    yield wheel, site


def _python(code: str, *args: str, cwd: Path, site: Path,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -c code` seeing the installed wheel, not this checkout (cwd is elsewhere)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(site)},
        capture_output=True, text=True, timeout=180,
    )


def test_a_wheel_has_only_nbp_at_its_top_level(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names if not name.startswith("nbp-0")}
    assert top == {"nbp"}, sorted(top)
    assert "nbp/schemas/job.schema.json" in names
    assert "nbp/providers/emulator/kie.py" in names and "nbp/flows/cli.py" in names


def test_the_installed_package_validates_with_its_own_schema(
    installed: tuple[Path, Path], tmp_path: Path,
) -> None:
    _, site = installed
    check = _python(
        "import sys; import nbp.schemas; from nbp.flows.cli import main;"
        "assert nbp.schemas.__file__.startswith(sys.argv[1]), nbp.schemas.__file__;"
        "raise SystemExit(main(['validate', sys.argv[2]]))",
        str(site), str(ROOT / "specs" / "demo.yaml"), cwd=tmp_path, site=site,
    )
    assert check.returncode == 0, check.stderr[-2000:]
    assert "valid" in check.stdout


PROJECT_DEPLOYMENTS = """\
name: shop
prefect-version: 3.8.8
deployments:
  - name: catalog-refresh
    entrypoint: nbp.flows.orchestration.flow.nbp_run
    parameters: {spec: catalog.yaml}
    work_pool: {name: shop}
"""

WORKER_VIEW = """
import asyncio, sys
import flows.catalog                       # the project's own `flows` package
from prefect.client.orchestration import get_client
from prefect.flows import load_flow_from_entrypoint

async def read():
    async with get_client() as client:
        return await client.read_deployment_by_name("nbp-run/catalog-refresh")

deployment = asyncio.run(read())
loaded = load_flow_from_entrypoint(deployment.entrypoint)
print(flows.catalog.__file__, deployment.entrypoint, loaded.name, sep="\\n")
"""


def test_a_prefect_project_with_its_own_flows_package_deploys_nbp(
    installed: tuple[Path, Path], tmp_path: Path, prefect_api_url: str,
) -> None:
    """`prefect deploy` from a project whose own `flows/` package would have shadowed nbp's
    top-level one; a worker in that project then loads nbp's flow from the entrypoint."""
    _, site = installed
    project = tmp_path / "project"
    (project / "flows").mkdir(parents=True)
    (project / "flows" / "__init__.py").write_text("")
    (project / "flows" / "catalog.py").write_text(
        "from prefect import flow\n\n@flow\ndef refresh() -> None:\n    pass\n")
    (project / "prefect.yaml").write_text(PROJECT_DEPLOYMENTS)
    env = {**os.environ, "PYTHONPATH": str(site), "PREFECT_API_URL": prefect_api_url}
    prefect = str(Path(sys.executable).with_name("prefect"))
    for command in (["work-pool", "create", "shop", "--type", "process"],
                    ["--no-prompt", "deploy", "--all"]):
        done = subprocess.run([prefect, *command], cwd=project, env=env,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    seen = _python(WORKER_VIEW, cwd=project, site=site, env={"PREFECT_API_URL": prefect_api_url})
    assert seen.returncode == 0, seen.stderr[-3000:]
    own, entrypoint, name = seen.stdout.strip().splitlines()[-3:]
    assert Path(own) == project / "flows" / "catalog.py"
    assert entrypoint == "nbp.flows.orchestration.flow.nbp_run"
    assert name == "nbp-run"


# The top-level modules that only `.[dev]` brings (tools, the s3 stack and what moto pulls
# in): `make demo`'s venv has none of them.
DEV_ONLY = ("pytest", "_pytest", "xdist", "pytest_timeout", "moto", "s3fs", "aiobotocore",
            "botocore", "boto3", "aiohttp", "mypy", "ruff", "flask", "werkzeug", "sympy")

WITHOUT_DEV_TOOLS = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))

class NoDevTools(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (dev extras only)", name=name)
        return None

sys.meta_path.insert(0, NoDevTools())
from nbp.flows.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


def test_a_run_needs_nothing_of_the_dev_extras(tmp_path: Path, prefect_api_url: str) -> None:
    """The CLI as `make demo` uses it, with every module only `.[dev]` installs made
    unimportable: the demo spec validates, plans and runs on the emulators."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url}
    for args in (["--version"], ["validate", "specs/demo.yaml"],
                 ["plan", "specs/demo.yaml", "--offline"],
                 ["run", "specs/demo.yaml", "--emulate", "--target", str(tmp_path / "out")]):
        done = subprocess.run(
            [sys.executable, "-c", WITHOUT_DEV_TOOLS, ",".join(DEV_ONLY), *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{args}: {done.stderr[-3000:]}"
    assert len(list((tmp_path / "out").rglob("*.png"))) == 18
