"""Fair share and trees first under one shared limit, side by side with plain arrival order.

Run: ``python -m bench fairness`` (``make bench BENCH=fairness``; about 20 minutes, ``--quick``
for one repeat). Needs PostgreSQL and Redis; writes ``bench/results/fairness.json`` and
``bench/results/fairness.png`` (per-tenant throughput over time).

Every run is a real cluster (:mod:`harness.cluster`): 4 ``sluice worker --concurrency 1`` +
``sluice beat`` on a fresh PostgreSQL database, Redis broker and Redis limiter, sending to
the sandbox DSP in its own process (limit 50 requests in any sliding 1 s window, arrivals
timestamped by ``bench._sandbox_proc``). The provider is the sandbox-standard preset with
``rate_limit = "50/s"``, made synchronous (no status polls: a create that succeeds is
Completed), so that one task is one request and shares of tasks are shares of the limit.
``fair`` runs use Sluice's default claims; ``arrival`` runs set ``SLUICE_FAIR_SHARE=false``
(claims in due-time order, the behaviour before fair share).

**Tenants.** Tenant A queues 20,000 tasks; ten seconds after A began, tenant B queues 200.
A run stops once B is done plus three 10 s windows (arrival order: 60 s after B queued,
since B would wait behind all of A, about 400 s). Figures:

* ``b_p99_wait_s``: B's tasks' time from B's queueing to their completion (the outcome's
  write), 99th percentile; ``b_ideal_p99_s`` is the same of B's ideal fair-share schedule
  (task i done i / (50 * wB / (wA + wB)) s after queueing, so i/25 s at equal weights);
  target ``b_p99_over_ideal <= 2``.
* ``utilization``: requests the sandbox admitted over the run at exactly 50/s,
  ``(n - 1) / 50``, over the time from the first to the last (A always has work waiting);
  target >= 0.98.
* ``jain_min``: Jain's fairness index of the weighted throughputs (completions / weight),
  over every 10 s window (1 s steps) inside the stretch where both tenants had work (from
  B's queueing to B's last completion; one window of that stretch when it is shorter than
  10 s); target >= 0.95.
* ``share_a``/``share_b``: each tenant's part of the completions while both had work
  (3:1 weights: target within 5 points of 75/25).

**Costs.** The sandbox charges an audience create 5 units of its 50-unit second (DV360's
write-intensive methods) and Sluice's provider says ``cost = { "audience.submit" = 5 }``.
Tenant A queues 1,000 audiences, tenant B 5,000 campaigns at the same moment; both stay
backlogged for the run. Figures over ``COSTS_MEASURE_S`` after ``COSTS_SETTLE_S``: each
tenant's part of the budget *units* (5 per audience, 1 per campaign) and of the tasks;
target: units within 5 points of 50/50 at equal weights (so A gets about a sixth of the
tasks). Arrival order gives everything to whoever queued first (A here).

**Trees.** 50 campaigns x 4 ad groups x 5 ads (1,250 tasks, each child released once its
parent exists) submitted at once while a stream of unrelated new campaigns of the same
tenant keeps arriving at the limit's full rate (50/s, from 2 s before the trees until they
are done): the limit is saturated throughout. Figure (the issue's): the median over
campaigns of the time from the campaign's create at the DSP (its first ``submitted`` or ``found``
event) to its last ad's completion, how long the DSP holds the campaign unfinished;
target: fair (trees first) at least 50% shorter than arrival order. Beside it, the
stricter ``from_queued`` figures count from the moment the trees were queued (the
benchmark's ideal there is about 52% shorter: docs/operations.md, Trees first).

Every figure is the median of the repeats; each repeat runs both orders back to back.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench._common import machine_info
from bench._engine_harness import (
    REPO_ROOT,
    RESULTS_DIR,
    SandboxProcess,
    median,
    sandbox_process,
    write_json,
)
from harness.cluster import Cluster, postgres_database, redis_database, write_toml
from sluice import importer, submissions
from sluice.domain import Submission
from sluice.store.rows import events, tasks

RATE = 50
PROCESSES = 4
A_TASKS = 20_000
B_TASKS = 200
B_DELAY_S = 10.0
WINDOW_S = 10.0
TAIL_WINDOWS = 3
ARRIVAL_CAP_S = 60.0
RUN_TIMEOUT_S = 300.0
REPEATS = 3
CAMPAIGNS = 50
AD_GROUPS = 4
ADS = 5
STREAM_LEAD_S = 2.0
HEAVY_COST = 5
COSTS_A_TASKS = 1_000
COSTS_B_TASKS = 5_000
COSTS_SETTLE_S = 5.0
COSTS_MEASURE_S = 30.0
PRESET = REPO_ROOT / "sluice" / "providers" / "presets" / "sandbox-standard.toml"
SANDBOX = {"limits": [{"name": "app", "limit": RATE, "window_s": 1.0}]}
JUDGES_SPACING = os.environ.get("BENCH_JUDGES", "window") == "spacing"


def provider_table(base_url: str, weights: dict[str, float] | None = None) -> dict[str, Any]:
    """The sandbox-standard preset at 50/s, synchronous (no polls), with fairness weights."""
    table: dict[str, Any] = tomllib.loads(PRESET.read_text(encoding="utf-8"))
    table["base_url"] = base_url
    table["rate_limit"] = f"{RATE}/s"
    # The sandbox here counts a sliding second and judges no spacing: held grants may go late.
    table["judges"] = "spacing" if JUDGES_SPACING else "window"
    table.pop("poll", None)
    for kind in table["kinds"].values():
        for key in ("status", "status_field", "error_field", "status_map"):
            kind.pop(key, None)
    if weights:
        table["fairness_weights"] = weights
    return table


@contextmanager
def cluster(provider: dict[str, Any], fair: bool) -> Iterator[Any]:
    """Beat + 4 workers on a fresh database and broker; a runtime of this process on it."""
    with (
        tempfile.TemporaryDirectory(prefix="sluice-bench-fair-") as folder,
        postgres_database("sluice_bench_fair") as database_url,
        redis_database() as broker_url,
    ):
        settings = {
            "SLUICE_PUMPS": str(PROCESSES),
            "SLUICE_LOG_LEVEL": "WARNING",
            "SLUICE_FAIR_SHARE": "true" if fair else "false",
        }
        nodes = Cluster(
            Path(folder),
            database_url,
            broker_url,
            namespace=f"sluice:bench:fair:{uuid.uuid4().hex[:8]}",
            settings=settings,
        )
        write_toml(
            nodes.config,
            {"sluice": {"default_provider": "sandbox"}, "providers.sandbox": provider},
        )
        nodes.upgrade_database()
        runtime = nodes.build_runtime()
        try:
            nodes.beat(loglevel="WARNING")
            workers = [nodes.worker(f"worker-{n}", concurrency=1) for n in range(PROCESSES)]
            nodes.wait_ready(workers)
            yield runtime
        finally:
            nodes.stop()
            runtime.close()


def flat(count: int, tenant: str, start: int = 0) -> list[Submission]:
    return [
        Submission(
            kind="campaign",
            payload={"advertiser_id": "adv-1", "name": f"{tenant} {start + i}", "budget": 1000.0},
            tenant=tenant,
        )
        for i in range(count)
    ]


def create(runtime: Any, items: list[Submission]) -> None:
    for start in range(0, len(items), 5_000):
        submissions.create_tasks(runtime.repo, runtime.catalog, items[start : start + 5_000])


def completions(runtime: Any, since: float) -> list[tuple[float, str, int]]:
    """(posix seconds, tenant, id) of every Completed task, by time."""
    with runtime.repo.engine.connect() as conn:
        rows = conn.execute(
            select(tasks.c.updated_at, tasks.c.tenant, tasks.c.id).where(
                tasks.c.status == "Completed"
            )
        ).all()
    done = [(at.timestamp(), tenant, task_id) for at, tenant, task_id in rows]
    return sorted(d for d in done if d[0] >= since - 60)


def unfinished(runtime: Any, tenant: str) -> int:
    with runtime.repo.engine.connect() as conn:
        return len(
            conn.execute(
                select(tasks.c.id).where(tasks.c.tenant == tenant, tasks.c.phase != "done")
            ).all()
        )


# --- tenants ------------------------------------------------------------------------------


def jain(values: list[float]) -> float | None:
    if not values or not any(values):
        return None
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_tenants(sandbox: SandboxProcess, fair: bool, weights: dict[str, float]) -> dict[str, Any]:
    """A queues 20,000; B 200 ten seconds later; stop when B is done plus three windows."""
    provider = provider_table(sandbox.base_url, weights)
    w_a, w_b = weights.get("A", 1.0), weights.get("B", 1.0)
    with cluster(provider, fair) as runtime:
        sandbox.reset()
        started = time.time()
        create(runtime, flat(A_TASKS, "A"))
        a_created_s = time.time() - started
        time.sleep(max(0.0, started + B_DELAY_S - time.time()))
        b_queued = time.time()
        create(runtime, flat(B_TASKS, "B"))
        b_done_at: float | None = None
        cap = b_queued + (RUN_TIMEOUT_S if fair else ARRIVAL_CAP_S)
        while time.time() < cap:
            if b_done_at is None and unfinished(runtime, "B") == 0:
                b_done_at = time.time()
            if b_done_at is not None and time.time() > b_done_at + TAIL_WINDOWS * WINDOW_S:
                break
            time.sleep(0.25)
        stopped = time.time()
        done = completions(runtime, started)
        arrivals = [a for a in sandbox.arrivals() if a[2] != 429]
        refused = sandbox.stats()["refused_total"]
    b_times = [t for t, tenant, _ in done if tenant == "B"]
    b_waits = [t - b_queued for t in b_times]
    b_rate = RATE * w_b / (w_a + w_b)
    ideal = [(i + 1) / b_rate for i in range(B_TASKS)]
    result: dict[str, Any] = {
        "order": "fair" if fair else "arrival",
        "weights": {"A": w_a, "B": w_b},
        "a_created_s": round(a_created_s, 2),
        "b_done": len(b_times),
        "b_ideal_p99_s": round(quantile(ideal, 0.99), 2),
        "refused": refused,
    }
    if len(b_times) == B_TASKS:
        p99 = quantile(b_waits, 0.99)
        result["b_p99_wait_s"] = round(p99, 2)
        result["b_p99_over_ideal"] = round(p99 / quantile(ideal, 0.99), 3)
        both_end = max(b_times)
    else:
        # B did not finish before the cap: its p99 is at least the cap (arrival order puts B
        # behind all of A: about (A left) / 50 s).
        result["b_p99_wait_s"] = f"> {round(stopped - b_queued, 1)}"
        result["b_p99_over_ideal"] = f"> {round((stopped - b_queued) / quantile(ideal, 0.99), 1)}"
        both_end = stopped
    admitted = [a[0] for a in arrivals if started <= a[0] <= stopped]
    if len(admitted) > 1:
        span = admitted[-1] - admitted[0]
        result["utilization"] = round((len(admitted) - 1) / RATE / span, 4)
    result.update(window_figures(done, b_queued, both_end, {"A": w_a, "B": w_b}))
    result["_done"] = [(round(t - started, 3), tenant) for t, tenant, _ in done]
    result["_b_queued_s"] = round(b_queued - started, 3)
    return result


def window_figures(
    done: list[tuple[float, str, int]], start: float, end: float, weights: dict[str, float]
) -> dict[str, Any]:
    """Jain's index per 10 s window (1 s steps) and the shares while both had work."""
    times = {key: [t for t, tenant, _ in done if tenant == key] for key in weights}

    def count(key: str, lo: float, hi: float) -> int:
        series = times[key]
        return bisect.bisect_left(series, hi) - bisect.bisect_left(series, lo)

    windows: list[tuple[float, float]] = []
    if end - start <= WINDOW_S:
        windows.append((start, end))
    else:
        lo = start
        while lo + WINDOW_S <= end + 1e-9:
            windows.append((lo, lo + WINDOW_S))
            lo += 1.0
    indices = [
        jain([count(key, lo, hi) / weight for key, weight in weights.items()]) for lo, hi in windows
    ]
    total = {key: count(key, start, end + 1e-6) for key in weights}
    both = sum(total.values())
    valid = [j for j in indices if j is not None]
    return {
        "both_have_work_s": round(end - start, 2),
        "jain_windows": len(windows),
        "jain_min": round(min(valid), 4) if valid else None,
        "jain_median": round(statistics.median(valid), 4) if valid else None,
        "share_a": round(total["A"] / both, 4) if both else None,
        "share_b": round(total["B"] / both, 4) if both else None,
    }


