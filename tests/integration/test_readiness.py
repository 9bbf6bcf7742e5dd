"""/readyz reports each configured dependency, against the real servers."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from sluice.api.app import build_api
from sluice.runtime import build_runtime
from sluice.settings import load_settings


def test_readyz_checks_redis_and_broker(tmp_path: Path, redis_url: str, rabbitmq_url: str) -> None:
    """With Redis and RabbitMQ configured and up, /readyz says ready and names both."""
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'r.db'}", redis_url=redis_url, broker_url=rabbitmq_url
    )
    runtime = build_runtime(settings)
    try:
        answer = TestClient(build_api(runtime)).get("/readyz")
    finally:
        runtime.close()
    assert answer.status_code == 200
    assert answer.json()["checks"] == {"database": "ok", "redis": "ok", "broker": "ok"}


def test_a_broker_that_is_down_is_reported_and_the_api_stays_ready(tmp_path: Path) -> None:
    """An unreachable broker is named in /readyz's checks, without its URL's password, and
    the status reads "degraded" with 200: the API publishes nothing to the broker and still
    takes tasks, so a load balancer must not take it out (it answered 503, which took every
    API out for a broker outage)."""
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'r.db'}",
        broker_url="amqp://guest:s3cret@127.0.0.1:1//",
    )
    runtime = build_runtime(settings)
    try:
        answer = TestClient(build_api(runtime)).get("/readyz")
    finally:
        runtime.close()
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "degraded"
    assert answer.json()["checks"]["database"] == "ok"
    assert answer.json()["checks"]["broker"].startswith("error")
    assert "s3cret" not in answer.text
