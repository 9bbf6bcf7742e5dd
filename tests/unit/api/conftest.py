"""An API on a fresh SQLite file per test, built the way production builds it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from sluice.api.app import create_app
from sluice.catalog import Catalog, ProviderInfo
from sluice.clock import FakeClock
from sluice.domain import TaskStatus
from sluice.settings import Settings
from sluice.store import db
from sluice.store.repository import TaskRepository
from sluice.store.rows import change_status, events, tasks

CATALOG = Catalog(
    providers={
        "sandbox": ProviderInfo(kinds=frozenset({"campaign", "creative"}), can_track=True),
        "acme": ProviderInfo(kinds=frozenset({"campaign"}), can_track=False),
    },
    default_provider="sandbox",
)


@dataclass
class Api:
    """A test client and the store behind it."""

    client: TestClient
    repo: TaskRepository
    clock: FakeClock

    def written(self) -> tuple[int, int]:
        """(tasks, events) currently stored: compared before/after to prove nothing changed."""
        with self.repo.engine.connect() as conn:
            task_count = conn.execute(select(func.count()).select_from(tasks)).scalar_one()
            event_count = conn.execute(select(func.count()).select_from(events)).scalar_one()
        return task_count, event_count

    def force_status(self, task_id: int, status: TaskStatus, **fields: Any) -> None:
        """Move a task as the engine would (the API has no route for it)."""
        task = self.repo.get(task_id)
        with self.repo.engine.begin() as conn:
            assert change_status(
                conn, task, status, now=self.clock.now(), event="test", **fields
            ), "the task changed meanwhile"

    def campaign(self, **fields: object) -> dict[str, object]:
        """A realistic submission body, with ``fields`` added or overridden."""
        body: dict[str, object] = {
            "kind": "campaign",
            "payload": {"name": "Spring sale", "budget_cents": 250_000, "currency": "EUR"},
        }
        body.update(fields)
        return body


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """A fresh API over its own SQLite database and a fake clock."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'sluice.db'}")
    engine = db.make_engine(settings.database_url)
    db.ensure_schema(engine)
    clock = FakeClock()
    repo = TaskRepository(engine, clock)
    with TestClient(create_app(settings, repo, CATALOG)) as client:
        yield Api(client, repo, clock)
    engine.dispose()
