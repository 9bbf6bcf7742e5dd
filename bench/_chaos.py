"""Shared pieces of the fault benchmarks (``bench.crash``, ``bench.soak``).

A cluster from :mod:`harness.cluster` (``sluice sandbox``, workers, a fresh PostgreSQL
database) on a private ``redis-server`` (:mod:`harness.redis_server`), and the judges:
what the store says (statuses, phases, events) and what the sandbox saw (its stats, every
arrival as its limiter judged it, every object it created). Duplicates are counted two
ways: objects sharing a client reference (the sandbox's ``duplicate_count``) and objects
sharing a name (each task's payload carries a name of its own, so this also catches a task
that re-created its object under a new reference).
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from bench._engine_harness import REPO_ROOT
from harness.cluster import (
    Cluster,
    Proc,
    free_port,
    postgres_database,
    wait_until,
    write_toml,
)
from harness.redis_server import redis_server

PRESET = REPO_ROOT / "sluice" / "providers" / "presets" / "sandbox-standard.toml"
ARRIVAL_LOG_CAP = 1_000_000
"""The sandbox's arrival log (``/_sandbox/arrivals``) keeps every call of a long run."""
FINAL_PHASE = "done"
STATUS_KEYS = ("status", "status_field", "status_map", "error_field")


def preset_table() -> dict[str, Any]:
    """The sandbox-standard preset as a whole provider table."""
    table: dict[str, Any] = tomllib.loads(PRESET.read_text(encoding="utf-8"))
    return table


def synchronous_provider(rate_limit: str, **overrides: Any) -> dict[str, Any]:
    """The preset's ``campaign`` kind alone, answered synchronously: no ``[poll]``, no
    ``status`` request, so a 2xx create is Completed at once; lookup by client ref kept.
    (``base_url`` is filled in by :func:`chaos_cluster`.)"""
    table = preset_table()
    table.pop("poll", None)
    campaign = {k: v for k, v in table["kinds"]["campaign"].items() if k not in STATUS_KEYS}
    table["kinds"] = {"campaign": campaign}
    table.update(rate_limit=rate_limit, **overrides)
    return table


@dataclass
class ChaosCluster:
    """A running cluster, its sandbox's URL and its worker processes (in kill order)."""

    cluster: Cluster
    sandbox_url: str
    workers: list[Proc] = field(default_factory=list)
    kills: list[tuple[float, str]] = field(default_factory=list)

    def crash(self, index: int) -> None:
        """SIGKILL worker ``index``'s process group and start it again at once."""
        victim = self.workers[index]
        killed_at = time.time()
        self.workers[index] = self.cluster.crash(victim)
        self.kills.append((killed_at, victim.name))

    def restart_all(self, timeout_s: float = 120.0) -> float:
        """SIGKILL every worker's process group, then start them all again, and wait until
        each has logged Celery's ``ready.`` once more; when the kills began."""
        ready_before = [proc.output().count("ready.") for proc in self.workers]
        killed_at = time.time()
        for proc in self.workers:
            proc.kill(signal.SIGKILL)
        self.workers = [self.cluster.crash(proc) for proc in self.workers]

        def ready() -> bool:
            counts = [proc.output().count("ready.") for proc in self.workers]
            return all(now > before for now, before in zip(counts, ready_before, strict=True))

        wait_until(ready, timeout_s, "the restarted workers")
        return killed_at

    def worker_pids(self) -> dict[str, int]:
        return {proc.name: proc.pid for proc in self.workers}


