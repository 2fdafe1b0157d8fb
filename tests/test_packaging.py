"""`pip install .` (not editable) gives a working package: the schema ships as package data."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_a_wheel_carries_the_schema_and_validates_from_it(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
         "-q", "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("nbp-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "schemas/job.schema.json" in names
    assert "providers/emulator/kie.py" in names and "flows/cli.py" in names
    assert not any(name.startswith("tests/") for name in names)

    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    spec = ROOT / "specs" / "demo.yaml"
    check = subprocess.run(
        [sys.executable, "-c",
         "import schemas, sys; from flows.cli import main;"
         "assert schemas.__file__.startswith(sys.argv[1]), schemas.__file__;"
         "raise SystemExit(main(['validate', sys.argv[2]]))", str(target), str(spec)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True, text=True, timeout=120,
    )
    assert check.returncode == 0, check.stderr[-2000:]
    assert "valid" in check.stdout
