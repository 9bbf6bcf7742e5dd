"""Memory and imports of a Celery worker process: ``sluice worker --concurrency 2``.

Run: ``python -m bench.worker_memory [--sluice PATH] [--label NAME] [--runs 3]
[--database-prefix P] [--broker-db N] [--backlog sluice_bench_1m] [--backlog-runs 1]
[--pump-for 600] [--sample-every 30]``. Needs
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
2. **With a backlog** (``--backlog DB``, ``--backlog-runs`` times after the memory runs):
   the same worker over a copy of ``DB`` (``CREATE DATABASE ... TEMPLATE DB``, e.g. the
   1,000,000-task dataset of :mod:`bench.backlog`, ``sluice_bench_1m``, built once by
   ``bench.backlog.ensure_dataset("postgresql", 1_000_000)``; its tasks are all for provider
   ``sink``), provider ``sink`` = the ``sandbox-standard`` preset without its rate limit and
   in-flight cap, against the sandbox DSP in its own process (accept at once, never
   processes: only creates are sent), fair claims on as by default (``--no-fair-share``: in
   due order). Memory is read as above after the warm-up (every child pumped, 6 more pumps,
   ``warm``), then once every ``--sample-every`` seconds (30) during ``--pump-for`` seconds
   (600) of pumps back to back (``series``: RSS/PSS/USS per process, creates sent so far,
   load average), and after the pumping ends (``pumped``, idle as ``warm``). **Flat** means:
   over the last half of the pumping the tree's total USS (private pages) grows by less
   than :data:`FLAT_MAX_GROWTH_MIB` (1 MiB), by a least-squares line through those samples
   and by last minus first sample (PSS moves when other processes on the host map or unmap
   the same libraries; its growth is recorded beside); **under the limit** means no
   sample's total PSS exceeds 200 MiB. Both are
   recorded (``flatness``) and printed as PASS/FAIL; ``worker_memory-<label>.png`` plots
   the series (total PSS, PSS per process, USS and RSS per process).
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
from sluice.providers import registry

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
PSS_LIMIT_KIB = 200 * 1024
"""The target: the tree's total PSS at most 200 MiB."""
FLAT_MAX_GROWTH_MIB = 1.0
"""Flat: the tree's total USS grows by less than this over the last half of the pumping."""
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


def sink_provider(base_url: str) -> dict[str, Any]:
    """Provider ``sink``: the ``sandbox-standard`` preset's table without its ``rate_limit``
    and ``max_in_flight`` (TOML cannot unset a preset's key, so the whole table is written),
    polls once an hour: the worker sends creates as fast as it can."""
    table = registry.load_preset("sandbox-standard")
    for key in ("rate_limit", "max_in_flight"):
        table.pop(key, None)
    table["base_url"] = base_url
    table["poll"]["interval"] = "1h"
    return table


def least_squares_growth(points: list[tuple[float, float]]) -> float:
    """The growth of a least-squares line through ``points`` from the first x to the last."""
    if len(points) < 2:
        return 0.0
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0
    return slope * (points[-1][0] - points[0][0])


def tree_total(sample: dict[str, Any], field: str) -> int:
    """``field`` (rss, pss or uss) of the main process and both children added, in KiB."""
    return int(sample["main"][field] + sum(child[field] for child in sample["children"]))


