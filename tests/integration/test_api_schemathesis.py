"""Requests generated from the API's own OpenAPI schema never cause a 5xx, on SQLite and
PostgreSQL; nor do the values only PostgreSQL cannot store.

Schemathesis's pytest integration (``from_fixture``) does not run under pytest 9, and
``@schema.parametrize()`` needs the app at import time; so the test loads the schema from
an app built in a fixture and drives each operation's Hypothesis strategy itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, openapi
from schemathesis.checks import not_a_server_error
from schemathesis.generation.case import Case
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import response_schema_conformance

from sluice.api.app import create_app
from sluice.catalog import Catalog, ProviderInfo
from sluice.clock import FakeClock
from sluice.domain import Submission
from sluice.settings import Settings
from sluice.store import db
from sluice.store.repository import TaskRepository
from tests.unit.api.conftest import make_controls

CATALOG = Catalog(
    providers={
        "sandbox": ProviderInfo(kinds=frozenset({"campaign", "creative"}), can_track=True),
        "acme": ProviderInfo(kinds=frozenset({"campaign"}), can_track=False),
    },
    default_provider="sandbox",
)
# Kept small so the suite stays under a minute; raise it to hunt (e.g. 1000).
EXAMPLES_PER_OPERATION = int(os.environ.get("SLUICE_TEST_FUZZ_EXAMPLES", "50"))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FastAPI]:
    """The API on a fresh database of each backend, holding a few tasks."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fuzz.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    # Open to every Host (the test clients' is not loopback): the fuzz is about input;
    # who may call is the auth matrix's business (tests/unit/api/test_api_auth_matrix.py).
    app_settings = Settings(database_url=url, auth="off")
    engine = db.make_engine(app_settings.database_url)
    db.ensure_schema(engine)
    repo = TaskRepository(engine)
    # A few low ids exist, so generated ids sometimes hit real tasks in every state.
    repo.create(Submission("sandbox", id=1))
    repo.create_many(
        [Submission("sandbox", "campaign", {"n": 1}), Submission("acme", "campaign", {})]
    )
    repo.create(Submission("sandbox", "creative", {}, parent_id=2))
    repo.cancel(3)
    yield create_app(app_settings, repo, CATALOG, controls=make_controls(engine, FakeClock()))
    engine.dispose()


def operations(app: FastAPI) -> list[APIOperation]:
    schema = openapi.from_asgi("/openapi.json", app)
    found = [result.ok() for result in schema.get_all_operations()]
    assert len(found) >= 10, "the schema lost operations"
    return found


def exercise(operation: APIOperation, mode: GenerationMode) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Case) -> None:
        case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])

    run()


def has_input(operation: APIOperation) -> bool:
    """Whether the operation takes anything a negative test could get wrong."""
    return bool({"parameters", "requestBody"} & set(operation.definition.raw))


# Every operation in one test: about 25 of them at 50 examples each outgrow the default
# 120 s on a loaded host.
@pytest.mark.timeout(480)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(app: FastAPI, mode: GenerationMode) -> None:
    """No generated request, valid or not, makes any operation answer 5xx or break its schema."""
    for operation in operations(app):
        if mode is GenerationMode.NEGATIVE and not has_input(operation):
            continue
        exercise(operation, mode)


@pytest.mark.parametrize(
    "body",
    [
        b'{"kind": "campaign", "payload": {"budget": NaN}}',
        b'{"kind": "campaign", "payload": {"budget": -Infinity}}',
        b'{"kind": "campaign", "payload": {"name": "a\\u0000b"}}',
        b'{"kind": "campaign", "payload": {"a\\u0000": 1}}',
    ],
)
def test_unstorable_payloads_are_422_on_every_backend(app: FastAPI, body: bytes) -> None:
    """Values PostgreSQL cannot store (NUL, NaN, Infinity) answer 422 on both backends."""
    with TestClient(app) as client:
        response = client.post(
            "/api/tasks", content=body, headers={"content-type": "application/json"}
        )
        listing = client.get("/api/tasks", params={"kind": "campaign\x00"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "payload"]
    assert listing.status_code == 422
