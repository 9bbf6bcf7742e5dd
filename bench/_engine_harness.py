"""Shared pieces of the engine benchmarks: the sandbox process, Sluice runs, window maths."""

from __future__ import annotations

import bisect
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from harness.cluster import free_port, write_toml
from sluice import runtime as sluice_runtime
from sluice import submissions
from sluice.domain import Submission
from sluice.drivers.embedded import build_embedded_driver
from sluice.settings import load_settings

RESULTS_DIR = Path(__file__).parent / "results"
REPO_ROOT = Path(__file__).parent.parent
STARTUP_TIMEOUT_S = 20.0


# --- the sandbox in its own process -----------------------------------------------------


class SandboxProcess:
    """``python -m bench._sandbox_proc`` (the sandbox app + arrival stamps) as a child process."""

    def __init__(self, section: dict[str, Any], profile: str = "standard") -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="sluice-bench-sandbox-")
        config = Path(self._dir.name) / "sandbox.toml"
        write_toml(config, {"sandbox": section})
        self.command = [
            sys.executable,
            "-m",
            "bench._sandbox_proc",
            "--port",
            str(self.port),
            "--profile",
            profile,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env["SLUICE_CONFIG"] = str(config)
        self._proc = subprocess.Popen(self.command, cwd=REPO_ROOT, env=env)
        self._client = httpx.Client(base_url=self.base_url, timeout=30)
        self._wait_until_up()

    @property
    def command_line(self) -> str:
        """How the sandbox was started (for the results)."""
        return "SLUICE_CONFIG=<[sandbox] toml> " + shlex.join(
            ["python", *self.command[1:3], "--port", "P", *self.command[5:]]
        )

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"sandbox process exited with {self._proc.returncode}")
            try:
                if self._client.get("/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"sandbox did not come up at {self.base_url}")

    def reset(self) -> None:
        """Forget objects, stats, limiter logs and arrival stamps."""
        self._client.post("/_sandbox/reset").raise_for_status()
        self._client.delete("/_bench/arrivals").raise_for_status()

    def configure(self, patch: dict[str, Any]) -> None:
        """``PUT /_sandbox/config`` (limits, faults, delays)."""
        self._client.put("/_sandbox/config", json=patch).raise_for_status()

    def stats(self) -> dict[str, Any]:
        """``GET /_sandbox/stats``."""
        stats: dict[str, Any] = self._client.get("/_sandbox/stats").json()
        return stats

    def arrivals(self) -> list[tuple[float, str, int]]:
        """(posix seconds, method, status) of every ``/v1`` request since the reset, sorted."""
        answer = self._client.get("/_bench/arrivals").json()
        return sorted((float(t), str(method), int(status)) for t, method, status in answer)

    def close(self) -> None:
        self._client.close()
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._dir.cleanup()


@contextmanager
def sandbox_process(section: dict[str, Any], profile: str = "standard") -> Iterator[SandboxProcess]:
    """A :class:`SandboxProcess` that is stopped on exit."""
    proc = SandboxProcess(section, profile)
    try:
        yield proc
    finally:
        proc.close()


# --- Sluice embedded ----------------------------------------------------------------------


@dataclass
class SluiceRun:
    """What one embedded run did."""

    seconds: float
    statuses: dict[str, int]
    requests: dict[str, int]
    rate_limited: int
    retries: int


def build_runtime(
    db_dir: Path, provider: dict[str, Any], **settings: Any
) -> sluice_runtime.Runtime:
    """A runtime on a fresh SQLite file with one provider called ``sandbox``."""
    loaded = load_settings(
        database_url=f"sqlite:///{db_dir / 'sluice.db'}",
        providers={"sandbox": provider},
        default_provider="sandbox",
        **settings,
    )
    return sluice_runtime.build_runtime(loaded)


def run_sluice(
    provider: dict[str, Any],
    items: Sequence[Submission],
    *,
    timeout_s: float,
    settings: dict[str, Any] | None = None,
    check_every_s: float = 0.1,
) -> SluiceRun:
    """Create ``items`` in a fresh store, run the embedded driver until all are final.

    The clock runs from ``driver.start()`` until the check (every ``check_every_s``, a
    database count, so not too often) finds every task final.
    """
    with tempfile.TemporaryDirectory(prefix="sluice-bench-db-") as folder:
        runtime = build_runtime(Path(folder), provider, **(settings or {}))
        try:
            submissions.create_tasks(runtime.repo, runtime.catalog, items)
            driver = build_embedded_driver(runtime)
            started = time.perf_counter()
            driver.start()
            deadline = started + timeout_s
            try:
                while not driver.all_final():
                    if time.perf_counter() > deadline:
                        raise TimeoutError(
                            f"tasks not final after {timeout_s:g}s: {runtime.repo.counts()}"
                        )
                    time.sleep(check_every_s)
                elapsed = time.perf_counter() - started
            finally:
                driver.stop()
            stats = driver.executor.stats
            return SluiceRun(
                seconds=elapsed,
                statuses={str(k): v for k, v in runtime.repo.counts().items()},
                requests=dict(stats.requests),
                rate_limited=stats.rate_limited,
                retries=stats.retries,
            )
        finally:
            runtime.close()


def flat_campaigns(count: int, advertiser_id: str = "adv-1") -> list[Submission]:
    """``count`` independent campaign creates."""
    return [
        Submission(
            kind="campaign",
            payload={"advertiser_id": advertiser_id, "name": f"bench {i}", "budget": 1000.0},
        )
        for i in range(count)
    ]


# --- arrival maths ------------------------------------------------------------------------


def max_in_window(times: Sequence[float], window_s: float) -> int:
    """Most arrivals in any half-open window ``(t - window_s, t]`` (sorted ``times``)."""
    best = 0
    start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def rolling_rate(
    times: Sequence[float], origin: float, bin_s: float, window_s: float
) -> tuple[list[float], list[float]]:
    """Requests per second over the trailing ``window_s``, sampled every ``bin_s``."""
    if not times:
        return [], []
    steps = int((times[-1] - origin) / bin_s) + 2
    xs: list[float] = []
    ys: list[float] = []
    for i in range(steps):
        t = origin + i * bin_s
        count = bisect.bisect_right(times, t) - bisect.bisect_right(times, t - window_s)
        xs.append(t - origin)
        ys.append(count / window_s)
    return xs, ys


# --- results ------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
