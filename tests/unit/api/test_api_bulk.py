"""POST /api/tasks/bulk creates up to 10,000 tasks all together or not at all."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import Api


def test_bulk_creates_every_task_in_order(api: Api) -> None:
    """A bulk call answers 201 with one id per item, in input order, each readable."""
    items = [api.campaign(payload={"name": f"c{i}"}) for i in range(5)]

    response = api.client.post("/api/tasks/bulk", json={"tasks": items})

    assert response.status_code == 201
    ids = response.json()["ids"]
    assert response.json()["count"] == 5
    assert len(set(ids)) == 5
    for item, task_id in zip(items, ids, strict=True):
        assert api.client.get(f"/api/tasks/{task_id}").json()["payload"] == item["payload"]


def test_bulk_item_can_name_earlier_item_as_parent(api: Api) -> None:
    """An item with parent_index becomes the child of that earlier item of the batch."""
    items = [
        api.campaign(),
        {"kind": "creative", "payload": {"asset": "a.png"}, "parent_index": 0},
        {"kind": "creative", "payload": {"asset": "b.png"}, "parent_index": 1},
    ]

    ids = api.client.post("/api/tasks/bulk", json={"tasks": items}).json()["ids"]

    assert api.client.get(f"/api/tasks/{ids[1]}").json()["parent_id"] == ids[0]
    assert api.client.get(f"/api/tasks/{ids[2]}").json()["parent_id"] == ids[1]


def test_bulk_accepts_ten_thousand_tasks_over_one_mebibyte(api: Api) -> None:
    """10,000 tasks in one call (a body over the 1 MiB single-call cap) are all created."""
    items = [
        api.campaign(
            payload={
                "name": f"campaign {i}",
                "budget_cents": 1000 + i,
                "geo": "FR",
                "channel": "display",
            }
        )
        for i in range(10_000)
    ]
    body = {"tasks": items}
    assert len(json.dumps(body)) > 1024 * 1024

    response = api.client.post("/api/tasks/bulk", json=body)

    assert response.status_code == 201
    assert response.json()["count"] == 10_000
    assert api.written() == (10_000, 10_000)


def test_bulk_of_10001_is_413_and_writes_nothing(api: Api) -> None:
    """One item over the 10,000 cap refuses the whole call with 413 (counted while the
    body arrives: see tests/unit/api/test_api_body_limits.py)."""
    before = api.written()

    response = api.client.post("/api/tasks/bulk", json={"tasks": [api.campaign()] * 10_001})

    assert response.status_code == 413
    assert "at most 10000 tasks" in json.dumps(response.json()["detail"])
    assert api.written() == before


def test_one_bad_item_refuses_whole_batch_naming_its_index(api: Api) -> None:
    """A single invalid item among many answers 422 naming its index, and nothing is written."""
    api.client.post("/api/tasks", json=api.campaign())
    before = api.written()
    items = [api.campaign() for _ in range(500)]
    items[317] = api.campaign(kind="video")

    response = api.client.post("/api/tasks/bulk", json={"tasks": items})

    assert response.status_code == 422
    detail = response.json()["detail"]
    assert [problem["index"] for problem in detail] == [317]
    assert "video" in detail[0]["msg"]
    assert api.written() == before


def test_wrongly_typed_item_refuses_whole_batch_naming_its_index(api: Api) -> None:
    """A malformed item (payload not an object) answers 422 with its index; nothing is written."""
    before = api.written()
    items = [api.campaign() for _ in range(10)]
    items[4] = api.campaign(payload=["not", "an", "object"])

    response = api.client.post("/api/tasks/bulk", json={"tasks": items})

    assert response.status_code == 422
    assert {problem["index"] for problem in response.json()["detail"]} == {4}
    assert api.written() == before


def test_parent_index_must_name_an_earlier_item(api: Api) -> None:
    """A parent_index pointing at itself or later answers 422 and nothing is written."""
    before = api.written()
    items = [api.campaign(), api.campaign(parent_index=1)]

    response = api.client.post("/api/tasks/bulk", json={"tasks": items})

    assert response.status_code == 422
    assert response.json()["detail"][0]["index"] == 1
    assert api.written() == before


def test_existing_id_in_batch_is_409_and_writes_nothing(api: Api) -> None:
    """A batch whose items are valid but one id already exists answers 409; nothing is written."""
    api.client.post("/api/tasks", json={"id": 7, "status": "Not Started"})
    before = api.written()
    items = [api.campaign() for _ in range(20)] + [{"id": 7, "status": "In Progress"}]

    response = api.client.post("/api/tasks/bulk", json={"tasks": items})

    assert response.status_code == 409
    assert "7" in response.json()["detail"]
    assert api.written() == before


def test_duplicate_id_within_batch_is_422(api: Api) -> None:
    """The same explicit id twice in one batch answers 422 naming the second item."""
    items = [{"id": 9, "status": "Not Started"}, {"id": 9, "status": "Not Started"}]

    response = api.client.post("/api/tasks/bulk", json={"tasks": items})

    assert response.status_code == 422
    assert response.json()["detail"][0]["index"] == 1
    assert api.written() == (0, 0)


def test_empty_batch_is_422(api: Api) -> None:
    """A bulk call with no tasks answers 422."""
    assert api.client.post("/api/tasks/bulk", json={"tasks": []}).status_code == 422


def test_bulk_body_over_64_mib_is_413(api: Api) -> None:
    """A bulk body over the 64 MiB cap answers 413 and nothing is written."""
    response = api.client.post(
        "/api/tasks/bulk",
        content=b" " * (64 * 1024 * 1024 + 1),
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 413
    assert api.written() == (0, 0)