def flatness(series: list[dict[str, Any]], limit_kib: int) -> dict[str, Any]:
    """Judge the series: flat by the tree's USS (:data:`FLAT_MAX_GROWTH_MIB`), under the
    limit by its PSS (``limit_kib``).

    Flatness is judged on USS, the pages only the tree's processes hold: a process's PSS
    also moves when any *other* process on the host maps or unmaps the same files
    (libpython, the venv's extension modules), e.g. another Python process of the same venv
    ending raises the tree's share of those pages. PSS growth is recorded beside it.
    """
    half = series[-1]["t_s"] / 2
    late = [s for s in series if s["t_s"] >= half]

    def growth(field: str) -> tuple[float, float]:
        points = [(s["t_s"], tree_total(s, field) / 1024) for s in late]
        ends = points[-1][1] - points[0][1] if points else 0.0
        return round(least_squares_growth(points), 2), round(ends, 2)

    uss_fit, uss_ends = growth("uss")
    pss_fit, pss_ends = growth("pss")
    rss_fit, rss_ends = growth("rss")
    peak = max(s["total_pss"] for s in series)
    return {
        "criterion": f"flat: over the last half of the pumping (t >= {half:.0f} s, {len(late)} "
        f"samples) the tree's total USS grows by less than {FLAT_MAX_GROWTH_MIB} MiB (by a "
        f"least-squares line and by last minus first sample); under the limit: no sample's "
        f"total PSS exceeds {limit_kib / 1024:.0f} MiB",
        "last_half_uss_growth_fit_mib": uss_fit,
        "last_half_uss_growth_ends_mib": uss_ends,
        "last_half_pss_growth_fit_mib": pss_fit,
        "last_half_pss_growth_ends_mib": pss_ends,
        "last_half_rss_growth_fit_mib": rss_fit,
        "last_half_rss_growth_ends_mib": rss_ends,
        "first_half_uss_growth_mib": round(
            (tree_total(late[0], "uss") - tree_total(series[0], "uss")) / 1024 if late else 0.0, 2
        ),
        "peak_total_pss_mib": round(peak / 1024, 1),
        "flat": max(uss_fit, uss_ends) < FLAT_MAX_GROWTH_MIB,
        "under_limit": peak <= limit_kib,
    }


