"""How fast the API ingests tasks over real HTTP, on SQLite and on PostgreSQL.

For each backend a fresh database is migrated, then the API (``create_app``, uvicorn, one
worker, separate process) serves it on a free loopback port. A keep-alive httpx client in
this process measures:

* single creates: ``POST /api/tasks`` one by one, latency median / p95 / p99;
* bulk creates: ``POST /api/tasks/bulk`` with 10 batches of 10,000 realistic campaign
  submissions, in tasks per second (bodies are encoded before the clock starts, so the
  figure is the server's). Each run uses a fresh database; the median run is reported.

Writes ``bench/results/ingest.json``. Targets: bulk ingest >= 30,000 tasks/s and single
creates under 10 ms at p99, on both.

Run: ``python -m bench.ingest [--runs 3] [--singles 500] [--batches 10]``
(``--backends sqlite,postgresql`` by default).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench._common import wait_until_up
from harness.cluster import free_port

RESULTS = Path(__file__).parent / "results" / "ingest.json"
TARGET_BULK_TASKS_PER_S = 30_000  # issue 14
TARGET_SINGLE_P99_MS = 10.0
BATCH_SIZE = 10_000
PG_ADMIN_URL = os.environ.get(
    "SLUICE_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _catalog() -> Any:
    from sluice.catalog import Catalog, ProviderInfo

    return Catalog(
        {"sandbox": ProviderInfo(frozenset({"campaign", "ad_group", "creative"}), can_track=True)},
        default_provider="sandbox",
    )


def _serve(database_url: str, port: int) -> None:
    """Child process: the API over ``database_url``, built the way production builds it."""
    import uvicorn

    from sluice.api.app import create_app
    from sluice.settings import Settings
    from sluice.store import db
    from sluice.store.repository import TaskRepository

    settings = Settings(database_url=database_url)
    engine = db.make_engine(settings.database_url)
    db.WalCheckpoints(engine)  # as build_runtime does (SQLite only)
    repo = TaskRepository(engine)
    uvicorn.run(
        create_app(settings, repo, _catalog()),
        host="127.0.0.1",
        port=port,
        http="httptools",
        access_log=False,
        log_level="warning",
    )


@contextmanager
def _fresh_database(backend: str) -> Iterator[str]:
    """A new, migrated database of ``backend``; removed afterwards."""
    from sqlalchemy import create_engine, text

    from sluice.store import db

    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="sluice-bench-") as directory:
            url = f"sqlite:///{directory}/bench.db"
            engine = db.make_engine(url)
            db.ensure_schema(engine)
            engine.dispose()
            yield url
        return
    name = f"sluice_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        engine = db.make_engine(url)
        db.ensure_schema(engine)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def _api(database_url: str) -> Iterator[tuple[str, int]]:
    """The API serving ``database_url`` in a child process; yields its base URL and pid."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(database_url, port), daemon=True
    )
    server.start()
    try:
        wait_until_up(f"{base_url}/readyz", timeout_s=120)  # a loaded host starts slowly
        assert server.pid is not None
        yield base_url, server.pid
    finally:
        server.terminate()
        server.join(timeout=10)


