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
