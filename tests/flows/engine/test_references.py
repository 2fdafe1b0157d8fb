"""The run reads references under the rule `nbp validate` applied, again, and in bounded
size: a reference that breaks it raises `ReferenceRefused` (a `Rejected`), which fails that
cell, never the run."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import fsspec
import pytest

from nbp.flows.engine.policy import HANDLED, Decision, decide
from nbp.flows.engine.references import ReferenceLoader, ReferenceRefused
from nbp.flows.spec.inputs import InputPolicy
from nbp.flows.spec.loader import load_job
from nbp.providers.errors import Rejected

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


@pytest.fixture
def spec_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "specs"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "a.png").write_bytes(PNG)
    return folder


def loader(spec_dir: Path, **policy: object) -> ReferenceLoader:
    return ReferenceLoader(base_dir=str(spec_dir), policy=InputPolicy(**policy))


def test_http_urls_pass_through_in_lower_case(spec_dir: Path) -> None:
    refs = loader(spec_dir)
    assert refs.load("https://cdn.example.com/a.png").is_url
    upper = refs.load("HTTP://cdn.example.com/A.png")
    assert (upper.uri, upper.data, upper.is_url) == ("http://cdn.example.com/A.png", None, True)


def test_local_files_under_the_spec_folder_are_read(spec_dir: Path) -> None:
    refs = loader(spec_dir)
    ref = refs.load(str(spec_dir / "data" / "a.png"))
    assert (ref.data, ref.mime_type) == (PNG, "image/png")
    assert refs.load("data/a.png") is not None  # relative to the spec's folder


@pytest.mark.parametrize(("uri", "reason"), [
    pytest.param("/etc/passwd", "is outside the spec's folder", id="outside"),
    pytest.param("data/../../secret.png", "is outside the spec's folder", id="dotdot"),
    pytest.param("simplecache::http://127.0.0.1:9/latest/meta-data/", "chains fsspec",
                 id="chained"),
    pytest.param("ftp://host/a.png", "protocol 'ftp' is not allowed", id="ftp"),
    pytest.param("gs://bucket/a.png", "pip install gcsfs", id="not-installed"),
    pytest.param("data/missing.png", "does not exist", id="missing"),
    pytest.param("data", "is not a regular file", id="a-folder"),
])
def test_refused_references_fail_their_cell(spec_dir: Path, uri: str, reason: str) -> None:
    with pytest.raises(ReferenceRefused, match=reason) as caught:
        loader(spec_dir).load(uri)
    assert isinstance(caught.value, Rejected) and isinstance(caught.value, HANDLED)
    assert decide(caught.value) is Decision.NEXT_PROVIDER  # a failed cell, not a crash
    assert caught.value.code == "reference_refused"


def test_a_symlink_swapped_after_validation_is_refused(spec_dir: Path, tmp_path: Path) -> None:
    (spec_dir / "data" / "b.png").symlink_to(spec_dir / "data" / "a.png")
    refs = loader(spec_dir)
    assert refs.load("data/b.png").data == PNG
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"secret")
    os.remove(spec_dir / "data" / "b.png")
    (spec_dir / "data" / "b.png").symlink_to(secret)
    fresh = loader(spec_dir)
    with pytest.raises(ReferenceRefused, match="resolves to"):
        fresh.load("data/b.png")


def test_allowed_paths_are_honoured(spec_dir: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "c.png").write_bytes(PNG)
    with pytest.raises(ReferenceRefused):
        loader(spec_dir).load(str(shared / "c.png"))
    assert loader(spec_dir, allow_paths=(str(shared),)).load(str(shared / "c.png")).data == PNG


def test_bytes_are_capped(spec_dir: Path) -> None:
    (spec_dir / "big.png").write_bytes(b"\0" * 5000)
    with pytest.raises(ReferenceRefused, match="5,000 bytes, more than the 4,096"):
        loader(spec_dir, max_reference_bytes=4096).load("big.png")
    with fsspec.open("memory://nbp-refs/big.png", "wb") as handle:
        handle.write(b"\0" * 5000)
    with pytest.raises(ReferenceRefused, match="larger than 4,096 bytes"):
        loader(spec_dir, max_reference_bytes=4096).load("memory://nbp-refs/big.png")
    assert InputPolicy().max_reference_bytes == 20 * 1024 * 1024


def test_memory_urls_are_read_and_cached(spec_dir: Path) -> None:
    with fsspec.open("memory://nbp-refs/m.png", "wb") as handle:
        handle.write(PNG)
    refs = loader(spec_dir)
    first = refs.load("MEMORY://nbp-refs/m.png")
    assert (first.uri, first.data) == ("memory://nbp-refs/m.png", PNG)
    assert refs.load("memory://nbp-refs/m.png") is first


def test_for_spec_uses_the_folder_and_policy_the_spec_was_validated_under(
    spec_dir: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "c.png").write_bytes(PNG)
    (spec_dir / "job.yaml").write_text(textwrap.dedent(f"""\
        version: 1
        name: refs
        provider: kie
        matrix: {{prompt: [a cat]}}
        references: [data/a.png, {shared / "c.png"}]
    """))
    job = load_job(str(spec_dir / "job.yaml"), policy=InputPolicy(allow_paths=(str(shared),)))
    refs = ReferenceLoader.for_spec(job.spec)
    assert [refs.load(uri).data for uri in next(iter(job.cells)).references] == [PNG, PNG]
    with pytest.raises(ReferenceRefused):
        refs.load("/etc/passwd")


def test_the_bare_loader_still_refuses_protocols_and_chains(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    bare = ReferenceLoader()
    assert bare.load(str(tmp_path / "a.png")).data == PNG  # no folder to confine to
    with pytest.raises(ReferenceRefused, match="chains"):
        bare.load("simplecache::file:///etc/passwd")
