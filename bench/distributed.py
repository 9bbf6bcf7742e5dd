"""Distributed mode under one shared limit: Sluice on Celery against three common recipes.

Run: ``python -m bench.distributed`` (about 8 minutes; ``--quick`` for a smoke run). Needs
PostgreSQL, Redis and the sandbox; writes ``bench/results/distributed.json`` and
``bench/results/distributed.png`` (requests/s against the limit over time).

Every system sends 1,000 campaign creates plus status polls to the sandbox DSP (its own
process, limit 50 requests in any sliding 1 s window, arrivals timestamped by
``bench._sandbox_proc``) from 4 worker processes, and answers a 429 by waiting the
``Retry-After`` it was given and trying again:

a. **Sluice**: 4 ``sluice worker --concurrency 1`` + ``sluice beat`` (Redis broker,
   PostgreSQL store, Redis limiter), provider ``rate_limit = "50/s"``; 3 repeats.
b. **Peers**, the same jobs (create, then poll the object every 1 s until final):
   ``celery_rate_limit``: a plain Celery task with ``rate_limit="50/s"`` on the same
   broker, 4 worker nodes (threads pool, 16 each); the limit is per worker node
   (celery#5927). ``aiolimiter``: one ``AsyncLimiter(50, 1)`` per process.
   ``pyrate_redis``: pyrate-limiter's ``RedisBucket`` (sliding log, 50/1 s) shared by the
   4 processes, 16 threads each.
c. Sluice's end-to-end rate with no limit at all (no limiter, no in-flight cap, sandbox
   without limits or delays): distributed (Celery + Redis + PostgreSQL) against embedded
   (one process, SQLite), for 3,000 tasks.
d. 10,000 tasks waiting at 40/min for 60 s: the broker's queue length and the workers'
   resident memory, sampled every 2 s, must stay flat.

Figures: ``refused`` and ``max_window`` come from the sandbox (``/_sandbox/stats``; the
max is exact over every sliding window, refused requests included). ``utilization`` is
the ideal time for the requests the sandbox admitted (not 429) at exactly 50/s,
``(n - 1) / 50``, over the measured time from the first to the last of them (stamped by the
sandbox process, so no client-side timing is involved);
``utilization_backlog`` does the same for the requests between the first and the last create
(the stretch where work was always waiting, without the tail of final polls).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery

from bench._common import machine_info
from bench._engine_harness import (
    REPO_ROOT,
    RESULTS_DIR,
    SandboxProcess,
    flat_campaigns,
    max_in_window,
    median,
    rolling_rate,
    run_sluice,
    sandbox_process,
    write_json,
)
from harness.cluster import (
    REDIS_URL,
    Cluster,
    drop_namespace,
    postgres_database,
    redis_base,
    redis_database,
    rss_kib,
    write_toml,
)
from sluice.settings import load_settings

RATE = 50
TASKS = 1_000
PROCESSES = 4
THREADS = 16
REPEATS = 3
POLL_INTERVAL_S = 0.25
"""Status poll interval for every contender (the sandbox processes in 0.1-0.3 s; a longer
interval only adds an idle tail after the last create that no limiter can fill)."""
UNLIMITED_TASKS = 3_000
BACKLOG_TASKS = 10_000
BACKLOG_RATE = "40/min"
BACKLOG_SECONDS = 60.0
SAMPLE_EVERY_S = 2.0
RUN_TIMEOUT_S = 180.0
PEER_TIMEOUT_S = 90.0

LIMITER_REDIS = REDIS_URL
PRESET = REPO_ROOT / "sluice" / "providers" / "presets" / "sandbox-standard.toml"
BIN = Path(sys.executable).parent
FINAL_WORDS = {"active", "rejected"}
REFUSED_STATUS = 429


# --- services (the shared harness: harness/cluster.py) ------------------------------------


def provider_table(base_url: str, rate_limit: str | None, **overrides: Any) -> dict[str, Any]:
    """The sandbox-standard preset as a full table; ``rate_limit=None`` removes every cap."""
    table: dict[str, Any] = tomllib.loads(PRESET.read_text(encoding="utf-8"))
    table["base_url"] = base_url
    if rate_limit is None:
        table.pop("rate_limit", None)
        table.pop("max_in_flight", None)
    else:
        table["rate_limit"] = rate_limit
    table.update(overrides)
    return table


@contextmanager
def sluice_cluster(provider: dict[str, Any], workers: int = PROCESSES) -> Iterator[Any]:
    """``sluice beat`` and ``workers`` x ``sluice worker --concurrency 1`` on a fresh
    PostgreSQL database and Redis broker (the shared harness), plus a runtime of this
    process on the same store."""
    import tempfile

    with (
        tempfile.TemporaryDirectory(prefix="sluice-bench-dist-") as folder,
        postgres_database("sluice_bench") as database_url,
        redis_database() as broker_url,
    ):
        cluster = Cluster(
            Path(folder),
            database_url,
            broker_url,
            namespace=f"sluice:bench:{uuid.uuid4().hex[:8]}",
            settings={"SLUICE_PUMPS": str(PROCESSES), "SLUICE_LOG_LEVEL": "WARNING"},
        )
        write_toml(
            cluster.config,
            {"sluice": {"default_provider": "sandbox"}, "providers.sandbox": provider},
        )
        cluster.upgrade_database()
        runtime = cluster.build_runtime()
        try:
            cluster.beat(loglevel="WARNING")
            started = [cluster.worker(f"worker-{n}", concurrency=1) for n in range(workers)]
            cluster.wait_ready(started)
            yield cluster, runtime
        finally:
            cluster.stop()
            runtime.close()


def worker_pids(cluster: Cluster) -> list[int]:
    """The main processes of the cluster's workers (their pool children are below them)."""
    return [proc.pid for proc in cluster.procs if proc.name.startswith("worker")]


