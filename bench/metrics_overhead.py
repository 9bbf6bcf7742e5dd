"""What does recording metrics cost on the dispatch path?

``bench.engine_efficiency``'s Sluice run (5,000 campaigns from create to Completed against
the sandbox in its own process, no rate limit, 16 threads), interleaved with recording on
and off (:func:`sluice.metrics.set_enabled`) in the same process, in both of
prometheus_client's modes: **memory** (one process: ``sluice up``) and **multiprocess**
(``PROMETHEUS_MULTIPROC_DIR`` set: Celery workers, each write goes to an mmap'd file).
Each mode runs in a child process of its own, since the mode is chosen when
prometheus_client is first imported. Beside the end-to-end rates, the cost of the hooks
one request goes through (grant, upstream start and end, one outcome) is timed alone.
Writes ``bench/results/metrics_overhead.json``.

Run: ``python -m bench.metrics_overhead [--runs 3] [--tasks 5000]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import _engine_harness as harness
from bench._common import machine_info

RESULTS = harness.RESULTS_DIR / "metrics_overhead.json"
HOOK_CALLS = 100_000


def hooks_ns(calls: int) -> float:
    """CPU nanoseconds the hooks of one request take (recording as currently set); CPU
    time of this thread, so a busy host's other processes do not count."""
    from sluice import metrics

    started = time.thread_time_ns()
    for _ in range(calls):
        metrics.granted("bench", 0.01)
        call = metrics.upstream_started("bench", 0.0)
        metrics.upstream_ended(call, "2xx", 0.01)
        metrics.outcomes("bench", "submit", [("submitted", "In Progress")])
    return (time.thread_time_ns() - started) / calls


def child(mode: str, base_url: str, runs: int, tasks: int) -> dict[str, Any]:
    """Interleaved on/off runs in this process; returns their figures."""
    from bench.engine_efficiency import run_sluice
    from sluice import metrics

    figures: list[dict[str, Any]] = []
    for index in range(runs):
        order = (True, False) if index % 2 == 0 else (False, True)
        run: dict[str, Any] = {"run": index + 1}
        for enabled in order:
            metrics.set_enabled(enabled)
            httpx.post(f"{base_url}/_sandbox/reset", timeout=10)
            load = os.getloadavg()[0]
            cpu_before = time.process_time()
            result = run_sluice(base_url, tasks)
            cpu_s = time.process_time() - cpu_before
            run["on" if enabled else "off"] = {
                "cpu_ms_per_task": round(cpu_s * 1000 / tasks, 3),
                "tasks_per_s": result["tasks_per_s"],
                "engine_s": result["engine_s"],
                "loadavg_1min_before": round(load, 2),
            }
            print(
                f"{mode} run {index + 1} metrics {'on' if enabled else 'off'}: "
                f"{result['tasks_per_s']} tasks/s",
                file=sys.stderr,
            )
        run["ratio_on_over_off"] = round(run["on"]["tasks_per_s"] / run["off"]["tasks_per_s"], 3)
        run["cpu_ratio_on_over_off"] = round(
            run["on"]["cpu_ms_per_task"] / run["off"]["cpu_ms_per_task"], 3
        )
        figures.append(run)
    metrics.set_enabled(True)
    on_ns = harness.median([hooks_ns(HOOK_CALLS) for _ in range(3)])
    metrics.set_enabled(False)
    off_ns = harness.median([hooks_ns(HOOK_CALLS) for _ in range(3)])
    metrics.set_enabled(True)
    return {
        "mode": mode,
        "runs": figures,
        "median_tasks_per_s": {
            "on": harness.median([r["on"]["tasks_per_s"] for r in figures]),
            "off": harness.median([r["off"]["tasks_per_s"] for r in figures]),
        },
        "median_ratio_on_over_off": harness.median([r["ratio_on_over_off"] for r in figures]),
        "median_cpu_ms_per_task": {
            "on": harness.median([r["on"]["cpu_ms_per_task"] for r in figures]),
            "off": harness.median([r["off"]["cpu_ms_per_task"] for r in figures]),
        },
        "median_cpu_ratio_on_over_off": harness.median(
            [r["cpu_ratio_on_over_off"] for r in figures]
        ),
        "hooks_per_request_ns": {"on": round(on_ns), "off": round(off_ns)},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=["memory", "multiprocess"], help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = child(args.child, args.base_url, args.runs, args.tasks)
        sys.stdout.write(json.dumps(result))
        return result

    from bench.engine_efficiency import SANDBOX

    started = time.perf_counter()
    modes: dict[str, Any] = {}
    with harness.sandbox_process(SANDBOX, profile="standard") as sandbox:
        for mode in ("memory", "multiprocess"):
            with tempfile.TemporaryDirectory(prefix="sluice-bench-metrics-") as folder:
                env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
                if mode == "multiprocess":
                    env["PROMETHEUS_MULTIPROC_DIR"] = folder
                argv_child = [
                    sys.executable,
                    "-m",
                    "bench.metrics_overhead",
                    "--child",
                    mode,
                    "--base-url",
                    sandbox.base_url,
                    "--runs",
                    str(args.runs),
                    "--tasks",
                    str(args.tasks),
                ]
                done = subprocess.run(argv_child, env=env, stdout=subprocess.PIPE, check=True)
                modes[mode] = json.loads(done.stdout)
    result = {
        "benchmark": "metrics_overhead",
        "command": " ".join(
            ["python -m bench.metrics_overhead", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": machine_info(),
        "seconds": round(time.perf_counter() - started, 1),
        "setup": {
            "as": "bench.engine_efficiency's Sluice run (embedded, SQLite, no rate limit, "
            "16 threads, polls every 50 ms), metrics on and off interleaved per process",
            "tasks": args.tasks,
            "runs": args.runs,
            "hook_calls": HOOK_CALLS,
        },
        "modes": modes,
    }
    harness.write_json(args.output, result)
    for mode, figures in modes.items():
        print(
            f"{mode}: on {figures['median_tasks_per_s']['on']} / off "
            f"{figures['median_tasks_per_s']['off']} tasks/s (median ratio "
            f"{figures['median_ratio_on_over_off']}); CPU per task "
            f"{figures['median_cpu_ms_per_task']} ms (median ratio "
            f"{figures['median_cpu_ratio_on_over_off']}); hooks {figures['hooks_per_request_ns']} "
            f"ns per request; wrote {args.output}",
            file=sys.stderr,
        )
    return result


if __name__ == "__main__":
    main()
