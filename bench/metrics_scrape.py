"""What a scrape of /metrics costs the database with a million tasks.

A fresh PostgreSQL database gets 1,000,000 tasks of two providers (900,000 Completed,
80,000 due to be sent, all of provider ``big``; 20,000 polling, of provider ``small``),
then ``VACUUM ANALYZE`` (as autovacuum would). Timed, medians of several: the task counts
(``store.counts.tasks_by_provider_status``: the ``(provider, status)`` index), the queue
age (``store.counts.oldest_due``: one entry of ``(phase, next_attempt_at)`` per provider and
phase, the provider with nothing due being the worst case), and a whole ``GET /metrics``
answer with the counts cached and uncached. Writes ``bench/results/metrics_scrape.json``.

Run: ``python -m bench.metrics_scrape [--tasks 1000000] [--repeat 7]``
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench import _engine_harness as harness
from bench._common import machine_info
from harness.cluster import PG_ADMIN_URL
from sluice.clock import SystemClock
from sluice.store import counts, db

RESULTS = harness.RESULTS_DIR / "metrics_scrape.json"

FILL = """
INSERT INTO tasks (tenant, provider, kind, payload, status, phase, track_only, attempts, polls,
                   next_attempt_at, client_ref, maybe_created, created_at, updated_at)
SELECT 'default',
       CASE WHEN n <= :done + :due THEN 'big' ELSE 'small' END,
       'campaign', '{"name": "x"}',
       CASE WHEN n <= :done THEN 'Completed' WHEN n <= :done + :due THEN 'Not Started'
            ELSE 'In Progress' END,
       CASE WHEN n <= :done THEN 'done' WHEN n <= :done + :due THEN 'ready' ELSE 'polling' END,
       false, 1, 0,
       CASE WHEN n <= :done THEN NULL
            WHEN n <= :done + :due THEN now() - interval '1 hour' + n * interval '1 ms'
            ELSE now() + interval '1 hour' END,
       'sl-' || n, false, now(), now()
FROM generate_series(1, :total) AS n
"""


def timed(call: Any, repeat: int) -> dict[str, float]:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    return {
        "median_ms": round(harness.median(seconds) * 1000, 2),
        "max_ms": round(seconds[-1] * 1000, 2),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    name = f"sluice_bench_metrics_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    engine = db.make_engine(url)
    try:
        db.ensure_schema(engine)
        total = args.tasks
        done, due = total * 90 // 100, total * 8 // 100
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(sa.text(FILL), {"done": done, "due": due, "total": total})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE tasks"))
        fill_s = time.perf_counter() - started
        now = SystemClock().now()
        providers = ["big", "small"]
        figures = {
            "tasks_by_provider_status": timed(
                lambda: counts.tasks_by_provider_status(engine), args.repeat
            ),
            "oldest_due": timed(lambda: counts.oldest_due(engine, providers, now), args.repeat),
        }
        found = counts.tasks_by_provider_status(engine)
        oldest = counts.oldest_due(engine, providers, now)
        with engine.connect() as conn:
            plan = (
                conn.execute(
                    sa.text(
                        "EXPLAIN SELECT provider, status, count(*) FROM tasks "
                        "GROUP BY provider, status"
                    )
                )
                .scalars()
                .all()
            )
        figures["scrape"] = scrape_times(url, args.repeat)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    result = {
        "benchmark": "metrics_scrape",
        "command": " ".join(
            ["python -m bench.metrics_scrape", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": machine_info(),
        "setup": {
            "tasks": total,
            "fill_s": round(fill_s, 1),
            "counts": {f"{p} {s}": c for (p, s), c in sorted(found.items())},
            "oldest_due_providers": sorted(oldest),
            "count_plan": plan,
        },
        "figures": figures,
    }
    harness.write_json(args.output, result)
    print(f"{figures}; wrote {args.output}", file=sys.stderr)
    return result


def scrape_times(url: str, repeat: int) -> dict[str, Any]:
    """``GET /metrics`` of an API on this database: first (counting) and cached answers."""
    from fastapi.testclient import TestClient

    from sluice.api.app import build_api
    from sluice.runtime import build_runtime
    from sluice.settings import load_settings

    providers = {
        name: {"preset": "sandbox-standard", "base_url": "http://127.0.0.1:9"}
        for name in ("big", "small")
    }
    runtime = build_runtime(
        load_settings(database_url=url, providers=providers, default_provider="big")
    )
    try:
        app = build_api(runtime)
        reader = app.state.metrics_collectors[0]
        with TestClient(app, base_url="http://localhost") as client:
            cached = timed(lambda: client.get("/metrics"), repeat)

            def uncached() -> None:
                reader._read.__self__._next_count = float("-inf")
                client.get("/metrics")

            counting = timed(uncached, repeat)
    finally:
        runtime.close()
    return {"counting": counting, "cached": cached}


if __name__ == "__main__":
    main()