def wait_final(runtime: Any, timeout_s: float) -> float:
    """Seconds until no task is left unfinished."""
    started = time.perf_counter()
    while runtime.queue.unfinished_count():
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"not final after {timeout_s:g}s: {runtime.repo.counts()}")
        time.sleep(0.05)
    return time.perf_counter() - started


def create_all(runtime: Any, count: int) -> None:
    from sluice import submissions

    items = flat_campaigns(count)
    for start in range(0, count, 5_000):
        submissions.create_tasks(runtime.repo, runtime.catalog, items[start : start + 5_000])


# --- judging a run from the sandbox --------------------------------------------------------


def judge(sandbox: SandboxProcess, seconds: float, finished: int) -> dict[str, Any]:
    """Refused, max window, utilization from the sandbox's stats and arrival stamps."""
    stats = sandbox.stats()
    arrivals = sandbox.arrivals()
    times = [arrival[0] for arrival in arrivals]
    # Admitted requests: everything the sandbox did not answer with 429.
    admitted = [a[0] for a in arrivals if len(a) < 3 or a[2] != REFUSED_STATUS]
    creates = [a[0] for a in arrivals if a[1] == "POST"]
    window = stats["max_in_window"].get("app:anonymous", {})
    result = {
        "seconds": round(seconds, 2),
        "finished": finished,
        "requests": len(times),
        "creates": len(creates),
        "refused": stats["refused_total"],
        "duplicates": stats["duplicate_count"],
        "max_window": window.get("max_seen"),
        "max_window_from_arrivals": max_in_window(times, 1.0),
        "utilization": utilization(admitted),
        "utilization_backlog": utilization(
            [t for t in admitted if creates and creates[0] <= t <= creates[-1]]
        ),
    }
    result["_times"] = times
    return result


def utilization(times: list[float]) -> float | None:
    """Ideal time for these arrivals at exactly RATE/s over their first-to-last time."""
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return round((len(times) - 1) / RATE / (times[-1] - times[0]), 4)


