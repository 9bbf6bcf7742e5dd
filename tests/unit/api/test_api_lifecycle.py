"""Events, cancel and retry: each change is visible in the task and its history."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice.domain import TaskStatus

if TYPE_CHECKING:
    from conftest import Api


def test_new_task_has_created_event(api: Api) -> None:
    """A created task's history starts with one 'created' event into its status."""
    task = api.client.post("/api/tasks", json={"id": 3, "status": "In Progress"}).json()

    response = api.client.get(f"/api/tasks/{task['id']}/events")

    assert response.status_code == 200
    assert [(e["event"], e["from_status"], e["to_status"]) for e in response.json()] == [
        ("created", None, "In Progress")
    ]


def test_cancel_ends_task_and_unfinished_descendants(api: Api) -> None:
    """Cancelling a task cancels its unfinished children and grandchildren, with events."""
    items = [
        api.campaign(),
        {"kind": "creative", "payload": {"asset": "a.png"}, "parent_index": 0},
        {"kind": "creative", "payload": {"asset": "b.png"}, "parent_index": 1},
    ]
    root, child, grandchild = api.client.post("/api/tasks/bulk", json={"tasks": items}).json()[
        "ids"
    ]
    other = api.client.post("/api/tasks", json=api.campaign()).json()["id"]

    response = api.client.post(f"/api/tasks/{root}/cancel")

    assert response.status_code == 200
    assert response.json()["task"]["status"] == "Cancelled"
    assert response.json()["descendants_cancelled"] == 2
    for task_id in (child, grandchild):
        assert api.client.get(f"/api/tasks/{task_id}").json()["status"] == "Cancelled"
        assert api.client.get(f"/api/tasks/{task_id}/events").json()[-1]["to_status"] == (
            "Cancelled"
        )
    assert api.client.get(f"/api/tasks/{other}").json()["status"] == "Not Started"
    last = api.client.get(f"/api/tasks/{root}/events").json()[-1]
    assert (last["event"], last["from_status"], last["to_status"]) == (
        "cancelled",
        "Not Started",
        "Cancelled",
    )


def test_cancel_completed_task_is_409_and_changes_nothing(api: Api) -> None:
    """A Completed task cannot be cancelled: 409, and it stays Completed with no new event."""
    task_id = api.client.post("/api/tasks", json=api.campaign()).json()["id"]
    api.force_status(task_id, TaskStatus.COMPLETED)
    before = api.written()

    response = api.client.post(f"/api/tasks/{task_id}/cancel")

    assert response.status_code == 409
    assert "Completed" in response.json()["detail"]
    assert api.client.get(f"/api/tasks/{task_id}").json()["status"] == "Completed"
    assert api.written() == before


def test_retry_puts_failed_task_back_in_line(api: Api) -> None:
    """Retrying an Error task makes it Not Started with attempts reset and a 'retried' event."""
    task_id = api.client.post("/api/tasks", json=api.campaign()).json()["id"]
    api.force_status(task_id, TaskStatus.ERROR, attempts=5, last_error="HTTP 500", phase="done")
    api.clock.advance(60)

    response = api.client.post(f"/api/tasks/{task_id}/retry")

    assert response.status_code == 200
    task = response.json()
    assert task["status"] == "Not Started"
    assert task["attempts"] == 0
    assert task["last_error"] is None
    assert task["phase"] == "ready"
    last = api.client.get(f"/api/tasks/{task_id}/events").json()[-1]
    assert (last["event"], last["from_status"], last["to_status"]) == (
        "retried",
        "Error",
        "Not Started",
    )
    assert "HTTP 500" in last["detail"]


def test_retry_unfinished_task_is_409(api: Api) -> None:
    """Only Error or Cancelled tasks can be retried; others answer 409 and nothing changes."""
    task_id = api.client.post("/api/tasks", json=api.campaign()).json()["id"]
    before = api.written()

    response = api.client.post(f"/api/tasks/{task_id}/retry")

    assert response.status_code == 409
    assert api.written() == before


def test_retry_of_a_child_whose_parent_ended_is_409_naming_the_parent(api: Api) -> None:
    """A child cannot run while its parent is Cancelled or Error: retrying it answers 409
    naming the parent and its status, and nothing changes (retry the parent instead)."""
    items = [api.campaign(), {"kind": "creative", "payload": {"a": 1}, "parent_index": 0}]
    root, child = api.client.post("/api/tasks/bulk", json={"tasks": items}).json()["ids"]
    api.client.post(f"/api/tasks/{root}/cancel")
    before = api.written()

    response = api.client.post(f"/api/tasks/{child}/retry")

    assert response.status_code == 409
    detail = response.json()["detail"]
    assert f"parent task {root} is Cancelled" in detail
    assert f"retry task {root}" in detail
    assert api.client.get(f"/api/tasks/{child}").json()["status"] == "Cancelled"
    assert api.written() == before


def test_retrying_the_parent_brings_the_child_back_waiting(api: Api) -> None:
    """Retrying the ended parent puts the child that ended with it back, waiting."""
    items = [api.campaign(), {"kind": "creative", "payload": {"a": 1}, "parent_index": 0}]
    root, child = api.client.post("/api/tasks/bulk", json={"tasks": items}).json()["ids"]
    api.client.post(f"/api/tasks/{root}/cancel")

    assert api.client.post(f"/api/tasks/{root}/retry").status_code == 200

    task = api.client.get(f"/api/tasks/{child}").json()
    assert task["status"] == "Not Started"
    assert task["phase"] == "waiting_parent"
