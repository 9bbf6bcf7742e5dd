"""Submissions name provider, kind, payload and parent; Idempotency-Key makes resending safe."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import Api


def test_submission_is_stored_ready_for_its_provider(api: Api) -> None:
    """A submission with provider, kind and payload answers 201 and reads back unchanged."""
    body = api.campaign(provider="acme")

    response = api.client.post("/api/tasks", json=body)

    assert response.status_code == 201
    created = response.json()
    assert created["provider"] == "acme"
    assert created["kind"] == "campaign"
    assert created["payload"] == body["payload"]
    assert created["status"] == "Not Started"
    assert created["phase"] == "ready"
    assert api.client.get(f"/api/tasks/{created['id']}").json() == created


def test_submission_without_provider_goes_to_default_provider(api: Api) -> None:
    """A submission that names no provider is for the catalog's default provider."""
    response = api.client.post("/api/tasks", json=api.campaign())

    assert response.status_code == 201
    assert response.json()["provider"] == "sandbox"


def test_child_waits_for_its_parent(api: Api) -> None:
    """A submission naming an unfinished parent is linked to it and waits for it."""
    parent = api.client.post("/api/tasks", json=api.campaign()).json()

    response = api.client.post(
        "/api/tasks",
        json={"kind": "creative", "payload": {"asset": "banner.png"}, "parent_id": parent["id"]},
    )

    assert response.status_code == 201
    assert response.json()["parent_id"] == parent["id"]
    assert response.json()["phase"] == "waiting_parent"


def test_idempotent_replay_returns_original_task(api: Api) -> None:
    """Resending a body with the same Idempotency-Key returns the first task and writes nothing."""
    headers = {"Idempotency-Key": "order-7"}
    first = api.client.post("/api/tasks", json=api.campaign(), headers=headers)
    before = api.written()

    replay = api.client.post("/api/tasks", json=api.campaign(), headers=headers)

    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    assert replay.status_code in (200, 201)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == first.json()
    assert api.written() == before


def test_idempotency_key_reused_with_other_body_is_409(api: Api) -> None:
    """The same Idempotency-Key with a different body answers 409 and writes nothing."""
    headers = {"Idempotency-Key": "order-7"}
    api.client.post("/api/tasks", json=api.campaign(), headers=headers)
    before = api.written()

    response = api.client.post(
        "/api/tasks", json=api.campaign(payload={"name": "Other"}), headers=headers
    )

    assert response.status_code == 409
    assert "order-7" in response.json()["detail"]
    assert api.written() == before


def test_distinct_idempotency_keys_create_distinct_tasks(api: Api) -> None:
    """Two keys with the same body are two tasks."""
    first = api.client.post("/api/tasks", json=api.campaign(), headers={"Idempotency-Key": "a"})
    second = api.client.post("/api/tasks", json=api.campaign(), headers={"Idempotency-Key": "b"})

    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"]
