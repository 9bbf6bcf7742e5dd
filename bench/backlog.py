"""How Sluice's cost grows with the backlog: 10,000, 100,000 and 1,000,000 tasks waiting.

For each size and backend (PostgreSQL; SQLite, the embedded store) a dataset is built once
and reused: a PostgreSQL database ``sluice_bench_<size>`` filled with ``INSERT ... SELECT
generate_series`` (server-side, no round trip per row), or a SQLite file under
``$SLUICE_BENCH_DATA`` (default ``/var/tmp/sluice-bench``) filled with ``executemany`` in one
transaction, not ANALYZEd (as Sluice's own SQLite files are not). A ``bench_dataset`` row
marks a finished build (size, last event id); a dataset without it is rebuilt. Each
dataset holds ``size`` tasks for provider ``sink``: 97% Not Started and due (spread over
the past hour), 2% Completed, 1% Error; one in 50 an ad group whose parent is a Completed
campaign; one in 7 in tenant ``acme``; one ``created`` event each.

Measured for each dataset, sizes interleaved within each run, ``--runs`` runs:

* **dispatch rate with no limit**: the embedded driver over the dataset, provider ``sink``
  = the ``sandbox-standard`` preset with no ``rate_limit`` and no ``max_in_flight``, against
  the sandbox DSP in its own process (limits out of the way, accept delay 0, polls once an
  hour so only creates are sent). After a warm-up of the dataset's ad groups (trees first
  sends them before any campaign, and the sandbox refuses them: it does not know their
  parents) and ``WARMUP`` more requests, the time to send the next ``MEASURED``: accepted
  campaign creates at every size. The touched rows are put back afterwards (``reset``);
* **claim**: ``WorkQueue.claim_due`` of 500 due tasks (then released), median ms;
* **filtered listing**: ``GET /api/tasks`` over real HTTP (the API in its own process, as
  ``bench.ingest`` serves it) with six filters (status, kind, parent, a cursor deep in the
  table, a tenant), p50/p95 ms over ``LIST_REQUESTS`` requests;
* **bytes per task** on disk: tables, their indexes and TOAST (PostgreSQL), the file size
  (SQLite); events included.

Writes ``bench/results/backlog.json`` and ``backlog.png`` (cost against backlog size).
Targets: the dispatch rate at 1,000,000 within 10% of the rate at 10,000 (per backend, the
ratio of medians); the filtered listing's p95 under 50 ms at 1,000,000.

Run: ``python -m bench.backlog [--runs 3] [--sizes 10000,100000,1000000]
[--backends postgresql,sqlite] [--rebuild]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, text

from bench import _engine_harness as harness
from bench._common import machine_info, wait_until_up
from bench.ingest import PG_ADMIN_URL, _serve
from harness.cluster import free_port
from sluice import runtime as sluice_runtime
from sluice.drivers.embedded import build_embedded_driver
from sluice.settings import load_settings
from sluice.store import db
from sluice.store.queue import WorkQueue
from sluice.store.rows import encode_cursor

RESULTS = harness.RESULTS_DIR / "backlog.json"
PLOT = harness.RESULTS_DIR / "backlog.png"
DATA_DIR = Path(os.environ.get("SLUICE_BENCH_DATA", "/var/tmp/sluice-bench"))  # noqa: S108
SIZES = (10_000, 100_000, 1_000_000)
WARMUP = 200
MEASURED = 3000  # creates timed after the warm-up (a 10,000 dataset has 9,700 due)
CLAIMS = 15
CLAIM_BATCH = 500
LIST_REQUESTS = 120
THREADS = 16
DISPATCH_TARGET = 0.9  # rate at the largest size / rate at the smallest, at least
LIST_P95_TARGET_MS = 50.0
SANDBOX = {
    "accept_delay_s": [0.0, 0.0],
    "process_delay_s": [3600.0, 3600.0],
    "limits": [{"name": "app", "limit": 1_000_000_000, "window_s": 1.0}],
}
BUILT_AT = datetime(2026, 1, 1, tzinfo=UTC)  # every dataset row's created_at/updated_at
BUILD_CHUNK = 100_000


def label(size: int) -> str:
    return f"{size // 1_000_000}m" if size >= 1_000_000 else f"{size // 1000}k"


# --- datasets ------------------------------------------------------------------------------

MARKER_DDL = (
    "CREATE TABLE IF NOT EXISTS bench_dataset "
    "(name VARCHAR(32) PRIMARY KEY, tasks BIGINT NOT NULL, last_event_id BIGINT NOT NULL)"
)

PG_TASKS = """
INSERT INTO tasks (id, tenant, provider, kind, payload, external_id, parent_id, status, phase,
                   track_only, attempts, polls, next_attempt_at, client_ref, maybe_created,
                   created_at, updated_at)
