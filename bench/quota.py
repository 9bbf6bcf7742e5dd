"""Quotas and costs against the sandbox: bursts at the short rate, waits for the reset, and
heavy writes within the write budget.

Run: ``python -m bench quota`` (or ``make bench BENCH=quota``); options: ``--repeats N``,
``--full`` (the issue's 600 per 10 minutes instead of the scaled-down 60 per minute).

1. **Quota**, on a *short real window* (not the movable clock: Sluice's own quota windows
   run on the real clock, so the sandbox's must too). The issue's shape, 600 per 10 min at
   10/s, scaled by ten in count and window: 60 creates per minute at 10/s (``--full`` runs
   600/10 min). The sandbox enforces the same fixed window (UTC) and the 10/s rate; Sluice is
   configured with ``rate_limit = "10/s"`` and ``[[limits]] quota = "60/min", scope = "write"``.
   The run starts just after a window opens, with quota + 20 creates queued: the first
   ``quota`` go out in a burst at 10/s, the rest wait (Ready, no attempt) for the window
   to turn and then go. The sandbox must refuse nothing.
2. **Costs**, against the ``dv360`` profile (429 ``RESOURCE_EXHAUSTED``), its advertiser
   write budget scaled to 150 units per 10 s (DV360: 150/min) so a run fits in a minute:
   audiences cost 5 writes, campaigns 1 (Sluice: ``cost = { "audience.submit" = 5 }`` on a
   ``150/10s`` write limit per advertiser). Reported: refusals (must be 0), and the write
   budget's utilization while work waited (units admitted / budget over the busy span).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import _engine_harness as harness
from bench._common import machine_info
from sluice.domain import Submission

RESULT = harness.RESULTS_DIR / "quota.json"


def _wait_for_window_start(window_s: int, lead_s: float = 0.3) -> None:
    """Sleep until ``lead_s`` after the next fixed window (UTC, from midnight) opens."""
    now = time.time()
    next_start = (now // window_s + 1) * window_s
    time.sleep(max(0.0, next_start + lead_s - now))


def run_quota(count: int, window_s: int) -> dict[str, Any]:
    extra = 20
    section = {
        "limits": [
            {"name": "rate", "limit": 10, "window_s": 1.0},
            {
                "name": "quota",
                "kind": "fixed",
                "scope": "write",
                "limit": count,
                "window_s": window_s,
                "timezone": "UTC",
            },
        ],
        "accept_delay_s": [0.05, 0.1],
        "process_delay_s": [0.1, 0.2],
        "faults": {},
    }
    provider = {
        "preset": "sandbox-standard",
        "rate_limit": "10/s",
        "limits": [{"quota": f"{count}/{window_s}s", "scope": "write", "reset": "UTC"}],
        "poll": {"interval": "500ms"},
    }
    with harness.sandbox_process(section, "standard") as sandbox:
        provider["base_url"] = sandbox.base_url
        _wait_for_window_start(window_s)
        run = harness.run_sluice(
            provider,
            harness.flat_campaigns(count + extra),
            timeout_s=window_s * 2 + 60,
        )
        stats = sandbox.stats()
        arrivals = sandbox.arrivals()
    creates = [t for t, method, status in arrivals if method == "POST" and status != 429]
    first_window = int(creates[0] // window_s)
    in_first = [t for t in creates if int(t // window_s) == first_window]
    later = [t for t in creates if int(t // window_s) > first_window]
    burst_span = in_first[-1] - in_first[0] if len(in_first) > 1 else 0.0
    reset_at = (first_window + 1) * window_s
    return {
        "quota": f"{count} per {window_s}s",
        "creates": len(creates),
        "refused_by_sandbox": int(stats["refused_total"]),
        "sandbox_limits": {
            name: {k: v for k, v in entry.items() if k in ("limit", "max_seen", "refused")}
            for name, entry in stats["max_in_window"].items()
        },
        "creates_in_first_window": len(in_first),
        "burst_rate_per_s": round((len(in_first) - 1) / burst_span, 2) if burst_span else None,
        "first_after_quota_s_after_reset": round(later[0] - reset_at, 3) if later else None,
        "creates_after_reset": len(later),
        "max_creates_in_any_fixed_window": max(
            sum(1 for t in creates if int(t // window_s) == w)
            for w in {int(t // window_s) for t in creates}
        ),
        "max_in_any_1s": harness.max_in_window(sorted(t for t, _, _ in arrivals), 1.0),
        "client_retries": run.retries,
        "client_rate_limited": run.rate_limited,
        "final": run.statuses,
        "seconds": round(run.seconds, 2),
    }


def run_costs(audiences: int, campaigns: int) -> dict[str, Any]:
    budget, window_s = 150, 10
    section = {
        "limits": [
            {
                "name": "advertiser_writes",
                "per": "advertiser",
                "scope": "write",
                "limit": budget,
                "window_s": float(window_s),
                "weighted": True,
            }
        ],
        # costs: the dv360 profile's own, {"POST /v1/audiences": 5}
        "accept_delay_s": [0.05, 0.1],
        "process_delay_s": [0.1, 0.2],
        "faults": {},
    }
    provider = {
        "preset": "sandbox-headers",
        "rate_limit": "20/s",
        "limits": [
            {
                "rate": f"{budget}/{window_s}s",
                "scope": "write",
                "per": "advertiser_id",
                "cost": {"audience.submit": 5},
            }
        ],
        "poll": {"interval": "500ms"},
    }
    items = [
        Submission(
            kind="audience",
            payload={
                "advertiser_id": "adv-1",
                "name": f"aud {i}",
                "type": "ip_range",
                "include": ["10.0.0.0/8"],
                "exclude": [],
            },
        )
        for i in range(audiences)
    ] + harness.flat_campaigns(campaigns)
    with harness.sandbox_process(section, "dv360") as sandbox:
        provider["base_url"] = sandbox.base_url
        run = harness.run_sluice(provider, items, timeout_s=300)
        stats = sandbox.stats()
        arrivals = sandbox.arrivals()
    # The arrival stamps carry the method only: the units come from what was created (no
    # refusals, no duplicates), the worst window from the sandbox's own weighted count.
    writes = [t for t, method, status in arrivals if method == "POST" and status != 429]
    units = 5 * audiences + campaigns
    span = writes[-1] - writes[0]
    # The budget's rate over the busy span (the last request's units end the span).
    ideal = budget * span / window_s
    worst = max(
        int(entry["max_seen"])
        for name, entry in stats["max_in_window"].items()
        if name.startswith("advertiser_writes")
    )
    return {
        "budget": f"{budget} write units per {window_s}s per advertiser (DV360: 150/min)",
        "requests": {"audiences (5 units)": audiences, "campaigns (1 unit)": campaigns},
        "write_units": units,
        "duplicates": int(stats["duplicate_count"]),
        "refused_by_sandbox": int(stats["refused_total"]),
        "max_units_in_any_window": worst,
        "busy_span_s": round(span, 2),
        "utilization_of_write_budget": round((units - 1) / ideal, 4),
        "paced_ideal": round(146 / 150 / 1.015, 4),
        "paced_ceiling": "units/window = budget - (heaviest cost - 1) = 146 once the first "
        "window's burst is spent: see docs/ratelimit.md#costs",
        "client_rate_limited": run.rate_limited,
        "final": run.statuses,
        "seconds": round(run.seconds, 2),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench quota", description=__doc__)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--full", action="store_true", help="600 per 10 min (takes ~12 min)")
    parser.add_argument(
        "--part",
        choices=["both", "quota", "costs"],
        default="both",
        help="run one part; the other's runs are kept from the last result",
    )
    args = parser.parse_args(argv)
    count, window_s = (600, 600) if args.full else (60, 60)
    kept: dict[str, Any] = {}
    if args.part != "both" and RESULT.exists():
        kept = json.loads(RESULT.read_text(encoding="utf-8"))
    quota_runs: list[dict[str, Any]] = kept.get("quota", {}).get("runs", [])
    cost_runs: list[dict[str, Any]] = kept.get("costs", {}).get("runs", [])
    if args.part in ("both", "quota"):
        quota_runs = []
    if args.part in ("both", "costs"):
        cost_runs = []
    for _ in range(args.repeats):
        if args.part in ("both", "quota"):
            load = round(os.getloadavg()[0], 2)
            quota_runs.append({"load_before": load, **run_quota(count, window_s)})
        if args.part in ("both", "costs"):
            load = round(os.getloadavg()[0], 2)
            cost_runs.append({"load_before": load, **run_costs(30, 100)})
    result = {
        "benchmark": "quota",
        "command": f"python -m bench.quota --repeats {args.repeats}"
        + (
            f" --part {args.part} (the other part's runs kept from before)"
            if args.part != "both"
            else ""
        )
        + (" --full" if args.full else ""),
        "clock": "real (short windows), not the sandbox's movable clock",
        "quota": {
            "runs": quota_runs,
            "verdict": {
                "never_refused": all(r["refused_by_sandbox"] == 0 for r in quota_runs),
                "burst_within_first_window": all(
                    r["creates_in_first_window"] == count for r in quota_runs
                ),
                "rest_after_reset": all(r["creates_after_reset"] == 20 for r in quota_runs),
            },
        },
        "costs": {
            "runs": cost_runs,
            "verdict": {
                "never_refused": all(r["refused_by_sandbox"] == 0 for r in cost_runs),
                "median_utilization": sorted(r["utilization_of_write_budget"] for r in cost_runs)[
                    len(cost_runs) // 2
                ],
            },
        },
        "machine": machine_info(),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    harness.write_json(Path(RESULT), result)
    print(
        f"quota: {quota_runs[-1]['creates_in_first_window']} in the first window at "
        f"{quota_runs[-1]['burst_rate_per_s']}/s, the next "
        f"{quota_runs[-1]['first_after_quota_s_after_reset']} s after the reset, "
        f"refused {quota_runs[-1]['refused_by_sandbox']}; costs: refused "
        f"{cost_runs[-1]['refused_by_sandbox']}, utilization "
        f"{cost_runs[-1]['utilization_of_write_budget']}"
    )
    return result


if __name__ == "__main__":
    main()