# --- costs --------------------------------------------------------------------------------


def audiences(count: int, tenant: str) -> list[Submission]:
    return [
        Submission(
            kind="audience",
            payload={
                "advertiser_id": "adv-1",
                "name": f"{tenant} audience {i}",
                "type": "ip_range",
                "include": ["10.0.0.0/24"],
            },
            tenant=tenant,
        )
        for i in range(count)
    ]


def run_costs(sandbox: SandboxProcess, fair: bool) -> dict[str, Any]:
    """A's audiences cost 5 units, B's campaigns 1, both queued at once: shares of units."""
    provider = provider_table(sandbox.base_url)
    provider["cost"] = {"audience.submit": HEAVY_COST}
    sandbox.configure(
        {
            "limits": [{**SANDBOX["limits"][0], "weighted": True}],
            "costs": {"POST /v1/audiences": HEAVY_COST},
        }
    )
    try:
        with cluster(provider, fair) as runtime:
            sandbox.reset()
            started = time.time()
            create(runtime, audiences(COSTS_A_TASKS, "A"))
            create(runtime, flat(COSTS_B_TASKS, "B"))
            begin = started + COSTS_SETTLE_S
            end = begin + COSTS_MEASURE_S
            time.sleep(max(0.0, end - time.time()))
            done = completions(runtime, started)
            refused = sandbox.stats()["refused_total"]
    finally:
        sandbox.configure({"limits": SANDBOX["limits"], "costs": {}})
    counted = {"A": 0, "B": 0}
    for at, tenant, _ in done:
        if begin <= at < end and tenant in counted:
            counted[tenant] += 1
    units = {"A": counted["A"] * HEAVY_COST, "B": counted["B"]}
    tasks_total = sum(counted.values())
    units_total = sum(units.values())
    return {
        "order": "fair" if fair else "arrival",
        "refused": refused,
        "tasks": counted,
        "units": units,
        "units_per_s": round(units_total / COSTS_MEASURE_S, 2),
        "unit_share_a": round(units["A"] / units_total, 4) if units_total else None,
        "task_share_a": round(counted["A"] / tasks_total, 4) if tasks_total else None,
    }


