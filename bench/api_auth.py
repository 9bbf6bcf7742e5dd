"""What checking API keys costs per request, over real HTTP on SQLite.

The API (``create_app``, uvicorn, its own process) serves a fresh SQLite database on a free
loopback port. A keep-alive httpx client reads one task (``GET /api/tasks/{id}``) in three
modes, in turns so that machine load hits each alike:

* ``open``: the open loopback mode, no key (``make run``);
* ``key``: ``SLUICE_AUTH=required`` and a viewer key: a key lookup per request;
* ``key+limit``: the same with ``SLUICE_API_RATE_LIMIT`` set far above the request rate,
  so every request also takes a grant from the in-memory limiter.

Reports latency median / p95 per mode, and the median's extra milliseconds over ``open``.
Writes ``bench/results/api_auth.json``.

Run: ``python -m bench.api_auth [--requests 2000] [--rounds 4]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench._common import machine_info, wait_until_up
from harness.cluster import free_port

RESULTS = Path(__file__).parent / "results" / "api_auth.json"
MODES: dict[str, dict[str, Any]] = {
    "open": {"auth": "auto"},
    "key": {"auth": "required"},
    "key+limit": {"auth": "required", "api_rate_limit": "1000000/s"},
}


def _serve(database_url: str, port: int, fields: dict[str, Any]) -> None:
    """Child process: the API over ``database_url`` with settings ``fields``."""
    import uvicorn

    from sluice.api.app import create_app
    from sluice.catalog import Catalog, ProviderInfo
    from sluice.settings import Settings
    from sluice.store import db
    from sluice.store.repository import TaskRepository

    settings = Settings(database_url=database_url, host="127.0.0.1", **fields)
    catalog = Catalog({"sandbox": ProviderInfo(frozenset({"campaign"}), True)}, "sandbox")
    uvicorn.run(
        create_app(settings, TaskRepository(db.make_engine(database_url)), catalog),
        host="127.0.0.1",
        port=port,
        http="httptools",
        access_log=False,
        log_level="warning",
    )


@contextmanager
def _database() -> Iterator[tuple[str, str, int]]:
    """A migrated SQLite database with one task and one viewer key: (url, key, task id)."""
    from sluice import apikeys
    from sluice.domain import Submission
    from sluice.store import db
    from sluice.store.keys import KeyStore
    from sluice.store.repository import TaskRepository

    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as directory:
        url = f"sqlite:///{directory}/bench.db"
        engine = db.make_engine(url)
        db.ensure_schema(engine)
        task, _ = TaskRepository(engine).create(Submission("sandbox", "campaign", {"n": 1}))
        made = apikeys.create_key(KeyStore(engine), name="bench", role="viewer", tenant="default")
        engine.dispose()
        yield url, made.token, task.id


@contextmanager
def _api(database_url: str, fields: dict[str, Any]) -> Iterator[str]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(database_url, port, fields), daemon=True
    )
    server.start()
    try:
        wait_until_up(f"{base_url}/healthz")
        yield base_url
    finally:
        server.terminate()
        server.join(timeout=10)


def _read(base_url: str, path: str, headers: dict[str, str], count: int) -> list[float]:
    latencies: list[float] = []
    with httpx.Client(base_url=base_url, timeout=30, headers=headers) as client:
        for _ in range(50):  # warm-up: connection, caches
            client.get(path).raise_for_status()
        for _ in range(count):
            started = time.perf_counter()
            response = client.get(path)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"read failed: {response.status_code} {response.text[:200]}")
    return latencies


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="reads per mode per round")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    with _database() as (url, token, task_id):
        for _ in range(args.rounds):
            for mode, fields in MODES.items():
                headers = {} if mode == "open" else {"Authorization": f"Bearer {token}"}
                with _api(url, fields) as base_url:
                    samples[mode] += _read(
                        base_url, f"/api/tasks/{task_id}", headers, args.requests
                    )
    modes = {
        mode: {
            "reads": len(values),
            "median_ms": round(statistics.median(values) * 1000, 3),
            "p95_ms": round(_percentile(values, 0.95) * 1000, 3),
        }
        for mode, values in samples.items()
    }
    open_median = modes["open"]["median_ms"]
    for figures in modes.values():
        figures["median_over_open_ms"] = round(figures["median_ms"] - open_median, 3)
    result = {
        "benchmark": "api_auth",
        "what": "GET /api/tasks/{id} over keep-alive HTTP, SQLite, one uvicorn process",
        "modes": modes,
        "machine": machine_info(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for mode, figures in modes.items():
        print(
            f"{mode:>10}: median {figures['median_ms']:.3f} ms, p95 {figures['p95_ms']:.3f} ms, "
            f"+{figures['median_over_open_ms']:.3f} ms over open"
        )
    return result


if __name__ == "__main__":
    main()
