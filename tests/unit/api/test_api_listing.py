"""GET /api/tasks filters by status, provider, kind and parent, and pages with a stable cursor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conftest import Api


def ids_of(response: Any) -> list[int]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def test_filters_select_matching_tasks(api: Api) -> None:
    """Each filter returns exactly the tasks that match it."""
    tracked = api.client.post("/api/tasks", json={"id": 1, "status": "In Progress"}).json()
    parent = api.client.post("/api/tasks", json=api.campaign(provider="acme")).json()
    child = api.client.post(
        "/api/tasks",
        json={"kind": "creative", "payload": {"asset": "a.png"}, "parent_id": parent["id"]},
    ).json()

    assert ids_of(api.client.get("/api/tasks", params={"status": "In Progress"})) == [tracked["id"]]
    assert ids_of(api.client.get("/api/tasks", params={"provider": "acme"})) == [parent["id"]]
    assert ids_of(api.client.get("/api/tasks", params={"kind": "creative"})) == [child["id"]]
    assert ids_of(api.client.get("/api/tasks", params={"parent_id": parent["id"]})) == [child["id"]]
    assert ids_of(
        api.client.get("/api/tasks", params={"status": "Not Started", "provider": "sandbox"})
    ) == [child["id"]]


def test_pages_cover_every_task_once_while_tasks_are_inserted(api: Api) -> None:
    """Paging by cursor sees each task exactly once even as new tasks arrive between pages."""
    api.client.post("/api/tasks/bulk", json={"tasks": [api.campaign() for _ in range(25)]})
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 10}
        if cursor:
            params["cursor"] = cursor
        response = api.client.get("/api/tasks", params=params)
        seen.extend(ids_of(response))
        cursor = response.json()["next_cursor"]
        pages += 1
        if pages <= 2:
            # New work arriving mid-walk must neither shift nor duplicate what follows.
            api.client.post("/api/tasks", json=api.campaign())
        if cursor is None:
            break

    all_ids = [
        task["id"] for task in api.client.get("/api/tasks", params={"limit": 1000}).json()["items"]
    ]
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen)
    assert seen == all_ids
    assert len(all_ids) == 27


def test_last_page_has_no_cursor(api: Api) -> None:
    """A listing that fits in one page returns no next cursor."""
    api.client.post("/api/tasks", json=api.campaign())

    response = api.client.get("/api/tasks", params={"limit": 5})

    assert response.json()["next_cursor"] is None
    assert len(response.json()["items"]) == 1


def test_bad_cursor_is_422(api: Api) -> None:
    """A cursor this API never issued answers 422 naming the cursor."""
    response = api.client.get("/api/tasks", params={"cursor": "not-a-cursor"})

    assert response.status_code == 422
    assert "cursor" in response.text


def test_unknown_status_filter_is_422(api: Api) -> None:
    """Filtering by a status word that does not exist answers 422 listing the real ones."""
    response = api.client.get("/api/tasks", params={"status": "Done"})

    assert response.status_code == 422
    assert "Not Started" in response.json()["detail"][0]["msg"]
