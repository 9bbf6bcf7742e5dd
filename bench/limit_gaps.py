"""Where the rate goes below the limit: a per-grant trace of embedded creates-only runs.

Runs ``bench.limit_fidelity``'s embedded scenario (1,000 synchronous creates at 50/s, the
sandbox in its own process stamping arrivals) with every ``holds.acquire`` and every claim
of the dispatcher traced, and prints one JSON line per repeat:

* ``util`` and ``refused``: as ``bench.limit_fidelity`` judges them;
* ``lost_vs_margin_ms``: first-to-last arrival minus ``(n - 1)`` spacings (with margin), the
  time lost beyond the margin;
* ``excess_ms_by_cause``: every gap between consecutive grants longer than a spacing,
  summed by what came between them: ``rate_wait_late`` (refused for rate, then asked after
  the slot: a late wake-up, or a claim on the dispatcher's thread), ``hold_wait`` (a hold
  refused: the window was full for ``W + rtt``), ``no_ask`` (not refused at all: the
  dispatcher was busy elsewhere when the slot came);
* ``wake_late_ms``: how long after the instant a rate refusal named each next ask came;
* ``claims``: (seconds after the first grant, milliseconds taken, units before, after).

Run: ``python -m bench.limit_gaps --repeats 2 --counts-only`` (``--leaky`` for the leaky
profile, ``--margin 0.005`` for ``SLUICE_RATE_MARGIN``, ``--tasks``, ``--tag`` to label lines).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import threading
import time
from typing import Any

from bench import limit_fidelity
from bench._engine_harness import sandbox_process
from sluice.engine import dispatcher as dispatcher_module
from sluice.ratelimit import holds
from sluice.settings import load_settings

Event = tuple[float, float, bool, str, float]
"""(asked, answered, granted, reason, retry_after_s), POSIX seconds."""


def trace() -> tuple[list[Event], list[tuple[float, float, int, int]]]:
    """Wrap ``holds.acquire`` and the dispatcher's claims; return the lists they fill."""
    events: list[Event] = []
    claims: list[tuple[float, float, int, int]] = []
    lock = threading.Lock()
    acquire = holds.acquire
    refill = dispatcher_module.Dispatcher._refill

    def traced_acquire(*args: Any, **kwargs: Any) -> Any:
        asked = time.time()
        grant = acquire(*args, **kwargs)
        with lock:
            events.append((asked, time.time(), grant.granted, grant.reason, grant.retry_after_s))
        return grant

    def traced_refill(self: Any, name: str, lane: Any) -> None:
        started, before = time.time(), len(lane.units)
        refill(self, name, lane)
        claims.append((started, time.time(), before, len(lane.units)))

    holds.acquire = traced_acquire  # type: ignore[assignment]
    dispatcher_module.Dispatcher._refill = traced_refill  # type: ignore[method-assign]
    return events, claims


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": round(ordered[len(ordered) // 2], 2),
        "p90": round(ordered[int(0.9 * len(ordered))], 2),
        "p99": round(ordered[int(0.99 * len(ordered))], 2),
        "max": round(ordered[-1], 2),
    }


def classify(
    run: dict[str, Any], events: list[Event], claims: list[Any], margin: float
) -> dict[str, Any]:
    arrivals = run["_arrivals"]
    spacing_ms = 1000.0 / limit_fidelity.RATE * (1 + margin)
    granted = [i for i, event in enumerate(events) if event[2]]
    excess = {"rate_wait_late": 0.0, "hold_wait": 0.0, "no_ask": 0.0}
    gaps = dict.fromkeys(excess, 0)
    late: list[float] = []
    for previous, current in itertools.pairwise(granted):
        between = events[previous + 1 : current]
        reasons = {event[3] for event in between}
        if between and reasons == {"rate"}:
            due = between[-1][1] + between[-1][4]
            late.append((events[current][0] - due) * 1000)
        over = (events[current][1] - events[previous][1]) * 1000 - spacing_ms
        if over <= 0:
            continue
        cause = "hold_wait" if "in_flight" in reasons else "rate_wait_late" if reasons else "no_ask"
        excess[cause] += over
        gaps[cause] += 1
    first_grant = events[granted[0]][1]
    arrival_gaps = [(b - a) * 1000 for a, b in itertools.pairwise(arrivals)]
    quarter = len(arrival_gaps) // 4
    return {
        "util": run["utilization"],
        "refused": run["refused"],
        "max_in_window": run["max_in_window"],
        "n": len(arrivals),
        "span_s": round(arrivals[-1] - arrivals[0], 3),
        "lost_vs_margin_ms": round(sum(g - spacing_ms for g in arrival_gaps), 1),
        "refusals": {
            reason: sum(1 for e in events if not e[2] and e[3] == reason)
            for reason in sorted({e[3] for e in events if not e[2]})
        },
        "excess_ms_by_cause": {key: round(value, 1) for key, value in excess.items()},
        "gaps_by_cause": gaps,
        "wake_late_ms": quantiles(late) if late else None,
        "lost_per_quarter_ms": [
            round(sum(g - spacing_ms for g in arrival_gaps[q * quarter : (q + 1) * quarter]), 1)
            for q in range(4)
        ],
        "arrival_gap_ms_p50": round(statistics.median(arrival_gaps), 2),
        "claims": [
            (round(c[0] - first_grant, 3), round((c[1] - c[0]) * 1000, 1), c[2], c[3])
            for c in claims
        ],
        "expired": run["sluice"].get("expired"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--margin", type=float, default=None, help="SLUICE_RATE_MARGIN")
    parser.add_argument("--counts-only", action="store_true", help='judges = "window"')
    parser.add_argument("--leaky", action="store_true", help="the sandbox's leaky profile")
    parser.add_argument("--tag", default="")
    parser.add_argument(
        "--judge-shares-cpu",
        action="store_true",
        help="run the sandbox at normal priority (default: SCHED_FIFO, as on its own host)",
    )
    args = parser.parse_args(argv)
    limit_fidelity.JUDGES_SPACING = not args.counts_only
    profile = "leaky" if args.leaky else "standard"
    section: dict[str, Any] = (
        {}
        if args.leaky
        else {"limits": [{"name": "app", "limit": limit_fidelity.RATE, "window_s": 1.0}]}
    )
    margin = load_settings().rate_margin if args.margin is None else args.margin
    events, claims = trace()
    with sandbox_process(section, profile=profile, realtime=not args.judge_shares_cpu) as sandbox:
        for repeat in range(args.repeats):
            events.clear()
            claims.clear()
            load = os.getloadavg()[0]
            run = limit_fidelity.run_embedded(sandbox, args.tasks, args.margin, True)
            line = {"tag": args.tag, "repeat": repeat, "load_before": round(load, 2)}
            line |= classify(run, list(events), list(claims), margin)
            line["load_after"] = round(os.getloadavg()[0], 2)
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
