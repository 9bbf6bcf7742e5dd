"""Soak: mixed work with faults for many minutes; nothing lost, duplicated or refused, and
no resource that grows.

Run: ``python -m bench.soak [--minutes 20]`` (``--minutes 2`` for a smoke run). Needs
PostgreSQL and Redis. Writes ``bench/results/soak.json`` and ``soak.png``.

On :mod:`harness.cluster`: 4 ``sluice worker --concurrency 2`` processes (``worker-1``
with ``--beat``), Redis broker and limiter (a private ``redis-server``), a fresh
PostgreSQL database, ``sluice sandbox`` (standard profile: asynchronous processing, batch
status polls) holding 40 requests in a strict sliding second; Sluice's provider is the
``sandbox-standard`` preset at ``rate_limit = "40/s"`` with a 1 s timeout.

* **Work**: a backlog of about 300 unfinished tasks is kept up. Each batch of 10 holds a
  campaign with 2 ad groups and an ad under each (children go after their parents), 2
  flat campaigns and 2 IP-range audiences; every 5th batch also has a campaign the DSP
  rejects (negative budget) and an audience with an invalid range.
* **Faults** (seeded sandbox draws on every admitted request): 1% 503 + ``Retry-After``,
  0.5% 500, 0.5% dropped connections, 1% creates committed and then answered too late
  (``commit_then_timeout``, 2 s).
* **Worker kills**: every 60 s, ``worker-3`` and ``worker-4`` in turn get SIGKILL (the
  whole process group) and are started again. ``worker-1`` and ``worker-2`` live the whole
  run: their memory and descriptors are the ones whose growth is measured.
* **Rate-limit pauses**: every 150 s (from 75 s) the sandbox's limit drops to 8/s for 5 s,
  so Sluice is refused (429 + ``Retry-After``) and must pause. Those refusals are planned
  and reported as ``refused_during_planned_pauses``; ``refused`` counts every other
  refusal (the sandbox's arrival log says which calls a limit refused, and when).

When the time is up no more work is added and the run waits (up to 180 s) for every task
to be final. Reported: **lost** (tasks not final), **duplicates** (extra objects at the
sandbox sharing a client reference or a name, over every collection), **refused**, the
maximum arrivals in any sliding second (the sandbox's arrival log), and every 10 s: each worker's
RSS (main process + pool), its open file descriptors, the PostgreSQL sessions on the
cluster's database (``pg_stat_activity``) and the Redis connections held by the cluster's
processes (``CLIENT LIST`` matched to their sockets). Slopes (least squares, per minute)
are taken after the warm-up (the first quarter of the run, at most 2 minutes).
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._chaos import (
    ChaosCluster,
    Sandbox,
    Store,
    chaos_cluster,
    code_version,
    duplicates_by_name,
    load_average,
    over_limit_at,
    preset_table,
    refusals,
)
from bench._common import machine_info
from bench._engine_harness import RESULTS_DIR, max_in_window, write_json
from harness.cluster import (
    descendants,
    memory_kib,
    open_fds,
    postgres_connections,
    redis_clients,
)
from sluice import submissions
from sluice.domain import Submission

RATE = 40
WORKERS = [("worker-1", True), ("worker-2", False), ("worker-3", False), ("worker-4", False)]
STEADY = ("worker-1", "worker-2")
VICTIMS = (2, 3)
CONCURRENCY = 2
BACKLOG = 300
FEED_EVERY_S = 1.0
BATCHES_PER_FEED = 10
SAMPLE_EVERY_S = 10.0
KILL_EVERY_S = 60.0
PAUSE_FIRST_S = 75.0
PAUSE_EVERY_S = 150.0
PAUSE_S = 5.0
PAUSE_LIMIT = 8
FINAL_TIMEOUT_S = 180.0
CLAIM_LEASE_S = 10
RECONCILE_EVERY_S = 2
FAULTS = {
    "unavailable_503": 0.01,
    "error_5xx": 0.005,
    "reset": 0.005,
    "commit_then_timeout": 0.01,
    "hang_s": 2.0,
}
COLLECTIONS = ("campaigns", "ad_groups", "ads", "audiences")


# --- work ------------------------------------------------------------------------------------


def batch(number: int) -> list[Submission]:
    """Ten (or, every 5th batch, twelve) tasks of mixed kinds, each named uniquely."""

    def task(kind: str, payload: dict[str, Any], parent_index: int | None = None) -> Submission:
        return Submission(
            kind=kind,
            payload={"name": f"soak {kind} {number}-{len(items)}", **payload},
            parent_index=parent_index,
        )

    items: list[Submission] = []
    items.append(task("campaign", {"advertiser_id": "adv-1", "budget": 500.0}))
    for _ in range(2):
        items.append(task("ad_group", {"bid": 1.5}, parent_index=0))
        items.append(task("ad", {"creative_url": "https://cdn.example/a.png"}, len(items) - 1))
    for _ in range(2):
        items.append(task("campaign", {"advertiser_id": "adv-2", "budget": 100.0}))
    for _ in range(2):
        ranges = {"type": "ip_range", "include": ["10.0.0.0/8", "192.168.1.1-192.168.1.9"]}
        items.append(task("audience", {"advertiser_id": "adv-3", **ranges}))
    if number % 5 == 0:
        items.append(task("campaign", {"advertiser_id": "adv-1", "budget": -5.0}))
        bad = {"type": "ip_range", "include": ["192.168.1.256"]}
        items.append(task("audience", {"advertiser_id": "adv-3", **bad}))
    return items


# --- measuring ----------------------------------------------------------------------------


def sample(chaos: ChaosCluster, store: Store, elapsed_s: float) -> dict[str, Any]:
    """Every worker's memory and descriptors, the cluster's connections, progress."""
    workers: dict[str, Any] = {}
    every_pid: list[int] = []
    for proc in chaos.workers:
        pids = sorted(descendants([proc.pid]))
        every_pid += pids
        workers[proc.name] = {
            "pid": proc.pid,
            "processes": len(pids),
            "rss_mib": round(sum(memory_kib(pid)["rss"] for pid in pids) / 1024, 1),
            "fds": sum(open_fds(pid) for pid in pids),
        }
    redis_by_db = redis_clients(chaos.cluster.redis_url, every_pid)
    broker_db = "db" + chaos.cluster.broker_url.rsplit("/", 1)[1]
    return {
        "t_s": round(elapsed_s, 1),
        "workers": workers,
        "postgres_connections": postgres_connections(chaos.cluster.database_url),
        "redis_connections": sum(redis_by_db.values()),
        "redis_connections_broker": redis_by_db.get(broker_db, 0),
        "statuses": store.statuses(),
        "unfinished": store.unfinished(),
    }


def slope_per_min(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``(seconds, value)`` points, per minute."""
    if len(points) < 3:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    slope = sum((t - mean_t) * (v - mean_v) for t, v in points) / spread
    return round(slope * 60, 3)


