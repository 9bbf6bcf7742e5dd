"""Bad input is refused with a useful status and field-level messages, and writes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Api


def problems(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text
    detail: list[dict[str, Any]] = response.json()["detail"]
    assert detail, "a 422 must say what is wrong"
    return detail


@pytest.fixture
def seeded(api: Api) -> Iterator[tuple[int, int]]:
    """One existing task; yields the (tasks, events) counts that must not change."""
    api.client.post("/api/tasks", json={"id": 1, "status": "Not Started"})
    before = api.written()
    yield before
    assert api.written() == before, "a refused request wrote something"


@pytest.mark.usefixtures("seeded")
def test_malformed_json_is_422(api: Api) -> None:
    """A body that is not JSON answers 422 saying so."""
    response = api.client.post(
        "/api/tasks", content=b'{"id": 2,', headers={"content-type": "application/json"}
    )

    detail = problems(response)
    assert detail[0]["loc"][0] == "body"
    assert "json" in detail[0]["type"].lower()


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"id": "two", "status": "Not Started"}, "id"),
        ({"id": 0, "status": "Not Started"}, "id"),
        ({"kind": "campaign", "payload": ["a", "list"]}, "payload"),
        ({"kind": 7, "payload": {}}, "kind"),
        ({"kind": "campaign", "payload": {}, "parent_id": "x"}, "parent_id"),
        ({"kind": "campaign", "payload": {}, "colour": "red"}, "colour"),
        ({"kind": "campaign", "payload": {"name": "a\u0000b"}}, "payload"),
        ({"kind": "camp\u0000aign", "payload": {}}, "kind"),
    ],
)
def test_wrong_types_name_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    """A wrongly typed, unstorable (NUL) or unknown field answers 422 naming that field."""
    detail = problems(api.client.post("/api/tasks", json=body))

    assert detail[0]["loc"] == ["body", field]


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_number_in_payload_is_422(api: Api, number: bytes) -> None:
    """NaN or Infinity (which Python's JSON parser accepts) in a payload answers 422."""
    body = b'{"kind": "campaign", "payload": {"budget": ' + number + b"}}"

    response = api.client.post(
        "/api/tasks", content=body, headers={"content-type": "application/json"}
    )

    detail = problems(response)
    assert detail[0]["loc"] == ["body", "payload"]
    assert "finite" in detail[0]["msg"]


@pytest.mark.usefixtures("seeded")
def test_unstorable_item_in_bulk_names_its_index(api: Api) -> None:
    """A bulk item whose payload holds NUL answers 422 naming the item; nothing is written."""
    body = (
        b'{"tasks": [{"kind": "campaign", "payload": {"a": 1}},'
        b' {"kind": "campaign", "payload": {"a": "x\\u0000"}}]}'
    )

    response = api.client.post(
        "/api/tasks/bulk", content=body, headers={"content-type": "application/json"}
    )

    detail = problems(response)
    assert detail[0]["index"] == 1
    assert detail[0]["loc"] == ["body", "tasks", 1, "payload"]


@pytest.mark.usefixtures("seeded")
def test_unknown_status_lists_known_statuses(api: Api) -> None:
    """An unknown status word answers 422 on 'status' listing the statuses that exist."""
    detail = problems(api.client.post("/api/tasks", json={"id": 2, "status": "Done"}))

    assert detail[0]["loc"] == ["body", "status"]
    for word in ("Not Started", "In Progress", "Completed", "Error"):
        assert word in detail[0]["msg"]


@pytest.mark.usefixtures("seeded")
def test_unknown_provider_lists_known_providers(api: Api) -> None:
    """An unknown provider answers 422 on 'provider' listing the configured ones."""
    detail = problems(api.client.post("/api/tasks", json=api.campaign(provider="acme2")))

    assert detail[0]["loc"] == ["body", "provider"]
    assert "'acme2'" in detail[0]["msg"]
    assert "known: acme, sandbox" in detail[0]["msg"]


@pytest.mark.usefixtures("seeded")
def test_unknown_kind_lists_known_kinds(api: Api) -> None:
    """A kind the provider does not offer answers 422 on 'kind' listing the ones it does."""
    detail = problems(api.client.post("/api/tasks", json=api.campaign(kind="video")))

    assert detail[0]["loc"] == ["body", "kind"]
    assert "known: campaign, creative" in detail[0]["msg"]


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "campaign"}, "payload"),
        ({"payload": {"a": 1}}, "kind"),
        ({"kind": "campaign", "payload": {}, "status": "Completed"}, "status"),
        ({"provider": "acme", "id": 5, "status": "Not Started"}, "kind"),
        ({"kind": "campaign", "payload": {}, "parent_id": 999}, None),
    ],
)
def test_inconsistent_submission_is_422(api: Api, body: dict[str, Any], field: str | None) -> None:
    """A submission breaking the task rules answers 422, on the offending field if any."""
    detail = problems(api.client.post("/api/tasks", json=body))

    if field is not None:
        assert ["body", field] in [d["loc"] for d in detail]


