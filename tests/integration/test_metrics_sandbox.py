"""/metrics against the real sandbox in one process: counts match what the sandbox saw, and
no id, account or secret reaches the exposition."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sluice import submissions
from sluice.api.app import build_api
from sluice.domain import Submission
from tests.integration.conftest import make_runtime, run_until_final, sandbox_stats
from tests.unit.metrics.test_metrics_naming import ALLOWED_LABELS, planted_in

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient) -> tuple[str, Samples]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return response.text, samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, found), value in samples.items()
        if sample == name and labels.items() <= dict(found).items()
    )


def test_counts_match_the_sandbox_and_show_no_ids(
    tmp_path: Path, sandbox: Callable[..., str]
) -> None:
    """Upstream requests per operation, 429 signals and validation errors in /metrics equal
    the sandbox's own counts; per-account pauses and limits fold into provider and scope;
    no task id, external id, client reference or account (campaign name) appears anywhere."""
    url = sandbox(profile="standard", limits=[{"name": "app", "limit": 8, "window_s": 1.0}])
    provider: dict[str, Any] = {
        "preset": "sandbox-standard",
        "base_url": url,
        # Faster than the sandbox allows: some requests are answered 429 and pause us.
        "rate_limit": "16/s",
        # A per-account limit (here per campaign name): its keys must fold into a scope.
        "limits": [{"rate": "50/s", "scope": "write", "per": "name"}],
        "poll": {"interval": "100ms"},
        "retry_base": "50ms",
        "retry_max": "300ms",
    }
    runtime = make_runtime(tmp_path, {"mtr": provider})
    with TestClient(build_api(runtime), base_url="http://localhost") as client:
        _, before = scrape(client)
        names = [f"cmpzq{n:03d}" for n in range(24)]
        items = [
            Submission(
                kind="campaign", payload={"advertiser_id": "adv-1", "name": name, "budget": 10.0}
            )
            for name in names
        ]
        items.append(
            Submission(
                kind="campaign",
                payload={"advertiser_id": "adv-1", "name": "cmpzq999", "budget": -1.0},
            )
        )
        ids = submissions.create_tasks(runtime.repo, runtime.catalog, items)
        run_until_final(runtime, timeout_s=90)
        stats = sandbox_stats(url)
        text, after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    # What Sluice sent (the harness's own health checks left out).
    routes = {r: by for r, by in stats["requests"].items() if r.split(" ")[1] != "/healthz"}
    sent = sum(sum(by.values()) for by in routes.values())
    creates = sum(routes.get("POST /v1/campaigns", {}).values())
    polls = sum(routes.get("GET /v1/status", {}).values())
    lookups = sum(v for route, by in routes.items() if "client_ref" in route for v in by.values())
    refused_429 = sum(by.get("429", 0) for by in routes.values())
    assert refused_429 > 0, stats  # the test exercises 429s
    assert delta("sluice_upstream_requests_total", provider="mtr") == sent
    assert delta("sluice_upstream_requests_total", operation="submit") == creates
    assert delta("sluice_upstream_requests_total", operation="poll") == polls
    assert delta("sluice_upstream_requests_total", operation="lookup") == lookups
    for status_class in ("2xx", "4xx", "5xx"):
        seen = sum(
            count
            for by in routes.values()
            for status, count in by.items()
            if status.startswith(status_class[0])
        )
        assert delta("sluice_upstream_requests_total", status_class=status_class) == seen, routes
    assert delta("sluice_ratelimit_signals_total", signal="http_429") == refused_429
    assert delta("sluice_validation_errors_total", provider="mtr") == 1
    # Each grant sends one request, or none when it expired before it could be sent.
    assert (
        delta("sluice_limiter_grants_total", provider="mtr")
        - delta("sluice_limiter_grants_expired_total", provider="mtr")
        == sent
    )
    assert delta("sluice_upstream_request_duration_seconds_count", provider="mtr") == (sent)
    assert total(after, "sluice_upstream_requests_in_flight", provider="mtr") == 0
    assert total(after, "sluice_tasks", provider="mtr", status="Completed") == 24
    assert total(after, "sluice_tasks", provider="mtr", status="Error") == 1
    assert (
        "sluice_limit_configured_requests_per_second",
        (("provider", "mtr"), ("scope", "all")),
    ) in after

    for name, labels in after:
        if not name.startswith("sluice_"):
            continue  # the process's own (python_gc_*, process_*) in single-process mode
        assert {name for name, _ in labels} <= ALLOWED_LABELS | {"le"}, labels
    tasks = [runtime.repo.get(i) for i in ids]
    planted = {*names, "cmpzq999"}
    planted |= {t.client_ref for t in tasks if t.client_ref}
    planted |= {t.external_id for t in tasks if t.external_id}
    label_values = {
        value
        for sample, labels in after
        if sample.startswith("sluice_")
        for name, value in labels
        if name != "le"
    }
    assert not label_values & {str(i) for i in ids if i > 9}
    assert planted_in(text, planted) == []
    runtime.close()


def test_an_answer_cut_off_mid_body_counts_as_disconnected(
    tmp_path: Path, sandbox: Callable[..., str]
) -> None:
    """A request whose answer the provider starts (status 200) and then drops before the
    body ends counts as ``disconnected``, not ``2xx``: the status classes in /metrics equal
    the sandbox's own counts, where such a call is a ``reset``."""
    url = sandbox(profile="standard", seed=11, faults={"reset": 0.3})
    provider: dict[str, Any] = {
        "preset": "sandbox-standard",
        "base_url": url,
        "rate_limit": "40/s",
        "poll": {"interval": "100ms"},
        "retry_base": "50ms",
        "retry_max": "300ms",
    }
    runtime = make_runtime(tmp_path, {"cut": provider})
    with TestClient(build_api(runtime), base_url="http://localhost") as client:
        _, before = scrape(client)
        items = [
            Submission(
                kind="campaign",
                payload={"advertiser_id": "adv-1", "name": f"cut{n}", "budget": 1.0},
            )
            for n in range(16)
        ]
        submissions.create_tasks(runtime.repo, runtime.catalog, items)
        run_until_final(runtime, timeout_s=90)
        stats = sandbox_stats(url)
        _, after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    routes = {r: by for r, by in stats["requests"].items() if r.split(" ")[1] != "/healthz"}
    resets = sum(by.get("reset", 0) for by in routes.values())
    answered_2xx = sum(
        count for by in routes.values() for status, count in by.items() if status[0] == "2"
    )
    assert resets > 0, stats  # the test exercises dropped answers
    assert delta("sluice_upstream_requests_total", status_class="disconnected") == resets
    assert delta("sluice_upstream_requests_total", status_class="2xx") == answered_2xx
    assert delta("sluice_upstream_requests_total") == sum(
        sum(by.values()) for by in routes.values()
    )
    assert delta("sluice_upstream_request_duration_seconds_count") == delta(
        "sluice_upstream_requests_total"
    )
    assert total(after, "sluice_upstream_requests_in_flight", provider="cut") == 0