SELECT g,
       CASE WHEN mod(g, 7) = 0 THEN 'acme' ELSE 'default' END,
       'sink',
       CASE WHEN mod(g, 50) = 1 AND g > 1 THEN 'ad_group' ELSE 'campaign' END,
       CASE WHEN mod(g, 50) = 1 AND g > 1
            THEN jsonb_build_object('name', 'bench ' || g, 'bid', 1.5)
            ELSE jsonb_build_object('advertiser_id', 'adv-' || (mod(g, 3) + 1),
                                    'name', 'bench ' || g, 'budget', 1000.0) END,
       CASE WHEN mod(g, 50) = 0 THEN 'ext-' || g END,
       CASE WHEN mod(g, 50) = 1 AND g > 1 THEN g - 1 END,
       CASE WHEN mod(g, 100) = 0 THEN 'Error' WHEN mod(g, 50) = 0 THEN 'Completed'
            ELSE 'Not Started' END,
       CASE WHEN mod(g, 50) = 0 THEN 'done' ELSE 'ready' END,
       false, 0, 0,
       CASE WHEN mod(g, 50) <> 0
            THEN CAST(:built AS timestamptz) + interval '1 hour'
                 + g * (interval '3600 seconds' / CAST(:size AS float8)) END,
       'sl-' || lpad(to_hex(g), 24, '0'), false, :built, :built
FROM generate_series(CAST(:low AS bigint), CAST(:high AS bigint)) AS g
"""

PG_EVENTS = """
INSERT INTO task_events (task_id, at, event, from_status, to_status)
SELECT g, :built, 'created', NULL, 'Not Started'
FROM generate_series(CAST(:low AS bigint), CAST(:high AS bigint)) AS g
"""


def pg_url(size: int) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/sluice_bench_{label(size)}"


def sqlite_url(size: int) -> str:
    return f"sqlite:///{DATA_DIR / f'backlog_{label(size)}.db'}"


def dataset_url(backend: str, size: int) -> str:
    return pg_url(size) if backend == "postgresql" else sqlite_url(size)


def _marker(engine: Engine, name: str) -> int | None:
    """The dataset's last built event id, or None if it was never finished."""
    with engine.begin() as conn:
        conn.execute(text(MARKER_DDL))
        row = conn.execute(
            text("SELECT last_event_id FROM bench_dataset WHERE name = :n"), {"n": name}
        ).first()
    return None if row is None else int(row[0])


