"""/metrics across real processes: two "hosts" of Celery workers (four prefork processes on
one, two on the other), each exposing its own processes' sum; summed over the hosts, the
counters equal what the sandbox DSP itself counted."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.cluster import STARTUP_TIMEOUT_S, free_port, wait_until
from sluice.domain import TaskStatus
from tests.acceptance.conftest import Cluster, bad_campaign, campaigns

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(180)]

SCRAPE_TOKEN = "scrape-token-for-the-test"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, found), value in samples.items()
        if sample == name and labels.items() <= dict(found).items()
    )


def scrape(url: str, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(url, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return parse(response.text)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code in (200, 401)
    except httpx.TransportError:
        return False


def counter_pids(folder: Path) -> set[str]:
    return {p.stem.split("_")[-1] for p in folder.glob("counter_*.db")}


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_counters_summed_over_processes_and_hosts_equal_the_sandbox(cluster: Cluster) -> None:
    """Upstream requests (by operation and status class), 429 signals and validation errors
    summed over every worker process of two hosts equal the sandbox's own counts, and the
    limiter refused (it was paused by the 429s)."""
    # Sluice is told 30/s, the DSP allows 20/s: it answers the excess with 429 + Retry-After.
    cluster.settings["SLUICE_METRICS_TOKEN"] = SCRAPE_TOKEN
    cluster.start(sandbox={}, provider={"rate_limit": "30/s"})
    ids = cluster.create([*campaigns(120), bad_campaign()])
    host_a, host_b = cluster.folder / "host-a", cluster.folder / "host-b"
    api_port, worker_port = free_port(), free_port()

    # Host A: the API and a worker with 4 pool processes, sharing one metrics directory.
    cluster.settings["PROMETHEUS_MULTIPROC_DIR"] = str(host_a)
    host_a.mkdir()
    cluster.spawn("api", ["api", "--port", str(api_port)])
    cluster.worker("worker-a", beat=True, concurrency=4)
    # Host B: no API; its worker serves the host's metrics itself.
    cluster.settings["PROMETHEUS_MULTIPROC_DIR"] = str(host_b)
    host_b.mkdir()
    cluster.spawn(
        "worker-b",
        [
            "worker",
            "--hostname",
            "worker-b@%h",
            "--concurrency",
            "2",
            "--loglevel",
            "INFO",
            "--metrics-port",
            str(worker_port),
        ],
    )
    api_metrics = f"http://127.0.0.1:{api_port}/metrics"
    b_metrics = f"http://127.0.0.1:{worker_port}/metrics"
    wait_until(lambda: answers(api_metrics), STARTUP_TIMEOUT_S, "the API")

    cluster.wait_until_final(timeout_s=120)
    wait_until(lambda: answers(b_metrics), STARTUP_TIMEOUT_S, "worker-b's metrics port")

    assert cluster.counts() == {TaskStatus.COMPLETED.value: 120, TaskStatus.ERROR.value: 1}
    assert cluster.runtime.repo.get(ids[-1]).status is TaskStatus.ERROR
    stats = cluster.sandbox_stats()
    assert httpx.get(b_metrics, timeout=10).status_code == 401  # the token is required there
    a = scrape(api_metrics)
    b = scrape(b_metrics, SCRAPE_TOKEN)

    def both(name: str, **labels: str) -> float:
        return total(a, name, **labels) + total(b, name, **labels)

    # What Sluice sent (the harness's own health checks left out).
    routes = {r: by for r, by in stats["requests"].items() if r.split(" ")[1] != "/healthz"}
    sent = sum(sum(by.values()) for by in routes.values())
    refused_429 = sum(by.get("429", 0) for by in routes.values())
    assert refused_429 > 0, stats
    assert both("sluice_upstream_requests_total") == sent, (routes, a, b)
    assert both("sluice_upstream_requests_total", operation="submit") == sum(
        routes.get("POST /v1/campaigns", {}).values()
    )
    assert both("sluice_upstream_requests_total", operation="poll") == sum(
        routes.get("GET /v1/status", {}).values()
    )
    for status_class in ("2xx", "4xx", "5xx"):
        seen = sum(
            count
            for by in routes.values()
            for status, count in by.items()
            if status.startswith(status_class[0])
        )
        assert both("sluice_upstream_requests_total", status_class=status_class) == seen
    assert both("sluice_ratelimit_signals_total", signal="http_429") == refused_429
    assert stats["refused_total"] <= refused_429
    assert both("sluice_validation_errors_total") == 1
    assert both("sluice_limiter_grants_total") - both("sluice_limiter_grants_expired_total") == sent
    assert both("sluice_limiter_refusals_total", reason="paused") > 0
    assert both("sluice_upstream_request_duration_seconds_count") == sent
    assert both("sluice_upstream_requests_in_flight") == 0
    # Both hosts did work, and host A's sum covers several of its processes.
    assert total(a, "sluice_upstream_requests_total") > 0
    assert total(b, "sluice_upstream_requests_total") > 0
    assert len(counter_pids(host_a)) >= 2, sorted(os.listdir(host_a))
    # Cluster-wide gauges come from the database, on the API only.
    assert total(a, "sluice_tasks", status="Completed") == 120
    assert total(b, "sluice_tasks") == 0