def trend(samples: list[dict[str, Any]], warmup_s: float, read: Any) -> dict[str, Any]:
    """Slope per minute and range after the warm-up of one series."""
    points = [(s["t_s"], float(read(s))) for s in samples if s["t_s"] >= warmup_s]
    values = [v for _, v in points]
    return {
        "slope_per_min": slope_per_min(points),
        "min": min(values, default=None),
        "max": max(values, default=None),
        "first": values[0] if values else None,
        "last": values[-1] if values else None,
    }


# --- the run ------------------------------------------------------------------------------


@dataclass
class Schedule:
    """When things happen, in seconds from the start of the run."""

    duration_s: float
    kills: list[float] = field(default_factory=list)
    pauses: list[float] = field(default_factory=list)

    @classmethod
    def for_minutes(cls, minutes: float) -> Schedule:
        duration = minutes * 60
        kills = itertools.takewhile(
            lambda t: t < duration, itertools.count(KILL_EVERY_S, KILL_EVERY_S)
        )
        pauses = itertools.takewhile(
            lambda t: t + PAUSE_S < duration, itertools.count(PAUSE_FIRST_S, PAUSE_EVERY_S)
        )
        return cls(duration, list(kills), list(pauses))


def run(minutes: float) -> dict[str, Any]:
    """Feed, fault, kill, pause and sample for ``minutes``; then judge."""
    schedule = Schedule.for_minutes(minutes)
    warmup_s = min(120.0, schedule.duration_s / 4)
    provider = preset_table()
    provider.update(rate_limit=f"{RATE}/s", timeout="1s", retry_base="100ms", retry_max="2s")
    normal_limits = [{"name": "app", "limit": RATE, "window_s": 1.0}]
    sandbox_table = {"seed": 7, "limits": normal_limits, "faults": FAULTS}
    settings = {
        "SLUICE_CLAIM_LEASE_S": str(CLAIM_LEASE_S),
        "SLUICE_RECONCILE_EVERY_S": str(RECONCILE_EVERY_S),
    }
    samples: list[dict[str, Any]] = []
    pauses: list[tuple[float, float]] = []
    with chaos_cluster(
        provider=provider,
        sandbox=sandbox_table,
        workers=WORKERS,
        concurrency=CONCURRENCY,
        settings=settings,
        prefix="soak",
    ) as chaos:
        store = Store(chaos.cluster.database_url)
        sandbox = Sandbox(chaos.sandbox_url)
        runtime = chaos.cluster.build_runtime()
        try:
            started = time.time()
            batches = itertools.count(1)
            next_feed = next_sample = 0.0
            kills = list(schedule.kills)
            pause_starts = list(schedule.pauses)
            pause_began: float | None = None
            created = 0
            victim = itertools.cycle(VICTIMS)
            while (elapsed := time.time() - started) < schedule.duration_s:
                if elapsed >= next_feed:
                    next_feed = elapsed + FEED_EVERY_S
                    if store.unfinished() < BACKLOG:
                        items = [i for _ in range(BATCHES_PER_FEED) for i in batch(next(batches))]
                        submissions.create_tasks(runtime.repo, runtime.catalog, items)
                        created += len(items)
                if kills and elapsed >= kills[0]:
                    kills.pop(0)
                    chaos.crash(next(victim))
                if pause_began is None and pause_starts and elapsed >= pause_starts[0]:
                    pause_starts.pop(0)
                    pause_began = time.time()
                    sandbox.configure({"limits": [{**normal_limits[0], "limit": PAUSE_LIMIT}]})
                elif pause_began is not None and time.time() - pause_began >= PAUSE_S:
                    sandbox.configure({"limits": normal_limits})
                    pauses.append((pause_began, time.time()))
                    pause_began = None
                if elapsed >= next_sample:
                    next_sample = elapsed + SAMPLE_EVERY_S
                    samples.append(sample(chaos, store, elapsed))
                    print(progress(samples[-1]), flush=True)
                time.sleep(0.2)
            if pause_began is not None:
                sandbox.configure({"limits": normal_limits})
                pauses.append((pause_began, time.time()))
            fed_until = time.time()
            lost = store.wait_final(FINAL_TIMEOUT_S)
            samples.append(sample(chaos, store, time.time() - started))
            drained_s = time.time() - fed_until
            stats = sandbox.stats()
            arrivals = sandbox.arrivals()
            objects = {name: sandbox.objects(name) for name in COLLECTIONS}
            statuses = store.statuses()
            events = store.events()
        finally:
            runtime.close()
            store.close()
            sandbox.close()

    def planned(t: float) -> bool:
        return any(begin <= t <= end for begin, end in pauses)

    refused_times = [a.t for a in arrivals if a.refused]
    outside = [a.t for a in arrivals if not planned(a.t)]
    by_name = sum(duplicates_by_name(objects[name]) for name in COLLECTIONS)
    by_ref = int(stats["duplicate_count"])
    steady = {
        name: {
            "rss_mib": trend(samples, warmup_s, lambda s, n=name: s["workers"][n]["rss_mib"]),
            "fds": trend(samples, warmup_s, lambda s, n=name: s["workers"][n]["fds"]),
        }
        for name in STEADY
    }
    return {
        "minutes": minutes,
        "lost": lost,
        "duplicates": max(by_ref, by_name),
        "refused": sum(1 for t in refused_times if not planned(t)),
        "refused_during_planned_pauses": sum(1 for t in refused_times if planned(t)),
        "max_in_sliding_s": max_in_window([a.t for a in arrivals], 1.0),
        "max_in_sliding_s_outside_pauses": max_in_window(outside, 1.0),
        "limit": RATE,
        "refusals_outside_pauses": refusals(arrivals, started, skip=planned),
        "over_limit_at_s": [
            round(t - started, 2) for t in over_limit_at([a.t for a in arrivals], RATE)
        ],
        "duplicates_by_client_ref": by_ref,
        "duplicates_by_name": by_name,
        "tasks_created": created,
        "statuses": statuses,
        "objects_created": {name: len(objects[name]) for name in COLLECTIONS},
        "requests_total": stats["total_requests"],
        "faults": stats["faults"],
        "events": events,
        "kills": [{"t_s": round(at - started, 1), "worker": name} for at, name in chaos.kills],
        "planned_pauses": [
            {"from_s": round(a - started, 1), "to_s": round(b - started, 1)} for a, b in pauses
        ],
        "drain_s": round(drained_s, 1),
        "warmup_s": warmup_s,
        "trend_after_warmup": {
            "steady_workers": steady,
            "postgres_connections": trend(samples, warmup_s, lambda s: s["postgres_connections"]),
            "redis_connections": trend(samples, warmup_s, lambda s: s["redis_connections"]),
        },
        "samples": samples,
        "_arrivals": arrivals,
        "_origin": started,
    }


