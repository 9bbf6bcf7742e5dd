"""Where a bulk call's CPU goes, stage by stage, in this process (no HTTP).

Runs the bulk route's own steps over fresh databases: ``json.loads`` of the body (what
FastAPI does), ``BulkCreate`` validation, ``to_submission``, then
``submissions.create_tasks`` with the store's SQL steps timed apart. ``time.process_time``
(this process's CPU), the cyclic GC paused as the API pauses it, one warm-up batch, then
the median per stage over ``--batches`` batches of 10,000 tasks, in microseconds per task.
On PostgreSQL the server's CPU for the write is reported on a line of its own: its
backend's (``/proc/<pg_backend_pid>/stat``, so the server must run on this host) around
``create_tasks``: the ``COPY`` into ``tasks`` and its indexes, the events and the commit.
Prints a Markdown table (docs/scaling.md, ingest).

Run: ``python -m bench.ingest_stages [--batches 4] [--backends sqlite,postgresql]``
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.ingest import BATCH_SIZE, _catalog, _fresh_database, campaign

SERVER = "the PostgreSQL backend's CPU (not in the total)"


def _backend_seconds(pid: int) -> float:
    """CPU seconds (user + system) the server process ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stages(url: str, batches: int) -> dict[str, float]:
    from sluice import submissions
    from sluice.api.schemas import BulkCreate
    from sluice.store import bulk, db
    from sluice.store.repository import TaskRepository

    postgres = url.startswith("postgresql")
    # One connection, so one server backend does every write and its CPU can be read.
    engine = db.make_engine(url, **({"pool_size": 1, "max_overflow": 0} if postgres else {}))
    backend = None
    if postgres:
        with engine.connect() as conn:
            backend = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
    repo = TaskRepository(engine)
    catalog = _catalog()
    sql: dict[str, float] = {}

    def timed(label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                sql[label] = sql.get(label, 0.0) + time.process_time() - started

        return wrapped

    originals = (bulk.reserve_ids, bulk.insert_column_parts)
    bulk.reserve_ids = timed("reserve ids (SQL)", bulk.reserve_ids)
    # The rows' columns are built as the insert reads them (a part at a time on PostgreSQL).
    bulk.insert_column_parts = timed(
        "build columns, convert + insert the task rows", bulk.insert_column_parts
    )
    repo._insert_created_events = timed(  # type: ignore[method-assign]
        "created events (SQL)", repo._insert_created_events
    )
    bodies = [
        json.dumps({"tasks": [campaign(b * BATCH_SIZE + i) for i in range(BATCH_SIZE)]}).encode()
        for b in range(batches + 1)
    ]
    samples: dict[str, list[float]] = {}
    try:
        for number, body in enumerate(bodies):
            sql.clear()
            gc.disable()
            try:
                t0 = time.process_time()
                data = json.loads(body)
                t1 = time.process_time()
                model = BulkCreate.model_validate(data)
                t2 = time.process_time()
                items = [item.to_submission(tenant="default") for item in model.tasks]
                t3 = time.process_time()
                server = 0.0 if backend is None else _backend_seconds(backend)
                submissions.create_tasks(repo, catalog, items)
                t4 = time.process_time()
                server = 0.0 if backend is None else _backend_seconds(backend) - server
            finally:
                gc.enable()
            if number == 0:
                continue  # warm-up
            stages = {
                "json.loads of the body (FastAPI)": t1 - t0,
                "BulkCreate validation (pydantic)": t2 - t1,
                "to_submission": t3 - t2,
                "checks (Python)": t4 - t3 - sum(sql.values()),
                **sql,
                **({SERVER: server} if backend is not None else {}),
            }
            for label, seconds in stages.items():
                samples.setdefault(label, []).append(seconds)
    finally:
        bulk.reserve_ids, bulk.insert_column_parts = originals
        engine.dispose()
    return {
        label: statistics.median(values) / BATCH_SIZE * 1e6 for label, values in samples.items()
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    figures: dict[str, dict[str, float]] = {}
    for backend in args.backends.split(","):
        with _fresh_database(backend) as url:
            figures[backend] = _stages(url, args.batches)
    backends = list(figures)
    print("| stage (µs per task) | " + " | ".join(backends) + " |")
    print("|---" * (len(backends) + 1) + "|")
    labels = [label for label in figures[backends[0]] if label != SERVER]

    def row(label: str, values: list[float | None]) -> None:
        cells = " | ".join("-" if v is None else f"{v:.1f}" for v in values)
        print(f"| {label} | {cells} |")

    for label in labels:
        row(label, [figures[b].get(label, 0.0) for b in backends])
    row("total in this process", [sum(figures[b][label] for label in labels) for b in backends])
    if any(SERVER in figures[b] for b in backends):
        row(SERVER, [figures[b].get(SERVER) for b in backends])
    return figures


if __name__ == "__main__":
    main()
