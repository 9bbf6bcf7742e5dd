"""Adaptive limits against a hidden limit that changes: Sluice learning it, beside two peers.

Run: ``python -m bench.adaptive`` (about 17 minutes on a quiet host; ``--repeats 1`` for less).
Needs PostgreSQL, Redis and RabbitMQ/Redis broker as the other distributed benchmarks; writes
``bench/results/adaptive.json`` and ``bench/results/adaptive.png``.

The sandbox (its own process, profile ``hidden``: a bare 429, no headers) holds every
``/v1`` call to a sliding 1 s window whose limit follows a schedule counted from the moment
the run starts: **40/s for 30 s, 20/s for 40 s, then 40/s** (110 s in all). Every contender
is told 100/s and sends campaign creates (plus Sluice's status polls) from 4 processes:

a. ``sluice_adaptive``: 4 ``sluice worker --concurrency 1`` + beat on PostgreSQL and Redis,
   ``rate_limit = "100/s"``, ``adaptive = true`` (defaults: decrease 0.7, climb 10 s,
   pause 100 ms). Its effective rate is sampled from the database (``learned_rates``)
   through the same ceiling source the workers use.
b. ``sluice_static``: the same cluster with ``adaptive = false``: today's behaviour, a 429
   pauses the provider for the preset's ``default_pause`` (1 s) and resumes at 100/s.
c. ``botocore_adaptive``: botocore's ``ClientRateLimiter`` (``retries/adaptive.py``: a token
   bucket whose rate follows CUBIC on throttling), one per process as AWS ships it, 16
   threads per process, each process capped at 25/s (the 100/s told), a 429 retried after
   botocore's standard backoff (``rand() * 2^attempt`` s, at most 20 s).

Figures, all from the sandbox's arrival stamps (status per call), per run:

- ``settled_40`` / ``settled_20`` / ``settled_40_again``: in the last 15 s of each phase,
  ``used`` = admitted calls / (limit x seconds), ``refused`` = refused / all calls, and
  ``effective`` = the mean effective rate the contender chose / the limit (on a loaded host
  the processes deliver less than they are allowed: the gap between the two);
- ``drop_settle_s``: seconds from the drop to 20/s until the end of the last second with
  more than 10% of the limit refused (the burst of refusals is over);
- ``rise_90_s``: seconds from the rise back to 40/s until a 5 s window first admits
  >= 90% of the limit.

Medians of ``--repeats`` runs per contender (default 3), the load average beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx

from bench._common import machine_info
from bench._engine_harness import (
    REPO_ROOT,
    RESULTS_DIR,
    SandboxProcess,
    median,
    sandbox_process,
    write_json,
)

CONFIGURED = 100
PROCESSES = 4
THREADS = 16
STEPS = [(30.0, 40), (40.0, 20)]
AFTER = 40
RUN_S = 110.0
TASKS = 9_000
JUDGE_S = 15.0
PRESET = REPO_ROOT / "sluice" / "providers" / "presets" / "sandbox-bare.toml"
REFUSED = 429
NEVER_S = 999.0
"""A time that never came within the run, as the medians count it."""


def true_limit(t: float) -> int:
    """The sandbox's limit ``t`` seconds after the run started."""
    start = 0.0
    for duration, limit in STEPS:
        if start <= t < start + duration:
            return limit
        start += duration
    return AFTER


def phase_edges() -> list[float]:
    edges = [0.0]
    for duration, _ in STEPS:
        edges.append(edges[-1] + duration)
    return [*edges, RUN_S]


def start_schedule(sandbox: SandboxProcess) -> float:
    """Put the hidden limit's schedule (its origin is now); the run's time zero."""
    sandbox.reset()
    limits = [
        {
            "name": "hidden",
            "limit": AFTER,
            "window_s": 1,
            "schedule": [[d, lim] for d, lim in STEPS],
        }
    ]
    before = time.time()
    sandbox.configure({"limits": limits})
    return (before + time.time()) / 2


# --- Sluice --------------------------------------------------------------------------------