def run_sluice_limited(sandbox: SandboxProcess, **overrides: Any) -> dict[str, Any]:
    provider = provider_table(sandbox.base_url, f"{RATE}/s", **overrides)
    provider["poll"] = {**provider["poll"], "interval": f"{POLL_INTERVAL_S * 1000:g}ms"}
    with sluice_cluster(provider) as (_, runtime):
        sandbox.reset()
        started = time.perf_counter()
        create_all(runtime, TASKS)
        wait_final(runtime, RUN_TIMEOUT_S)
        seconds = time.perf_counter() - started
        counts = runtime.repo.counts()
    return judge(sandbox, seconds, counts.get("Completed", 0))


# --- peers --------------------------------------------------------------------------------


def retry_after(response: httpx.Response) -> float:
    try:
        return max(float(response.headers.get("Retry-After", "1")), 0.05)
    except ValueError:
        return 1.0


def create_payload(index: int) -> dict[str, Any]:
    return {"advertiser_id": "adv-1", "name": f"peer {index}", "budget": 1000.0}


def aiolimiter_process(base_url: str, indices: list[int], done: Any) -> None:
    """One process: its own ``AsyncLimiter(50, 1)``, a coroutine per job."""
    from aiolimiter import AsyncLimiter

    async def main() -> None:
        limiter = AsyncLimiter(RATE, 1)
        limits = httpx.Limits(max_connections=THREADS)
        async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:

            async def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
                while True:
                    async with limiter:
                        response = await client.request(method, url, **kwargs)
                    if response.status_code != 429:
                        return response
                    await asyncio.sleep(retry_after(response))

            async def job(index: int) -> None:
                created = await call("POST", "/v1/campaigns", json=create_payload(index))
                object_id = created.json()["id"]
                while True:
                    await asyncio.sleep(POLL_INTERVAL_S)
                    status = await call("GET", f"/v1/campaigns/{object_id}/status")
                    if status.json()["status"] in FINAL_WORDS:
                        break
                with done.get_lock():
                    done.value += 1

            await asyncio.gather(*(job(i) for i in indices))

    asyncio.run(main())


def pyrate_process(base_url: str, indices: list[int], done: Any, bucket_key: str) -> None:
    """One process: 16 threads sharing pyrate-limiter's Redis bucket with the other processes."""
    from pyrate_limiter import Duration, Limiter, Rate, RedisBucket

    client = redis.Redis.from_url(LIMITER_REDIS)
    bucket = RedisBucket.init([Rate(RATE, Duration.SECOND)], client, bucket_key)
    limiter = Limiter(bucket)
    limits = httpx.Limits(max_connections=THREADS)
    with httpx.Client(base_url=base_url, timeout=30, limits=limits) as http:

        def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
            while True:
                limiter.try_acquire("sandbox", blocking=True)
                response = http.request(method, url, **kwargs)
                if response.status_code != 429:
                    return response
                time.sleep(retry_after(response))

        def job(index: int) -> None:
            created = call("POST", "/v1/campaigns", json=create_payload(index))
            object_id = created.json()["id"]
            while True:
                time.sleep(POLL_INTERVAL_S)
                if call("GET", f"/v1/campaigns/{object_id}/status").json()["status"] in FINAL_WORDS:
                    break
            with done.get_lock():
                done.value += 1

        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(job, indices))


def run_process_peer(sandbox: SandboxProcess, name: str) -> dict[str, Any]:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    done = context.Value("i", 0)
    shares = [list(range(TASKS))[n::PROCESSES] for n in range(PROCESSES)]
    bucket_key = f"bench:pyrate:{uuid.uuid4().hex[:8]}"
    sandbox.reset()
    started = time.perf_counter()
    procs = []
    for share in shares:
        if name == "aiolimiter":
            proc = context.Process(target=aiolimiter_process, args=(sandbox.base_url, share, done))
        else:
            args = (sandbox.base_url, share, done, bucket_key)
            proc = context.Process(target=pyrate_process, args=args)
        proc.start()
        procs.append(proc)
    deadline = started + PEER_TIMEOUT_S
    for proc in procs:
        proc.join(timeout=max(1.0, deadline - time.perf_counter()))
        if proc.is_alive():
            proc.kill()
    seconds = time.perf_counter() - started
    drop_namespace(LIMITER_REDIS, bucket_key)
    return judge(sandbox, seconds, done.value)


