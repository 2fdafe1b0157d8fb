"""What every benchmark shares: the emulator and Prefect server processes, measured child
processes, specs on disk, the machine description and the results files."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def log(message: str) -> None:
    print(message, flush=True)


# -- machine and results ------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """Where a figure was measured: CPU, cores, memory, OS, Python, commit, load."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")),
                   cpu)
    memory_gb = 0.0
    with contextlib.suppress(OSError), open("/proc/meminfo") as info:
        memory_gb = int(next(ln for ln in info if ln.startswith("MemTotal")).split()[1]) / 2**20
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(memory_gb, 1),
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "commit": commit or None, "load_avg_1m": round(os.getloadavg()[0], 2),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_result(name: str, figures: Mapping[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **figures},
                               indent=2, default=str) + "\n")
    log(f"  -> {path.relative_to(ROOT)}")
    return path


def quiet_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: Prefect never phones home; quiet logs."""
    env = dict(os.environ)
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING",
               PYTHONPATH=str(ROOT))
    env.pop("PREFECT_API_URL", None)
    env.update(extra)
    return env


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary folder, removed afterwards (benchmark outputs run to gigabytes)."""
    path = Path(tempfile.mkdtemp(prefix=f"nbp-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def compile_bytecode(checkout: Path) -> None:
    """nbp's bytecode in `checkout`, as `make demo` leaves it (the Makefile's `bytecode`):
    a `git archive` has none, and this machine sets PYTHONDONTWRITEBYTECODE, so without it
    every run would compile nbp's modules again — which a user's install does not."""
    subprocess.run([PYTHON, "-m", "compileall", "-q", "flows", "providers", "outputs",
                    "schemas"], cwd=checkout, check=True, stdout=subprocess.DEVNULL)


def write_spec(path: Path, spec: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(spec), sort_keys=False))
    return path


# -- measured child processes -------------------------------------------------------------


@dataclass
class Child:
    """A finished child process: exit code, wall time, its own CPU and peak memory."""

    exit_code: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    stdout: str
    stderr: str

    def check(self, what: str) -> Child:
        if self.exit_code != 0:
            raise RuntimeError(f"{what} exited {self.exit_code}:\n{self.stderr[-3000:]}")
        return self


def run_child(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: Path = ROOT, timeout: float = 900
) -> Child:
    """Run to the end; CPU and peak RSS from wait4 (the child's own rusage)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)
        deadline = started + timeout
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Child(proc.returncode, wall, rusage.ru_utime + rusage.ru_stime,
                     rusage.ru_maxrss / 1024, out.read(), err.read())


def run_nbp(args: Sequence[str], *, env: Mapping[str, str], cwd: Path = ROOT,
            timeout: float = 900, profile_as: str = "") -> tuple[Child, dict[str, Any]]:
    """The real `nbp` CLI in a child process, and its self-reported start-up / command split
    (see `bench.nbp_child`).

    With NBP_BENCH_PROFILE=DIR and a `profile_as` name, the child runs under
    `py-spy record` (pip install py-spy) and its collapsed stacks go to DIR/{name}.txt
    (read them with `python -m bench.hotspots`); its CPU figures then include py-spy."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        report_path = handle.name
    argv = [PYTHON, "-m", "bench.nbp_child", report_path, *args]
    profile_dir = os.environ.get("NBP_BENCH_PROFILE")
    if profile_dir and profile_as:
        Path(profile_dir).mkdir(parents=True, exist_ok=True)
        argv = [str(Path(PYTHON).parent / "py-spy"), "record", "--format", "raw", "--rate", "250",
                "--threads", "-o", str(Path(profile_dir) / f"{profile_as}.txt"), "--", *argv]
    try:
        child = run_child(argv, env=env, cwd=cwd, timeout=timeout)
        text = Path(report_path).read_text()
        report: dict[str, Any] = json.loads(text) if text else {}
    finally:
        os.unlink(report_path)
    return child, report


def image_files(folder: Path) -> list[Path]:
    """Result images under `folder` (not the journal, thumbnails or temp files)."""
    return [
        p for p in folder.rglob("*")
        if p.suffix in IMAGE_SUFFIXES and ".nbp" not in p.parts and not p.name.startswith(".")
    ]


def last_image_written(folder: Path) -> tuple[int, float]:
    """(number of images, epoch time the last one was written)."""
    files = image_files(folder)
    return len(files), max((p.stat().st_mtime for p in files), default=0.0)


# -- the emulator and Prefect server processes ---------------------------------------------


class EmulatorProcess:
    """`bench.emulator` in its own process; `env` points clients at it."""

    def __init__(self, latency_s: float, *, rates: Mapping[str, str] | None = None,
                 providers: Sequence[str] = ("runware", "kie"),
                 accounts: Sequence[tuple[str, str]] = ()) -> None:
        argv = [PYTHON, "-m", "bench.emulator", "--latency", str(latency_s),
                "--providers", ",".join(providers)]
        for name, rate in (rates or {}).items():
            argv += ["--rate", f"{name}={rate}"]
        for name, key in accounts:  # (provider, API key): another account there
            argv += ["--account", f"{name}={key}"]
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=quiet_env(), text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        hello = json.loads(self._line())
        self.url: str = hello["url"]
        self.env: dict[str, str] = hello["env"]

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the emulator process ended")
        return line

    def _ask(self, command: str) -> dict[str, Any]:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(command + "\n")
        stdin.flush()
        answer: dict[str, Any] = json.loads(self._line())
        return answer

    def stats(self, *, times: bool = False) -> dict[str, Any]:
        return self._ask("stats times" if times else "stats")

    def reset(self) -> None:
        self._ask("reset")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrefectServer:
    """`prefect server start` with a private PREFECT_HOME, in its own process group (its
    uvicorn child goes with it on close)."""

    def __init__(self, home: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/api"
        self.home = home
        started = time.perf_counter()
        self._log = open(home / "server.log", "w")  # noqa: SIM115  # closed in close()
        self.proc = subprocess.Popen(
            [str(Path(PYTHON).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
             "--port", str(port)],
            env=quiet_env(PREFECT_HOME=str(home)), stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = started + 120
        while not self._healthy():
            if self.proc.poll() is not None or time.perf_counter() > deadline:
                self.close()
                raise RuntimeError(f"Prefect server did not start; see {home / 'server.log'}")
            time.sleep(0.25)
        self.startup_s = time.perf_counter() - started

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> PrefectServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def summarise(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": round(ordered[len(ordered) // 2], 3), "min": round(ordered[0], 3),
            "max": round(ordered[-1], 3), "n": len(ordered)}


def as_dict(value: Any) -> dict[str, Any]:
    result: dict[str, Any] = asdict(value)
    return result
