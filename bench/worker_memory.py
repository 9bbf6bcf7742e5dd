"""Memory and imports of a Celery worker process: ``sluice worker --concurrency 2``.

Run: ``python -m bench.worker_memory [--sluice PATH] [--label NAME] [--runs 3]
[--database-prefix P] [--broker-db N] [--backlog sluice_bench_1m] [--pump-for 60]``. Needs
PostgreSQL and Redis. ``--sluice`` picks the ``sluice`` executable to measure (default:
this venv's), so another checkout can be measured with this script, e.g. ``--sluice
/tmp/before/.venv/bin/sluice --label before``. Writes
``bench/results/worker_memory-<label>.json``.

One worker (main process + 2 prefork children) on the shared harness (:mod:`harness.cluster`:
fresh PostgreSQL database, claimed Redis broker database, Redis limiter namespace, the
default provider; no tasks, so a pump builds the runtime, reconciles, finds nothing due and
ends), started afresh for each run:

1. **Memory** (``--runs`` times; medians are printed). Pumps (``sluice.pump``, 0.5 s) are
   sent until every child has run one (its process has PostgreSQL's driver mapped: the
   runtime was built), then 6 more; after 3 s idle, RSS, PSS and USS (private pages) of
   the main process and of each child are read from ``/proc/<pid>/smaps_rollup`` three
   times 1 s apart (the last sample counts).
2. **With a backlog** (``--backlog DB``, once per run after the memory runs): the same
   worker over a copy of ``DB`` (``CREATE DATABASE ... TEMPLATE DB``, e.g. the 1,000,000-task
   dataset of :mod:`bench.backlog`, whose tasks are all for provider ``sink``), provider
   ``sink`` = the ``sandbox-standard`` preset with no limit against the sandbox DSP in its
   own process (accept at once, never processes: only creates are sent), fair claims on
   as by default (``--no-fair-share``: in due order). Memory is read
   as above after the warm-up (every child pumped, 6 more pumps, ``warm``) and again after
   ``--pump-for`` seconds of pumps back to back (``pumped``): flat means ``pumped`` is
   about ``warm``. The creates sent meanwhile are counted in the database.
3. **Imports** (once). The same with ``PYTHONPROFILEIMPORTTIME=1``: every module the main
   process and the children import is logged; the modules of FastAPI, Starlette, uvicorn,
   ``sluice.api`` and ``sluice.sandbox`` among them are listed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from celery import Celery

from bench import _engine_harness as harness
from bench._common import machine_info
from harness.cluster import (
    PG_ADMIN_URL,
    SLUICE,
    Cluster,
    children,
    memory_kib,
    postgres_database,
    redis_database,
    wait_until,
    write_toml,
)

RESULTS_DIR = Path(__file__).parent / "results"
PUMP_S = 0.5
WARM_PUMPS = 6
FORBIDDEN = ("fastapi", "starlette", "uvicorn", "sluice.api", "sluice.sandbox")
SANDBOX = {
    "accept_delay_s": [0.0, 0.0],
    "process_delay_s": [3600.0, 3600.0],
    "limits": [{"name": "app", "limit": 1_000_000_000, "window_s": 1.0}],
}
"""The sandbox DSP of the backlog runs: limits out of the way, creates accepted at once."""
IMPORT_LINE = re.compile(r"import time:\s+\d+\s+\|\s+\d+\s+\|\s+(?P<module>\S.*)$")


def ran_a_pump(worker: Any, pid: int) -> bool:
    """A pump built its runtime in process ``pid``: it logged ``worker.ready pid=<pid>``
    (the database driver is imported before the fork, so it tells nothing)."""
    return f"worker.ready pid={pid}\n" in worker.output()


def warm_up(sender: Any, worker: Any, pool: list[int], deadline_s: float) -> None:
    """Send pumps until every pool process has run one, then WARM_PUMPS more, and let them
    end: the worker is then as warm as in service."""

    def every_child_pumped() -> bool:
        sender.send_task("sluice.pump", args=(PUMP_S,), queue="sluice")
        time.sleep(PUMP_S)
        return all(ran_a_pump(worker, pid) for pid in pool)

    wait_until(every_child_pumped, deadline_s, "a pump in every pool process")
    for _ in range(WARM_PUMPS):
        sender.send_task("sluice.pump", args=(PUMP_S,), queue="sluice")
    time.sleep(WARM_PUMPS * PUMP_S / 2 + 3)


def run_worker(
    sluice: str, *, importtime: bool, database_prefix: str, broker_db: int | None
) -> dict[str, Any]:
    """Start one worker, pump until each child pumped, warm up, measure, stop."""
    with (
        tempfile.TemporaryDirectory(prefix="sluice-bench-mem-") as folder,
        postgres_database(database_prefix) as database_url,
        redis_database((broker_db,) if broker_db else ()) as broker_url,
    ):
        settings = {"SLUICE_PUMP_S": str(PUMP_S), "SLUICE_LOG_LEVEL": "INFO"}
        if importtime:
            settings["PYTHONPROFILEIMPORTTIME"] = "1"
        cluster = Cluster(Path(folder), database_url, broker_url, settings=settings, sluice=sluice)
        cluster.config.write_text("", encoding="utf-8")
        sender = Celery("bench-memory", broker=broker_url)
        try:
            cluster.upgrade_database()
            worker = cluster.worker("memory", concurrency=2, wait=True)
            pool = children(worker.pid)
            assert len(pool) == 2, f"expected 2 pool processes, found {pool}"
            before = {pid: ran_a_pump(worker, pid) for pid in [worker.pid, *pool]}

            warm_up(sender, worker, pool, 60)
            samples = []
            for _ in range(3):
                samples.append({pid: memory_kib(pid) for pid in [worker.pid, *pool]})
                time.sleep(1)
            figures = {
                "main": samples[-1][worker.pid],
                "children": [samples[-1][pid] for pid in pool],
                "pumped_before_pumps": before,
                "main_ran_a_pump": ran_a_pump(worker, worker.pid),
            }
            if importtime:
                imported = [
                    match["module"].strip()
                    for line in worker.output().splitlines()
                    if (match := IMPORT_LINE.search(line))
                ]
                figures["modules_imported"] = len(imported)
                figures["forbidden_imported"] = sorted(
                    {
                        name
                        for name in imported
                        if name.split(".")[0] in FORBIDDEN[:3] or name.startswith(FORBIDDEN[3:])
                    }
                )
            return figures
        finally:
            sender.close()
            cluster.stop()


@contextmanager
def database_copy(template: str) -> Iterator[str]:
    """A copy of the PostgreSQL database ``template`` (which nothing may be connected to)."""
    name = f"{template}_copy_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def waiting(database_url: str) -> dict[str, int]:
    """Tasks waiting to be sent (phase ready) and tasks sent (an external id), by count."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT count(*) FILTER (WHERE phase = 'ready'), "
                    "count(*) FILTER (WHERE external_id IS NOT NULL) FROM tasks"
                )
            ).one()
    finally:
        engine.dispose()
    return {"ready": int(row[0]), "with_external_id": int(row[1])}