@pytest.mark.usefixtures("seeded")
def test_existing_id_is_409(api: Api) -> None:
    """Creating a task with an id that is taken answers 409 naming the id."""
    response = api.client.post("/api/tasks", json={"id": 1, "status": "In Progress"})

    assert response.status_code == 409
    assert response.json() == {"detail": "task 1 already exists"}
    assert api.client.get("/api/tasks/1").json()["status"] == "Not Started"


@pytest.mark.usefixtures("seeded")
def test_body_over_one_mebibyte_is_413(api: Api) -> None:
    """A single-task body over 1 MiB answers 413."""
    body = api.campaign(payload={"blob": "x" * (1024 * 1024)})

    response = api.client.post("/api/tasks", json=body)

    assert response.status_code == 413
    assert "1048576" in response.json()["detail"]


@pytest.mark.usefixtures("seeded")
def test_streamed_body_over_one_mebibyte_is_413(api: Api) -> None:
    """A body sent without Content-Length (chunked) is cut off at 1 MiB with 413 too."""

    def chunks() -> Iterator[bytes]:
        yield b'{"kind": "campaign", "payload": {"blob": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}}'

    response = api.client.post(
        "/api/tasks", content=chunks(), headers={"content-type": "application/json"}
    )

    assert response.status_code == 413


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/tasks/404"),
        ("GET", "/api/tasks/404/events"),
        ("POST", "/api/tasks/404/cancel"),
        ("POST", "/api/tasks/404/retry"),
    ],
)
def test_unknown_id_is_404(api: Api, method: str, path: str) -> None:
    """Every route about one task answers 404 with a JSON detail for an unknown id."""
    response = api.client.request(method, path)

    assert response.status_code == 404
    assert response.json() == {"detail": "task 404 not found"}


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize(
    "item",
    [
        b'{"kind": "campaign", "payload": {"a": "x\\ud800"}}',
        b'{"kind": "campaign", "payload": {}, "idempotency_key": "k\\udc00"}',
    ],
)
def test_an_unpaired_surrogate_in_a_bulk_item_is_422_and_nothing_is_written(
    api: Api, item: bytes
) -> None:
    """A JSON escape like \\ud800 with no partner is no UTF-8 text: a payload holding one
    was stored (and could never be sent), an idempotency key holding one was a 500. The
    seeded fixture checks that nothing was written."""
    body = b'{"tasks": [{"kind": "campaign", "payload": {"a": 1}}, ' + item + b"]}"

    response = api.client.post(
        "/api/tasks/bulk", content=body, headers={"content-type": "application/json"}
    )

    detail = problems(response)
    assert detail[0]["index"] == 1
    assert "surrogate" in detail[0]["msg"]


@pytest.mark.usefixtures("seeded")
def test_an_unpaired_surrogate_in_a_create_is_422_not_a_server_error(api: Api) -> None:
    """A single create whose payload held \\ud800 was a 500 (hashing the body for
    idempotency could not encode it)."""
    body = b'{"kind": "campaign", "payload": {"name": "a\\ud800b"}}'

    response = api.client.post(
        "/api/tasks", content=body, headers={"content-type": "application/json"}
    )

    detail = problems(response)
    assert detail[0]["loc"] == ["body", "payload"]
    assert "surrogate" in detail[0]["msg"]


def nested_payload(depth: int) -> dict[str, Any]:
    """A payload whose objects nest ``depth`` levels deep (the payload itself is level 1)."""
    payload: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        payload = {"a": payload}
    return payload


NESTING_CAP = 64


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("depth", [NESTING_CAP + 1, 300, 900])
@pytest.mark.parametrize("route", ["create", "create with Idempotency-Key", "bulk"])
def test_a_payload_nested_past_the_cap_is_422_naming_field_and_depth(
    api: Api, depth: int, route: str
) -> None:
    """A payload nested deeper than 64 levels answers 422 on its field naming the cap and its
    depth. One of ~256 levels was stored and then every answer showing it was a 500 (a
    single create answered 500 after its commit); nothing is written now (``seeded``)."""
    body = api.campaign(payload=nested_payload(depth))
    if route == "bulk":
        response = api.client.post("/api/tasks/bulk", json={"tasks": [api.campaign(), body]})
    else:
        headers = {"Idempotency-Key": "deep-1"} if "Idempotency" in route else {}
        response = api.client.post("/api/tasks", json=body, headers=headers)

    detail = problems(response)
    expected_loc = ["body", "tasks", 1, "payload"] if route == "bulk" else ["body", "payload"]
    assert detail[0]["loc"] == expected_loc
    assert detail[0]["msg"] == (
        f"objects and lists may nest at most {NESTING_CAP} levels deep, got {depth}"
    )
    assert api.client.get("/api/tasks").status_code == 200