def provider_table(base_url: str, adaptive: bool) -> dict[str, Any]:
    table: dict[str, Any] = tomllib.loads(PRESET.read_text(encoding="utf-8"))
    table["base_url"] = base_url
    table["rate_limit"] = f"{CONFIGURED}/s"
    table["adaptive"] = adaptive
    return table


def run_sluice(sandbox: SandboxProcess, adaptive: bool) -> dict[str, Any]:
    from bench.distributed import create_all, sluice_cluster

    provider = provider_table(sandbox.base_url, adaptive)
    samples: list[tuple[float, float]] = []
    with sluice_cluster(provider, workers=PROCESSES) as (_cluster, runtime):
        spec = runtime.providers["sandbox"].limits_for("write", None)[0]
        zero = start_schedule(sandbox)
        create_all(runtime, TASKS)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                runtime.rates.refresh()
                rate = runtime.rates.in_force(spec).rate
                samples.append((time.time() - zero, rate.limit / rate.window_s))
                stop.wait(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        time.sleep(max(0.0, zero + RUN_S - time.time()))
        stop.set()
        sampler.join()
        arrivals = sandbox.arrivals()
    return {"arrivals": arrivals, "zero": zero, "effective": samples}


# --- botocore's adaptive limiter, one per process ------------------------------------------


class _Throttled:
    """botocore's throttling detector, told directly whether the answer was a 429."""

    def is_throttling_error(self, **kwargs: Any) -> bool:
        return bool(kwargs.get("throttled"))


def botocore_process(base_url: str, go: str, cap: float, out: str) -> None:
    """One process: its own ClientRateLimiter, THREADS threads, at most ``cap``/s, from the
    moment the ``go`` file appears until the time written in it."""
    from botocore.retries import bucket, throttling
    from botocore.retries.adaptive import ClientRateLimiter, RateClocker

    Path(out + ".ready").touch()
    while not Path(go).exists():
        time.sleep(0.01)
    until = float(Path(go).read_text(encoding="utf-8"))

    clock = bucket.Clock()
    limiter = ClientRateLimiter(
        rate_adjustor=throttling.CubicCalculator(
            starting_max_rate=0, start_time=clock.current_time()
        ),
        rate_clocker=RateClocker(clock),
        token_bucket=bucket.TokenBucket(max_rate=1, clock=clock),
        throttling_detector=_Throttled(),
        clock=clock,
    )
    lock = threading.Lock()
    next_slot = [time.monotonic()]
    interval = 1.0 / cap

    def capped() -> None:
        with lock:
            slot = max(next_slot[0], time.monotonic())
            next_slot[0] = slot + interval
        delay = slot - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        index = 0
        with httpx.Client(base_url=base_url, timeout=10) as http:
            while time.time() < until:
                attempt = 0
                while time.time() < until:
                    capped()
                    limiter.on_sending_request(request=None)
                    body = {"advertiser_id": "adv-1", "name": f"boto {seed}-{index}", "budget": 1}
                    try:
                        status = http.post("/v1/campaigns", json=body).status_code
                    except httpx.HTTPError:
                        status = 0
                    limiter.on_receiving_response(throttled=status == REFUSED)
                    if status != REFUSED:
                        break
                    attempt += 1
                    time.sleep(rng.random() * min(20.0, 2.0**attempt))
                index += 1

    def sample() -> None:
        with open(out, "w", encoding="utf-8") as file:
            while time.time() < until:
                enabled = limiter._enabled
                rate = min(cap, limiter._token_bucket.max_rate) if enabled else cap
                file.write(json.dumps([time.time(), rate]) + "\n")
                file.flush()
                time.sleep(0.25)

    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(THREADS)]
    threads.append(threading.Thread(target=sample, daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(1.0, until - time.time() + 15))


def run_botocore(sandbox: SandboxProcess) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sluice-bench-adaptive-") as folder:
        go = Path(folder) / "go"
        outs = [str(Path(folder) / f"rate-{n}.jsonl") for n in range(PROCESSES)]
        # Started (and botocore imported) before the schedule starts, as Sluice's workers
        # are ready before it: the processes wait for the go file, which holds the end time.
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.adaptive",
                    "--botocore-process",
                    sandbox.base_url,
                    str(go),
                    str(CONFIGURED / PROCESSES),
                    out,
                ],
                cwd=REPO_ROOT,
            )
            for out in outs
        ]
        ready = [Path(out + ".ready") for out in outs]
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            time.sleep(0.1)
        zero = start_schedule(sandbox)
        until = zero + RUN_S
        staged = go.with_suffix(".tmp")
        staged.write_text(str(until), encoding="utf-8")
        staged.rename(go)  # atomic: a process never reads half of it
        for proc in procs:
            try:
                proc.wait(timeout=RUN_S + 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        per_process = []
        for out in outs:
            with open(out, encoding="utf-8") as file:
                per_process.append([json.loads(line) for line in file if line.strip()])
        arrivals = sandbox.arrivals()
    # The processes' rates summed, on a common 0.25 s grid.
    samples = []
    for step in range(int(RUN_S / 0.25)):
        t = step * 0.25
        total = 0.0
        for series in per_process:
            before = [rate for at, rate in series if at - zero <= t]
            total += before[-1] if before else CONFIGURED / PROCESSES
        samples.append((t, total))
    return {"arrivals": arrivals, "zero": zero, "effective": samples}


# --- judging -------------------------------------------------------------------------------


def per_second(arrivals: list[tuple[float, str, int]], zero: float) -> list[dict[str, int]]:
    seconds = [{"admitted": 0, "refused": 0} for _ in range(int(RUN_S))]
    for at, _method, status in arrivals:
        t = at - zero
        if 0 <= t < RUN_S:
            seconds[int(t)]["refused" if status == REFUSED else "admitted"] += 1
    return seconds


def judge(run: dict[str, Any]) -> dict[str, Any]:
    seconds = per_second(run["arrivals"], run["zero"])
    edges = phase_edges()
    figures: dict[str, Any] = {}
    names = ["settled_40", "settled_20", "settled_40_again"]
    for name, end in zip(names, edges[1:], strict=True):
        window = seconds[int(end - JUDGE_S) : int(end)]
        admitted = sum(s["admitted"] for s in window)
        refused = sum(s["refused"] for s in window)
        limit = true_limit(end - 1)
        chosen = [min(r, CONFIGURED) for t, r in run["effective"] if end - JUDGE_S <= t < end]
        figures[name] = {
            "used": round(admitted / (limit * JUDGE_S), 4),
            "refused": round(refused / max(1, admitted + refused), 4),
            # The rate the limiter chose, over the limit: what the host could not deliver
            # under load is the gap between this and `used`.
            "effective": round(sum(chosen) / len(chosen) / limit, 4) if chosen else None,
        }
    drop, rise = int(edges[1]), int(edges[2])
    noisy = [t for t in range(drop, rise) if seconds[t]["refused"] > 0.1 * true_limit(t)]
    figures["drop_settle_s"] = (max(noisy) + 1 - drop) if noisy else 0
    rise_90 = None
    for t in range(rise + 5, int(RUN_S) + 1):
        window = seconds[t - 5 : t]
        if sum(s["admitted"] for s in window) >= 0.9 * AFTER * 5:
            rise_90 = t - rise
            break
    figures["rise_90_s"] = rise_90
    figures["refused_total"] = sum(s["refused"] for s in seconds)
    figures["admitted_total"] = sum(s["admitted"] for s in seconds)
    return figures


def summary(figures: list[dict[str, Any]]) -> dict[str, Any]:
    def med(path: tuple[str, ...]) -> float | None:
        values = []
        for f in figures:
            value: Any = f
            for part in path:
                value = value[part]
            # Never within the run (a rise never reached 90%): longer than the phase.
            values.append(float(value) if value is not None else NEVER_S)
        return round(median(values), 4) if values else None

    result: dict[str, Any] = {}
    for phase in ("settled_40", "settled_20", "settled_40_again"):
        result[phase] = {
            "used": med((phase, "used")),
            "refused": med((phase, "refused")),
            "effective": med((phase, "effective")),
        }
    for key in ("drop_settle_s", "rise_90_s", "refused_total", "admitted_total"):
        result[key] = med((key,))
    result["runs"] = len(figures)
    return result


def series(run: dict[str, Any]) -> dict[str, Any]:
    """A run's per-second counts and effective rate (what the plot shows)."""
    seconds = per_second(run["arrivals"], run["zero"])
    return {
        "admitted": [s["admitted"] for s in seconds],
        "refused": [s["refused"] for s in seconds],
        "effective": [[round(t, 2), round(r, 3)] for t, r in run["effective"]],
    }


def plot(path: Path, runs: dict[str, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(
        len(runs), 1, figsize=(10, 2.8 * len(runs)), sharex=True, squeeze=False
    )
    axes = grid[:, 0]
    for ax, (name, run) in zip(axes, runs.items(), strict=True):
        seconds = per_second(run["arrivals"], run["zero"])
        xs = [t + 0.5 for t in range(len(seconds))]
        ax.step(
            [t / 4 for t in range(int(RUN_S * 4))],
            [true_limit(t / 4) for t in range(int(RUN_S * 4))],
            where="post",
            color="black",
            linewidth=1.2,
            label="true limit",
        )
        ax.plot(xs, [s["admitted"] for s in seconds], color="tab:green", label="admitted/s")
        ax.bar(xs, [s["refused"] for s in seconds], color="tab:red", width=0.9, label="refused/s")
        eff = run["effective"]
        ax.plot([t for t, _ in eff], [r for _, r in eff], color="tab:blue", label="effective rate")
        ax.set_ylim(0, CONFIGURED * 1.1)
        ax.set_ylabel("requests/s")
        ax.set_title(name)
        ax.legend(loc="upper right", fontsize=7, ncol=4)
    axes[-1].set_xlabel("seconds since the run started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--only", choices=["sluice_adaptive", "sluice_static", "botocore_adaptive"], nargs="*"
    )
    parser.add_argument("--botocore-process", nargs=4, metavar=("URL", "GO", "CAP", "OUT"))
    args = parser.parse_args(argv)
    if args.botocore_process:
        url, go, cap, out = args.botocore_process
        botocore_process(url, go, float(cap), out)
        return
    contenders = {
        "sluice_adaptive": lambda sb: run_sluice(sb, adaptive=True),
        "sluice_static": lambda sb: run_sluice(sb, adaptive=False),
        "botocore_adaptive": run_botocore,
    }
    wanted = args.only or list(contenders)
    results: dict[str, Any] = {"machine_before": machine_info(), "contenders": {}}
    first_runs: dict[str, dict[str, Any]] = {}
    with sandbox_process({}, profile="hidden") as sandbox:
        results["sandbox"] = sandbox.command_line
        for repeat in range(args.repeats):
            for name in wanted:
                load = os.getloadavg()[0]
                print(f"-- {name} run {repeat + 1}/{args.repeats} (load {load:.2f})", flush=True)
                run = contenders[name](sandbox)
                figures = judge(run)
                figures["load_average_1m_before"] = round(load, 2)
                figures["load_average_1m_after"] = round(os.getloadavg()[0], 2)
                print(json.dumps(figures), flush=True)
                figures["series"] = series(run)
                entry = results["contenders"].setdefault(name, {"runs": []})
                entry["runs"].append(figures)
                first_runs.setdefault(name, run)
    for entry in results["contenders"].values():
        entry["median"] = summary(entry["runs"])
    results["machine_after"] = machine_info()
    results["schedule"] = {"steps": STEPS, "after": AFTER, "configured": CONFIGURED}
    name = "adaptive" if not args.only else "adaptive_" + "_".join(sorted(wanted))
    write_json(RESULTS_DIR / f"{name}.json", results)
    plot(RESULTS_DIR / f"{name}.png", first_runs)
    print(json.dumps({k: v["median"] for k, v in results["contenders"].items()}, indent=1))


if __name__ == "__main__":
    main()
