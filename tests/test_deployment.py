"""Deployments and scale-out: prefect.yaml on a real `prefect server start` with a process
worker, shards of one job sharing a provider's create rate through the Prefect server, and
shards finishing at once leaving one complete manifest."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import polars as pl
import pytest
import yaml
from PIL import Image

from nbp.flows.engine.job import RunHooks, RunOptions, run_job, select_shard
from nbp.flows.orchestration.emulation import serve_emulators
from nbp.flows.orchestration.shared_limits import (
    TOKEN_TTL_S,
    TRANSIT_GRACE_S,
    SharedRate,
    account_limit_name,
)
from nbp.flows.spec.cells import expand
from nbp.flows.spec.loader import load_spec
from nbp.flows.spec.rate import Rate
from nbp.flows.spec.shard import Shard
from nbp.providers.emulator.core import FaultConfig
from nbp.providers.emulator.hub import TEST_CREDENTIALS, EmulatorHub
from nbp.providers.model import pixel_size
from tests.conftest import ROOT

PREFECT = str(Path(sys.executable).with_name("prefect"))
SERVER_START_TIMEOUT_S = 90
FLOW_RUN_TIMEOUT_S = 150


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@contextlib.contextmanager
def background(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[str]]:
    """A long-running command in its own process group, killed with all its children."""
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            yield proc
        finally:
            for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(wait)
                    break


def prefect_cli(*args: str, env: dict[str, str], timeout: float = 120) -> str:
    done = subprocess.run([PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    output = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{output}"
    return done.stdout


def wait_for_server(api_url: str, server: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert server.poll() is None, f"prefect server exited:\n{tail(log)}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise AssertionError(f"prefect server not up in {SERVER_START_TIMEOUT_S} s:\n{tail(log)}")


def check_images(target: Path, cells: int) -> pl.DataFrame:
    frame = pl.read_parquet(target / "manifest.parquet")
    assert frame.height == cells and frame["cell_id"].n_unique() == cells
    assert set(frame["status"]) == {"succeeded"}, frame["error_message"].to_list()
    for row in frame.iter_rows(named=True):
        with Image.open(target / row["output_path"]) as image:
            assert image.size == pixel_size(row["aspect_ratio"], row["resolution"])
    return frame


@pytest.mark.slow
def test_prefect_yaml_deploys_and_runs_on_a_process_worker(tmp_path: Path) -> None:
    """README walk-through: server, pool, worker, `prefect deploy --all`, then the demo
    deployment (emulated) and the scheduled catalog deployment with its API keys in Secret
    blocks, against the emulators as if they were the real providers."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items()
           if k not in TEST_CREDENTIALS and not k.startswith(("NBP_", "PYTEST_"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_LOGGING_LEVEL="INFO",
    )
    server_log, worker_log = tmp_path / "server.log", tmp_path / "worker.log"
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(background(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env,
            server_log))
        hub = stack.enter_context(EmulatorHub.start(["kie", "runware"], latency_s=0.1))
        # The worker (and so the flow runs) sees the emulators' URLs but no API key: the
        # catalog run must get its keys from the Secret blocks its spec names.
        env.update({k: v for k, v in hub.environ().items() if k.startswith("NBP_")})
        wait_for_server(api_url, server, server_log)
        prefect_cli("work-pool", "create", "nbp", "--type", "process", env=env)
        stack.enter_context(background([PREFECT, "worker", "start", "--pool", "nbp"], env,
                                       worker_log))
        save_secret_blocks(api_url, {"kie-api-key": TEST_CREDENTIALS["KIE_API_KEY"],
                                     "runware-api-key": TEST_CREDENTIALS["RUNWARE_API_KEY"]})
        prefect_cli("--no-prompt", "deploy", "--all", env=env)

        demo, catalog = tmp_path / "demo", tmp_path / "catalog"
        runs = {
            "demo": start_run("nbp-run/demo", env, f"target={demo}", "emulator_latency_s=0.1"),
            "catalog": start_run("nbp-run/catalog-refresh", env, f"target={catalog}",
                                 "shard=1/2", "shared_limits=true"),
        }
        states = asyncio.run(wait_for_flow_runs(api_url, list(runs.values())))
        assert all(state == "Completed" for state in states.values()), (
            f"{states} {runs}\nworker:\n{tail(worker_log, 8000)}")
        deployments, limits = asyncio.run(read_server(api_url))

    check_images(demo, 18)
    shard = select_shard(list(expand(load_spec(str(ROOT / "specs/catalog.yaml")))), Shard(1, 2))
    frame = check_images(catalog, len(shard))
    assert set(frame["cell_id"]) == {cell.cell_id for cell in shard}
    assert set(frame["provider"]) == {"kie"} and len(hub["kie"].creates) == len(shard)
    assert all(len(refs) == 1 for refs in frame["references"])  # the product photo
    assert deployments["demo"]["parameters"] == {"spec": "specs/demo.yaml", "emulate": True}
    assert deployments["catalog-refresh"]["crons"] == ["0 4 * * 1"]
    (kie_limit,) = [limit for name, limit in limits.items() if name.startswith("nbp:kie:")]
    assert kie_limit == (4, pytest.approx(16 / 11.5))  # 20 per 10 s: C = 4, d = 16/11.5
    assert "emulated-kie-key" not in tail(worker_log, 10**6)


def start_run(name: str, env: dict[str, str], *params: str) -> str:
    """`prefect deployment run NAME --param k=v ...`; returns the flow run id."""
    args = ["deployment", "run", name]
    for param in params:
        args += ["--param", param]
    output = prefect_cli(*args, env=env)
    found = re.search(r"UUID: ([0-9a-f-]{36})", output)
    assert found, output
    return found[1]


async def wait_for_flow_runs(api_url: str, ids: list[str]) -> dict[str, str]:
    """Poll the API until every flow run is final; their state names."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + FLOW_RUN_TIMEOUT_S
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        async with get_client() as client:
            while True:
                runs = [await client.read_flow_run(uuid.UUID(i)) for i in ids]
                states = {str(r.id): r.state.name if r.state else "?" for r in runs}
                if all(r.state and r.state.is_final() for r in runs):
                    return states
                if time.monotonic() > deadline:
                    return {k: f"still {v}" for k, v in states.items()}
                await asyncio.sleep(0.5)


def save_secret_blocks(api_url: str, secrets: dict[str, str]) -> None:
    """What the README tells users to do once per Prefect server."""
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        for name, value in secrets.items():
            Secret(value=value).save(name, overwrite=True)


async def read_server(
    api_url: str,
) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[int, float | None]]]:
    """Deployments (parameters, cron schedules) and global concurrency limits."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        async with get_client() as client:
            found = await client.read_deployments()
            limits = await client.read_global_concurrency_limits(limit=100)
    deployments = {
        d.name: {
            "parameters": d.parameters,
            "crons": [getattr(s.schedule, "cron", None) for s in d.schedules],
        }
        for d in found
    }
    return deployments, {g.name: (g.limit, g.slot_decay_per_second) for g in limits}


def shard_spec(
    tmp_path: Path, prompts: int, name: str = "shards", rate: str = "20/10s"
) -> Path:
    spec = {
        "version": 1,
        "name": name,
        "provider": "kie",
        "matrix": {"prompt": [f"shard test {i:02d}" for i in range(prompts)],
                   "aspect_ratio": ["1:1", "4:5"]},
        "output": {"target": str(tmp_path / "out")},
        "limits": {"kie": {"rate": rate, "poll_interval": 0.1}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


WINDOW_S = 4.0


@pytest.mark.prefect
@pytest.mark.slow
def test_two_shards_share_one_kie_account_without_exceeding_its_limit(
    prefect_api_url: str, tmp_path: Path
) -> None:
    """Alone, each shard would send 20 creates in its first second; together they must stay
    inside Kie's 20 per window (the emulator rejects the excess and counts it). The window
    is Kie's documented 10 s made 4 s: the same shape, a third of the wait."""
    spec = shard_spec(tmp_path, prompts=16, rate=f"20/{WINDOW_S:g}s")  # 32 cells
    kie = FaultConfig(latency_s=0.2, rate_limit=(20, WINDOW_S))
    with EmulatorHub.start(["kie"], config={"kie": kie}) as hub:
        env = {**os.environ, **hub.environ(), "PREFECT_API_URL": prefect_api_url}
        env.pop("PYTEST_CURRENT_TEST", None)
        logs: list[IO[str]] = []
        procs = []
        for shard in ("0/2", "1/2"):
            log = open(tmp_path / f"shard-{shard[0]}.log", "w+")  # noqa: SIM115
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "nbp.flows.cli", "run", str(spec), "--shard", shard,
                 "--shared-limits"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            ))
        try:
            codes = [proc.wait(150) for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read()[-3000:])
            log.close()
        assert codes == [0, 0], outputs
        records = list(hub["kie"].creates)
        assert hub["kie"].rejected_for_rate == 0, outputs
    per_prompt = Counter(record.prompt for record in records)
    assert per_prompt == {f"shard test {i:02d}": 2 for i in range(16)}  # 1:1 and 4:5, once each
    creates = [record.at for record in records]
    busiest = max(sum(1 for t in creates if start <= t < start + WINDOW_S) for start in creates)
    assert busiest <= 20
    frame = check_images(tmp_path / "out", 32)
    assert frame["run_id"].n_unique() == 2  # one table, rows of both shards


def test_shards_finishing_at_once_leave_one_complete_manifest(tmp_path: Path) -> None:
    """Each shard rewrites {target}/manifest.parquet at its end; whoever writes last, the
    table has every cell of every shard exactly once, and so has the gallery."""
    spec = shard_spec(tmp_path, prompts=6)  # 12 cells

    async def shards() -> list[Any]:
        return list(await asyncio.gather(*(
            run_job(RunOptions(spec=str(spec), emulate=True, shard=Shard(i, 3),
                               emulator_latency_s=0.05), hooks=RunHooks(emulation=serve_emulators))
            for i in range(3)
        )))

    results = asyncio.run(shards())
    assert sum(r.counts["succeeded"] for r in results) == 12
    frame = check_images(tmp_path / "out", 12)
    assert frame["run_id"].n_unique() == 3
    gallery = (tmp_path / "out" / "index.html").read_text()
    assert all(f'id="cell-{cell_id}"' in gallery for cell_id in frame["cell_id"])


@pytest.mark.parametrize(
    "rate", [pytest.param(r, id=r) for r in ("1/10s", "2/10s", "3/1s", "20/10s", "100/60s")]
)
def test_a_shared_bucket_never_admits_more_than_the_documented_window(rate: str) -> None:
    """Capacity + drain over the widened window stays within N (N = 1: C = b = 1 and whole-
    slot drain space the grants more than one window apart)."""
    parsed = Rate.parse(rate)
    shared = SharedRate.for_account(parsed, "nbp:kie:x")
    widened = parsed.window_s + TOKEN_TTL_S + TRANSIT_GRACE_S
    assert 1 <= shared.batch <= shared.capacity <= max(1, parsed.count - 1)
    if parsed.count == 1:
        assert 1 / shared.slot_decay_per_second >= widened
    else:
        assert shared.capacity + shared.slot_decay_per_second * widened <= parsed.count + 1e-9
    assert shared.slot_decay_per_second > 0


def test_the_shared_limit_is_named_by_account_without_revealing_the_key() -> None:
    from nbp.providers.kie import KieProvider

    def name(key: str) -> str:
        provider = KieProvider(KieProvider.settings_from_env({"KIE_API_KEY": key}))
        try:
            return account_limit_name(provider)
        finally:
            asyncio.run(provider.aclose())

    assert name("secret-one") == name("secret-one") != name("secret-two")
    assert name("secret-one").startswith("nbp:kie:") and "secret" not in name("secret-one")
