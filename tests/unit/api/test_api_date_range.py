"""Dates and times at the edge of Python's range (year 1 east of UTC, year 9999 west of it)
are refused naming the field, never a 500: as UTC they fall outside years 1-9999."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Api

EDGES = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]


def requests(value: str) -> list[tuple[str, str, dict[str, Any], list[str]]]:
    """(method, path, body or query, the loc of the refusal) for each date field."""
    return [
        (
            "POST",
            "/api/bulk-actions/preview",
            {"action": "retry", "filter": {"created_from": value}},
            ["body", "filter", "created_from"],
        ),
        (
            "POST",
            "/api/bulk-actions",
            {"action": "cancel", "filter": {"created_to": value}},
            ["body", "filter", "created_to"],
        ),
        ("GET", "/api/tasks", {"created_from": value}, ["query", "created_from"]),
        ("GET", "/api/tasks", {"created_to": value}, ["query", "created_to"]),
        ("GET", "/api/audit", {"since": value}, ["query", "since"]),
        ("GET", "/api/audit", {"until": value}, ["query", "until"]),
        (
            "POST",
            "/api/providers/sandbox/pause",
            {"reason": "maintenance", "until": value},
            ["body", "until"],
        ),
    ]


CASES = [case for value in EDGES for case in requests(value)]


@pytest.mark.parametrize(("method", "path", "given", "loc"), CASES)
def test_a_date_out_of_range_in_utc_is_422_naming_the_field(
    api: Api, method: str, path: str, given: dict[str, Any], loc: list[str]
) -> None:
    """Each date a request may carry answers 422 on its own field when it cannot be
    expressed in UTC; it was a 500 (OverflowError in clock.as_utc). Nothing is written."""
    api.client.post("/api/tasks", json=api.campaign())
    before = api.written()
    if method == "GET":
        response = api.client.get(path, params=given)
    else:
        response = api.client.post(path, json=given)

    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == loc
    assert "out of range in UTC" in problem["msg"]
    assert api.written() == before
    assert api.client.get("/api/providers").json()[0]["pause"] is None


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59Z"])
def test_the_first_and_last_moments_in_utc_are_accepted(api: Api, value: str) -> None:
    """The range's own ends, given in UTC, are dates like any other."""
    api.client.post("/api/tasks", json=api.campaign())

    preview = api.client.post(
        "/api/bulk-actions/preview", json={"action": "cancel", "filter": {"created_to": value}}
    )
    audit = api.client.get("/api/audit", params={"until": value})
    listed = api.client.get("/api/tasks", params={"created_to": value})

    assert preview.status_code == 200, preview.text
    assert preview.json()["count"] == (1 if value.startswith("9999") else 0)
    assert listed.status_code == 200, listed.text
    assert len(listed.json()["items"]) == (1 if value.startswith("9999") else 0)
    assert audit.status_code == 200, audit.text
