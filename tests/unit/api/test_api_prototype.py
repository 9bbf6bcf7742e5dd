"""The prototype's REST contract must keep working exactly as its README shows."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Api

PROTOTYPE_BODIES = [
    {"id": 1, "status": "Not Started"},
    {"id": 2, "status": "In Progress"},
    {"id": 3, "status": "In Progress"},
]


def test_create_tracks_task_by_id_on_default_provider(api: Api) -> None:
    """POST /api/tasks with the prototype body answers 201 with the task tracked by that id."""
    response = api.client.post("/api/tasks", json={"id": 1, "status": "Not Started"})

    assert response.status_code == 201
    body = response.json()
    assert body["id"] == 1
    assert body["status"] == "Not Started"
    assert body["provider"] == "sandbox"
    assert body["external_id"] == "1"
    assert body["kind"] is None


def test_readme_curl_bodies_all_created_and_readable(api: Api) -> None:
    """The README's three curl bodies each answer 201, and GET returns each task as sent."""
    for body in PROTOTYPE_BODIES:
        assert api.client.post("/api/tasks", json=body).status_code == 201

    for body in PROTOTYPE_BODIES:
        response = api.client.get(f"/api/tasks/{body['id']}")
        assert response.status_code == 200
        assert response.json()["id"] == body["id"]
        assert response.json()["status"] == body["status"]


def test_get_unknown_task_is_404_with_json_detail(api: Api) -> None:
    """GET /api/tasks/{id} for an id nobody created answers 404 with a JSON detail."""
    response = api.client.get("/api/tasks/42")

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert "42" in response.json()["detail"]


def test_healthchecker_message(api: Api) -> None:
    """GET /api/healthchecker answers the prototype's exact message."""
    response = api.client.get("/api/healthchecker")

    assert response.status_code == 200
    assert response.json() == {"message": "The API is up."}


@pytest.mark.parametrize("path", ["/docs", "/docs/"])
def test_swagger_ui_served(api: Api, path: str) -> None:
    """The Swagger UI the README points at answers 200 with HTML."""
    response = api.client.get(path, follow_redirects=True)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "swagger" in response.text.lower()