def progress(s: dict[str, Any]) -> str:
    rss = " ".join(f"{n}={w['rss_mib']:.0f}M/{w['fds']}fd" for n, w in s["workers"].items())
    done = s["statuses"].get("Completed", 0) + s["statuses"].get("Error", 0)
    return (
        f"t={s['t_s']:.0f}s final={done} unfinished={s['unfinished']} "
        f"pg={s['postgres_connections']} redis={s['redis_connections']} {rss}"
    )


def plot(path: Path, result: dict[str, Any]) -> None:
    """RSS and descriptors per worker, connections, and the request rate, over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    minutes = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(10, 10), sharex=True)
    for name in samples[0]["workers"]:
        style = "-" if name in STEADY else ":"
        axes[0].plot(minutes, [s["workers"][name]["rss_mib"] for s in samples], style, label=name)
        axes[1].plot(minutes, [s["workers"][name]["fds"] for s in samples], style, label=name)
    axes[0].set_ylabel("RSS MiB (main + pool)")
    axes[1].set_ylabel("open fds")
    axes[2].plot(minutes, [s["postgres_connections"] for s in samples], label="PostgreSQL sessions")
    axes[2].plot(minutes, [s["redis_connections"] for s in samples], label="Redis connections")
    axes[2].set_ylabel("connections")
    times = [a.t for a in result["_arrivals"]]
    origin = result["_origin"]
    if times:
        bins = int((times[-1] - origin) // 10) + 1
        counts = [0] * bins
        for t in times:
            counts[max(0, int((t - origin) // 10))] += 1
        axes[3].step([i * 10 / 60 for i in range(bins)], [c / 10 for c in counts], where="post")
    axes[3].axhline(RATE, color="red", linestyle="--", linewidth=1, label=f"limit {RATE}/s")
    axes[3].set_ylabel("requests/s (10 s bins)")
    axes[3].set_xlabel("minutes")
    for ax in axes:
        ax.axvspan(0, result["warmup_s"] / 60, color="grey", alpha=0.15)
        for kill in result["kills"]:
            ax.axvline(kill["t_s"] / 60, color="black", alpha=0.25, linewidth=0.7)
        for pause in result["planned_pauses"]:
            ax.axvspan(pause["from_s"] / 60, pause["to_s"] / 60, color="orange", alpha=0.4)
        ax.legend(loc="upper left", fontsize=7)
    axes[0].set_title(
        f"soak {result['minutes']:g} min: lost {result['lost']}, duplicates "
        f"{result['duplicates']}, refused {result['refused']} "
        f"(+{result['refused_during_planned_pauses']} in planned pauses); "
        "grey: warm-up, lines: kills, orange: pauses",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Run the soak, print the figures, write the JSON and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "soak.json")
    args = parser.parse_args(argv)
    machine = machine_info()
    code = code_version()
    load_before = load_average()
    result = run(args.minutes)
    row = {k: v for k, v in result.items() if not k.startswith("_")}
    write_json(
        args.out,
        {
            "benchmark": "soak",
            "command": f"python -m bench.soak --minutes {args.minutes:g}",
            "settings": {
                "rate_limit": f"{RATE}/s",
                "workers": [name + (" (--beat)" if beat else "") for name, beat in WORKERS],
                "concurrency": CONCURRENCY,
                "faults": FAULTS,
                "kill_every_s": KILL_EVERY_S,
                "pause": f"limit {PAUSE_LIMIT}/s for {PAUSE_S:g} s every {PAUSE_EVERY_S:g} s",
                "claim_lease_s": CLAIM_LEASE_S,
                "reconcile_every_s": RECONCILE_EVERY_S,
                "backlog": BACKLOG,
            },
            "machine": machine,
            "code": code,
            "load_average_1m_before": load_before,
            "load_average_1m_after": load_average(),
            **row,
        },
    )
    plot(args.out.with_suffix(".png"), result)
    summary = {k: v for k, v in row.items() if k not in ("samples", "events", "kills")}
    for key, value in summary.items():
        print(f"{key}: {value}")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}", flush=True)


if __name__ == "__main__":
    main()
