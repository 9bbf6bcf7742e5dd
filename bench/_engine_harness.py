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
JUDGE_RT_PRIORITY = 10
"""The SCHED_FIFO priority of a sandbox that judges arrivals (``realtime=True``)."""


# --- the sandbox in its own process -----------------------------------------------------


class SandboxProcess:
    """``python -m bench._sandbox_proc`` (the sandbox app + arrival stamps) as a child process."""

    def __init__(
        self, section: dict[str, Any], profile: str = "standard", *, realtime: bool = False
    ) -> None:
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
        self.priority = "normal"
        """How the sandbox is scheduled: ``normal``, or ``SCHED_FIFO <n>`` (``realtime``)."""
        if realtime:
            self.priority = judge_realtime(self._proc.pid)
        self._client = httpx.Client(base_url=self.base_url, timeout=30)
        self._wait_until_up()
        if realtime:
            # Threads started before the first call (none are expected) inherit nothing.
            self.priority = judge_realtime(self._proc.pid)

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


def judge_realtime(pid: int) -> str:
    """Schedule every thread of ``pid`` as SCHED_FIFO :data:`JUDGE_RT_PRIORITY`; its policy.

    The sandbox stands for a third party on its own machine, but here it shares two cores
    with the run it judges, a CPU hog and other work: at normal priority its event loop
    waited up to ~100 ms for a core while requests sent 20 ms apart queued in its socket,
    and it stamped them within a millisecond of each other (the leaky bucket refused the
    third; Sluice's send checks kept to the spacing). As a real-time task it runs as soon
    as a request arrives, so its stamps are the arrivals. It uses a few percent of a core;
    the kernel's real-time throttling caps it at 95% of each CPU in any case. Returns
    ``normal (<reason>)`` where the host does not allow it.
    """
    try:
        tids = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    scheduled = 0
    for tid in tids:
        try:
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(JUDGE_RT_PRIORITY))
        except ProcessLookupError:
            continue  # a thread that has just ended
        except OSError as exc:
            return f"normal ({exc.strerror or exc})"
        scheduled += 1
    if not scheduled:
        return "normal (no such process)"
    return f"SCHED_FIFO {JUDGE_RT_PRIORITY}"


@contextmanager
def sandbox_process(
    section: dict[str, Any], profile: str = "standard", *, realtime: bool = False
) -> Iterator[SandboxProcess]:
    """A :class:`SandboxProcess` that is stopped on exit (``realtime``: see
    :func:`judge_realtime`)."""
    proc = SandboxProcess(section, profile, realtime=realtime)
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
