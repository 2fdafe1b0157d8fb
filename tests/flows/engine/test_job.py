"""A run reads its cells a chunk at a time and spills each chunk's rows as it ends: what it
holds does not grow with the number of cells (BENCHMARKS.md, "Memory")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import polars as pl
import pytest

import nbp.flows.engine.job as job
from nbp.flows.engine.job import cell_positions, run_chunks, select_shard
from nbp.flows.engine.lease import Heartbeat
from nbp.flows.engine.routing import Lane, Router
from nbp.flows.engine.throttle import AccountThrottle, InFlightLimit
from nbp.flows.spec.cells import expand
from nbp.flows.spec.channels import Channel
from nbp.flows.spec.loader import parse_spec
from nbp.flows.spec.model import Cell
from nbp.flows.spec.shard import Shard
from nbp.outputs.manifest import ManifestRow, rows_to_frame
from nbp.outputs.parts import ManifestParts
from nbp.outputs.sink import Sink


def cells_of(n: int) -> list[Cell]:
    return expand(parse_spec(f"""\
version: 1
name: lazy
provider: kie
repeat: {n}
matrix: {{prompt: [a paper crane]}}
"""))


class Counted:
    """A cell source that counts how many cells a reader has taken so far."""

    def __init__(self, cells: list[Cell]) -> None:
        self.cells = cells
        self.taken = 0

    def __len__(self) -> int:
        return len(self.cells)

    def __iter__(self) -> Iterator[Cell]:
        for cell in self.cells:
            self.taken += 1
            yield cell


def runner_with(in_flight: int) -> Any:
    """What `run_chunks` reads of a runner: its router's channels and their slots."""
    throttle = AccountThrottle(provider="kie", rate=None, in_flight=InFlightLimit(in_flight),
                               poll_interval_s=1.0)
    lane = Lane(Channel("kie", "KIE_API_KEY"), throttle, lambda cell: 0.09, 20.0)
    return SimpleNamespace(ctx=SimpleNamespace(router=Router("fallback", [lane])),
                           interrupted=False)


def test_cells_are_taken_a_chunk_at_a_time_and_rows_spilled_in_order(tmp_path: Path) -> None:
    source = Counted(cells_of(103))
    ahead: list[int] = []
    done = 0

    async def chunk_runner(runner: Any, index: int, cells: Sequence[Cell], workers: int
                           ) -> pl.DataFrame:
        nonlocal done
        ahead.append(source.taken - done)
        await asyncio.sleep(0.001 * (index % 3))  # chunks end out of order
        done += len(cells)
        return rows_to_frame([{"cell_id": c.cell_id, "status": "succeeded"} for c in cells])

    parts = ManifestParts(str(tmp_path))
    asyncio.run(run_chunks(runner_with(10), source, 5, chunk_runner, parts))
    # 10 in flight, chunks of 5: 3 chunks at once, so at most 15 cells taken and not done
    assert max(ahead) <= 15 and len(ahead) == 21
    assert parts.scan().collect()["cell_id"].to_list() == [c.cell_id for c in source.cells]
    assert parts.counts() == {"succeeded": 103, "failed": 0, "skipped": 0, "cancelled": 0}


def test_a_failing_chunk_ends_the_run_with_its_error(tmp_path: Path) -> None:
    async def chunk_runner(runner: Any, index: int, cells: Sequence[Cell], workers: int
                           ) -> pl.DataFrame:
        if index == 2:
            raise RuntimeError("chunk 2 broke")
        return rows_to_frame([])

    source = Counted(cells_of(50))
    with pytest.raises(RuntimeError, match="chunk 2 broke"):
        asyncio.run(run_chunks(runner_with(4), source, 4, chunk_runner,
                               ManifestParts(str(tmp_path))))
    assert source.taken < 50  # no chunk started after the failure was seen


def test_a_shard_is_filtered_as_it_is_read() -> None:
    cells = cells_of(40)
    source = Counted(cells)
    shard = select_shard(source, Shard(1, 3))
    assert source.taken == 0
    wanted = [c for c in cells if int(c.cell_id, 16) % 3 == 1]
    assert list(shard) == wanted and list(shard) == wanted  # re-iterable
    assert len(shard) == len(wanted)
    assert select_shard(source, None) is source


def test_cell_positions_are_the_spec_order_by_id() -> None:
    cells = cells_of(7)
    frame = cell_positions(cells, batch=3)
    assert frame["cell_id"].to_list() == [c.cell_id for c in cells]
    assert frame["index"].to_list() == list(range(7))


def test_two_writers_ending_at_once_each_merge_into_what_the_other_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest lease, with the overlap forced: each writer's merge takes half a second,
    and both start together. Without the lease both would merge into the empty manifest and
    the last to write would drop the other's row."""
    merge = job.merge_parts

    def merge_slowly(*args: Any, **kwargs: Any) -> None:
        time.sleep(0.5)
        merge(*args, **kwargs)

    monkeypatch.setattr(job, "merge_parts", merge_slowly)
    target = str(tmp_path / "out")

    def row(cell_id: str) -> ManifestRow:
        return ManifestRow(cell_id=cell_id, job=cell_id, run_id="r", provider="kie",
                           prompt=cell_id, aspect_ratio="1:1", resolution="1K",
                           output_format="png", references=[], vars={}, status="succeeded")

    async def writer(name: str) -> None:
        folder = tmp_path / name
        folder.mkdir()
        parts = ManifestParts(str(folder))
        parts.add(0, rows_to_frame([row(name)]))
        async with Heartbeat(Sink(target), name) as heartbeat:
            await job.write_outputs(heartbeat, parts, None, title=name)

    async def both() -> None:
        await asyncio.gather(writer("alpha"), writer("beta"))

    asyncio.run(both())
    frame = pl.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert sorted(frame["cell_id"]) == ["alpha", "beta"]


