"""Ten thousand limit keys: one provider with a per-account limit, 10,000 accounts waiting.

In the same run, interleaved, the same 20,000 campaign creates (two per account) go through
the embedded driver with the **Redis** limiter (a claimed Redis database of its own) to the
sandbox DSP in its own process (limits out of the way, accept delay 0, polls an hour apart):

* **many keys**: ``[[limits]] rate = "50/s", scope = "write", per = "account"``: each task's
  grant is taken on its own account's key, 10,000 keys in all;
* **one key**: the same work with every task on one account and a rate of 10,000 x 50/s
  on it: the same grants, on one key.

Neither limit binds (two tasks per account, 20 ms apart at the least), so the ratio is
what the per-key bookkeeping costs. After a warm-up of ``WARMUP`` creates, the time to send
the next ``MEASURED``. Redis memory is read with ``INFO memory`` and the limiter's keys
counted with ``SCAN`` at the end of each many-keys run, and once more after the last run,
when a key's TTL (its rate interval plus the limiter's grace) has passed: idle keys expire.

Writes ``bench/results/key_scale.json``. Target: many keys >= 0.8 of one key.

Run: ``python -m bench.key_scale [--runs 3]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench import _engine_harness as harness
from bench._common import machine_info
from harness.cluster import drop_namespace, redis_database
from sluice import runtime as sluice_runtime
from sluice import submissions
from sluice.domain import Submission
from sluice.drivers.embedded import build_embedded_driver
from sluice.settings import load_settings

RESULTS = harness.RESULTS_DIR / "key_scale.json"
ACCOUNTS = 10_000
TASKS = 20_000
PER_KEY_RATE = 50
WARMUP = 300
MEASURED = 3_000
THREADS = 16
TARGET = 0.8
NAMESPACE = "sluice:bench-keys"
SANDBOX = {
    "accept_delay_s": [0.0, 0.0],
    "process_delay_s": [3600.0, 3600.0],
    "limits": [{"name": "app", "limit": 1_000_000_000, "window_s": 1.0}],
}


def items(accounts: int) -> list[Submission]:
    return [
        Submission(
            kind="campaign",
            payload={
                "advertiser_id": "adv-1",
                "account": f"acct-{i % accounts}",
                "name": f"bench {i}",
                "budget": 1000.0,
            },
        )
        for i in range(TASKS)
    ]


def limiter_keys(client: redis.Redis) -> int:
    return sum(1 for _ in client.scan_iter(match=f"{NAMESPACE}*", count=5000))


def run(mode: str, sandbox_url: str, redis_url: str) -> dict[str, Any]:
    many = mode == "many_keys"
    rate = f"{PER_KEY_RATE}/s" if many else f"{PER_KEY_RATE * ACCOUNTS}/s"
    provider = {
        "preset": "sandbox-standard",
        "base_url": sandbox_url,
        "rate_limit": None,
        "max_in_flight": None,
        "limits": [{"rate": rate, "scope": "write", "per": "account"}],
        "poll": {"interval": "1h"},
    }
    client = redis.Redis.from_url(redis_url)
    drop_namespace(redis_url, NAMESPACE)  # not FLUSHDB: the database's claim marker stays
    memory_before = int(client.info("memory")["used_memory"])
    with tempfile.TemporaryDirectory(prefix="sluice-bench-keys-") as folder:
        settings = load_settings(
            database_url=f"sqlite:///{Path(folder) / 'sluice.db'}",
            redis_url=redis_url,
            limiter_namespace=NAMESPACE,
            providers={"sandbox": provider},
            default_provider="sandbox",
            executor_threads=THREADS,
        )
        runtime = sluice_runtime.build_runtime(settings)
        work = items(ACCOUNTS if many else 1)
        for start in range(0, len(work), submissions.MAX_BULK):
            submissions.create_tasks(
                runtime.repo, runtime.catalog, work[start : start + submissions.MAX_BULK]
            )
        driver = build_embedded_driver(runtime)

        def sent() -> int:
            return sum(dict(driver.executor.stats.requests).values())

        try:
            driver.start()
            deadline = time.monotonic() + 300
            while sent() < WARMUP:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"fewer than {WARMUP} creates")
                time.sleep(0.01)
            before = sent()
            started = time.perf_counter()
            while sent() - before < MEASURED:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"fewer than {MEASURED} creates")
                time.sleep(0.005)
            seconds = time.perf_counter() - started
            count = sent() - before
        finally:
            driver.stop()
            runtime.close()
    figures: dict[str, Any] = {
        "creates": count,
        "seconds": round(seconds, 3),
        "per_s": round(count / seconds, 1),
        "limit": rate,
        "redis_keys_at_end": limiter_keys(client),
        "redis_used_memory_bytes_added": int(client.info("memory")["used_memory"]) - memory_before,
    }
    if many:
        sample = next(client.scan_iter(match=f"{NAMESPACE}*", count=5000), None)
        figures["sample_key_ttl_ms"] = None if sample is None else int(client.pttl(sample))
        figures["bytes_per_key"] = round(
            figures["redis_used_memory_bytes_added"] / max(1, figures["redis_keys_at_end"]), 1
        )
    client.close()
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with (
        harness.sandbox_process(SANDBOX, profile="standard") as sandbox,
        redis_database() as redis_url,
    ):
        for index in range(args.runs):
            order = ("many_keys", "one_key") if index % 2 == 0 else ("one_key", "many_keys")
            figures: dict[str, Any] = {"run": index + 1, "order": list(order)}
            for mode in order:
                sandbox.reset()
                load = round(os.getloadavg()[0], 2)
                figures[mode] = {**run(mode, sandbox.base_url, redis_url), "loadavg_1min": load}
                print(
                    f"run {index + 1} {mode}: {figures[mode]['per_s']} creates/s (load {load})",
                    file=sys.stderr,
                )
            figures["ratio"] = round(figures["many_keys"]["per_s"] / figures["one_key"]["per_s"], 3)
            runs.append(figures)
        ttl_ms = max((r["many_keys"].get("sample_key_ttl_ms") or 0) for r in runs)
        time.sleep(ttl_ms / 1000 + 2)
        client = redis.Redis.from_url(redis_url)
        keys_after_idle = limiter_keys(client)
        client.close()
    many = harness.median([r["many_keys"]["per_s"] for r in runs])
    one = harness.median([r["one_key"]["per_s"] for r in runs])
    result = {
        "benchmark": "key_scale",
        "command": " ".join(
            ["python -m bench.key_scale", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": machine_info(),
        "seconds": round(time.perf_counter() - started, 1),
        "setup": {
            "accounts": ACCOUNTS,
            "tasks": TASKS,
            "per_key_rate": f"{PER_KEY_RATE}/s",
            "limiter": "RedisLimiter (Lua), a claimed Redis database",
            "driver": f"embedded, {THREADS} executor threads, SQLite",
            "sink": "sandbox DSP in its own process, limits out of the way, accept delay 0",
            "warmup": WARMUP,
            "measured_creates": MEASURED,
        },
        "target": {"many_over_one_at_least": TARGET},
        "runs": runs,
        "medians": {
            "many_keys_per_s": many,
            "one_key_per_s": one,
            "ratio": round(many / one, 3),
            "ratio_of_runs": harness.median([r["ratio"] for r in runs]),
            "redis_keys_at_end": harness.median(
                [r["many_keys"]["redis_keys_at_end"] for r in runs]
            ),
            "redis_bytes_per_key": harness.median([r["many_keys"]["bytes_per_key"] for r in runs]),
            "redis_keys_after_ttl_idle": keys_after_idle,
            "idle_wait_s": round(ttl_ms / 1000 + 2, 1),
        },
        "pass": {"many_keys_within_20pct": many / one >= TARGET},
    }
    harness.write_json(args.output, result)
    print(f"median many {many}/s, one {one}/s, ratio {many / one:.3f}; wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
