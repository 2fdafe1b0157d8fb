"""The weekly catalog refresh, two weeks of it, through the real CLI (`nbp` in a child process,
the Prefect flow on the session's server) against the emulators: a product export with
unicode, quotes, commas, a SKU with a slash, an empty photo and a duplicate SKU; then a changed
photo, a changed title, a removed and an added product, and an image rejected in review.
Every step exits 0, and the emulator's creates are the evidence that nothing is paid twice."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import yaml
from PIL import Image

from nbp.providers.emulator.hub import EmulatorHub
from tests.conftest import run_nbp

pytestmark = pytest.mark.prefect


@pytest.fixture(scope="module")
def hub() -> Iterator[EmulatorHub]:
    with EmulatorHub.start(["kie"], latency_s=0.2) as running:
        yield running


def photo(path: Path, colour: tuple[int, int, int]) -> str:
    Image.new("RGB", (64, 64), colour).save(path)
    return path.name


def export(folder: Path, name: str, rows: list[tuple[str, str, str]]) -> Path:
    """A product export as a catalog team's tool writes it (quoted, unicode)."""
    lines = ["sku,title,image"] + [
        ",".join('"' + v.replace('"', '""') + '"' for v in row) for row in rows]
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_two_weeks_of_a_catalog(prefect_api_url: str, hub: EmulatorHub, tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, **hub.environ()}
    env.pop("PYTEST_CURRENT_TEST", None)

    def nbp(*args: str) -> str:
        done = run_nbp(*args, env=env)
        assert done.returncode == 0, f"nbp {' '.join(args)}\n{done.stderr[-3000:]}"
        return done.stdout + done.stderr

    def creates(sku: str) -> int:
        return hub["kie"].creates_for(f"[{sku}]")

    def rows() -> pl.DataFrame:
        return pl.read_parquet(tmp_path / "out" / "manifest.parquet")

    def current(sku: str) -> dict[str, object]:
        found = rows().filter((pl.col("key_sku") == sku) & pl.col("superseded_by").is_null())
        return found.row(0, named=True)

    mug = photo(tmp_path / "mug.png", (200, 40, 40))
    shirt = photo(tmp_path / "tsh.png", (0, 0, 200))
    hat = photo(tmp_path / "hat.png", (0, 150, 0))
    spec = tmp_path / "catalog.yaml"
    spec.write_text(yaml.safe_dump({
        "version": 1, "name": "catalog", "provider": "kie",
        "dataset": {"path": "week-1.csv", "key": "sku", "duplicates": "first"},
        "references": ["{image}"], "references_required": "skip",
        "matrix": {"prompt": ["[{sku}] studio photo of the {title}"]},
        "output": {"target": str(tmp_path / "out"), "path": "{sku}.{ext}"},
        "limits": {"kie": {"poll_interval": 0.05}},
    }, allow_unicode=True))
    export(tmp_path, "week-1.csv", [
        ("MUG-1", "Été mug, \"glazed\"", mug),
        ("TSH/RED XL", "T-shirt, red, extra large", shirt),
        ("HAT-3", "wool hat " + "with a long description " * 8, hat),
        ("BAG-4", "canvas bag", ""),                  # no photo: skipped, never paid
        ("MUG-1", "a second row for MUG-1", mug),     # duplicate: the first row is kept
    ])

    checked = nbp("validate", str(spec))
    assert "1 dataset row" in checked or "1 of" in checked  # the skipped and dropped rows
    nbp("run", str(spec))
    assert [creates(s) for s in ("MUG-1", "TSH/RED XL", "HAT-3", "BAG-4")] == [1, 1, 1, 0]
    assert (tmp_path / "out" / "TSH%2FRED XL.png").exists()  # one file, not nested folders
    assert rows()["key_sku"].to_list().count("MUG-1") == 1

    # Week 2: a new photo of the mug, a new title for the hat, the shirt gone, a scarf added.
    photo(tmp_path / "mug.png", (230, 120, 40))
    scarf = photo(tmp_path / "scarf.png", (120, 0, 120))
    export(tmp_path, "week-2.csv", [
        ("MUG-1", "Été mug, \"glazed\"", mug),
        ("HAT-3", "felt hat", hat),
        ("SCF-5", "silk scarf", scarf),
        ("BAG-4", "canvas bag", ""),
    ])
    plan = json.loads(run_nbp("plan", str(spec), "--dataset", str(tmp_path / "week-2.csv"),
                              "--json", env=env).stdout)
    assert plan["target"] | {"target": ""} == {"target": "", "new": 1, "changed": 2,
                                               "unchanged": 0, "to_collect": 0, "stale": 3}
    assert plan["estimated_cost_usd"] == pytest.approx(3 * 0.09)  # this week, not the catalog
    nbp("run", str(spec), "--dataset", str(tmp_path / "week-2.csv"))
    assert [creates(s) for s in ("MUG-1", "HAT-3", "SCF-5")] == [2, 2, 1]
    before = rows()
    superseded = before.filter(pl.col("superseded_by").is_not_null())
    assert sorted(superseded["key_sku"]) == ["HAT-3", "MUG-1"]
    assert all(Path(uri).exists() for uri in superseded["output_uri"])  # kept as history
    assert before.filter(pl.col("key_sku") == "TSH/RED XL")["stale"].to_list() == [True]

    # Review: the scarf is rejected, made again once, and the target remembers it.
    nbp("review", str(tmp_path / "out"), "--reject", str(current("SCF-5")["cell_id"]))
    nbp("run", str(spec), "--dataset", str(tmp_path / "week-2.csv"), "--redo-rejected")
    assert creates("SCF-5") == 2
    nbp("run", str(spec), "--dataset", str(tmp_path / "week-2.csv"))
    assert [creates(s) for s in ("MUG-1", "HAT-3", "SCF-5", "TSH/RED XL")] == [2, 2, 2, 1]

    published = nbp("export", str(tmp_path / "out"), "--url-prefix", "https://cdn.example.com/c")
    assert "https://cdn.example.com/c/SCF-5.png" in published
    assert "TSH" not in published  # stale: not published