def campaign(i: int) -> dict[str, Any]:
    """A realistic campaign submission (about the size a DSP client sends)."""
    return {
        "kind": "campaign",
        "payload": {
            "advertiser_id": f"adv-{i % 97}",
            "name": f"Spring sale {i}",
            "budget_cents": 250_000 + i,
            "currency": "EUR",
            "start_date": "2026-04-01",
        },
    }


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure_singles(base_url: str, count: int) -> dict[str, float]:
    """Latency of one-by-one creates over one keep-alive connection."""
    latencies: list[float] = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for i in range(20):  # warm-up: connection, caches, prepared statements
            client.post("/api/tasks", json=campaign(i)).raise_for_status()
        for i in range(count):
            body = json.dumps(campaign(i)).encode()
            started = time.perf_counter()
            response = client.post(
                "/api/tasks", content=body, headers={"content-type": "application/json"}
            )
            latencies.append(time.perf_counter() - started)
            if response.status_code != 201:
                raise RuntimeError(f"create failed: {response.status_code} {response.text[:200]}")
    return {
        "creates": count,
        "median_ms": round(statistics.median(latencies) * 1000, 2),
        "p95_ms": round(_percentile(latencies, 0.95) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
        "creates_per_s": round(count / sum(latencies)),
    }


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_bulk(base_url: str, batches: int, server_pid: int) -> dict[str, Any]:
    """Tasks per second for ``batches`` bulk calls of 10,000 tasks each."""
    bodies = [
        json.dumps({"tasks": [campaign(b * BATCH_SIZE + i) for i in range(BATCH_SIZE)]}).encode()
        for b in range(batches)
    ]
    per_batch: list[float] = []
    with httpx.Client(base_url=base_url, timeout=120) as client:
        client.get("/healthz").raise_for_status()
        cpu_before = _cpu_seconds(server_pid)
        started = time.perf_counter()
        for body in bodies:
            batch_started = time.perf_counter()
            response = client.post(
                "/api/tasks/bulk", content=body, headers={"content-type": "application/json"}
            )
            per_batch.append(time.perf_counter() - batch_started)
            if response.status_code != 201 or response.json()["count"] != BATCH_SIZE:
                raise RuntimeError(f"bulk failed: {response.status_code} {response.text[:200]}")
        elapsed = time.perf_counter() - started
        server_cpu = _cpu_seconds(server_pid) - cpu_before
    return {
        "tasks": batches * BATCH_SIZE,
        "tasks_per_s": round(batches * BATCH_SIZE / elapsed),
        "api_cpu_us_per_task": round(server_cpu / (batches * BATCH_SIZE) * 1e6, 1),
        "batch_median_s": round(statistics.median(per_batch), 3),
        "body_mib": round(len(bodies[0]) / 2**20, 2),
    }


def run_backend(backend: str, runs: int, singles: int, batches: int) -> dict[str, Any]:
    """Every figure for one backend: medians over ``runs`` fresh databases."""
    single_runs: list[dict[str, float]] = []
    bulk_runs: list[dict[str, Any]] = []
    for run in range(runs):
        with _fresh_database(backend) as url, _api(url) as (base_url, pid):
            bulk_runs.append(measure_bulk(base_url, batches, pid))
            single_runs.append(measure_singles(base_url, singles))
        print(
            f"{backend:10} run {run + 1}/{runs}: bulk {bulk_runs[-1]['tasks_per_s']:>7} tasks/s, "
            f"single create median {single_runs[-1]['median_ms']} ms",
            flush=True,
        )
    bulk_rates = [r["tasks_per_s"] for r in bulk_runs]
    median_ms = [r["median_ms"] for r in single_runs]
    return {
        "bulk": {
            "median_tasks_per_s": round(statistics.median(bulk_rates)),
            "runs_tasks_per_s": bulk_rates,
            "batches_per_run": batches,
            "batch_size": BATCH_SIZE,
            "body_mib": bulk_runs[0]["body_mib"],
            "meets_target": statistics.median(bulk_rates) >= TARGET_BULK_TASKS_PER_S,
            # CPU the API process spent per task: less sensitive to a busy machine than
            # wall-clock rates (the database's own CPU is not included).
            "api_cpu_us_per_task": statistics.median(r["api_cpu_us_per_task"] for r in bulk_runs),
        },
        "single": {
            "median_ms": round(statistics.median(median_ms), 2),
            "p95_ms": round(statistics.median(r["p95_ms"] for r in single_runs), 2),
            "p99_ms": round(statistics.median(r["p99_ms"] for r in single_runs), 2),
            "runs_median_ms": median_ms,
            "runs_p99_ms": [r["p99_ms"] for r in single_runs],
            "creates_per_run": singles,
            "meets_target": statistics.median(r["p99_ms"] for r in single_runs)
            < TARGET_SINGLE_P99_MS,
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print and save the figures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh databases per backend")
    parser.add_argument("--singles", type=int, default=500, help="single creates per run")
    parser.add_argument("--batches", type=int, default=10, help="bulk calls of 10,000 per run")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    figures = {
        backend: run_backend(backend, args.runs, args.singles, args.batches)
        for backend in args.backends.split(",")
    }
    load_after = os.getloadavg()
    result = {
        "benchmark": "ingest",
        "command": " ".join(["python -m bench.ingest", *(sys.argv[1:] if argv is None else argv)]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "nproc": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            # Other work on the machine slows wall-clock figures; this says how busy it was.
            "load_average_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        },
        "setup": {
            "server": "create_app + uvicorn, 1 worker, httptools, separate process",
            "client": "one httpx.Client, keep-alive, bodies encoded before timing",
            "databases": "fresh per run: SQLite file (WAL) / new PostgreSQL database",
            "payload": campaign(0),
        },
        "target_bulk_tasks_per_s": TARGET_BULK_TASKS_PER_S,
        "target_single_p99_ms": TARGET_SINGLE_P99_MS,
        "figures": figures,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for backend, data in figures.items():
        print(
            f"{backend:10} bulk median {data['bulk']['median_tasks_per_s']:>7} tasks/s "
            f"(target {TARGET_BULK_TASKS_PER_S}: "
            f"{'met' if data['bulk']['meets_target'] else 'MISSED'}), "
            f"single create median {data['single']['median_ms']} ms, "
            f"p99 {data['single']['p99_ms']} ms"
        )
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
