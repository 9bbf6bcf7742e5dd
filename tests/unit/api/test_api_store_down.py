"""With the database unreachable, the API answers a clear 503 JSON and /readyz says why."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from sluice.api.app import create_app
from sluice.settings import Settings
from sluice.store import db
from sluice.store.repository import TaskRepository
from tests.unit.api.conftest import CATALOG

PASSWORD = "pa55-w0rd"


@pytest.fixture
def client() -> Iterator[TestClient]:
    """An API whose PostgreSQL database refuses connections (nothing listens on port 1)."""
    url = f"postgresql://sluice:{PASSWORD}@127.0.0.1:1/sluice"
    engine = db.make_engine(url)
    app = create_app(Settings(database_url=url), TaskRepository(engine), CATALOG)
    # The open loopback mode (a loopback Host): no key to look up in the missing database.
    with TestClient(app, base_url="http://localhost") as c:
        yield c
    engine.dispose()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/tasks/1", None),
        ("GET", "/api/tasks", None),
        ("POST", "/api/tasks", {"id": 1, "status": "Not Started"}),
        ("POST", "/api/tasks/1/cancel", None),
    ],
)
def test_requests_get_503_json_without_password(
    client: TestClient, method: str, path: str, body: dict[str, object] | None
) -> None:
    """Every route answers 503 {"detail": "database unavailable: ..."} with Retry-After."""
    answer = client.request(method, path, json=body)

    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["retry-after"] == "5"
    detail = answer.json()["detail"]
    assert detail.startswith("database unavailable: connection failed")
    assert "\n" not in detail
    assert PASSWORD not in answer.text
    assert_no_address(answer.text)


def assert_no_address(text: str) -> None:
    """Any caller may read a 503 (a made-up key cannot be checked while the database is
    down) and /readyz: they named the database's host and port (`connection to server at
    "127.0.0.1", port 1 failed`), which are the operator's business."""
    assert "127.0.0.1" not in text
    assert "port 1 " not in text
    assert "connection to the server failed: Connection refused" in text


@pytest.mark.parametrize("path", ["/ui", "/ui/tasks", "/ui/tasks/1", "/ui/audit"])
def test_console_pages_say_the_database_is_unavailable_and_reload(
    client: TestClient, path: str
) -> None:
    """A console page is an HTML page (the reason, no address), not the API's JSON, with
    Retry-After, and it reloads itself after as long."""
    answer = client.get(path)

    assert answer.status_code == 503
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.headers["retry-after"] == "5"
    assert "<h1>Database unavailable</h1>" in answer.text
    assert "database unavailable: connection failed" in answer.text
    assert '<meta http-equiv="refresh" content="5">' in answer.text
    assert "content-security-policy" in answer.headers
    assert PASSWORD not in answer.text
    assert_no_address(answer.text)


def test_a_console_form_sent_while_the_database_is_down_is_not_sent_again(
    client: TestClient,
) -> None:
    """A form's answer does not reload itself (that would send it again). The session
    cookie makes the console look the session up first, in the missing database."""
    client.cookies.set("sluice_session", "s" * 43)
    answer = client.post("/ui/controls", data={"csrf_token": "t"})

    assert answer.status_code == 503
    assert answer.headers["content-type"].startswith("text/html")
    assert "<h1>Database unavailable</h1>" in answer.text
    assert "http-equiv" not in answer.text
    assert_no_address(answer.text)


def test_a_key_that_cannot_be_checked_gets_503_not_401(client: TestClient) -> None:
    """A request with a key while the database is down is 503 (retry), not 401 (bad key)."""
    key = "sk_0123456789ab_" + "A" * 43

    answer = client.get("/api/tasks", headers={"Authorization": f"Bearer {key}"})

    assert answer.status_code == 503
    assert answer.json()["detail"].startswith("database unavailable")
    assert_no_address(answer.text)


def test_readyz_names_the_database_and_why(client: TestClient) -> None:
    """/readyz answers 503 with the database check's reason, password never shown."""
    answer = client.get("/readyz")

    assert answer.status_code == 503
    database = answer.json()["checks"]["database"]
    assert database.startswith("error: StoreUnavailable: database unavailable: connection failed")
    assert PASSWORD not in answer.text
    assert_no_address(answer.text)