def test_a_payload_nested_at_the_cap_is_stored_and_shown(api: Api) -> None:
    """A payload exactly 64 levels deep is accepted, and every answer shows it unchanged."""
    payload = nested_payload(NESTING_CAP)

    created = api.client.post("/api/tasks", json=api.campaign(payload=payload))
    bulk = api.client.post("/api/tasks/bulk", json={"tasks": [api.campaign(payload=payload)]})

    assert created.status_code == 201, created.text
    assert bulk.status_code == 201, bulk.text
    assert created.json()["payload"] == payload
    shown = api.client.get(f"/api/tasks/{bulk.json()['ids'][0]}")
    assert shown.status_code == 200
    assert shown.json()["payload"] == payload
    listed = api.client.get("/api/tasks")
    assert listed.status_code == 200
    assert [task["payload"] for task in listed.json()["items"]] == [payload, payload]


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32-be"])
@pytest.mark.parametrize("path", ["/api/tasks", "/api/tasks/bulk"])
def test_a_body_not_in_utf8_is_415_naming_the_encoding(api: Api, encoding: str, path: str) -> None:
    """JSON must be UTF-8 (RFC 8259): a UTF-16 or UTF-32 body answers 415 saying so, before
    it is parsed; it was stored (and a bulk one skipped the 10,000-item count)."""
    task = api.campaign()
    body = json.dumps(task if path == "/api/tasks" else {"tasks": [task] * 3}).encode(encoding)

    response = api.client.post(path, content=body, headers={"content-type": "application/json"})

    assert response.status_code == 415, response.text
    assert response.json()["detail"].startswith("request body must be UTF-8 JSON; this one is UTF-")


@pytest.mark.usefixtures("seeded")
def test_a_bulk_over_the_item_limit_in_utf16_is_refused_before_parsing(api: Api) -> None:
    """20,000 items in UTF-16 whose names hold an escaped quote were counted as 10,000 (the
    count reads UTF-8 bytes), so the whole body was read and parsed; it is refused at once."""
    task = api.campaign(payload={"name": '5" screen'})
    body = json.dumps({"tasks": [task] * 20_000}).encode("utf-16-le")

    response = api.client.post(
        "/api/tasks/bulk", content=body, headers={"content-type": "application/json"}
    )

    assert response.status_code == 415, response.text


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("path", ["/api/tasks", "/api/tasks/bulk"])
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"id": ' + b"1" * 5000 + b', "status": "Not Started"}',
            "request body is not valid JSON here: a number has more than 4300 digits",
        ),
        (
            b'{"kind": "campaign", "payload": {"name": "caf\xe9"}}',
            "request body is not UTF-8: byte 0xe9 at position 45 cannot be decoded",
        ),
        (
            b"[" * 100_000 + b"]" * 100_000,
            "request body is nested too deeply to parse (a payload may nest 64 levels)",
        ),
    ],
)
def test_a_body_that_cannot_be_parsed_is_422_saying_why(
    api: Api, path: str, body: bytes, message: str
) -> None:
    """A body with a 5,000-digit number, bytes that are not UTF-8, or 100,000 nested lists
    answered FastAPI's bare 400 "There was an error parsing the body"; the answer now says
    what is wrong, in the shape of any other unparsable JSON (422 on ["body"])."""
    response = api.client.post(path, content=body, headers={"content-type": "application/json"})

    assert problems(response) == [{"loc": ["body"], "msg": message, "type": "json_invalid"}]


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("path", ["/api/tasks", "/api/audit"])
@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "aWQ6eA",
        "aWQ6MTAwMDAwMDAwMDAwMDAwMDAwMDA",
        # 'id:' and an id Python's int() reads but no listing writes: an Arabic-Indic
        # digit, a space, a sign, an underscore
        "aWQ62aM",
        "aWQ6IDM",
        "aWQ6KzM",
        "aWQ6M18w",
    ],
)
def test_a_cursor_no_listing_returned_is_422_on_the_cursor(
    api: Api, path: str, cursor: str
) -> None:
    """A cursor that is not one a listing returned (not base64, 'id:x', an id past 2**53,
    digits other than ASCII ones) is refused on ["query", "cursor"]; the refusal named
    ["body"], which a GET has none of."""
    response = api.client.get(path, params={"cursor": cursor})

    (problem,) = problems(response)
    assert problem["loc"] == ["query", "cursor"]
    assert f"cursor {cursor!r} is not a cursor this API returned" in problem["msg"]


