"""Do status polls wait behind a backlog of creates? Time to the first Completed.

The sandbox DSP runs in its own process: 50 requests in any sliding second (creates and
polls together), accept 0-10 ms, process 0-20 ms. Sluice runs embedded (SQLite, the
in-memory limiter) with the sandbox-standard preset at ``rate_limit = "50/s"``, polls every
second (batched: one request answers for up to 100 tasks), one fairness key, and is given
``--tasks`` creates at once (1,000: 20 s of creates at the limit). Each repeat runs both
claim orders side by side, taking turns at going first:

* **fair** (the default): within a key, its polls and lookups (by due time) take turns with
  its creates (priority, then children of existing parents before roots, then due time
  and id), a poll first for a key never claimed, then from the turn its last claim left
  (``store/fairshare.take_turns``);
* **arrival** (``fair_share = false``): due time, then id.

In arrival order (and in fair order before the turns), a poll of a created root falls due
after every root created before it, so it is claimed only once the backlog of creates has
been sent: this benchmark measures how long that holds tasks back (docs/operations.md,
"Fair share"). Per run: seconds from the start
to the first Completed and to the last create accepted, tasks Completed before the last
create, each task's time from its create accepted (its ``submitted`` event) to its
Completed (median and p90), seconds until every task was final, requests sent. Writes
``bench/results/poll_backlog.json``.

Run: ``python -m bench.poll_backlog [--repeats 3] [--tasks 1000]`` (about a minute a repeat).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench import _engine_harness as harness
from bench._common import machine_info
from bench.distributed import provider_table
from sluice import submissions
from sluice.drivers.embedded import build_embedded_driver
from sluice.store.rows import events, tasks

RATE = 50
POLL_INTERVAL = "1s"
SANDBOX = {
    "accept_delay_s": [0.0, 0.01],
    "process_delay_s": [0.0, 0.02],
    "limits": [{"name": "app", "limit": RATE, "window_s": 1.0}],
}
RUN_TIMEOUT_S = 300.0
RESULTS = harness.RESULTS_DIR / "poll_backlog.json"


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_order(base_url: str, count: int, fair: bool) -> dict[str, Any]:
    """``count`` creates at once, the embedded driver until all are final; when each task
    was accepted and completed."""
    provider = provider_table(base_url, f"{RATE}/s", judges="window")
    provider["poll"] = {**provider["poll"], "interval": POLL_INTERVAL}
    with tempfile.TemporaryDirectory(prefix="sluice-bench-db-") as folder:
        runtime = harness.build_runtime(Path(folder), provider, fair_share=fair)
        try:
            submissions.create_tasks(runtime.repo, runtime.catalog, harness.flat_campaigns(count))
            driver = build_embedded_driver(runtime)
            started = datetime.now(UTC)
            clock = time.perf_counter()
            driver.start()
            try:
                while not driver.all_final():
                    if time.perf_counter() - clock > RUN_TIMEOUT_S:
                        raise TimeoutError(f"not final after {RUN_TIMEOUT_S:g}s")
                    time.sleep(0.1)
                seconds = time.perf_counter() - clock
            finally:
                driver.stop()
            requests = dict(driver.executor.stats.requests)
            with runtime.repo.engine.connect() as conn:
                done = dict(
                    conn.execute(
                        select(tasks.c.id, tasks.c.updated_at).where(tasks.c.status == "Completed")
                    ).all()
                )
                accepted = dict(
                    conn.execute(
                        select(events.c.task_id, func.min(events.c.at))
                        .where(events.c.event == "submitted")
                        .group_by(events.c.task_id)
                    ).all()
                )
        finally:
            runtime.close()
    waits = [(at - accepted[i]).total_seconds() for i, at in done.items() if i in accepted]
    last_accepted = max(accepted.values())
    return {
        "order": "fair" if fair else "arrival",
        "completed": len(done),
        "seconds": round(seconds, 2),
        "first_completed_s": round((min(done.values()) - started).total_seconds(), 2),
        "last_create_accepted_s": round((last_accepted - started).total_seconds(), 2),
        "completed_before_last_create": sum(at < last_accepted for at in done.values()),
        "accepted_to_completed_median_s": round(harness.median(waits), 2),
        "accepted_to_completed_p90_s": round(quantile(waits, 0.9), 2),
        "requests": requests,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print and save the figures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    begun = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with harness.sandbox_process(SANDBOX, profile="standard") as sandbox:
        for index in range(args.repeats):
            orders = (True, False) if index % 2 == 0 else (False, True)
            for fair in orders:
                sandbox.reset()
                run = {"repeat": index + 1, **run_order(sandbox.base_url, args.tasks, fair)}
                run["sandbox_refused"] = sandbox.stats()["refused_total"]
                print(run, flush=True)
                runs.append(run)

    def medians(order: str) -> dict[str, float]:
        mine = [r for r in runs if r["order"] == order]
        return {
            name: round(harness.median([r[name] for r in mine]), 2)
            for name in (
                "first_completed_s",
                "last_create_accepted_s",
                "completed_before_last_create",
                "accepted_to_completed_median_s",
                "accepted_to_completed_p90_s",
                "seconds",
            )
        }

    results = {
        "benchmark": "poll_backlog",
        "command": " ".join(
            ["python -m bench.poll_backlog", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": machine_info(),
        "setup": {
            "tasks": args.tasks,
            "rate_limit": f"{RATE}/s",
            "poll_interval": POLL_INTERVAL,
            "sandbox": SANDBOX,
        },
        "runs": runs,
        "medians": {"fair": medians("fair"), "arrival": medians("arrival")},
        "seconds": round(time.perf_counter() - begun, 1),
    }
    harness.write_json(args.output, results)
    print(results["medians"], f"wrote {args.output}")
    return results


if __name__ == "__main__":
    main()
