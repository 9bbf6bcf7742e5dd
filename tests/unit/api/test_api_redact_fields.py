"""The API shows a provider's ``redact_fields`` masked in every task it returns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sluice.api.app import create_app
from sluice.catalog import Catalog, ProviderInfo
from sluice.clock import FakeClock
from sluice.settings import Settings
from sluice.store import db
from sluice.store.repository import TaskRepository

CARD = "4111222233334444"
CATALOG = Catalog(
    providers={
        "sandbox": ProviderInfo(
            kinds=frozenset({"campaign"}), can_track=True, redact_fields=("card.number", "pin")
        ),
        "other": ProviderInfo(kinds=frozenset({"campaign"}), can_track=False),
    },
    default_provider="sandbox",
)


@pytest.fixture
def client_and_repo(tmp_path: Path) -> Iterator[tuple[TestClient, TaskRepository]]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'sluice.db'}")
    engine = db.make_engine(settings.database_url)
    db.ensure_schema(engine)
    repo = TaskRepository(engine, FakeClock())
    # The open loopback mode: a loopback Host, no key.
    with TestClient(create_app(settings, repo, CATALOG), base_url="http://localhost") as client:
        yield client, repo
    engine.dispose()


def test_every_task_answer_masks_the_providers_sensitive_fields(
    client_and_repo: tuple[TestClient, TaskRepository],
) -> None:
    """Create, replay, get, list, cancel and retry show ``***``; the store keeps the value."""
    client, repo = client_and_repo
    body = {"kind": "campaign", "payload": {"name": "S", "card": {"number": CARD}, "pin": 1234}}
    created = client.post("/api/tasks", json=body, headers={"Idempotency-Key": "k1"})
    replayed = client.post("/api/tasks", json=body, headers={"Idempotency-Key": "k1"})
    task_id = created.json()["id"]
    answers = [
        created,
        replayed,
        client.get(f"/api/tasks/{task_id}"),
        client.get("/api/tasks"),
        client.get(f"/api/tasks/{task_id}/events"),
        client.post(f"/api/tasks/{task_id}/cancel"),
        client.post(f"/api/tasks/{task_id}/retry"),
    ]
    assert created.json()["payload"] == {"name": "S", "card": {"number": "***"}, "pin": "***"}
    for answer in answers:
        assert answer.status_code < 300, answer.text
        assert CARD not in answer.text
        assert "1234" not in answer.text
    assert repo.get(task_id).payload == {"name": "S", "card": {"number": CARD}, "pin": 1234}


def test_providers_without_redact_fields_show_payloads_as_given(
    client_and_repo: tuple[TestClient, TaskRepository],
) -> None:
    """Masking follows the task's provider: another provider's payload is shown in full."""
    client, _ = client_and_repo
    body = {"provider": "other", "kind": "campaign", "payload": {"card": {"number": CARD}}}
    created = client.post("/api/tasks", json=body)
    assert created.json()["payload"] == {"card": {"number": CARD}}