@pytest.mark.usefixtures("seeded")
def test_an_idempotency_key_twice_in_one_bulk_is_422_naming_both_items(api: Api) -> None:
    """Two items of one batch with the same idempotency key answered 409 "Idempotency-Key
    already used", naming no item; the batch is refused on the later item, naming both."""
    tasks = [
        api.campaign(idempotency_key="spring-1"),
        api.campaign(idempotency_key="spring-2"),
        api.campaign(idempotency_key="spring-1"),
    ]

    detail = problems(api.client.post("/api/tasks/bulk", json={"tasks": tasks}))

    assert detail == [
        {
            "loc": ["body", "tasks", 2, "idempotency_key"],
            "msg": "idempotency_key 'spring-1' is also item 0's; each item needs its own",
            "type": "value_error",
            "index": 2,
        }
    ]


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("priority", [True, False, "5", 5.0, 2.5])
@pytest.mark.parametrize("bulk", [False, True])
def test_a_priority_that_is_not_an_integer_is_422(api: Api, priority: Any, bulk: bool) -> None:
    """priority is an integer, -100..100: true, "5" and 5.0 were taken as 1, 5 and 5; they
    are refused on the field, in a bulk call on the item's."""
    body = api.campaign(priority=priority)
    if bulk:
        response = api.client.post("/api/tasks/bulk", json={"tasks": [body]})
    else:
        response = api.client.post("/api/tasks", json=body)

    (problem,) = problems(response)
    assert problem["loc"] == (["body", "tasks", 0, "priority"] if bulk else ["body", "priority"])
    assert problem["msg"] == "Input should be a valid integer"


@pytest.mark.usefixtures("seeded")
def test_an_idempotency_key_header_on_bulk_is_422_and_nothing_is_written(api: Api) -> None:
    """The header was read by `POST /api/tasks` only: on `/api/tasks/bulk` it was ignored
    without a word, so a client retrying a batch whose answer it lost (a `sluice up` killed
    mid-answer) created the whole batch again under "its" key, 5,000 tasks each time. Now
    it is refused, naming the per-item field to use, and the batch is not written."""
    before = api.client.get("/api/tasks", params={"limit": 1000}).json()["items"]
    body = {"tasks": [api.campaign(), api.campaign()]}

    response = api.client.post("/api/tasks/bulk", json=body, headers={"Idempotency-Key": "b-1"})

    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "loc": ["body"],
            "msg": "POST /api/tasks/bulk does not read the Idempotency-Key header (a retry "
            "would create every task again); give each item its own idempotency_key",
            "type": "value_error",
        }
    ]
    assert api.client.get("/api/tasks", params={"limit": 1000}).json()["items"] == before


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize(
    ("url", "unknown", "takes"),
    [
        ("/api/tasks?stauts=Error", "stauts", "cursor, kind, limit, parent_id, provider, status"),
        ("/api/tasks?status=Error&page=2", "page", "cursor, kind, limit, parent_id,"),
        ("/api/tasks?created_since=2026-01-01", "created_since", "created_from, created_to, "),
        ("/api/tasks/1?verbose=1", "verbose", "no query parameters"),
        ("/api/overview?provider=sandbox", "provider", ""),
        ("/api/audit?action=task.cancel&x=1", "x", "action, cursor, key_id, limit"),
    ],
)
def test_a_query_parameter_the_route_does_not_take_is_422_naming_it(
    api: Api, url: str, unknown: str, takes: str
) -> None:
    """FastAPI ignores an undeclared query parameter: `?stauts=Error` (a typo) listed every
    task as if no filter had been asked for."""
    detail = problems(api.client.get(url))
    assert [d["loc"] for d in detail] == [["query", unknown]]
    assert detail[0]["type"] == "extra_forbidden"
    assert detail[0]["msg"].startswith("unknown query parameter (this route takes: ")
    assert takes in detail[0]["msg"]


@pytest.mark.usefixtures("seeded")
def test_the_query_parameters_a_route_takes_are_still_read(api: Api) -> None:
    listed = api.client.get("/api/tasks?status=Not%20Started&limit=5&tenant=default")
    assert listed.status_code == 200, listed.text
    assert [t["id"] for t in listed.json()["items"]] == [1]
    dated = api.client.get("/api/tasks?created_from=2000-01-01&created_to=3000-01-01T00:00:00Z")
    assert dated.status_code == 200, dated.text
    assert [t["id"] for t in dated.json()["items"]] == [1]
    assert api.client.get("/healthz?probe=lb").status_code == 200  # probes may add their own
