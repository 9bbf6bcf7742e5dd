"""How much does Sluice's bookkeeping cost when no rate limit holds it back?

The sandbox DSP runs in its own process with limits out of the way and fast processing
(accept 0-10 ms, process 0-20 ms). In the same run, interleaved, two clients take 5,000
campaigns from create to Completed:

* **sluice**: tasks created in the store (``sluice.submissions.create_tasks``), the embedded
  driver run until all are final; provider ``sandbox-standard`` with no ``rate_limit``
  and no ``max_in_flight`` (so no limiter call at all), polls every 50 ms;
* **raw**: a pool of threads sharing one keep-alive ``httpx.Client`` sends the same
  5,000 ``POST /v1/campaigns``, then polls ``GET /v1/status?ids=`` (100 ids per call,
  in parallel over the same pool) every 50 ms until all are final.

Both use ``THREADS`` concurrent requests. The rate is tasks / seconds from the first
create (for Sluice: from the call to ``create_tasks``) to the moment all are final. The
CPU time of this process over the same span (all its threads; the sandbox runs apart) is
recorded too: on a host shared with other work the rates swing with the load, the CPU
seconds per task much less. Each run also reports the CPU of each kind of thread
(``threads_cpu_ms_per_task``, user and system time from ``/proc/self/task``, summed over
threads of one name): the raw client's request threads against Sluice's send threads,
writer, dispatcher and claimer. The kernel counts those per thread in clock ticks, so
they add up to a little less than the process's CPU time (about 15% in short runs).
Target (issue 14): Sluice's rate at least 0.8 of raw's.
Writes ``bench/results/engine_efficiency.json``.

``--cpu-hogs N`` runs N busy loops beside the whole benchmark (a loaded host: both clients
and the sandbox share the cores with them).

Run: ``python -m bench.engine_efficiency [--runs 3] [--tasks 5000] [--cpu-hogs N]``
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench import _engine_harness as harness
from bench._chaos import cpu_hog
from bench._common import machine_info
from sluice import submissions
from sluice.drivers.embedded import build_embedded_driver

THREADS = 16
"""Concurrent requests for both clients (Sluice's default ``executor_threads``)."""
POLL_INTERVAL_S = 0.05
POLL_BATCH = 100
FINAL_WORDS = frozenset({"active", "rejected"})
RUN_TIMEOUT_S = 120.0
TARGET_RATIO = 0.8
SANDBOX = {
    "accept_delay_s": [0.0, 0.01],
    "process_delay_s": [0.0, 0.02],
    "limits": [{"name": "app", "limit": 1_000_000_000, "window_s": 1.0}],
}
RESULTS = harness.RESULTS_DIR / "engine_efficiency.json"


def thread_cpu() -> dict[int, tuple[str, float, float]]:
    """Each live thread of this process: its name (less any number), user and system s."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[str, float, float]] = {}
    for thread in threading.enumerate():
        if thread.native_id is None:
            continue
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
                values = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        name = re.sub(r"[-_]?\d+(_\d+)?$", "", thread.name)
        found[thread.native_id] = (name, int(values[11]) / tick, int(values[12]) / tick)
    return found


def threads_cpu_per_task(
    before: dict[int, tuple[str, float, float]], count: int
) -> dict[str, dict[str, float]]:
    """CPU ms per task of each kind of thread between ``before`` and now (user, system)."""
    sums: dict[str, list[float]] = {}
    for native_id, (name, user, system) in thread_cpu().items():
        _, user_0, system_0 = before.get(native_id, (name, 0.0, 0.0))
        total = sums.setdefault(name, [0.0, 0.0])
        total[0] += user - user_0
        total[1] += system - system_0
    return {
        name: {"user": round(u * 1000 / count, 3), "system": round(k * 1000 / count, 3)}
        for name, (u, k) in sorted(sums.items())
        if u + k > 0
    }


def _median_threads(runs: list[dict[str, dict[str, float]]]) -> dict[str, float]:
    """Each kind of thread's median CPU ms per task (user + system) over ``runs``."""
    names = sorted({name for run in runs for name in run})
    return {
        name: round(harness.median([sum(run.get(name, {}).values()) for run in runs]), 3)
        for name in names
    }


def run_raw(base_url: str, count: int) -> dict[str, Any]:
    """Creates over a thread pool, then batch polls until every object is final."""
    limits = httpx.Limits(max_connections=THREADS, max_keepalive_connections=THREADS)
    with (
        httpx.Client(base_url=base_url, timeout=10, limits=limits) as client,
        ThreadPoolExecutor(THREADS, thread_name_prefix="raw") as pool,
    ):

        def create(i: int) -> str:
            body = {"advertiser_id": "adv-1", "name": f"bench {i}", "budget": 1000.0}
            response = client.post("/v1/campaigns", json=body)
            response.raise_for_status()
            external_id: str = response.json()["id"]
            return external_id

        def poll(ids: list[str]) -> list[dict[str, Any]]:
            response = client.get("/v1/status", params={"ids": ",".join(ids)})
            response.raise_for_status()
            statuses: list[dict[str, Any]] = response.json()
            return statuses

        started = time.perf_counter()
        cpu_started = time.process_time()
        threads_before = thread_cpu()
        pending = set(pool.map(create, range(count)))
        polls = 0
        final: dict[str, int] = {}
        while pending:
            time.sleep(POLL_INTERVAL_S)
            ids = sorted(pending)
            batches = [ids[i : i + POLL_BATCH] for i in range(0, len(ids), POLL_BATCH)]
            for statuses in pool.map(poll, batches):
                polls += 1
                for item in statuses:
                    if item["status"] in FINAL_WORDS:
                        pending.discard(item["id"])
                        final[item["status"]] = final.get(item["status"], 0) + 1
            if time.perf_counter() - started > RUN_TIMEOUT_S:
                raise TimeoutError(f"{len(pending)} objects not final after {RUN_TIMEOUT_S:g}s")
        seconds = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
        threads = threads_cpu_per_task(threads_before, count)
    return {
        "seconds": round(seconds, 3),
        "tasks_per_s": round(count / seconds, 1),
        "cpu_s": round(cpu_s, 3),
        "cpu_ms_per_task": round(cpu_s * 1000 / count, 3),
        "threads_cpu_ms_per_task": threads,
        "requests": {"create": count, "poll": polls},
        "final": final,
    }


def run_sluice(base_url: str, count: int) -> dict[str, Any]:
    """Tasks into a fresh SQLite store, the embedded driver until all are final."""
    provider = {
        "preset": "sandbox-standard",
        "base_url": base_url,
        "rate_limit": None,
        "max_in_flight": None,
        "poll": {"interval": f"{POLL_INTERVAL_S * 1000:g}ms"},
    }
    items = harness.flat_campaigns(count)
    with tempfile.TemporaryDirectory(prefix="sluice-bench-db-") as folder:
        runtime = harness.build_runtime(Path(folder), provider, executor_threads=THREADS)
        try:
            driver = build_embedded_driver(runtime)
            started = time.perf_counter()
            cpu_started = time.process_time()
            threads_before = thread_cpu()
            submissions.create_tasks(runtime.repo, runtime.catalog, items)
            stored = time.perf_counter()
            driver.start()
            try:
                while not driver.all_final():
                    if time.perf_counter() - started > RUN_TIMEOUT_S:
                        raise TimeoutError(f"not final after {RUN_TIMEOUT_S:g}s")
                    time.sleep(0.02)
                seconds = time.perf_counter() - started
                cpu_s = time.process_time() - cpu_started
                threads = threads_cpu_per_task(threads_before, count)
            finally:
                driver.stop()
            counts = {str(k): v for k, v in runtime.repo.counts().items()}
            stats = driver.executor.stats
        finally:
            runtime.close()
    return {
        "seconds": round(seconds, 3),
        "tasks_per_s": round(count / seconds, 1),
        "cpu_s": round(cpu_s, 3),
        "cpu_ms_per_task": round(cpu_s * 1000 / count, 3),
        "store_insert_s": round(stored - started, 3),
        "engine_s": round(seconds - (stored - started), 3),
        "threads_cpu_ms_per_task": threads,
        "requests": dict(stats.requests),
        "final": counts,
        "retries": stats.retries,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print and save the figures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--cpu-hogs", type=int, default=0, help="this many busy loops beside the benchmark"
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with cpu_hog(args.cpu_hogs), harness.sandbox_process(SANDBOX, profile="standard") as sandbox:
        for index in range(args.runs):
            # Interleaved, alternating which goes first.
            order = ("raw", "sluice") if index % 2 == 0 else ("sluice", "raw")
            figures: dict[str, Any] = {}
            for name in order:
                sandbox.reset()
                load = os.getloadavg()[0]
                run = run_raw if name == "raw" else run_sluice
                figures[name] = {**run(sandbox.base_url, args.tasks), "loadavg_1min_before": load}
                stats = sandbox.stats()
                figures[name]["sandbox"] = {
                    "requests_seen": stats["total_requests"],
                    "refused": stats["refused_total"],
                    "duplicates": stats["duplicate_count"],
                }
                print(
                    f"run {index + 1} {name}: {figures[name]['tasks_per_s']} tasks/s "
                    f"({figures[name]['seconds']} s, cpu {figures[name]['cpu_s']} s, "
                    f"load {load:.1f})",
                    file=sys.stderr,
                )
            figures["ratio"] = round(
                figures["sluice"]["tasks_per_s"] / figures["raw"]["tasks_per_s"], 3
            )
            figures["cpu_ratio"] = round(figures["sluice"]["cpu_s"] / figures["raw"]["cpu_s"], 3)
            runs.append({"run": index + 1, "order": list(order), **figures})
        sandbox_command = sandbox.command_line
    raw_rate = harness.median([r["raw"]["tasks_per_s"] for r in runs])
    sluice_rate = harness.median([r["sluice"]["tasks_per_s"] for r in runs])
    ratio = sluice_rate / raw_rate
    ratios = [r["ratio"] for r in runs]
    result = {
        "benchmark": "engine_efficiency",
        "command": " ".join(
            ["python -m bench.engine_efficiency", *(sys.argv[1:] if argv is None else argv)]
        ),
        "sandbox_command": sandbox_command,
        "machine": machine_info(),
        "seconds": round(time.perf_counter() - started, 1),
        "setup": {
            "sandbox": {"profile": "standard", **SANDBOX, "process": "separate"},
            "tasks": args.tasks,
            "concurrency": THREADS,
            "poll": {
                "request": "GET /v1/status?ids=",
                "batch": POLL_BATCH,
                "interval_s": POLL_INTERVAL_S,
            },
            "sluice_provider": {
                "preset": "sandbox-standard",
                "rate_limit": None,
                "max_in_flight": None,
            },
            "store": "SQLite (WAL) in a temporary directory",
            "cpu_hogs": args.cpu_hogs,
        },
        "targets": {"sluice_over_raw_at_least": TARGET_RATIO},
        "runs": runs,
        "medians": {
            "raw_tasks_per_s": raw_rate,
            "sluice_tasks_per_s": sluice_rate,
            "ratio": round(ratio, 3),
            "ratio_of_each_run": round(harness.median(ratios), 3),
            "raw_cpu_ms_per_task": harness.median([r["raw"]["cpu_ms_per_task"] for r in runs]),
            "sluice_cpu_ms_per_task": harness.median(
                [r["sluice"]["cpu_ms_per_task"] for r in runs]
            ),
            "cpu_ratio": harness.median([r["cpu_ratio"] for r in runs]),
            "threads_cpu_ms_per_task": {
                name: _median_threads([r[name]["threads_cpu_ms_per_task"] for r in runs])
                for name in ("raw", "sluice")
            },
        },
        "pass": {"sluice_at_least_0_8_of_raw": ratio >= TARGET_RATIO},
    }
    harness.write_json(args.output, result)
    print(
        f"median raw {raw_rate:.0f} tasks/s, sluice {sluice_rate:.0f} tasks/s, ratio {ratio:.2f}; "
        f"wrote {args.output}",
        file=sys.stderr,
    )
    return result


if __name__ == "__main__":
    main()
