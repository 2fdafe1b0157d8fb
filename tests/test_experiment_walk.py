"""README "Run an experiment", step by step, through the real CLI (`nbp` in a child process,
the Prefect flow on the session's server, `--emulate`'s emulators): plan rows per provider x
model, a run, the manifest analysed by axis in one polars expression, ratings from the
gallery imported, the gallery drawn with another pivot, then a changed template run into a
second target and compared by axes, with preferences from the compare page imported into both
targets. The emulators' own task stores are the evidence that each cell was created once."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from nbp.outputs.layout import EMULATED_TASKS
from nbp.outputs.review import ratings_frame
from nbp.outputs.sink import Sink
from tests.conftest import ROOT, run_nbp

pytestmark = pytest.mark.prefect

AT = "2026-12-06T08:00:00Z"
AXES = "template,style,surface,provider,model,replicate"


def ratings_file(path: Path, ratings: Sequence[dict[str, Any]],
                 preferences: Sequence[dict[str, Any]] = ()) -> str:
    """What the gallery's and the compare page's "download ratings" save."""
    path.write_text(json.dumps({
        "format": "nbp-ratings", "version": 1, "exported_at": AT, "title": "cup-axes",
        "ratings": list(ratings), "preferences": list(preferences)}))
    return str(path)


def creates(target: Path) -> int:
    kept = json.loads((target / EMULATED_TASKS).read_text())
    return sum(len(tasks) for tasks in kept.values())


def test_the_readme_experiment(prefect_api_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url}
    env.pop("PYTEST_CURRENT_TEST", None)

    def nbp(*args: str) -> str:
        done = run_nbp(*args, env=env)
        assert done.returncode == 0, f"nbp {' '.join(args)}\n{done.stderr[-3000:]}"
        return done.stdout + done.stderr

    specs = tmp_path / "specs"
    specs.mkdir()
    spec = specs / "experiment-axes.yaml"
    text = (ROOT / "specs" / "experiment-axes.yaml").read_text()
    spec.write_text(text)
    first, second = tmp_path / "runs" / "cup-axes", tmp_path / "runs" / "cup-axes-2"

    # 1. plan: a row per provider x model id, nothing written
    plan = nbp("plan", str(spec), "--offline")
    assert "64 cells" in plan
    for row in ("gemini-3-pro-image-preview ", "gemini-3-pro-image ", "(default)"):
        assert row in plan, plan
    assert not first.exists()

    # 2. run
    nbp("run", str(spec), "--emulate", "--emulator-latency", "0.05")
    assert creates(first) == 64

    # 3. one expression by axis; seeds only where they went out
    manifest = first / "manifest.parquet"
    by_axis = (pl.read_parquet(manifest)
               .group_by("template", "var_style", "provider", "model")
               .agg(pl.len(), pl.col("cost_usd").mean(), pl.col("latency_s").quantile(0.95)))
    assert by_axis.height == 2 * 2 * 4 and set(by_axis["len"]) == {4}
    rows = pl.read_parquet(manifest)
    assert set(rows["template"]) == {"t1", "t2"} and rows.schema["var_style"] == pl.String
    one_request = rows.filter(pl.col("provider") == "gemini", pl.col("template") == "t1",
                              pl.col("var_style") == "glass", pl.col("var_surface") == "oak",
                              pl.col("replicate") == 0)
    assert one_request.height == 2 and one_request["sha256"].n_unique() == 2  # two model ids
    sent = dict(rows.group_by("provider").agg(pl.col("seed_sent").all()).iter_rows())
    assert sent == {"kie": False, "runware": True, "gemini": True}

    # 4. rate in the gallery, import, redraw with another pivot
    rated = rows.sort("cell_id").head(3)["cell_id"].to_list()
    stars = dict(zip(rated, (5, 4, 1), strict=True))
    nbp("review", str(first), "--import", ratings_file(tmp_path / "ratings.json", [
        {"cell_id": cid, "stars": n, "pass": n > 2, "at": AT} for cid, n in stars.items()]))
    judged = ratings_frame(Sink(str(first)))
    assert dict(judged.select("cell_id", "stars").iter_rows()) == stars
    joined = rows.join(judged, on="cell_id", how="left")  # joinable with the manifest
    assert joined.filter(pl.col("passed").is_not_null()).height == 3
    nbp("gallery", str(first), "--rows", "template,style", "--columns", "provider,model")
    assert "rows: template · style; columns: provider · model" in (
        first / "index.html").read_text()

    # 5. change t2, run into a second target, compare by axes
    changed = text.replace("soft window light", "hard noon light")
    assert changed != text
    spec.write_text(changed)
    nbp("run", str(spec), "--emulate", "--emulator-latency", "0.05", "--target", str(second))
    assert creates(second) == 64 and creates(first) == 64  # the first target: not again
    page = tmp_path / "compare.html"

    def compared() -> dict[str, Any]:
        out = run_nbp("compare", str(first), str(second), "--by", AXES, "--json",
                      "--out", str(page), env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    data = compared()
    assert data["counts"] == {"changed": 32, "only_a": 0, "only_b": 0, "same": 32}
    assert data["pairs"][0]["kind"] == "changed" and data["pairs"][0]["key"]["template"] == "t2"
    template = {row["value"]: row for row in data["tables"][1]["rows"]}
    assert data["tables"][1]["axis"] == "template"
    assert (template["t1"]["changed"], template["t2"]["changed"]) == (0, 32)
    assert abs(data["tables"][0]["rows"][0]["a"]["stars"] - 10 / 3) < 1e-6  # A's ratings

    # A-or-B preferences from the compare page, imported into both targets
    pair = data["pairs"][0]
    preference = {"a": {"target": str(first), "cell_id": pair["a"]["cell_id"]},
                  "b": {"target": str(second), "cell_id": pair["b"]["cell_id"]},
                  "winner": "b", "at": AT}
    chosen = ratings_file(tmp_path / "compare-ratings.json", [], [preference])
    nbp("review", str(first), "--import", chosen)
    nbp("review", str(second), "--import", chosen)
    overall = compared()["tables"][0]["rows"][0]
    assert (overall["a"]["preferred"], overall["b"]["preferred"]) == (0.0, 1.0)
    assert page.exists()