def test_a_chunk_never_splits_a_product() -> None:
    """Cells of one dataset key stay together (a product is paid for as a whole)."""
    cells = [replace(cell, key={"sku": f"P{i // 3}"})
             for i, cell in enumerate(cells_of(10))]  # products of 3 cells, the last of 1
    chunks = list(job._chunked(cells, 4))
    keys = [{c.key["sku"] for c in chunk} for chunk in chunks]
    assert all(len(chunk) >= 3 for chunk in chunks[:-1])
    assert [len(k & later) for i, k in enumerate(keys) for later in keys[i + 1:]] == [0] * (
        len(keys) * (len(keys) - 1) // 2)
    assert sum(len(chunk) for chunk in chunks) == 10


class Thumbnails:
    """An output format nbp does not ship, as a user would add it: a 64 px WebP beside each
    image the manifest says succeeded (`outputs.steps`)."""

    name = "thumbnails"

    def __call__(self, written: Any) -> str:
        from io import BytesIO

        from PIL import Image

        done = written.manifest.filter(pl.col("status") == "succeeded")
        for rel in done.select("output_path").collect().to_series():
            with Image.open(BytesIO(written.sink.read_bytes(rel))) as image:
                image.thumbnail((64, 64))
                small = BytesIO()
                image.save(small, "WEBP")
            written.sink.write_bytes(f"thumbs/{Path(rel).stem}.webp", small.getvalue(),
                                     overwrite=True)
        uri: str = written.sink.uri("thumbs")
        return uri


def test_an_after_write_step_makes_a_new_format_from_the_written_manifest(
    tmp_path: Path,
) -> None:
    """A run hands its merged manifest to each after-write step: thumbnails appear beside the
    gallery without a change to the engine, the manifest, the gallery or `nbp compare`."""
    from PIL import Image

    from nbp.flows.engine.job import RunHooks, RunOptions, run_job
    from nbp.outputs.steps import AFTER_WRITE
    from tests.flows.engine.emulated import serving

    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""\
version: 1
name: thumbs
provider: kie
matrix: {{prompt: [a paper crane, a glass bird]}}
output: {{target: "{tmp_path / 'out'}", path: "{{prompt}}.{{ext}}"}}
limits: {{kie: {{poll_interval: 0.05}}}}
""")
    hooks = RunHooks(after_write=(*AFTER_WRITE, Thumbnails()))
    with serving(["kie"], 0.05) as hub:
        result = asyncio.run(run_job(RunOptions(spec=str(spec)), hooks=hooks))
    assert result.exit_code == 0 and len(hub["kie"].creates) == 2
    assert set(result.written) == {"gallery", "run_rows", "thumbnails"}
    assert result.gallery_uri == result.written["gallery"]
    thumbs = sorted((tmp_path / "out" / "thumbs").iterdir())
    assert [t.suffix for t in thumbs] == [".webp", ".webp"]
    with Image.open(thumbs[0]) as small:
        assert small.format == "WEBP" and max(small.size) == 64


def test_a_run_records_one_hash_of_its_dataset_and_reference_files(tmp_path: Path) -> None:
    """The record's `inputs_sha256` is one digest over every file the cells were made from;
    each file's own sha256 is in `.nbp/inputs/{run_id}.json`. The same files in another
    folder give the same digest; a changed reference gives another."""
    import hashlib
    import json

    from PIL import Image

    from nbp.flows.engine.job import RunOptions, run_job
    from nbp.flows.spec.loader import load_job
    from nbp.outputs.runs import find_record, inputs_digest, relative_inputs
    from tests.flows.engine.emulated import serving

    def make(folder: Path, colour: str) -> Path:
        (folder / "refs").mkdir(parents=True)
        Image.new("RGB", (8, 8), colour).save(folder / "refs" / "cup.png")
        (folder / "rows.csv").write_text("item,photo\ncup,refs/cup.png\n")
        spec = folder / "spec.yaml"
        spec.write_text(f"""\
version: 1
name: hashed
provider: kie
dataset: {{path: rows.csv}}
references: ["{{photo}}"]
matrix: {{prompt: ["a {{item}} on a table"]}}
output: {{target: "{folder / 'out'}"}}
limits: {{kie: {{poll_interval: 0.05}}}}
""")
        return spec

    first = make(tmp_path / "a", "red")
    with serving(["kie"], 0.05) as hub:
        result = asyncio.run(run_job(RunOptions(spec=str(first), run_id="r1")))
    assert result.exit_code == 0 and len(hub["kie"].creates) == 1
    record = find_record(Sink(str(tmp_path / "a" / "out")), "r1")
    sidecar = json.loads((tmp_path / "a" / "out" / ".nbp" / "inputs" / "r1.json").read_text())
    files = {f["path"]: f for f in sidecar["files"]}
    assert set(files) == {"rows.csv", "refs/cup.png"}
    assert files["rows.csv"]["role"] == "dataset"
    assert files["refs/cup.png"]["sha256"] == hashlib.sha256(
        (tmp_path / "a" / "refs" / "cup.png").read_bytes()).hexdigest()
    assert record.inputs_sha256 == sidecar["inputs_sha256"] != ""

    def digest(spec: Path) -> str:
        found = load_job(str(spec)).inputs
        return inputs_digest(relative_inputs(((f.role, f.path, f.sha256) for f in found),
                                             str(spec.parent)))

    assert digest(make(tmp_path / "b", "red")) == record.inputs_sha256  # same files elsewhere
    assert digest(make(tmp_path / "c", "blue")) != record.inputs_sha256  # another photo
