"""A request that finds every pooled connection in use answers 503, like any other
database outage.

When the database's host vanishes (a network partition), each request waiting on it holds
one of the process's pooled connections for 10-40 s (docs/deployment.md). Once all 30 are
held, the next request waits for one for the pool's timeout (30 s), and SQLAlchemy's
``TimeoutError`` was not Sluice's: measured on a real partition with 96 clients, requests
were answered ``500 Internal Server Error`` (text, no ``Retry-After``) and the API logged
a traceback for each. Here one held connection is the whole pool.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from sluice import errors
from sluice.api.app import create_app
from sluice.settings import Settings
from sluice.store import db
from sluice.store.repository import TaskRepository
from tests.unit.api.conftest import CATALOG

pytestmark = pytest.mark.postgres

EXPECTED = (
    "database unavailable: no free connection within 0.2 s: "
    "all 1 of this process's connections to it are in use"
)


def test_a_request_that_finds_every_connection_in_use_is_a_503(postgres_url: str) -> None:
    engine = db.make_engine(postgres_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        db.upgrade(engine)
        app = create_app(Settings(database_url=postgres_url), TaskRepository(engine), CATALOG)
        with engine.connect():
            with pytest.raises(errors.StoreUnavailable) as raised:
                engine.connect()
            assert str(raised.value) == EXPECTED
            assert db.transient(raised.value)
            # The open loopback mode (a loopback Host): no key to look up.
            with TestClient(app, base_url="http://localhost") as client:
                answer = client.get("/api/tasks")
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "5"
        assert answer.json() == {"detail": EXPECTED}
    finally:
        engine.dispose()