# The Celery peer: an ordinary task with Celery's own rate limit, one HTTP request per run.
peer_app = Celery("bench-peer")


@peer_app.on_configure.connect
def _peer_configure(sender: Celery, **_: Any) -> None:
    sender.conf.update(
        broker_url=os.environ.get("BENCH_PEER_BROKER", f"{redis_base()}/0"),
        task_default_queue="bench-peer",
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )


_peer_http: httpx.Client | None = None


def _peer_client() -> httpx.Client:
    global _peer_http
    if _peer_http is None:
        _peer_http = httpx.Client(
            base_url=os.environ["BENCH_PEER_SANDBOX"],
            timeout=30,
            limits=httpx.Limits(max_connections=THREADS),
        )
    return _peer_http


@peer_app.task(name="bench.peer_call", bind=True, rate_limit=f"{RATE}/s", max_retries=None)
def peer_call(self: Any, operation: str, value: Any) -> None:
    """Create (value = index) or poll (value = object id); a 429 retries after Retry-After."""
    http = _peer_client()
    if operation == "create":
        response = http.post("/v1/campaigns", json=create_payload(value))
    else:
        response = http.get(f"/v1/campaigns/{value}/status")
    if response.status_code == 429:
        raise self.retry(countdown=retry_after(response))
    body = response.json()
    if operation == "create" or body["status"] not in FINAL_WORDS:
        peer_call.apply_async(("poll", body["id"]), countdown=POLL_INTERVAL_S)
        return
    client = redis.Redis.from_url(LIMITER_REDIS)
    try:
        client.incr(os.environ["BENCH_PEER_DONE_KEY"])
    finally:
        client.close()