# --- trees --------------------------------------------------------------------------------


def trees() -> list[Submission]:
    doc = {
        "provider": "sandbox",
        "tasks": [
            {
                "kind": "campaign",
                "payload": {"advertiser_id": "adv-1", "name": f"tree {c}", "budget": 1000},
                "children": [
                    {
                        "kind": "ad_group",
                        "payload": {"name": f"tree {c}/{g}", "bid": 1.5},
                        "children": [
                            {
                                "kind": "ad",
                                "payload": {
                                    "name": f"tree {c}/{g}/{a}",
                                    "creative_url": f"https://cdn.example.com/{c}/{g}/{a}.png",
                                },
                            }
                            for a in range(ADS)
                        ],
                    }
                    for g in range(AD_GROUPS)
                ],
            }
            for c in range(CAMPAIGNS)
        ],
    }
    return importer.load_json_text(Path("trees.json"), json.dumps(doc))


def run_trees(sandbox: SandboxProcess, fair: bool) -> dict[str, Any]:
    """Trees submitted at once into a limit saturated by a stream of new roots."""
    provider = provider_table(sandbox.base_url)
    with cluster(provider, fair) as runtime:
        sandbox.reset()
        stop = threading.Event()

        def stream() -> None:
            made = 0
            begun = time.monotonic()
            while not stop.is_set():
                due = int((time.monotonic() - begun) * RATE) - made
                if due > 0:
                    create(runtime, flat(due, "default", made))
                    made += due
                stop.wait(0.2)

        feeder = threading.Thread(target=stream, daemon=True)
        feeder.start()
        time.sleep(STREAM_LEAD_S)
        created = time.time()
        ids = submissions.create_tasks(runtime.repo, runtime.catalog, trees())
        deadline = created + RUN_TIMEOUT_S
        try:
            while time.time() < deadline:
                with runtime.repo.engine.connect() as conn:
                    left = conn.execute(
                        select(tasks.c.id).where(tasks.c.id.in_(ids), tasks.c.phase != "done")
                    ).all()
                if not left:
                    break
                time.sleep(0.5)
        finally:
            stop.set()
            feeder.join(timeout=30)
        with runtime.repo.engine.connect() as conn:
            rows = conn.execute(
                select(
                    tasks.c.id, tasks.c.parent_id, tasks.c.kind, tasks.c.status, tasks.c.updated_at
                ).where(tasks.c.id.in_(ids))
            ).all()
            accepted = dict(
                conn.execute(
                    select(events.c.task_id, func.min(events.c.at))
                    .where(
                        events.c.task_id.in_(ids),
                        # accepted, or found by a lookup after its answer was lost
                        events.c.event.in_(["submitted", "found"]),
                    )
                    .group_by(events.c.task_id)
                ).all()
            )
    parent = {r.id: r.parent_id for r in rows}
    finished: dict[int, datetime] = {}
    not_done = 0
    for r in rows:
        if r.kind != "ad":
            continue
        if r.status != "Completed":
            not_done += 1
            continue
        campaign = parent[parent[r.id]]
        if campaign not in finished or r.updated_at > finished[campaign]:
            finished[campaign] = r.updated_at
    # The figure: from the campaign's create at the DSP (its create accepted) to its
    # last ad's completion, how long the DSP holds the campaign unfinished.
    spans = [at.timestamp() - accepted[c].timestamp() for c, at in finished.items()]
    # The stricter one: from the moment the trees were queued.
    queued = [at.timestamp() - created for at in finished.values()]
    return {
        "order": "fair" if fair else "arrival",
        "campaigns_done": len(finished),
        "ads_not_done": not_done,
        "campaign_median_s": round(median(spans), 2) if spans else None,
        "campaign_p90_s": round(quantile(spans, 0.9), 2) if spans else None,
        "from_queued_median_s": round(median(queued), 2) if queued else None,
        "from_queued_p90_s": round(quantile(queued, 0.9), 2) if queued else None,
        "last_campaign_from_queued_s": round(max(queued), 2) if queued else None,
    }


