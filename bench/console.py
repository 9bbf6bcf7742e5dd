"""The console with a million tasks in PostgreSQL: page latency, and what live streams cost.

Two PostgreSQL databases are built once and reused (``sluice_bench_console_1000000`` and
``sluice_bench_console_10000``; ``--rebuild`` makes them again): tasks written with
``COPY`` in a realistic mix (two providers, three kinds, 70 % Completed, 10 % Error with a
validation error, some waiting, running, cancelled; created over a week), then ``ANALYZE``.
An API process (``build_api`` over a runtime with both providers, uvicorn) serves each.

Measured over real HTTP, in turns so machine load hits each alike, after a warm-up:

* ``overview``: ``GET /ui`` (the overview page: live part, hour charts, queue by status
  and phase; the queue's count is cached 5 s, so its cost shows in the tail);
* ``tasks_filtered``: ``GET /ui/tasks?provider=acme&status=Error`` (the first page);
* ``tasks_text``: ``GET /ui/tasks?error_text=budget`` (text in validation_error);
* ``tasks_page_deep``: the same filter from an ``after`` id in the middle of the table.

p50 / p95 in ms for each, at 10,000 and at 1,000,000 tasks (target: p95 < 300 ms).

Then the CPU the API process uses (its ``/proc`` user + system time) over ``--cpu-s``
seconds with no stream open, and with 50 open ``/ui/events`` streams: the difference, in
percent of one core (target: < 5 %).

Writes ``bench/results/console.json``.

Run: ``python -m bench.console [--tasks 1000000] [--requests 200] [--cpu-s 20]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bench._common import machine_info, wait_until_up
from harness.cluster import free_port

RESULTS = Path(__file__).parent / "results" / "console.json"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PROVIDERS = {
    "sandbox": {"preset": "sandbox-demo", "base_url": "http://127.0.0.1:9", "rate_limit": "20/s"},
    "acme": {"preset": "sandbox-demo", "base_url": "http://127.0.0.1:9", "rate_limit": "5/s"},
}
COLUMNS = (
    "id, tenant, provider, kind, payload, external_id, parent_id, status, phase, track_only, "
    "validation_error, last_error, attempts, polls, next_attempt_at, maybe_created, "
    "created_at, updated_at, client_ref"
)
MIX = [
    ("Completed", "done", 70),
    ("Error", "done", 10),
    ("Not Started", "ready", 8),
    ("Not Started", "waiting_parent", 2),
    ("In Progress", "polling", 5),
    ("Cancelled", "done", 5),
]
ERRORS = ["Invalid budget: -5", "Invalid IP range: 10.0.0.999", "name too long", "bad bid"]


def _url(name: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def _count(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM tasks")).scalar() or 0)
    except sa.exc.SQLAlchemyError:
        return -1
    finally:
        engine.dispose()


def build(tasks: int, rebuild: bool) -> str:
    """The database with ``tasks`` tasks (made once: reused while it holds that many)."""
    from sluice.store import db

    name = f"sluice_bench_console_{tasks}"
    url = _url(name)
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
        ).first()
    if exists and not rebuild and _count(url) == tasks:
        admin.dispose()
        db.ensure_schema(db.make_engine(url))
        return url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    engine = db.make_engine(url)
    db.ensure_schema(engine)
    started = time.monotonic()
    rng = random.Random(tasks)
    weights = [w for *_, w in MIX]
    now = datetime.now(UTC)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        with cursor.copy(f"COPY tasks ({COLUMNS}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for task_id in range(1, tasks + 1):
                status, phase = rng.choices([(s, p) for s, p, _ in MIX], weights)[0]
                provider = "acme" if rng.random() < 0.3 else "sandbox"
                kind = rng.choice(["campaign", "ad_group", "ad"])
                created = now - timedelta(seconds=rng.uniform(0, 7 * 86400))
                error = rng.choice(ERRORS) if status == "Error" else None
                copy.write_row(
                    (
                        task_id,
                        "default",
                        provider,
                        kind,
                        json.dumps({"name": f"task {task_id}", "budget": task_id % 1000}),
                        str(task_id) if status in ("Completed", "In Progress") else None,
                        None,
                        status,
                        phase,
                        False,
                        error,
                        error,
                        1,
                        0,
                        created if phase in ("ready", "polling") else None,
                        False,
                        created,
                        created,
                        f"sl-{task_id:024x}",
                    )
                )
        cursor.execute("SELECT setval(pg_get_serial_sequence('tasks', 'id'), %s)", (tasks,))
        raw.commit()
    finally:
        raw.close()
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("ANALYZE"))
    engine.dispose()
    print(f"built {tasks:,} tasks in {time.monotonic() - started:.1f}s", flush=True)
    return url


def _serve(database_url: str, port: int) -> None:
    """Child process: the API over ``database_url`` with both providers."""
    import uvicorn

    from sluice.api.app import build_api
    from sluice.runtime import build_runtime
    from sluice.settings import Settings

    settings = Settings(database_url=database_url, host="127.0.0.1", providers=PROVIDERS)
    uvicorn.run(
        build_api(build_runtime(settings)),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        log_config=None,
    )


@contextmanager
def api(database_url: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    server = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(database_url, port), daemon=True
    )
    server.start()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/healthz", 240)  # a loaded machine starts Python slowly
        assert server.pid is not None
        yield base, server.pid
    finally:
        server.terminate()
        server.join(10)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def pages(base: str, tasks: int, requests: int) -> dict[str, dict[str, float]]:
    paths = {
        "overview": "/ui",
        "tasks_filtered": "/ui/tasks?provider=acme&status=Error",
        "tasks_text": "/ui/tasks?error_text=budget",
        "tasks_page_deep": f"/ui/tasks?provider=acme&status=Error&after={tasks // 2}",
    }
    timings: dict[str, list[float]] = {name: [] for name in paths}
    with httpx.Client(base_url=base, timeout=60) as client:
        for path in paths.values():  # warm-up: connections, caches, plans
            for _ in range(3):
                assert client.get(path).status_code == 200
        for _ in range(requests):
            for name, path in paths.items():
                started = time.perf_counter()
                answer = client.get(path)
                timings[name].append((time.perf_counter() - started) * 1000)
                assert answer.status_code == 200, answer.text[:300]
    return {
        name: {
            "p50_ms": round(statistics.median(values), 1),
            "p95_ms": round(_percentile(values, 0.95), 1),
            "max_ms": round(max(values), 1),
            "requests": len(values),
        }
        for name, values in timings.items()
    }


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _open_streams(base: str, count: int, stop: threading.Event) -> list[threading.Thread]:
    opened = threading.Semaphore(0)

    def listen() -> None:
        with (
            httpx.Client(base_url=base, timeout=httpx.Timeout(10, read=60)) as client,
            client.stream("GET", "/ui/events") as answer,
        ):
            opened.release()
            for _ in answer.iter_raw():
                if stop.is_set():
                    return

    threads = [threading.Thread(target=listen, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    for _ in threads:
        opened.acquire(timeout=30)
    return threads


def stream_cpu(base: str, pid: int, seconds: float, streams: int) -> dict[str, Any]:
    """CPU of the API process (percent of one core) idle, with 1 stream, with ``streams``."""

    def measure() -> float:
        before, started = _cpu_s(pid), time.monotonic()
        time.sleep(seconds)
        return 100 * (_cpu_s(pid) - before) / (time.monotonic() - started)

    idle = measure()
    out: dict[str, Any] = {"seconds": seconds, "idle_cpu_percent": round(idle, 2)}
    for count in (1, streams):
        stop = threading.Event()
        threads = _open_streams(base, count, stop)
        time.sleep(1.0)
        used = measure()
        stop.set()
        out[f"streams_{count}_cpu_percent"] = round(used, 2)
        for thread in threads:
            thread.join(timeout=20)
        time.sleep(1.0)
    out["added_by_streams_percent"] = round(out[f"streams_{streams}_cpu_percent"] - idle, 2)
    out["added_by_the_last_49_streams_percent"] = round(
        out[f"streams_{streams}_cpu_percent"] - out["streams_1_cpu_percent"], 2
    )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--cpu-s", type=float, default=20.0)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"benchmark": "console", "target_p95_ms": 300, "sizes": {}}
    for size in (args.small, args.tasks):
        url = build(size, args.rebuild)
        with api(url) as (base, pid):
            load_before = os.getloadavg()[0]
            figures = pages(base, size, args.requests)
            figures_load = {"load_average_1m": round(os.getloadavg()[0], 2)}
            entry: dict[str, Any] = {"pages": figures, "load_before": round(load_before, 2)}
            entry.update(figures_load)
            if size == args.tasks:
                entry["sse"] = stream_cpu(base, pid, args.cpu_s, args.streams)
            result["sizes"][str(size)] = entry
            print(json.dumps({size: entry}, indent=2), flush=True)
    result["machine"] = machine_info()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
