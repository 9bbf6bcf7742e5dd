"""Memory and imports of a Celery worker process: ``sluice worker --concurrency 2``.

Run: ``python -m bench.worker_memory [--sluice PATH] [--label NAME] [--runs 3]
[--database-prefix P] [--broker-db N]``. Needs
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
2. **Imports** (once). The same with ``PYTHONPROFILEIMPORTTIME=1``: every module the main
   process and the children import is logged; the modules of FastAPI, Starlette, uvicorn,
   ``sluice.api`` and ``sluice.sandbox`` among them are listed.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from celery import Celery

from bench._common import machine_info
from harness.cluster import (
    SLUICE,
    Cluster,
    children,
    memory_kib,
    postgres_database,
    redis_database,
    wait_until,
)

RESULTS_DIR = Path(__file__).parent / "results"
PUMP_S = 0.5
WARM_PUMPS = 6
FORBIDDEN = ("fastapi", "starlette", "uvicorn", "sluice.api", "sluice.sandbox")
IMPORT_LINE = re.compile(r"import time:\s+\d+\s+\|\s+\d+\s+\|\s+(?P<module>\S.*)$")


def ran_a_pump(pid: int) -> bool:
    """The process has loaded PostgreSQL's driver: a pump built its runtime."""
    try:
        return "psycopg" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


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
            before = {pid: ran_a_pump(pid) for pid in [worker.pid, *pool]}

            def every_child_pumped() -> bool:
                sender.send_task("sluice.pump", args=(PUMP_S,), queue="sluice")
                time.sleep(PUMP_S)
                return all(ran_a_pump(pid) for pid in pool)

            wait_until(every_child_pumped, 60, "a pump in every pool process")
            for _ in range(WARM_PUMPS):
                sender.send_task("sluice.pump", args=(PUMP_S,), queue="sluice")
            time.sleep(WARM_PUMPS * PUMP_S / 2 + 3)
            samples = []
            for _ in range(3):
                samples.append({pid: memory_kib(pid) for pid in [worker.pid, *pool]})
                time.sleep(1)
            figures = {
                "main": samples[-1][worker.pid],
                "children": [samples[-1][pid] for pid in pool],
                "driver_loaded_before_pumps": before,
                "main_loaded_driver": ran_a_pump(worker.pid),
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
    args = parser.parse_args(argv)
    where = {"database_prefix": args.database_prefix, "broker_db": args.broker_db}
    runs = [run_worker(args.sluice, importtime=False, **where) for _ in range(args.runs)]
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
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