@contextmanager
def chaos_cluster(
    *,
    provider: dict[str, Any],
    sandbox: dict[str, Any],
    workers: list[tuple[str, bool]],
    concurrency: int,
    settings: dict[str, str],
    prefix: str,
) -> Iterator[ChaosCluster]:
    """``sluice sandbox``, a fresh database, a private ``redis-server`` (broker in db 1,
    limiter in db 0: a test restarting the shared Redis cannot touch the run), migrated,
    workers ready.

    ``provider`` is the ``[providers.sandbox]`` table without ``base_url``; ``workers`` is
    ``[(name, with_beat)]``. Everything is stopped and dropped on exit.
    """
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"sluice-{prefix}-")))
        database_url = stack.enter_context(postgres_database(f"sluice_{prefix}"))
        redis = stack.enter_context(redis_server(folder / "redis"))
        cluster = Cluster(
            folder,
            database_url,
            broker_url=f"redis://127.0.0.1:{redis.port}/1",
            redis_url=redis.url,
            namespace=f"sluice:{prefix}:{uuid.uuid4().hex[:8]}",
            settings={"SLUICE_LOG_LEVEL": "WARNING", **settings},
        )
        stack.callback(cluster.stop)
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        write_toml(
            cluster.config,
            {
                "sluice": {"default_provider": "sandbox"},
                "providers.sandbox": {**provider, "base_url": base_url},
                "sandbox": {"arrival_log_cap": ARRIVAL_LOG_CAP, **sandbox},
            },
        )
        cluster.sandbox(port, "standard")
        cluster.upgrade_database()
        procs = [cluster.worker(name, beat=beat, concurrency=concurrency) for name, beat in workers]
        cluster.wait_ready(procs)
        yield ChaosCluster(cluster, base_url, procs)


