"""Priorities on create and in bulk (-100..100, else 422), fairness keys stored on tasks,
and each key's share of a provider's budget at GET /api/providers/{name}/shares."""

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
from sluice.store.queue import WorkQueue
from sluice.store.repository import TaskRepository

CATALOG = Catalog(
    providers={
        "sandbox": ProviderInfo(kinds=frozenset({"campaign"}), can_track=True),
        "dv": ProviderInfo(
            kinds=frozenset({"campaign"}),
            can_track=False,
            fairness_field="advertiser.id",
            fairness_weights={"adv-1": 3.0},
        ),
    },
    default_provider="sandbox",
)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, TaskRepository, FakeClock]]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'sluice.db'}")
    engine = db.make_engine(settings.database_url)
    db.ensure_schema(engine)
    clock = FakeClock()
    repo = TaskRepository(engine, clock)
    with TestClient(create_app(settings, repo, CATALOG), base_url="http://localhost") as http:
        yield http, repo, clock
    engine.dispose()


def campaign(**fields: object) -> dict[str, object]:
    body: dict[str, object] = {"kind": "campaign", "payload": {"name": "Spring"}}
    body.update(fields)
    return body


def test_priority_is_stored_and_shown(client: tuple[TestClient, TaskRepository, FakeClock]) -> None:
    http, _, _ = client
    made = http.post("/api/tasks", json=campaign(priority=7))
    plain = http.post("/api/tasks", json=campaign())

    assert made.status_code == 201, made.text
    assert made.json()["priority"] == 7
    assert plain.json()["priority"] == 0
    assert plain.json()["fairness_key"] == "default"


@pytest.mark.parametrize("priority", [-101, 101, 10**9])
def test_priority_out_of_range_is_422_and_writes_nothing(
    client: tuple[TestClient, TaskRepository, FakeClock], priority: int
) -> None:
    http, repo, _ = client
    single = http.post("/api/tasks", json=campaign(priority=priority))
    bulk = http.post("/api/tasks/bulk", json={"tasks": [campaign(), campaign(priority=priority)]})

    for answer in (single, bulk):
        assert answer.status_code == 422, answer.text
        assert "priority" in answer.text
        assert "between -100 and 100" in answer.text
    assert repo.max_id() == 0


def test_bulk_items_carry_their_priorities(
    client: tuple[TestClient, TaskRepository, FakeClock],
) -> None:
    http, repo, _ = client
    answer = http.post(
        "/api/tasks/bulk", json={"tasks": [campaign(priority=-100), campaign(priority=100)]}
    )

    assert answer.status_code == 201, answer.text
    assert [repo.get(i).priority for i in answer.json()["ids"]] == [-100, 100]


def test_fairness_field_names_the_key_else_the_tenant(
    client: tuple[TestClient, TaskRepository, FakeClock],
) -> None:
    http, _, _ = client
    keyed = http.post(
        "/api/tasks",
        json={"provider": "dv", "kind": "campaign", "payload": {"advertiser": {"id": 42}}},
    )
    missing = http.post(
        "/api/tasks", json={"provider": "dv", "kind": "campaign", "payload": {"name": "x"}}
    )

    assert keyed.json()["fairness_key"] == "42"
    assert missing.json()["fairness_key"] == "default"


def test_idempotent_replay_without_priority_hashes_as_before(
    client: tuple[TestClient, TaskRepository, FakeClock],
) -> None:
    """A body without priority replays; the same key with a priority is another body."""
    http, _, _ = client
    headers = {"Idempotency-Key": "k1"}
    first = http.post("/api/tasks", json=campaign(), headers=headers)
    again = http.post("/api/tasks", json=campaign(), headers=headers)
    other = http.post("/api/tasks", json=campaign(priority=5), headers=headers)

    assert again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 409


def test_shares_show_waiting_weight_and_granted(
    client: tuple[TestClient, TaskRepository, FakeClock],
) -> None:
    http, repo, clock = client
    bodies = [
        {"provider": "dv", "kind": "campaign", "payload": {"advertiser": {"id": adv}}}
        for adv in ["adv-1"] * 30 + ["adv-2"] * 30
    ]
    assert http.post("/api/tasks/bulk", json={"tasks": bodies}).status_code == 201
    clock.advance(1)
    WorkQueue(repo.engine).claim_fair(clock.now(), 20, "w", 60, "dv", {"adv-1": 3.0})

    answer = http.get("/api/providers/dv/shares")

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["fairness_field"] == "advertiser.id"
    by_key = {k["key"]: k for k in body["keys"]}
    assert by_key["adv-1"]["weight"] == 3.0
    assert by_key["adv-2"]["weight"] == 1.0
    assert by_key["adv-1"]["granted_last_minute"] == 15
    assert by_key["adv-2"]["granted_last_minute"] == 5
    assert by_key["adv-1"]["waiting"] == 15
    assert by_key["adv-2"]["waiting"] == 25
    assert by_key["adv-1"]["share"] == 0.75


def test_shares_of_an_unknown_provider_is_404(
    client: tuple[TestClient, TaskRepository, FakeClock],
) -> None:
    http, _, _ = client
    answer = http.get("/api/providers/nope/shares")

    assert answer.status_code == 404
    assert "unknown provider 'nope'" in answer.text
