"""Workers SIGKILLed and restarted under a rate limit: lost tasks, duplicates, refusals.

Run: ``python -m bench.crash [--repeats 10] [--cpu-hog] [--quota N]`` (about 1 minute per
repeat).
Needs PostgreSQL and Redis. Writes ``bench/results/crash.json`` and ``crash.png``
(``crash_cpu_hog.*`` with ``--cpu-hog``).

The scenario of issue 9's outside check, once per repeat, on :mod:`harness.cluster`:

* three ``sluice worker --concurrency 2`` processes (the first with ``--beat``), Redis
  broker and limiter (a private ``redis-server``), a fresh PostgreSQL database;
* 500 campaign creates that the provider answers synchronously (no poll: a 2xx create is
  Completed), ``rate_limit = "40/s"``;
* ``sluice sandbox`` holds the same 40 in a strict sliding second with its own limiter
  and judges (its stats and its arrival log, ``/_sandbox/arrivals``); its
  ``commit_then_timeout`` fault at 1/25 creates the object and then withholds the answer
  (2 s, past Sluice's 1 s timeout): every 25th answer, on average, is dropped after the
  object was created (the draw is seeded, so a repeat's seed gives the same sequence);
* every 2 s from the first request on, one worker's process group (round robin, the
  beat's too) gets SIGKILL and is started again at once: 8 kills. Claims are leased for
  10 s (``SLUICE_CLAIM_LEASE_S``) and reconciled every 2 s, so a killed worker's tasks
  come back within about 12 s (the default lease, 120 s, would only make each run longer).

With ``--quota N`` (``crash_quota*.json``), a write quota of N per fixed hour (UTC) on top
of the rate, the sandbox enforcing the same (so an over-spend is a refusal), N below the
task count: the first N creates go out, the rest must wait for the reset without failing.
After the kills, once every task is final or waits for the reset, every worker is killed
at once and started again, and watched ``after_restart_s``: a restart must not hand the
window out again. Per repeat, beside the figures below (**lost** then counts tasks neither
final nor waiting): ``quota.sent`` (creates the sandbox accepted, at most N), ``counted_never_sent``
(units a killed worker held: under-use, never over-use), ``waiting_for_reset``,
``sent_after_restart`` against ``left_in_database_before_restart``; ``quota_faults`` lists
any promise broken.

Per repeat: **lost** (tasks not final 120 s after the last kill), **duplicates** (extra
objects at the sandbox sharing a client reference or a name), **refused** (the sandbox's
429s) and **max_in_sliding_s** (the sandbox's exact maximum of arrivals, refused ones
included, in any sliding second). ``--cpu-hog`` runs a busy loop beside it all.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench._chaos import (
    Arrival,
    ChaosCluster,
    Sandbox,
    Store,
    chaos_cluster,
    code_version,
    cpu_hog,
    duplicates_by_name,
    load_average,
    over_limit_at,
    refusals,
    synchronous_provider,
)
from bench._common import machine_info
from bench._engine_harness import RESULTS_DIR, max_in_window, median, rolling_rate, write_json
from harness.cluster import wait_until
from sluice import submissions
from sluice.domain import Submission


@dataclass(frozen=True)
class Scenario:
    """One crash run's shape (the defaults are the outside check's)."""

    tasks: int = 500
    rate: int = 40
    kills: int = 8
    kill_every_s: float = 2.0
    drop_every: int = 25
    hang_s: float = 2.0
    timeout_s: float = 1.0
    workers: int = 3
    concurrency: int = 2
    claim_lease_s: float = 10.0
    reconcile_every_s: float = 2.0
    final_timeout_s: float = 120.0
    quota: int = 0
    """With ``--quota N``: a write quota of N per fixed hour (UTC) on top of the rate, the
    sandbox enforcing the same; N below ``tasks`` leaves the rest waiting for the reset."""
    quota_window_s: int = 3600
    after_restart_s: float = 10.0
    """With a quota: how long to watch after every worker was killed and started again."""


FIGURES = ("lost", "duplicates", "refused", "max_in_sliding_s")


def campaigns(count: int, label: str) -> list[Submission]:
    """``count`` valid campaigns, each named uniquely."""
    return [
        Submission(
            kind="campaign",
            payload={"advertiser_id": "adv-1", "name": f"{label} {i}", "budget": 100.0},
        )
        for i in range(count)
    ]


def run_repeat(scenario: Scenario, seed: int) -> dict[str, Any]:
    """One run of the scenario: its figures, plus ``_arrivals`` and ``_kills`` for the plot
    and ``_logs`` (the end of every process's log) for a failure report."""
    provider = synchronous_provider(
        f"{scenario.rate}/s",
        timeout=f"{scenario.timeout_s:g}s",
        retry_base="100ms",
        retry_max="1s",
    )
    sandbox_limits: list[dict[str, Any]] = [
        {"name": "app", "limit": scenario.rate, "window_s": 1.0}
    ]
    if scenario.quota:
        provider["limits"] = [
            {"quota": f"{scenario.quota}/{scenario.quota_window_s}s", "scope": "write"}
        ]
        sandbox_limits.append(
            {
                "name": "quota",
                "kind": "fixed",
                "scope": "write",
                "limit": scenario.quota,
                "window_s": float(scenario.quota_window_s),
                "timezone": "UTC",
            }
        )
    sandbox_table = {
        "seed": seed,
        "limits": sandbox_limits,
        "faults": {"commit_then_timeout": 1 / scenario.drop_every, "hang_s": scenario.hang_s},
    }
    workers = [(f"worker-{n + 1}", n == 0) for n in range(scenario.workers)]
    settings = {
        "SLUICE_CLAIM_LEASE_S": f"{scenario.claim_lease_s:g}",
        "SLUICE_RECONCILE_EVERY_S": f"{scenario.reconcile_every_s:g}",
    }
    with chaos_cluster(
        provider=provider,
        sandbox=sandbox_table,
        workers=workers,
        concurrency=scenario.concurrency,
        settings=settings,
        prefix="crash",
    ) as chaos:
        store = Store(chaos.cluster.database_url)
        sandbox = Sandbox(chaos.sandbox_url)
        runtime = chaos.cluster.build_runtime()
        quota: dict[str, Any] = {}
        try:
            reset = quota_window_end(scenario) if scenario.quota else None
            load_before = load_average()
            submissions.create_tasks(
                runtime.repo, runtime.catalog, campaigns(scenario.tasks, f"crash-{seed}")
            )
            created_at = time.time()
            # The kills start from the first request, so that they land on work in flight.
            wait_until(lambda: bool(sandbox.arrivals()), 60, "the first request")
            first_request_at = sandbox.arrivals()[0].t
            for k in range(scenario.kills):
                due = first_request_at + (k + 1) * scenario.kill_every_s
                time.sleep(max(0.0, due - time.time()))
                chaos.crash(k % len(chaos.workers))
            if reset is not None:
                quota = watch_quota(chaos, store, sandbox, scenario, reset)
                lost = quota.pop("unsettled")
            else:
                lost = store.wait_final(scenario.final_timeout_s)
            seconds = time.time() - created_at
            stats = sandbox.stats()
            arrivals = sandbox.arrivals()
            objects = sandbox.objects("campaigns")
            statuses = store.statuses()
            events = store.events()
            logs = chaos.cluster.logs()
        finally:
            runtime.close()
            store.close()
            sandbox.close()
    window = stats["max_in_window"].get("app:anonymous", {})
    by_ref = int(stats["duplicate_count"])
    by_name = duplicates_by_name(objects)
    times = [a.t for a in arrivals]
    return {
        "seed": seed,
        "tasks": scenario.tasks,
        "lost": lost,
        "duplicates": max(by_ref, by_name),
        "refused": int(stats["refused_total"]),
        "max_in_sliding_s": window.get("max_seen"),
        "limit": window.get("limit"),
        "max_in_sliding_s_from_log": max_in_window(times, 1.0),
        "refusals": refusals(arrivals, created_at),
        "over_limit_at_s": [round(t - created_at, 2) for t in over_limit_at(times, scenario.rate)],
        "first_request_at_s": round(first_request_at - created_at, 2),
        "kills_at_s": [round(at - created_at, 2) for at, _ in chaos.kills],
        "duplicates_by_client_ref": by_ref,
        "duplicates_by_name": by_name,
        "statuses": statuses,
        "objects_created": len(objects),
        "dropped_answers": int(stats["faults"].get("commit_then_timeout", 0)),
        "requests": stats["requests"],
        "events": events,
        "kills": len(chaos.kills),
        "seconds_to_final": round(seconds, 1),
        "load_average_1m_before": load_before,
        **({"quota": quota} if quota else {}),
        "_arrivals": arrivals,
        "_kills": chaos.kills,
        "_origin": created_at,
        "_logs": logs,
    }


def quota_window_end(scenario: Scenario) -> datetime:
    """The end of the fixed quota window the run will spend, after waiting for the next
    window if this one ends too soon to hold the whole run (a reset in the middle would
    legitimately let the waiting work go)."""
    window = scenario.quota_window_s
    longest_s = scenario.kills * scenario.kill_every_s + 3 * scenario.final_timeout_s + 60
    now = time.time()
    end = (now // window + 1) * window
    if end - now < longest_s:
        print(f"waiting {end - now + 1:.0f} s for the next quota window", flush=True)
        time.sleep(end - now + 1)
        end += window
    return datetime.fromtimestamp(end, UTC)


def watch_quota(
    chaos: ChaosCluster, store: Store, sandbox: Sandbox, scenario: Scenario, reset: datetime
) -> dict[str, Any]:
    """After the kills: wait until every task is final or waits for ``reset``; then kill
    every worker at once, start them again, and watch ``after_restart_s`` more. The
    quota's figures (``unsettled`` is the lost count)."""
    unsettled = store.wait_settled(reset, scenario.final_timeout_s)
    sent_before = creates_sent(sandbox.arrivals())
    used_before = store.quota_used()
    restarted_at = chaos.restart_all()
    time.sleep(scenario.after_restart_s)
    unsettled = max(unsettled, store.wait_settled(reset, scenario.final_timeout_s))
    sent = creates_sent(sandbox.arrivals())
    used = store.quota_used()
    return {
        "unsettled": unsettled,
        "limit": scenario.quota,
        "sent": len(sent),
        "used_in_database": used,
        "unused": scenario.quota - len(sent),
        "counted_never_sent": used - len(sent),
        "waiting_for_reset": store.waiting_for(reset),
        "waiting_with_an_attempt": store.waiting_for(reset, attempted=True),
        "left_in_database_before_restart": scenario.quota - used_before,
        "sent_before_restart": len(sent_before),
        "sent_after_restart": sum(1 for t in sent if t >= restarted_at),
    }


def creates_sent(arrivals: list[Arrival]) -> list[float]:
    """When each create the sandbox accepted (not refused) arrived."""
    return [a.t for a in arrivals if a.route.startswith("POST") and not a.refused]


def quota_faults(run: dict[str, Any]) -> list[str]:
    """What broke the quota's promises in a run (empty when they held): never over the
    limit, nothing refused, every task final or waiting for the reset without failing,
    and a full restart handing out no more than the database had left."""
    quota = run["quota"]
    found = []
    if quota["sent"] > quota["limit"] or quota["used_in_database"] > quota["limit"]:
        found.append(f"over the quota: {quota['sent']} sent, {quota['used_in_database']} counted")
    if quota["counted_never_sent"] < 0:
        found.append(f"{-quota['counted_never_sent']} sent but never counted")
    if quota["sent_after_restart"] > quota["left_in_database_before_restart"]:
        found.append(
            f"the restart handed out {quota['sent_after_restart']} with "
            f"{quota['left_in_database_before_restart']} left"
        )
    statuses = run["statuses"]
    if statuses.get("Completed", 0) + quota["waiting_for_reset"] != run["tasks"]:
        found.append(f"not all final or waiting: {statuses}")
    if statuses.get("Error", 0):
        found.append(f"{statuses['Error']} failed")
    return found


def describe(run: dict[str, Any]) -> str:
    line = (
        f"lost {run['lost']}, duplicates {run['duplicates']}, refused {run['refused']}, "
        f"max in a sliding second {run['max_in_sliding_s']}/{run['limit']}, "
        f"completed {run['statuses'].get('Completed', 0)}, "
        f"dropped answers {run['dropped_answers']}, kills {run['kills']}, "
        f"{run['seconds_to_final']} s"
    )
    if "quota" in run:
        quota = run["quota"]
        line += (
            f"; quota {quota['sent']}/{quota['limit']} sent ({quota['counted_never_sent']} "
            f"counted, never sent), {quota['waiting_for_reset']} waiting for the reset, "
            f"{quota['sent_after_restart']} sent after the full restart "
            f"({quota['left_in_database_before_restart']} left), "
            f"faults: {quota_faults(run) or 'none'}"
        )
    return line


def plot(path: Path, runs: list[dict[str, Any]], title: str) -> None:
    """Arrivals per sliding second in the busiest repeat, kills marked; max per repeat."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = max(range(len(runs)), key=lambda i: (runs[i]["max_in_sliding_s"] or 0, -i))
    run = runs[shown]
    origin = run["_origin"]
    times = [a.t for a in run["_arrivals"]]
    fig, (ax, bars) = plt.subplots(
        2, 1, figsize=(10, 6), gridspec_kw={"height_ratios": [3, 1]}, squeeze=True
    )
    xs, ys = rolling_rate(times, origin, 0.02, 1.0)
    ax.plot(xs, ys, linewidth=0.8, label="arrivals in the last 1 s (the sandbox's log)")
    ax.axhline(run["limit"], color="red", linestyle="--", linewidth=1, label="limit")
    for n, (at, name) in enumerate(run["_kills"]):
        ax.axvline(at - origin, color="black", alpha=0.4, linewidth=0.8)
        ax.text(at - origin, 2 + (n % 2) * 3, f" kill {name}", fontsize=6, rotation=90)
    refused = [a.t - origin for a in run["_arrivals"] if a.refused]
    if refused:
        ax.plot(refused, [run["limit"]] * len(refused), "rx", label="refused")
    ax.set_xlabel("seconds since the tasks were created")
    ax.set_ylabel("requests / sliding s")
    ax.set_title(
        f"{title}: repeat {shown + 1} (busiest), max {run['max_in_sliding_s']}, "
        f"refused {run['refused']}, lost {run['lost']}, duplicates {run['duplicates']}",
        fontsize=9,
    )
    ax.legend(loc="lower right", fontsize=7)
    labels = [str(i + 1) for i in range(len(runs))]
    bars.bar(labels, [r["max_in_sliding_s"] or 0 for r in runs])
    bars.axhline(run["limit"], color="red", linestyle="--", linewidth=1)
    bars.set_ylim(0, (run["limit"] or 40) * 1.2)
    bars.set_xlabel("repeat")
    bars.set_ylabel("max / sliding s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def faults_seen(run: dict[str, Any]) -> dict[str, Any]:
    """The figures that must be zero, with the limit check, for an assertion message."""
    return {
        "lost": run["lost"],
        "duplicates": run["duplicates"],
        "refused": run["refused"],
        "over_limit_at_s": run["over_limit_at_s"],
        "statuses": run["statuses"],
        "events": run["events"],
    }


def main(argv: list[str] | None = None) -> None:
    """Run the repeats, print each one's figures, write the JSON and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=Scenario.tasks)
    parser.add_argument("--kills", type=int, default=Scenario.kills)
    parser.add_argument(
        "--quota", type=int, default=0, help="a write quota of N per hour (the sandbox's too)"
    )
    parser.add_argument("--cpu-hog", action="store_true", help="a busy loop runs beside")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (PNG beside it)")
    args = parser.parse_args(argv)
    scenario = Scenario(tasks=args.tasks, kills=args.kills, quota=args.quota)
    name = "crash" + ("_quota" if args.quota else "") + ("_cpu_hog" if args.cpu_hog else "")
    out = args.out or RESULTS_DIR / f"{name}.json"

    runs: list[dict[str, Any]] = []
    machine = machine_info()
    code = code_version()
    with cpu_hog(args.cpu_hog):
        for n in range(args.repeats):
            run = run_repeat(scenario, seed=n + 1)
            runs.append(run)
            print(f"repeat {n + 1}: {describe(run)}", flush=True)
    rows = [{k: v for k, v in run.items() if not k.startswith("_")} for run in runs]
    results: dict[str, Any] = {
        "benchmark": "crash",
        "command": " ".join(["python -m bench.crash", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine,
        "code": code,
        "cpu_hog": args.cpu_hog,
        "scenario": asdict(scenario),
        "setup": (
            f"{scenario.workers} x `sluice worker --concurrency {scenario.concurrency}` (the "
            "first with --beat), Redis broker + limiter, PostgreSQL; synchronous campaign "
            f"creates at {scenario.rate}/s; sandbox limit {scenario.rate} per sliding 1 s; "
            f"commit_then_timeout 1/{scenario.drop_every} (hang {scenario.hang_s:g} s, "
            f"Sluice timeout {scenario.timeout_s:g} s); one worker's process group SIGKILLed "
            f"and restarted every {scenario.kill_every_s:g} s, {scenario.kills} kills"
            + (
                f"; a write quota of {scenario.quota} per fixed hour (UTC), the sandbox "
                "enforcing it too; once every task is final or waits for the reset, every "
                f"worker killed and started again and watched {scenario.after_restart_s:g} s"
                if scenario.quota
                else ""
            )
        ),
        "each": {figure: [run[figure] for run in rows] for figure in FIGURES},
        "median": {figure: median([run[figure] or 0 for run in rows]) for figure in FIGURES},
        "worst": {figure: max(run[figure] or 0 for run in rows) for figure in FIGURES},
        "repeats": rows,
    }
    if scenario.quota:
        results["quota_faults"] = [quota_faults(run) for run in rows]
        results["quota_each"] = {
            figure: [run["quota"][figure] for run in rows]
            for figure in ("sent", "counted_never_sent", "waiting_for_reset", "sent_after_restart")
        }
    write_json(out, results)
    title = "crash" + (f" + quota {scenario.quota}/h" if scenario.quota else "")
    title += " + CPU hog" if args.cpu_hog else ""
    plot(out.with_suffix(".png"), runs, title)
    print(f"each: {results['each']}")
    print(f"median: {results['median']}; worst: {results['worst']}")
    if scenario.quota:
        print(f"quota: {results['quota_each']}; faults: {results['quota_faults']}")
    print(f"wrote {out} and {out.with_suffix('.png')}", flush=True)


if __name__ == "__main__":
    main()
