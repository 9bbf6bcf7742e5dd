"""GET /api/tasks filters by status, provider, kind, parent and creation time, and pages
with a stable cursor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete

from sluice.store.rows import events, tasks

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


# -- created_from / created_to -----------------------------------------------------------


def created_at(api: Api, *offsets: float) -> list[int]:
    """Create one task per offset (seconds from now, the wall clock stepped there and back:
    ids and creation times need not agree); returns their ids."""
    ids = []
    for offset in offsets:
        api.clock.step_wall(offset)
        ids.append(api.client.post("/api/tasks", json=api.campaign()).json()["id"])
        api.clock.step_wall(-offset)
    return ids


def walk(api: Api, params: dict[str, Any], limit: int) -> list[int]:
    """Every id of a listing, page by page (each page full but the last)."""
    seen: list[int] = []
    cursor: str | None = None
    while True:
        response = api.client.get(
            "/api/tasks",
            params={**params, "limit": limit, **({"cursor": cursor} if cursor else {})},
        )
        page = ids_of(response)
        seen.extend(page)
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return seen
        assert len(page) == limit


def test_created_from_is_inclusive_and_created_to_exclusive(api: Api) -> None:
    """The bounds mean what they mean on the bulk routes and the console: created_from <=
    created_at < created_to, a time without a zone in UTC, one with a zone converted."""
    start = api.clock.now()
    first, second, third, fourth = created_at(api, 0, 1, 2, 3)
    one, three = start + timedelta(seconds=1), start + timedelta(seconds=3)

    def listed(**params: str) -> list[int]:
        return ids_of(api.client.get("/api/tasks", params=params))

    assert listed(created_from=one.isoformat(), created_to=three.isoformat()) == [second, third]
    assert listed(created_from=one.isoformat()) == [second, third, fourth]
    assert listed(created_to=three.isoformat()) == [first, second, third]
    naive = one.replace(tzinfo=None).isoformat()
    assert listed(created_from=naive, created_to=naive) == []
    east = one.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    assert listed(created_from=east, created_to=three.isoformat().replace("+00:00", "Z")) == [
        second,
        third,
    ]
    assert listed(created_from=naive, provider="acme") == []
    assert listed(created_from=naive, status="Not Started", kind="campaign") == [
        second,
        third,
        fourth,
    ]


def test_a_cursor_from_a_filtered_page_continues_the_filtered_listing(api: Api) -> None:
    """Tasks created in the range are not contiguous in id order (the wall clock stepped
    back): each page holds only tasks in the range and the walk finds each once."""
    ids = created_at(api, 10, 0, 10, 0, 10, 0, 10, 0, 10)
    start = api.clock.now()
    inside = ids[::2]
    params = {
        "created_from": (start + timedelta(seconds=5)).isoformat(),
        "created_to": (start + timedelta(seconds=20)).isoformat(),
    }

    first = api.client.get("/api/tasks", params={**params, "limit": 2})
    assert ids_of(first) == inside[:2]
    after = api.client.get(
        "/api/tasks", params={**params, "limit": 2, "cursor": first.json()["next_cursor"]}
    )
    assert ids_of(after) == inside[2:4]
    assert walk(api, params, 2) == inside
    assert walk(api, {}, 2) == ids


def test_created_from_after_created_to_is_an_empty_listing(api: Api) -> None:
    """An empty range lists nothing, as on the bulk routes and the console (a half-open
    range whose start is not before its end holds no moment)."""
    start = api.clock.now()
    created_at(api, 0, 1)

    response = api.client.get(
        "/api/tasks",
        params={
            "created_from": (start + timedelta(seconds=1)).isoformat(),
            "created_to": start.isoformat(),
        },
    )

    assert response.status_code == 200, response.text
    assert response.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize("name", ["created_from", "created_to"])
@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "",
        "2026-13-01",
        "10000-01-01",
        "0000-01-01",
        "2026-06-01T10:00:00 05:30",  # a '+' sent unencoded arrives as a space
        "2026-06-01T10:00:00+25:00",
        "2026-06-01\x00",
    ],
)
def test_a_created_bound_that_is_not_a_date_is_422_naming_it(
    api: Api, name: str, value: str
) -> None:
    """Not a date and time: 422 on the parameter, as for every other parameter."""
    created_at(api, 0)
    before = api.written()

    response = api.client.get("/api/tasks", params={name: value})

    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["query", name]
    assert "datetime" in problem["msg"]
    assert api.written() == before


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(st.integers(-2000, 2000), min_size=1, max_size=8),
    limit=st.integers(1, 4),
    data=st.data(),
)
def test_the_created_range_lists_what_the_full_listing_holds_in_it(
    api: Api, steps: list[int], limit: int, data: st.DataObject
) -> None:
    """For any creation times (ties, a wall clock stepped back), any bounds (none, on a
    creation time, a microsecond either side; in UTC, another zone, or none) and any page
    size: walking the filtered listing to its end gives exactly the full listing's tasks
    with created_from <= created_at < created_to, in id order."""
    with api.repo.engine.begin() as conn:
        conn.execute(delete(events))
        conn.execute(delete(tasks))
    for step in steps:
        api.clock.step_wall(step / 1000)
        api.client.post("/api/tasks", json=api.campaign())
    full = api.client.get("/api/tasks", params={"limit": 1000}).json()["items"]
    made = {item["id"]: datetime.fromisoformat(item["created_at"]) for item in full}
    moments = sorted(set(made.values()))
    micro = timedelta(microseconds=1)
    bound = st.none() | st.builds(
        lambda moment, shift: moment + shift,
        st.sampled_from(moments),
        st.sampled_from([-micro, timedelta(0), micro]),
    )
    zones = st.sampled_from(
        [None, UTC, timezone(timedelta(hours=-8)), timezone(timedelta(hours=14))]
    )
    low, high = data.draw(bound, label="created_from"), data.draw(bound, label="created_to")
    params: dict[str, str] = {}
    for name, moment in (("created_from", low), ("created_to", high)):
        if moment is not None:
            zone = data.draw(zones, label=f"{name} zone")
            shown = moment.replace(tzinfo=None) if zone is None else moment.astimezone(zone)
            params[name] = shown.isoformat()

    expected = [
        task_id
        for task_id, at in sorted(made.items())
        if (low is None or low <= at) and (high is None or at < high)
    ]
    assert walk(api, params, limit) == expected