def sample(pids: list[int]) -> dict[int, dict[str, int]]:
    """RSS/PSS/USS of each process, read three times 1 s apart (the last counts)."""
    samples = []
    for _ in range(3):
        samples.append({pid: memory_kib(pid) for pid in pids})
        time.sleep(1)
    return samples[-1]


def total_pss(figures: dict[int, dict[str, int]]) -> int:
    return sum(f["pss"] for f in figures.values())


def run_backlog(
    sluice: str, template: str, pump_for_s: float, *, fair_share: bool
) -> dict[str, Any]:
    """One worker over a copy of ``template``: memory after warm-up and after pumping."""
    with (
        tempfile.TemporaryDirectory(prefix="sluice-bench-mem-") as folder,
        database_copy(template) as database_url,
        redis_database() as broker_url,
        harness.sandbox_process(SANDBOX, profile="standard") as sandbox,
    ):
        settings = {"SLUICE_PUMP_S": str(PUMP_S), "SLUICE_LOG_LEVEL": "INFO"}
        cluster = Cluster(Path(folder), database_url, broker_url, settings=settings, sluice=sluice)
        provider = {
            "preset": "sandbox-standard",
            "base_url": sandbox.base_url,
            "poll": {"interval": "1h"},
        }
        write_toml(
            cluster.config,
            {
                "sluice": {"default_provider": "sink", "fair_share": fair_share},
                "providers.sink": provider,
            },
        )
        sender = Celery("bench-memory", broker=broker_url)
        try:
            cluster.upgrade_database()
            before = waiting(database_url)
            worker = cluster.worker("memory", concurrency=2, wait=True)
            pool = children(worker.pid)
            assert len(pool) == 2, f"expected 2 pool processes, found {pool}"
            pids = [worker.pid, *pool]

            warm_up(sender, worker, pool, 120)
            warm = sample(pids)
            warm_sent = waiting(database_url)
            end = time.monotonic() + pump_for_s
            pumps = 0
            while time.monotonic() < end:
                # Two pumps per pump interval: both children stay busy.
                for _ in range(2):
                    sender.send_task("sluice.pump", args=(PUMP_S,), queue="sluice")
                pumps += 2
                time.sleep(PUMP_S)
            time.sleep(PUMP_S * 4 + 3)
            pumped = sample(pids)
            after = waiting(database_url)
            return {
                "database": f"copy of {template}",
                "fair_share": fair_share,
                "tasks_before": before,
                "tasks_after_warmup": warm_sent,
                "tasks_after": after,
                "pump_for_s": pump_for_s,
                "pumps_sent_after_warmup": pumps,
                "creates_sent_while_pumping": after["with_external_id"]
                - warm_sent["with_external_id"],
                "warm": {
                    "main": warm[worker.pid],
                    "children": [warm[pid] for pid in pool],
                    "total_pss": total_pss(warm),
                    "loadavg": os.getloadavg(),
                },
                "pumped": {
                    "main": pumped[worker.pid],
                    "children": [pumped[pid] for pid in pool],
                    "total_pss": total_pss(pumped),
                    "loadavg": os.getloadavg(),
                },
            }
        finally:
            sender.close()
            cluster.stop()