# --- the whole benchmark ------------------------------------------------------------------


def plot(path: Path, runs: dict[str, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 2.4 * len(runs)), sharex=True, squeeze=False)
    for ax, (name, run) in zip(axes[:, 0], runs.items(), strict=True):
        done = run["_done"]
        end = max((t for t, _ in done), default=0.0)
        for tenant, colour in (("A", "tab:blue"), ("B", "tab:orange")):
            series = sorted(t for t, who in done if who == tenant)
            xs = [x / 2 for x in range(int(end * 2) + 1)]
            ys = [
                (bisect.bisect_right(series, x) - bisect.bisect_right(series, x - 2.0)) / 2.0
                for x in xs
            ]
            ax.plot(xs, ys, linewidth=1, color=colour, label=f"tenant {tenant}")
        ax.axhline(RATE, color="red", linestyle="--", linewidth=1, label=f"limit {RATE}/s")
        ax.axvline(run["_b_queued_s"], color="grey", linestyle=":", linewidth=1, label="B queues")
        ax.set_ylabel("tasks/s (2 s)")
        ax.set_title(
            f"{name}: B p99 wait {run['b_p99_wait_s']} s (ideal {run['b_ideal_p99_s']}), "
            f"Jain min {run.get('jain_min')}, shares {run.get('share_a')}/{run.get('share_b')}",
            fontsize=9,
        )
        ax.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("seconds since A began queueing")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if not k.startswith("_")}