def ensure_dataset(backend: str, size: int, rebuild: bool = False) -> tuple[str, int]:
    """The dataset's URL and last built event id, building it first if needed."""
    name = f"backlog_{label(size)}"
    url = dataset_url(backend, size)
    if backend == "postgresql":
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"),
                {"n": f"sluice_bench_{label(size)}"},
            ).first()
            if exists and rebuild:
                conn.execute(text(f'DROP DATABASE "sluice_bench_{label(size)}" WITH (FORCE)'))
            if not exists or rebuild:
                conn.execute(text(f'CREATE DATABASE "sluice_bench_{label(size)}"'))
        admin.dispose()
    else:
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        path = DATA_DIR / f"{name}.db"
        if rebuild:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    engine = db.make_engine(url)
    try:
        db.ensure_schema(engine)
        last = _marker(engine, name)
        if last is not None:
            return url, last
        started = time.perf_counter()
        print(f"building {backend} dataset {name} ({size:,} tasks)", file=sys.stderr)
        if backend == "postgresql":
            _build_postgres(engine, size)
        else:
            _build_sqlite(engine, size)
        with engine.begin() as conn:
            last = int(
                conn.execute(text("SELECT COALESCE(MAX(id), 0) FROM task_events")).scalar_one()
            )
            conn.execute(
                text("INSERT INTO bench_dataset (name, tasks, last_event_id) VALUES (:n, :t, :e)"),
                {"n": name, "t": size, "e": last},
            )
        print(f"built {name} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        return url, last
    finally:
        engine.dispose()


def _build_postgres(engine: Engine, size: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE tasks, task_events RESTART IDENTITY CASCADE"))
    for low in range(1, size + 1, BUILD_CHUNK):
        high = min(size, low + BUILD_CHUNK - 1)
        params = {"built": BUILT_AT, "size": size, "low": low, "high": high}
        with engine.begin() as conn:
            conn.execute(text(PG_TASKS), params)
            conn.execute(text(PG_EVENTS), params)
    with engine.begin() as conn:
        conn.execute(text("SELECT setval('tasks_id_seq', :n)"), {"n": size})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE tasks"))
        conn.execute(text("VACUUM ANALYZE task_events"))


def _sqlite_time(moment: datetime) -> str:
    return moment.replace(tzinfo=None).isoformat(sep=" ")


def _build_sqlite(engine: Engine, size: int) -> None:
    built = _sqlite_time(BUILT_AT)
    step = 3600.0 / size
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        # The store's connections are in autocommit at the driver (db.py issues BEGIN), so
        # without an explicit BEGIN every row was its own transaction, synced to disk
        # (100,000 tasks took 109 s). One transaction, with the index pages kept in a
        # large page cache instead of spilling to the WAL.
        cursor.execute("PRAGMA cache_size = -1048576")
        cursor.execute("BEGIN IMMEDIATE")
        cursor.execute("DELETE FROM task_events")
        cursor.execute("DELETE FROM tasks")
        for low in range(1, size + 1, BUILD_CHUNK):
            rows = []
            events = []
            for g in range(low, min(size, low + BUILD_CHUNK - 1) + 1):
                child = g % 50 == 1 and g > 1
                final = g % 50 == 0
                status = "Error" if g % 100 == 0 else "Completed" if final else "Not Started"
                payload = (
                    {"name": f"bench {g}", "bid": 1.5}
                    if child
                    else {
                        "advertiser_id": f"adv-{g % 3 + 1}",
                        "name": f"bench {g}",
                        "budget": 1000.0,
                    }
                )
                due = (
                    None if final else _sqlite_time(BUILT_AT + timedelta(hours=1, seconds=g * step))
                )
                rows.append(
                    (
                        g,
                        "acme" if g % 7 == 0 else "default",
                        "sink",
                        "ad_group" if child else "campaign",
                        json.dumps(payload),
                        f"ext-{g}" if final else None,
                        g - 1 if child else None,
                        status,
                        "done" if final else "ready",
                        due,
                        f"sl-{g:024x}",
                        built,
                        built,
                    )
                )
                events.append((g, built, "created", None, "Not Started"))
            cursor.executemany(
                "INSERT INTO tasks (id, tenant, provider, kind, payload, external_id, parent_id,"
                " status, phase, track_only, attempts, polls, next_attempt_at, client_ref,"
                " maybe_created, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, ?, ?, 0, ?, ?)",
                rows,
            )
            cursor.executemany(
                "INSERT INTO task_events (task_id, at, event, from_status, to_status)"
                " VALUES (?, ?, ?, ?, ?)",
                events,
            )
        # Not ANALYZEd: Sluice never runs ANALYZE on SQLite, so its planner has no statistics
        # in use either (with them, a fair claim's plans looked better than users' are).
        raw.commit()
    finally:
        raw.close()


def reset(url: str, last_event_id: int) -> int:
    """Put back what a dispatch run changed; returns how many tasks it touched."""
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            touched = conn.execute(
                text(
                    "UPDATE tasks SET status = 'Not Started', phase = 'ready', external_id = NULL,"
                    " attempts = 0, polls = 0, poll_interval_s = NULL,"
                    " next_attempt_at = created_at,"
                    " deadline_at = NULL, maybe_created = false, claimed_by = NULL,"
                    " claimed_until = NULL, last_error = NULL, validation_error = NULL,"
                    " updated_at = created_at"
                    " WHERE updated_at <> created_at OR claimed_by IS NOT NULL"
                    " OR phase NOT IN ('ready', 'done')"
                )
            ).rowcount
            conn.execute(text("DELETE FROM task_events WHERE id > :last"), {"last": last_event_id})
        return int(touched or 0)
    finally:
        engine.dispose()


# --- measurements --------------------------------------------------------------------------


def bytes_per_task(url: str, size: int) -> dict[str, float]:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                tasks_bytes = conn.execute(
                    text("SELECT pg_total_relation_size('tasks')")
                ).scalar_one()
                events_bytes = conn.execute(
                    text("SELECT pg_total_relation_size('task_events')")
                ).scalar_one()
                heap = conn.execute(text("SELECT pg_relation_size('tasks')")).scalar_one()
                return {
                    "tasks_with_indexes": round(tasks_bytes / size, 1),
                    "tasks_heap": round(heap / size, 1),
                    "events_with_indexes": round(events_bytes / size, 1),
                    "total": round((tasks_bytes + events_bytes) / size, 1),
                }
            pages = conn.execute(text("PRAGMA page_count")).scalar_one()
            page_size = conn.execute(text("PRAGMA page_size")).scalar_one()
            return {"total": round(pages * page_size / size, 1)}
    finally:
        engine.dispose()


def claim_ms(url: str) -> float:
    """Median ms of claiming CLAIM_BATCH due tasks (each claim released again)."""
    engine = db.make_engine(url)
    queue = WorkQueue(engine)
    times: list[float] = []
    try:
        for _ in range(CLAIMS):
            now = datetime.now(UTC)
            started = time.perf_counter()
            claimed = queue.claim_due(now, CLAIM_BATCH, "bench", 60.0, providers=["sink"])
            times.append((time.perf_counter() - started) * 1000)
            queue.release(claimed)
    finally:
        engine.dispose()
    return round(statistics.median(times), 2)


@contextmanager
def _api(database_url: str) -> Iterator[str]:
    """The API over ``database_url`` in a child process, as ``bench.ingest`` serves it
    (a longer start-up wait: on a loaded host importing FastAPI takes a while)."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(database_url, port), daemon=True
    )
    server.start()
    try:
        wait_until_up(f"{base_url}/readyz", timeout_s=180)
        yield base_url
    finally:
        server.terminate()
        server.join(timeout=10)


def list_latency(url: str, size: int) -> dict[str, float]:
    """p50/p95 ms of filtered ``GET /api/tasks`` over real HTTP."""
    queries = [
        {"status": "Error"},
        {"status": "Completed", "provider": "sink"},
        {"kind": "ad_group"},
        {"status": "Not Started", "kind": "campaign", "cursor": encode_cursor(size // 2)},
        {"parent_id": str(size // 2 // 50 * 50)},
        {"status": "Error", "tenant": "acme"},
    ]
    with _api(url) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        for query in queries:  # warm up, and check they answer
            response = client.get("/api/tasks", params={**query, "limit": 100})
            response.raise_for_status()
        times: list[float] = []
        for index in range(LIST_REQUESTS):
            query = queries[index % len(queries)]
            started = time.perf_counter()
            client.get("/api/tasks", params={**query, "limit": 100}).raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[int(len(times) * 0.95) - 1], 2),
        "max_ms": round(times[-1], 2),
    }


def sent_so_far(driver: Any) -> int:
    """Requests sent (all creates: polls are an hour apart)."""
    return sum(dict(driver.executor.stats.requests).values())


def dispatch_rate(url: str, sandbox_url: str) -> dict[str, Any]:
    """Creates per second the embedded driver sends over the dataset, no limit."""
    provider = {
        "preset": "sandbox-standard",
        "base_url": sandbox_url,
        "rate_limit": None,
        "max_in_flight": None,
        "poll": {"interval": "1h"},
    }
    settings = load_settings(
        database_url=url,
        providers={"sink": provider},
        default_provider="sink",
        executor_threads=THREADS,
    )
    runtime = sluice_runtime.build_runtime(settings)
    # Trees first sends the dataset's ad groups (their parents exist) before any campaign,
    # and the sandbox refuses each (it does not know their parents' ids): the warm-up takes
    # them all, so that every size measures the same work, accepted campaign creates.
    with runtime.repo.engine.connect() as conn:
        children = conn.execute(
            text("SELECT count(*) FROM tasks WHERE parent_id IS NOT NULL AND phase = 'ready'")
        ).scalar_one()
    warmup = children + WARMUP
    driver = build_embedded_driver(runtime)
    try:
        driver.start()
        deadline = time.monotonic() + 120 + warmup / 100
        while sent_so_far(driver) < warmup:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {warmup} creates in time")
            time.sleep(0.01)
        before = sent_so_far(driver)
        started = time.perf_counter()
        while sent_so_far(driver) - before < MEASURED:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {MEASURED} creates in time")
            time.sleep(0.005)
        sent = sent_so_far(driver) - before
        seconds = time.perf_counter() - started
    finally:
        driver.stop()
        runtime.close()
    return {
        "warmup_creates": warmup,
        "creates": sent,
        "seconds": round(seconds, 3),
        "per_s": round(sent / seconds, 1),
    }


# --- the run -------------------------------------------------------------------------------


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for backend, figures in result["medians"].items():
        sizes = sorted(int(s) for s in figures)
        axes[0].plot(sizes, [figures[str(s)]["dispatch_per_s"] for s in sizes], "o-", label=backend)
        axes[1].plot(sizes, [figures[str(s)]["claim_ms"] for s in sizes], "o-", label=backend)
        axes[2].plot(sizes, [figures[str(s)]["bytes_per_task"] for s in sizes], "o-", label=backend)
        axes[1].plot(
            sizes,
            [figures[str(s)]["list_p95_ms"] for s in sizes],
            "s--",
            label=f"{backend} GET /api/tasks p95",
        )
    titles = (
        "dispatch rate, no limit (creates/s)",
        f"claim of {CLAIM_BATCH} (median ms); filtered list p95 (ms)",
        "bytes per task on disk (tasks + events + indexes)",
    )
    for axis, title in zip(axes, titles, strict=True):
        axis.set_xscale("log")
        axis.set_xlabel("tasks waiting")
        axis.set_title(title, fontsize=10)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
        axis.set_ylim(bottom=0)
    figure.suptitle(f"Sluice cost against backlog size ({result['machine']['date']})")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    backends = args.backends.split(",")

    started = time.perf_counter()
    datasets = {
        (backend, size): ensure_dataset(backend, size, args.rebuild)
        for backend in backends
        for size in sizes
    }
    runs: list[dict[str, Any]] = []
    with harness.sandbox_process(SANDBOX, profile="standard") as sandbox:
        for index in range(args.runs):
            order = [(b, s) for b in backends for s in sizes]
            random.Random(index).shuffle(order)  # sizes interleaved, order varied
            for backend, size in order:
                url, last_event = datasets[(backend, size)]
                reset(url, last_event)
                sandbox.reset()
                load = round(os.getloadavg()[0], 2)
                figures: dict[str, Any] = {
                    "run": index + 1,
                    "backend": backend,
                    "size": size,
                    "loadavg_1min_before": load,
                    "dispatch": dispatch_rate(url, sandbox.base_url),
                }
                figures["touched_then_reset"] = reset(url, last_event)
                figures["claim_ms"] = claim_ms(url)
                figures["list"] = list_latency(url, size)
                figures["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
                runs.append(figures)
                print(
                    f"run {index + 1} {backend} {label(size)}: "
                    f"{figures['dispatch']['per_s']} creates/s, claim {figures['claim_ms']} ms"
                    + f", list p50/p95 {figures['list']['p50_ms']}/{figures['list']['p95_ms']} ms"
                    + f" (load {load})",
                    file=sys.stderr,
                )
        sandbox_command = sandbox.command_line
    medians: dict[str, dict[str, dict[str, float]]] = {}
    for backend in backends:
        medians[backend] = {}
        for size in sizes:
            mine = [r for r in runs if r["backend"] == backend and r["size"] == size]
            entry = {
                "dispatch_per_s": harness.median([r["dispatch"]["per_s"] for r in mine]),
                "claim_ms": harness.median([r["claim_ms"] for r in mine]),
                "bytes_per_task": bytes_per_task(datasets[(backend, size)][0], size)["total"],
                "bytes_detail": bytes_per_task(datasets[(backend, size)][0], size),
            }
            entry["list_p50_ms"] = harness.median([r["list"]["p50_ms"] for r in mine])
            entry["list_p95_ms"] = harness.median([r["list"]["p95_ms"] for r in mine])
            medians[backend][str(size)] = entry
    smallest, largest = str(min(sizes)), str(max(sizes))
    ratios = {
        backend: round(
            medians[backend][largest]["dispatch_per_s"]
            / medians[backend][smallest]["dispatch_per_s"],
            3,
        )
        for backend in backends
    }
    result: dict[str, Any] = {
        "benchmark": "backlog",
        "command": " ".join(["python -m bench.backlog", *(sys.argv[1:] if argv is None else argv)]),
        "sandbox_command": sandbox_command,
        "machine": machine_info(),
        "seconds": round(time.perf_counter() - started, 1),
        "setup": {
            "sink": "the sandbox DSP in its own process (bench._sandbox_proc), limits out of the"
            " way, accept delay 0; polls once an hour, so only creates are sent",
            "sandbox": SANDBOX,
            "driver": f"embedded, {THREADS} executor threads, provider sink = sandbox-standard"
            " preset, rate_limit None, max_in_flight None",
            "warmup_creates": f"the ready ad groups (served first, refused) + {WARMUP}",
            "measured_creates": MEASURED,
            "claim": {"batch": CLAIM_BATCH, "repeats": CLAIMS},
            "list": {"requests": LIST_REQUESTS, "limit": 100, "transport": "HTTP over loopback"},
            "datasets": {
                f"{b}/{label(s)}": u.split("@")[-1] for (b, s), (u, _) in datasets.items()
            },
        },
        "targets": {
            "dispatch_largest_over_smallest_at_least": DISPATCH_TARGET,
            "list_p95_ms_at_largest_under": LIST_P95_TARGET_MS,
        },
        "runs": runs,
        "medians": medians,
        "dispatch_ratio_largest_over_smallest": ratios,
        "pass": {
            **{f"{b}_dispatch_within_10pct": r >= DISPATCH_TARGET for b, r in ratios.items()},
            **{
                f"{b}_list_p95_under_50ms": medians[b][largest]["list_p95_ms"] < LIST_P95_TARGET_MS
                for b in backends
            },
        },
    }
    harness.write_json(args.output, result)
    plot(result, args.output.with_suffix(".png"))
    print(f"ratios {ratios}; wrote {args.output}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
