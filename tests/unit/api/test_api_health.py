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