def run_backlog(
    sluice: str, template: str, pump_for_s: float, sample_every_s: float, *, fair_share: bool
) -> dict[str, Any]:
    """One worker over a copy of ``template``: memory after warm-up, every ``sample_every_s``
    while pumping, and after pumping."""
    with (
        tempfile.TemporaryDirectory(prefix="sluice-bench-mem-") as folder,
        database_copy(template) as database_url,
        redis_database() as broker_url,
        harness.sandbox_process(SANDBOX, profile="standard") as sandbox,
    ):
        settings = {"SLUICE_PUMP_S": str(PUMP_S), "SLUICE_LOG_LEVEL": "INFO"}
        cluster = Cluster(Path(folder), database_url, broker_url, settings=settings, sluice=sluice)
        write_toml(
            cluster.config,
            {
                "sluice": {"default_provider": "sink", "fair_share": fair_share},
                "providers.sink": sink_provider(sandbox.base_url),
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
            started = time.monotonic()
            end = started + pump_for_s
            next_sample = started
            pumps = 0
            series: list[dict[str, Any]] = []
            while True:
                now = time.monotonic()
                if now >= next_sample:
                    # One read while pumping (no idle pause): the processes are busy.
                    figures = {pid: memory_kib(pid) for pid in pids}
                    counted = waiting(database_url)
                    series.append(
                        {
                            "t_s": round(now - started, 1),
                            "at": time.strftime("%H:%M:%S", time.gmtime()),
                            "main": figures[worker.pid],
                            "children": [figures[pid] for pid in pool],
                            "total_pss": total_pss(figures),
                            "creates_sent": counted["with_external_id"]
                            - warm_sent["with_external_id"],
                            "ready": counted["ready"],
                            "loadavg": os.getloadavg(),
                        }
                    )
                    print(
                        f"t={now - started:5.0f}s PSS total "
                        f"{series[-1]['total_pss'] / 1024:.1f} MiB, "
                        f"{series[-1]['creates_sent']:,} creates, load {os.getloadavg()[0]:.1f}",
                        file=sys.stderr,
                    )
                    next_sample += sample_every_s
                if now >= end:
                    break
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
                "provider": "sink: sandbox-standard preset without rate_limit and max_in_flight",
                "tasks_before": before,
                "tasks_after_warmup": warm_sent,
                "tasks_after": after,
                "pump_for_s": pump_for_s,
                "sample_every_s": sample_every_s,
                "pumps_sent_after_warmup": pumps,
                "creates_sent_while_pumping": after["with_external_id"]
                - warm_sent["with_external_id"],
                "warm": {
                    "main": warm[worker.pid],
                    "children": [warm[pid] for pid in pool],
                    "total_pss": total_pss(warm),
                    "loadavg": os.getloadavg(),
                },
                "series": series,
                "flatness": flatness(series, PSS_LIMIT_KIB),
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


def plot(backlog: list[dict[str, Any]], path: Path, title: str) -> None:
    """Memory over time: total PSS, PSS per process, USS and RSS per process (one line style
    per run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(18, 5))
    styles = ["-", "--", ":", "-."]
    for n, run in enumerate(backlog):
        style = styles[n % len(styles)]
        minutes = [s["t_s"] / 60 for s in run["series"]]
        processes = [("main", lambda s: s["main"])] + [
            (f"child {c}", lambda s, c=c: s["children"][c]) for c in (0, 1)
        ]
        axes[0].plot(
            minutes,
            [s["total_pss"] / 1024 for s in run["series"]],
            style,
            color="black",
            marker=".",
            label=f"run {n + 1}: PSS total",
        )
        axes[0].plot(
            minutes,
            [run["warm"]["total_pss"] / 1024] * len(minutes),
            style,
            color="grey",
            linewidth=0.8,
            label=f"run {n + 1}: PSS total at warm-up (idle)",
        )
        for (name, pick), colour in zip(processes, ["C0", "C1", "C2"], strict=True):
            axes[1].plot(
                minutes,
                [pick(s)["pss"] / 1024 for s in run["series"]],
                style,
                color=colour,
                label=f"run {n + 1}: {name} PSS",
            )
            for field, marker in (("uss", "."), ("rss", "x")):
                axes[2].plot(
                    minutes,
                    [pick(s)[field] / 1024 for s in run["series"]],
                    style,
                    marker=marker,
                    color=colour,
                    label=f"run {n + 1}: {name} {field.upper()}",
                )
    axes[0].axhline(PSS_LIMIT_KIB / 1024, color="red", linewidth=0.8, label="200 MiB")
    axes[0].set_title("PSS of the tree (main + 2 children)")
    axes[1].set_title("PSS per process")
    axes[2].set_title("USS (private) and RSS per process")
    for ax in axes:
        ax.set_xlabel("minutes of pumping after warm-up")
        ax.set_ylabel("MiB")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


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
    parser.add_argument("--pump-for", type=float, default=600.0)
    parser.add_argument("--sample-every", type=float, default=30.0)
    parser.add_argument(
        "--fair-share",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fair claims in the backlog runs, as Sluice's default (--no-fair-share: claims "
        "in due order)",
    )
    parser.add_argument(
        "--replot",
        type=Path,
        help="only judge an earlier result JSON again (flatness_rejudged) and draw its PNG",
    )
    args = parser.parse_args(argv)
    if args.replot:
        earlier = json.loads(args.replot.read_text(encoding="utf-8"))
        for run in earlier["backlog_runs"]:
            run["flatness_rejudged"] = flatness(run["series"], PSS_LIMIT_KIB)
        args.replot.write_text(json.dumps(earlier, indent=2) + "\n", encoding="utf-8")
        png = args.replot.with_suffix(".png")
        plot(earlier["backlog_runs"], png, f"sluice worker --concurrency 2 ({args.replot.stem})")
        print(f"wrote {png}")
        return
    where = {"database_prefix": args.database_prefix, "broker_db": args.broker_db}
    runs = [run_worker(args.sluice, importtime=False, **where) for _ in range(args.runs)]
    backlog = (
        [
            run_backlog(
                args.sluice,
                args.backlog,
                args.pump_for,
                args.sample_every,
                fair_share=args.fair_share,
            )
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
        judged = run["flatness"]
        print(
            f"{args.label}: backlog: last-half growth USS {judged['last_half_uss_growth_fit_mib']}"
            f" MiB (fit) / {judged['last_half_uss_growth_ends_mib']} MiB (ends), PSS "
            f"{judged['last_half_pss_growth_fit_mib']} / {judged['last_half_pss_growth_ends_mib']}"
            f" MiB, peak PSS "
            f"{judged['peak_total_pss_mib']} MiB: flat {'PASS' if judged['flat'] else 'FAIL'}, "
            f"under 200 MiB {'PASS' if judged['under_limit'] else 'FAIL'}"
        )
    if backlog:
        png = RESULTS_DIR / f"worker_memory-{args.label}.png"
        plot(backlog, png, f"sluice worker --concurrency 2 over {args.backlog} ({args.label})")
        print(f"wrote {png}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