def medians(runs: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
        out[key] = round(median(values), 4) if len(values) == len(runs) and values else None
    return out


def both_orders(
    name: str, repeats: int, run: Callable[[bool], dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """``run(fair)`` in fair then arrival order, ``repeats`` times, each printed as it ends."""
    runs: dict[str, list[dict[str, Any]]] = {"fair": [], "arrival": []}
    for repeat in range(repeats):
        for order in ("fair", "arrival"):
            load = round(os.getloadavg()[0], 2)
            print(f"-- {name} {order} repeat {repeat + 1}", flush=True)
            result = run(order == "fair")
            result["load_average_1m"] = load
            print(json.dumps(result), flush=True)
            runs[order].append(result)
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--quick", action="store_true", help="one repeat")
    parser.add_argument("--only", nargs="*", default=["equal", "weighted", "costs", "trees"])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "fairness.json")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    results: dict[str, Any] = {
        "benchmark": "fairness",
        "machine": machine_info(),
        "setup": {
            "rate": f"{RATE}/s (1 s sliding window at the sandbox)",
            "processes": PROCESSES,
            "sluice": "4 x `sluice worker --concurrency 1` + `sluice beat`, Redis broker, "
            "PostgreSQL, Redis limiter, preset sandbox-standard made synchronous",
            "tenants": f"A queues {A_TASKS}, B queues {B_TASKS} {B_DELAY_S:g} s later",
            "trees": f"{CAMPAIGNS} campaigns x {AD_GROUPS} ad groups x {ADS} ads with a "
            f"stream of new roots at {RATE}/s",
            "repeats": repeats,
            "judges": "spacing" if JUDGES_SPACING else "window",
            "command": " ".join(
                ["python -m bench.fairness", *(sys.argv[1:] if argv is None else argv)]
            ),
        },
    }
    plotted: dict[str, dict[str, Any]] = {}
    tenant_keys = [
        "b_p99_wait_s",
        "b_p99_over_ideal",
        "utilization",
        "jain_min",
        "share_a",
        "share_b",
    ]
    with sandbox_process(SANDBOX) as sandbox:
        for name, weights in (("equal", {}), ("weighted", {"A": 3.0})):
            if name not in args.only:
                continue
            runs: dict[str, list[dict[str, Any]]] = {"fair": [], "arrival": []}
            for repeat in range(repeats):
                for order in ("fair", "arrival") if name == "equal" else ("fair",):
                    load = round(os.getloadavg()[0], 2)
                    print(f"-- {name} {order} repeat {repeat + 1}", flush=True)
                    run = run_tenants(sandbox, order == "fair", weights)
                    run["load_average_1m"] = load
                    print(json.dumps(summary(run)), flush=True)
                    runs[order].append(run)
                    if repeat == 0:
                        plotted[f"{name} weights, {order} order"] = run
            results[name] = {
                order: {
                    "median": medians(found, tenant_keys),
                    "runs": [summary(r) for r in found],
                }
                for order, found in runs.items()
                if found
            }
        if "costs" in args.only:
            cost_runs = both_orders("costs", repeats, lambda fair: run_costs(sandbox, fair))
            results["costs"] = {
                order: {
                    "median": medians(found, ["unit_share_a", "task_share_a", "units_per_s"]),
                    "runs": found,
                }
                for order, found in cost_runs.items()
            }
        if "trees" in args.only:
            tree_runs = both_orders("trees", repeats, lambda fair: run_trees(sandbox, fair))
            fair_median = median([r["campaign_median_s"] for r in tree_runs["fair"]])
            arrival_median = median([r["campaign_median_s"] for r in tree_runs["arrival"]])
            fair_queued = median([r["from_queued_median_s"] for r in tree_runs["fair"]])
            arrival_queued = median([r["from_queued_median_s"] for r in tree_runs["arrival"]])
            results["trees"] = {
                "fair_campaign_median_s": round(fair_median, 2),
                "arrival_campaign_median_s": round(arrival_median, 2),
                "shorter_by": round(1 - fair_median / arrival_median, 4),
                "fair_from_queued_median_s": round(fair_queued, 2),
                "arrival_from_queued_median_s": round(arrival_queued, 2),
                "from_queued_shorter_by": round(1 - fair_queued / arrival_queued, 4),
                "runs": tree_runs,
            }
    results["machine"]["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    write_json(args.out, results)
    if plotted:
        plot(args.out.with_suffix(".png"), plotted)
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=1)[:4000])


if __name__ == "__main__":
    main()
