"""Liveness and readiness probes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastapi.testclient import TestClient

from sluice.api.app import create_app
from sluice.catalog import Catalog, ProviderInfo
from sluice.settings import Settings
from sluice.store import db
from sluice.store.repository import TaskRepository

if TYPE_CHECKING:
    from conftest import Api


def test_healthz_answers(api: Api) -> None:
    """/healthz answers 200 while the process is up."""
    response = api.client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_ready_with_database(api: Api) -> None:
    """/readyz answers 200 when the database answers."""
    response = api.client.get("/readyz")

    assert response.status_code == 200
    assert response.json()["checks"]["database"] == "ok"


def test_readyz_503_when_database_unreachable(tmp_path: Path) -> None:
    """/readyz answers 503 naming the database when it cannot be reached; /healthz stays 200."""
    url = f"sqlite:///{tmp_path / 'missing-dir' / 'sluice.db'}"
    settings = Settings(database_url=url)
    repo = TaskRepository(db.make_engine(url))
    catalog = Catalog({"sandbox": ProviderInfo(frozenset({"campaign"}), can_track=True)})

    with TestClient(create_app(settings, repo, catalog)) as client:
        ready = client.get("/readyz")
        alive = client.get("/healthz")

    assert ready.status_code == 503
    assert ready.json()["status"] == "not ready"
    assert ready.json()["checks"]["database"].startswith("error")
    assert alive.status_code == 200


def test_readyz_is_degraded_not_503_when_redis_does_not_answer(tmp_path: Path) -> None:
    """Redis holds the API's per-key limit, which lets requests through when Redis is away
    (docs/security.md), and the workers' limiter, whose work waits in the database: like
    the broker, a Redis that does not answer makes the probe ``degraded`` (200), not 503.
    A 503 took every API out of its load balancer for a Redis outage (a partition of
    Redis's host, measured), while each of them served every request."""
    url = f"sqlite:///{tmp_path / 'sluice.db'}"
    repo = TaskRepository(db.make_engine(url))
    db.upgrade(repo.engine)
    catalog = Catalog({"sandbox": ProviderInfo(frozenset({"campaign"}), can_track=True)})

    def redis_down() -> None:
        raise TimeoutError("Timeout reading from the server")

    app = create_app(Settings(database_url=url), repo, catalog, {"redis": redis_down})
    with TestClient(app) as client:
        ready = client.get("/readyz")

    assert ready.status_code == 200
    assert ready.json() == {
        "status": "degraded",
        "checks": {
            "database": "ok",
            "redis": "error: TimeoutError: Timeout reading from the server",
        },
    }
