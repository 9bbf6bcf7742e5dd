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


def keyed_batch(api: Api, prefix: str = "spring") -> list[dict[str, object]]:
    """A campaign, its two ad groups (parent_index) and a tracked task, each with its key."""
    return [
        api.campaign(payload={"name": "Spring"}, idempotency_key=f"{prefix}-c"),
        {
            "kind": "creative",
            "payload": {"asset": "a.png"},
            "parent_index": 0,
            "idempotency_key": f"{prefix}-a",
        },
        {
            "kind": "creative",
            "payload": {"asset": "b.png"},
            "parent_index": 0,
            "idempotency_key": f"{prefix}-b",
            "priority": 5,
        },
        {"id": 4242, "status": "Not Started", "idempotency_key": f"{prefix}-t"},
    ]


def test_a_keyed_batch_sent_again_answers_with_the_first_ids(api: Api) -> None:
    """A client that lost a bulk call's answer and sent the batch again got 409 "Idempotency-
    Key already used" and no ids: it could neither learn the tasks' ids nor tell a replay from
    a clash. The same batch, every item with the key it had, now answers 201 with the ids the
    first call created (and `Idempotent-Replayed: true`) and writes nothing."""
    first = api.client.post("/api/tasks/bulk", json={"tasks": keyed_batch(api)})
    before = api.written()

    again = api.client.post("/api/tasks/bulk", json={"tasks": keyed_batch(api)})

    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    assert again.status_code == 201, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert api.written() == before


def test_a_batch_that_is_not_the_keys_first_batch_is_409_naming_its_items(api: Api) -> None:
    """Keys held by tasks that are not what the items describe (another payload, parent or
    priority) are a clash: 409 naming each such item, its key and the task holding it; a
    batch of the first one's items and a new one is 409 naming the new item. Nothing is
    written."""
    first_ids = api.client.post("/api/tasks/bulk", json={"tasks": keyed_batch(api)}).json()["ids"]
    other_payload = keyed_batch(api)
    other_payload[1]["payload"] = {"asset": "other.png"}
    other_parent = keyed_batch(api)
    other_parent[2]["parent_index"] = 1
    other_priority = keyed_batch(api)
    del other_priority[2]["priority"]
    one_new_item = [*keyed_batch(api), api.campaign(idempotency_key="spring-new")]
    before = api.written()

    for batch, index in ((other_payload, 1), (other_parent, 2), (other_priority, 2)):
        response = api.client.post("/api/tasks/bulk", json={"tasks": batch})

        assert response.status_code == 409, response.text
        key = batch[index]["idempotency_key"]
        assert response.json()["detail"] == (
            "idempotency_key already used by a task that is not what the item describes "
            "(another provider, kind, payload, parent, priority or id): "
            f"item {index} ('{key}': task {first_ids[index]})"
        )
    response = api.client.post("/api/tasks/bulk", json={"tasks": one_new_item})
    assert response.status_code == 409, response.text
    detail = response.json()["detail"]
    for index, key in enumerate(("spring-c", "spring-a", "spring-b", "spring-t")):
        assert f"item {index} ('{key}': task {first_ids[index]})" in detail
    assert detail.endswith(
        "and item(s) 4 were not: a batch is created all or nothing, so send the new items in "
        "a batch of their own"
    )
    assert api.written() == before


def test_a_keyless_conflict_is_409_naming_the_id_as_before(api: Api) -> None:
    """A batch with no keys whose explicit id exists is 409 naming the id, as before."""
    api.client.post("/api/tasks/bulk", json={"tasks": keyed_batch(api, "x")})
    before = api.written()

    response = api.client.post(
        "/api/tasks/bulk", json={"tasks": [{"id": 4242, "status": "Not Started"}]}
    )

    assert response.status_code == 409
    assert response.json()["detail"] == "task 4242 already exists"
    assert api.written() == before