def run_celery_peer(sandbox: SandboxProcess) -> dict[str, Any]:
    import tempfile

    done_key = f"bench:celery-peer:{uuid.uuid4().hex[:8]}:done"
    with (
        redis_database() as broker_url,
        tempfile.TemporaryDirectory(prefix="sluice-bench-peer-") as folder,
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env.update(
            BENCH_PEER_BROKER=broker_url,
            BENCH_PEER_SANDBOX=sandbox.base_url,
            BENCH_PEER_DONE_KEY=done_key,
        )
        procs = []
        logs = []
        for n in range(PROCESSES):
            log = Path(folder) / f"peer-{n}.log"
            logs.append(log)
            with log.open("ab") as out:
                procs.append(
                    subprocess.Popen(
                        [
                            *(str(BIN / "celery"), "-A", "bench.distributed:peer_app", "worker"),
                            *("--hostname", f"peer{n}@%h", "--pool", "threads"),
                            *("--concurrency", str(THREADS), "--queues", "bench-peer"),
                            *("--without-gossip", "--without-mingle", "--loglevel", "WARNING"),
                        ],
                        cwd=REPO_ROOT,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        app = Celery("bench-peer-client", broker=broker_url)
        client = redis.Redis.from_url(LIMITER_REDIS)
        try:
            ready = Celery("ping", broker=broker_url)
            deadline = time.monotonic() + 60
            while len(ready.control.ping(timeout=0.5) or []) < PROCESSES:
                if time.monotonic() > deadline:
                    raise RuntimeError("peer workers did not start")
            sandbox.reset()
            started = time.perf_counter()
            with app.producer_or_acquire() as producer:
                for index in range(TASKS):
                    app.send_task(
                        "bench.peer_call",
                        ("create", index),
                        queue="bench-peer",
                        producer=producer,
                    )
            while int(client.get(done_key) or 0) < TASKS:
                if time.perf_counter() - started > PEER_TIMEOUT_S:
                    break
                time.sleep(0.1)
            seconds = time.perf_counter() - started
            finished = int(client.get(done_key) or 0)
        finally:
            for proc in procs:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            client.delete(done_key)
            client.close()
    return judge(sandbox, seconds, finished)


# --- c. no limit: distributed against embedded ----------------------------------------------


def run_unlimited(sandbox: SandboxProcess) -> dict[str, Any]:
    sandbox.configure(
        {
            "limits": [{"name": "app", "limit": 1_000_000, "window_s": 1.0}],
            "accept_delay_s": [0.0, 0.0],
            "process_delay_s": [0.0, 0.0],
        }
    )
    provider = provider_table(sandbox.base_url, None)
    provider["poll"] = {**provider["poll"], "interval": "200ms"}
    sandbox.reset()
    embedded = run_sluice(provider, flat_campaigns(UNLIMITED_TASKS), timeout_s=RUN_TIMEOUT_S)
    embedded_requests = sandbox.stats()["total_requests"]
    with sluice_cluster(provider) as (_, runtime):
        sandbox.reset()
        started = time.perf_counter()
        create_all(runtime, UNLIMITED_TASKS)
        wait_final(runtime, RUN_TIMEOUT_S)
        distributed_s = time.perf_counter() - started
        distributed_requests = sandbox.stats()["total_requests"]
    return {
        "tasks": UNLIMITED_TASKS,
        "embedded": {
            "store": "SQLite",
            "seconds": round(embedded.seconds, 2),
            "tasks_per_s": round(UNLIMITED_TASKS / embedded.seconds, 1),
            "requests": embedded_requests,
        },
        "distributed": {
            "store": "PostgreSQL",
            "broker": "Redis",
            "workers": PROCESSES,
            "seconds": round(distributed_s, 2),
            "tasks_per_s": round(UNLIMITED_TASKS / distributed_s, 1),
            "requests": distributed_requests,
        },
        "ratio_distributed_to_embedded": round(embedded.seconds / distributed_s, 2),
    }


# --- d. a large backlog at a slow limit ---------------------------------------------------


def run_backlog(sandbox: SandboxProcess, seconds: float) -> dict[str, Any]:
    sandbox.configure(
        {
            "limits": [{"name": "app", "limit": 40, "window_s": 60.0}],
            "accept_delay_s": [0.05, 0.1],
            "process_delay_s": [0.05, 0.2],
        }
    )
    sandbox.reset()
    provider = provider_table(sandbox.base_url, BACKLOG_RATE)
    samples: list[dict[str, float]] = []
    with sluice_cluster(provider) as (cluster, runtime):
        create_all(runtime, BACKLOG_TASKS)
        broker = redis.Redis.from_url(cluster.broker_url)
        started = time.perf_counter()
        try:
            while (elapsed := time.perf_counter() - started) < seconds:
                samples.append(
                    {
                        "t": round(elapsed, 1),
                        "queue_length": int(broker.llen("sluice")),
                        "rss_mib": round(rss_kib(worker_pids(cluster)) / 1024, 1),
                    }
                )
                time.sleep(SAMPLE_EVERY_S)
        finally:
            broker.close()
        unfinished = runtime.queue.unfinished_count()
    stats = sandbox.stats()
    queue_lengths = [s["queue_length"] for s in samples]
    rss = [s["rss_mib"] for s in samples]
    # Memory after warm-up (the first samples include imports and the first pumps).
    settled = rss[len(rss) // 4 :] or rss
    return {
        "tasks": BACKLOG_TASKS,
        "rate_limit": BACKLOG_RATE,
        "seconds": seconds,
        "sent_to_sandbox": stats["total_requests"],
        "refused": stats["refused_total"],
        "still_waiting": unfinished,
        "queue_length": {"min": min(queue_lengths), "max": max(queue_lengths)},
        "worker_rss_mib": {"min": min(rss), "max": max(rss)},
        "worker_rss_mib_after_warmup": {"min": min(settled), "max": max(settled)},
        "samples": samples,
    }


# --- the run --------------------------------------------------------------------------------


def plot(path: Path, runs: dict[str, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 2.2 * len(runs)), sharex=True, squeeze=False)
    for ax, (name, run) in zip(axes[:, 0], runs.items(), strict=True):
        times = run["_times"]
        xs, ys = rolling_rate(times, times[0] if times else 0.0, 0.1, 1.0)
        ax.plot(xs, ys, linewidth=1, label="requests in the last 1 s")
        ax.axhline(RATE, color="red", linestyle="--", linewidth=1, label=f"limit {RATE}/s")
        ax.set_ylabel("req/s")
        ax.set_title(
            f"{name}: refused {run['refused']}, max window {run['max_window']}, "
            f"utilization {run['utilization']}",
            fontsize=9,
        )
        ax.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("seconds since the first request")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section(name: str, run: Callable[[], Any]) -> Any:
    print(f"-- {name}", flush=True)
    started = time.monotonic()
    result = run()
    print(f"-- {name}: {time.monotonic() - started:.0f} s", flush=True)
    return result


def summary_row(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if not k.startswith("_")}


def main(argv: list[str] | None = None) -> None:
    """Run every section and write the JSON and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--backlog-seconds", type=float, default=BACKLOG_SECONDS)
    parser.add_argument("--only", nargs="*", default=["a", "b", "c", "d"])
    parser.add_argument(
        "--provider", default="{}", help="JSON overrides of Sluice's provider table in (a)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "distributed.json")
    args = parser.parse_args(argv)

    section_config = {"limits": [{"name": "app", "limit": RATE, "window_s": 1.0}]}
    results: dict[str, Any] = {
        "benchmark": "distributed",
        "machine": machine_info(),
        "setup": {
            "tasks": TASKS,
            "rate": f"{RATE}/s (1 s sliding window at the sandbox)",
            "processes": PROCESSES,
            "poll_interval_s": POLL_INTERVAL_S,
            "sluice": "4 x `sluice worker --concurrency 1` + `sluice beat`, Redis broker, "
            "PostgreSQL, Redis limiter, preset sandbox-standard",
            "rate_margin": load_settings().rate_margin,
            "rate_catch_up_s": load_settings().rate_catch_up_s,
        },
    }
    plotted: dict[str, dict[str, Any]] = {}
    with sandbox_process(section_config) as sandbox:
        results["sandbox"] = sandbox.command_line
        if "a" in args.only:
            repeats = []
            for n in range(args.repeats):
                run = section(
                    f"a. sluice repeat {n + 1}",
                    lambda: run_sluice_limited(sandbox, **json.loads(args.provider)),
                )
                repeats.append(run)
                print({k: v for k, v in summary_row(run).items()}, flush=True)
            plotted["sluice (repeat 1)"] = repeats[0]
            results["a_sluice"] = {
                "repeats": [summary_row(r) for r in repeats],
                "refused_each": [r["refused"] for r in repeats],
                "max_window_each": [r["max_window"] for r in repeats],
                "utilization_median": median([r["utilization"] or 0.0 for r in repeats]),
                "utilization_backlog_median": median(
                    [r["utilization_backlog"] or 0.0 for r in repeats]
                ),
            }
        if "b" in args.only:
            peers: dict[str, Any] = {}
            for name, run_peer in (
                ("celery_rate_limit", lambda: run_celery_peer(sandbox)),
                ("aiolimiter", lambda: run_process_peer(sandbox, "aiolimiter")),
                ("pyrate_redis", lambda: run_process_peer(sandbox, "pyrate")),
            ):
                run = section(f"b. {name}", run_peer)
                print(summary_row(run), flush=True)
                peers[name] = summary_row(run)
                plotted[name] = run
            results["b_peers"] = peers
        if plotted:
            plot(args.out.with_suffix(".png"), plotted)
        if "c" in args.only:
            results["c_unlimited"] = section("c. no limit", lambda: run_unlimited(sandbox))
            print(results["c_unlimited"], flush=True)
        if "d" in args.only:
            results["d_backlog"] = section(
                "d. backlog", lambda: run_backlog(sandbox, args.backlog_seconds)
            )
            print({k: v for k, v in results["d_backlog"].items() if k != "samples"}, flush=True)
    write_json(args.out, results)
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