def median_kib(samples: list[dict[str, int]]) -> dict[str, int]:
    return {name: int(statistics.median(s[name] for s in samples)) for name in samples[0]}


def mib(kib: dict[str, int]) -> str:
    return " ".join(f"{name} {value / 1024:.1f} MiB" for name, value in kib.items())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sluice", default=SLUICE, help="the sluice executable to measure")
    parser.add_argument("--label", default="after")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database-prefix", default="sluice_bench_mem")
    parser.add_argument("--broker-db", type=int, help="the Redis database to claim as broker")
    parser.add_argument(
        "--backlog", help="a PostgreSQL database to copy, with tasks waiting for provider sink"
    )
    parser.add_argument("--backlog-runs", type=int, default=1)
    parser.add_argument("--pump-for", type=float, default=60.0)
    parser.add_argument(
        "--fair-share",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fair claims in the backlog runs, as Sluice's default (--no-fair-share: claims "
        "in due order)",
    )
    args = parser.parse_args(argv)
    where = {"database_prefix": args.database_prefix, "broker_db": args.broker_db}
    runs = [run_worker(args.sluice, importtime=False, **where) for _ in range(args.runs)]
    backlog = (
        [
            run_backlog(args.sluice, args.backlog, args.pump_for, fair_share=args.fair_share)
            for _ in range(args.backlog_runs)
        ]
        if args.backlog
        else []
    )
    imports = run_worker(args.sluice, importtime=True, **where)
    memory = {
        "main": median_kib([run["main"] for run in runs]),
        "children": [median_kib([run["children"][n] for run in runs]) for n in (0, 1)],
        "pool_total_pss": statistics.median(
            run["main"]["pss"] + sum(child["pss"] for child in run["children"]) for run in runs
        ),
    }
    result = {
        "benchmark": "worker_memory",
        "command": " ".join(
            ["python -m bench.worker_memory", *(sys.argv[1:] if argv is None else argv)]
        ),
        "sluice": args.sluice,
        "machine": machine_info(),
        "memory_kib_median": memory,
        "memory_kib_runs": runs,
        "backlog_runs": backlog,
        "imports": {
            "modules_imported": imports["modules_imported"],
            "forbidden_imported": imports["forbidden_imported"],
        },
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"worker_memory-{args.label}.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{args.label}: medians of {args.runs} runs")
    print(f"{args.label}: main process {mib(memory['main'])}")
    for n, child in enumerate(memory["children"]):
        print(f"{args.label}: pool child {n} {mib(child)}")
    print(f"{args.label}: PSS of main + children {memory['pool_total_pss'] / 1024:.1f} MiB")
    print(f"{args.label}: forbidden modules imported: {imports['forbidden_imported'] or 'none'}")
    for run in backlog:
        for phase in ("warm", "pumped"):
            figures = run[phase]
            print(f"{args.label}: backlog {phase}: main {mib(figures['main'])}")
            for n, child in enumerate(figures["children"]):
                print(f"{args.label}: backlog {phase}: pool child {n} {mib(child)}")
            print(f"{args.label}: backlog {phase}: PSS total {figures['total_pss'] / 1024:.1f} MiB")
        print(
            f"{args.label}: backlog: {run['tasks_before']['ready']:,} waiting before, "
            f"{run['creates_sent_while_pumping']:,} creates sent while pumping"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
