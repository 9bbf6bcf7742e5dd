"""How many requests per second the sandbox DSP serves, so it is never the bottleneck.

Starts the sandbox in a separate process (uvicorn, one worker, httptools, limits set very
high, no faults, no delays), then drives it over loopback from keep-alive httpx clients in
client processes: per-object status, batch status (50 ids) and creates, each with one
client and with several in parallel. Besides end-to-end rates it reports requests per
CPU-second used by the sandbox process: its capacity, whatever the client costs. Reports
medians of several runs and writes ``bench/results/sandbox_throughput.json``.

Run: ``python -m bench.sandbox_throughput [--runs 5] [--requests 3000] [--clients 2]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench._common import wait_until_up
from harness.cluster import free_port

RESULTS = Path(__file__).parent / "results" / "sandbox_throughput.json"
BATCH_IDS = 50
WORKLOADS = ("status_per_object", "status_batch_50", "create")


def _serve(port: int) -> None:
    """Child process: the sandbox with limits out of the way."""
    import uvicorn

    from sluice.sandbox.app import create_sandbox_app
    from sluice.sandbox.config import SandboxConfig

    config = SandboxConfig.from_settings(
        {
            "accept_delay_s": 0,
            "process_delay_s": 0,
            "limits": [{"name": "app", "limit": 1_000_000_000, "window_s": 1}],
        }
    )
    uvicorn.run(
        create_sandbox_app(config),
        host="127.0.0.1",
        port=port,
        http="httptools",
        access_log=False,
        log_level="warning",
    )


def _server_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the sandbox process has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _request(client: httpx.Client, workload: str, ids: list[str], i: int) -> httpx.Response:
    if workload == "status_per_object":
        return client.get(f"/v1/campaigns/{ids[i % len(ids)]}/status")
    if workload == "status_batch_50":
        return client.get("/v1/status", params={"ids": ",".join(ids)})
    return client.post("/v1/campaigns", json={"name": f"bench {i}", "advertiser_id": "adv-2"})


def _drive(
    base_url: str, workload: str, ids: list[str], count: int, ready: Any, go: Any
) -> tuple[float, float, int]:
    """One client process: warm up a keep-alive client, wait for the start, send ``count``."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        _request(client, workload, ids, 0).raise_for_status()
        ready.release()
        go.wait()
        started = time.monotonic()
        failures = sum(_request(client, workload, ids, i).status_code >= 300 for i in range(count))
        return started, time.monotonic(), failures


def _measure(
    pool: Any, base_url: str, workload: str, ids: list[str], total: int, clients: int, pid: int
) -> tuple[float, float]:
    """(requests/s end to end, requests per sandbox CPU-second) for one run."""
    manager_ready, manager_go = pool.ready, pool.go
    manager_go.clear()
    per_client = total // clients
    pending = [
        pool.pool.apply_async(
            _drive, (base_url, workload, ids, per_client, manager_ready, manager_go)
        )
        for _ in range(clients)
    ]
    for _ in range(clients):
        manager_ready.acquire()
    cpu_before = _server_cpu_s(pid)
    manager_go.set()
    results = [p.get(timeout=300) for p in pending]
    cpu_used = _server_cpu_s(pid) - cpu_before
    failures = sum(r[2] for r in results)
    if failures:
        raise RuntimeError(f"{failures} requests failed in {workload}")
    elapsed = max(r[1] for r in results) - min(r[0] for r in results)
    sent = per_client * clients
    return sent / elapsed, sent / max(cpu_used, 1e-9)


class _Clients:
    """A pool of client processes and the two signals that start a run in all at once."""

    def __init__(self, size: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.manager = context.Manager()
        self.ready = self.manager.Semaphore(0)
        self.go = self.manager.Event()
        self.pool = context.Pool(size)

    def close(self) -> None:
        self.pool.close()
        self.pool.join()
        self.manager.shutdown()


def _make_ids(base_url: str) -> list[str]:
    with httpx.Client(base_url=base_url) as client:
        return [
            client.post("/v1/campaigns", json={"name": f"c{i}", "advertiser_id": "adv-1"}).json()[
                "id"
            ]
            for i in range(BATCH_IDS)
        ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=3000, help="requests per run")
    parser.add_argument("--clients", type=int, default=2, help="client processes, parallel case")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(port,), daemon=True)
    server.start()
    assert server.pid is not None
    server_pid = server.pid
    figures: dict[str, Any] = {}
    clients = _Clients(args.clients)
    try:
        wait_until_up(f"{base_url}/healthz")
        ids = _make_ids(base_url)
        for workload in WORKLOADS:
            for parallel in sorted({1, args.clients}):
                runs = [
                    _measure(clients, base_url, workload, ids, args.requests, parallel, server_pid)
                    for _ in range(args.runs)
                ]
                key = f"{workload}/{parallel}_client{'s' * (parallel > 1)}"
                figures[key] = {
                    "median_rps": round(statistics.median(r[0] for r in runs)),
                    "runs_rps": [round(r[0]) for r in runs],
                    "median_per_sandbox_cpu_s": round(statistics.median(r[1] for r in runs)),
                }
                print(
                    f"{key:32} median {figures[key]['median_rps']:>6} req/s end to end, "
                    f"{figures[key]['median_per_sandbox_cpu_s']:>6} req per sandbox CPU-second",
                    flush=True,
                )
    finally:
        clients.close()
        server.terminate()
        server.join(timeout=10)
    result = {
        "benchmark": "sandbox_throughput",
        "command": " ".join(["python -m bench.sandbox_throughput", *(argv or sys.argv[1:])]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_1m_before_after": [
                round(load_before[0], 2),
                round(os.getloadavg()[0], 2),
            ],
        },
        "setup": {
            "server": "uvicorn, 1 worker, httptools, separate process",
            "client": "httpx.Client keep-alive, one per client process",
            "client_processes": args.clients,
            "requests_per_run": args.requests,
            "runs": args.runs,
            "batch_ids": BATCH_IDS,
        },
        "figures": figures,
        "target_status_rps": 2000,
        "notes": (
            "median_rps is end to end and bounded by the httpx client sharing the 2 cores; "
            "median_per_sandbox_cpu_s is requests served per CPU-second the sandbox process "
            "used, i.e. its capacity with one core to itself."
        ),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