@contextmanager
def cpu_hog(enabled: bool | int) -> Iterator[None]:
    """CPU-bound processes (busy loops) running beside everything else: one when ``enabled``
    is True, that many when it is a number."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(int(enabled))
    ]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


# --- the store's view -----------------------------------------------------------------------


class Store:
    """Read-only counts from the cluster's database (plain SQL on ``tasks``/``task_events``)."""

    def __init__(self, database_url: str) -> None:
        self.engine = sa.create_engine(database_url, poolclass=NullPool)

    def phases(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT phase, count(*) FROM tasks GROUP BY phase"))
            return {phase: int(count) for phase, count in rows}

    def unfinished(self) -> int:
        return sum(n for phase, n in self.phases().items() if phase != FINAL_PHASE)

    def statuses(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT status, count(*) FROM tasks GROUP BY status"))
            return {status: int(count) for status, count in rows}

    def events(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT event, count(*) FROM task_events GROUP BY event ORDER BY event")
            )
            return {event: int(count) for event, count in rows}

    def wait_final(self, timeout_s: float, every_s: float = 0.25) -> int:
        """Wait until every task is final or ``timeout_s`` passed; the unfinished count."""
        deadline = time.monotonic() + timeout_s
        while (left := self.unfinished()) and time.monotonic() < deadline:
            time.sleep(every_s)
        return left

    def unsettled(self, reset: datetime) -> int:
        """Tasks neither final nor waiting, unclaimed, for a quota window ending at
        ``reset`` (the dispatcher gives such work back due exactly then)."""
        query = sa.text(
            "SELECT count(*) FROM tasks WHERE phase != :done AND NOT ("
            "claimed_by IS NULL AND next_attempt_at = :reset)"
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query, {"done": FINAL_PHASE, "reset": reset}).scalar_one())

    def wait_settled(self, reset: datetime, timeout_s: float, steady_s: float = 5.0) -> int:
        """Wait until every task has been final or waiting for ``reset`` for ``steady_s``
        running (units given back wake waiting work for a moment), or ``timeout_s``
        passed; the unsettled count."""
        deadline = time.monotonic() + timeout_s
        settled_since: float | None = None
        while time.monotonic() < deadline:
            if self.unsettled(reset):
                settled_since = None
            elif settled_since is None:
                settled_since = time.monotonic()
            elif time.monotonic() - settled_since >= steady_s:
                return 0
            time.sleep(0.25)
        return self.unsettled(reset)

    def waiting_for(self, reset: datetime, attempted: bool = False) -> int:
        """Tasks waiting for ``reset`` (only those that already count an attempt, with
        ``attempted``)."""
        query = (
            "SELECT count(*) FROM tasks WHERE phase != :done AND claimed_by IS NULL "
            "AND next_attempt_at = :reset"
        )
        if attempted:
            query += " AND attempts > 0"
        with self.engine.connect() as conn:
            found = conn.execute(sa.text(query), {"done": FINAL_PHASE, "reset": reset})
            return int(found.scalar_one())

    def quota_used(self) -> int:
        """Units counted in the database across every quota window (``quota_usage``)."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.text("SELECT coalesce(sum(used), 0) FROM quota_usage")).scalar_one()
            )

    def close(self) -> None:
        self.engine.dispose()


# --- the sandbox's view ---------------------------------------------------------------------


class Arrival(NamedTuple):
    """One ``/v1`` call as the sandbox's limiter judged it."""

    t: float
    """POSIX seconds on the sandbox's clock (this host's)."""
    route: str
    status: int | str
    refused: bool
    """Refused by a limit (a 429 in the standard profile)."""


class Sandbox:
    """The sandbox's stats, arrival log and objects."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=60)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.http.get("/_sandbox/stats").raise_for_status().json()
        return stats

    def configure(self, patch: dict[str, Any]) -> None:
        self.http.put("/_sandbox/config", json=patch).raise_for_status()

    def arrivals(self) -> list[Arrival]:
        """Every ``/v1`` call the sandbox judged, sorted by time; raise if its log overflowed."""
        answer = self.http.get("/_sandbox/arrivals").raise_for_status().json()
        if answer["dropped"]:
            raise RuntimeError(f"the sandbox's arrival log dropped {answer['dropped']} calls")
        fields = answer["fields"]
        rows = [dict(zip(fields, row, strict=True)) for row in answer["arrivals"]]
        return sorted(
            Arrival(float(r["t"]), str(r["route"]), r["status"], r["outcome"] == "refused")
            for r in rows
        )

    def objects(self, collection: str) -> list[dict[str, Any]]:
        """Every object of ``collection`` (an ordinary, limited ``/v1`` request: call it
        after the measured run; a refusal or an injected fault is waited out)."""
        for _ in range(60):
            answer = self.http.get(f"/v1/{collection}")
            if answer.status_code == 200:
                data: list[dict[str, Any]] = answer.json()["data"]
                return data
            time.sleep(1.0)
        raise RuntimeError(f"the sandbox did not list {collection}: {answer.status_code}")

    def close(self) -> None:
        self.http.close()


def duplicates_by_name(objects: list[dict[str, Any]]) -> int:
    """Extra objects sharing a name (every task's payload names its object uniquely)."""
    names = Counter(str(obj.get("name")) for obj in objects)
    return sum(count - 1 for count in names.values() if count > 1)


def over_limit_at(times: list[float], limit: int, window_s: float = 1.0) -> list[float]:
    """Arrival times (sorted ``times``) that ended a window ``(t - window_s, t]`` holding
    more than ``limit`` arrivals."""
    found = []
    start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window_s:
            start += 1
        if end - start + 1 > limit:
            found.append(t)
    return found


def refusals(
    arrivals: list[Arrival],
    origin: float,
    skip: Callable[[float], bool] = lambda _: False,
    window_s: float = 1.0,
) -> list[dict[str, Any]]:
    """Each refused call (but those at a time ``skip`` names) with the window that refused
    it: the calls that arrived in the ``window_s`` before it (itself included), the time
    from the first of them to it, and the closest two (a burst shows as gaps much shorter
    than ``window_s / limit``)."""
    found = []
    for index, arrival in enumerate(arrivals):
        if not arrival.refused or skip(arrival.t):
            continue
        window = [a.t for a in arrivals[: index + 1] if arrival.t - a.t < window_s]
        gaps = [later - earlier for earlier, later in itertools.pairwise(window)]
        found.append(
            {
                "at_s": round(arrival.t - origin, 3),
                "route": arrival.route,
                "arrived_in_window": len(window),
                "first_to_refused_ms": round((window[-1] - window[0]) * 1000, 1),
                "min_gap_ms": round(min(gaps) * 1000, 2) if gaps else None,
            }
        )
    return found


def code_version() -> str:
    """The checkout's commit, with ``+changes`` when code (not results) differs from it."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        )
        return result.stdout.strip()

    changed = git("status", "--porcelain", "--", "sluice", "harness", "bench", ":!bench/results")
    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+changes" if changed else "")


def load_average() -> float:
    return round(os.getloadavg()[0], 2)
