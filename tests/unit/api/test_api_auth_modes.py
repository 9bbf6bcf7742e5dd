"""SLUICE_AUTH: `auto` opens the API only to plain loopback requests on a loopback server,
`required` never, `off` always; and the servers refuse to start open to the network."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sluice import apikeys, errors
from sluice.api.auth import startup_notice
from sluice.settings import Settings
from sluice.store import db
from sluice.store.keys import KeyStore

if TYPE_CHECKING:
    from conftest import SecuredApi

Make = Callable[..., "SecuredApi"]


@pytest.fixture
def loopback(make_secured: Make) -> SecuredApi:
    """SLUICE_AUTH=auto on a server listening on 127.0.0.1 (the `make run` demo)."""
    return make_secured(auth="auto", host="127.0.0.1")


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000"])
def test_auto_is_open_to_plain_loopback_requests(loopback: SecuredApi, host: str) -> None:
    """With no key, a request with a loopback Host and no proxy header may do anything;
    its tasks belong to tenant 'default'."""
    created = loopback.client.post(
        "/api/tasks", json={"id": 1, "status": "Not Started"}, headers={"Host": host}
    )
    listed = loopback.client.get("/api/keys", headers={"Host": host})

    assert created.status_code == 201, created.text
    assert created.json()["tenant"] == "default"
    assert listed.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-For": "203.0.113.9"},
        {"X-Forwarded-Proto": "https"},
        {"X-Forwarded-Host": "sluice.example.com"},
        {"Forwarded": "for=203.0.113.9"},
        {"X-Real-IP": "203.0.113.9"},
        {"Via": "1.1 proxy"},
        {"Host": "sluice.example.com"},
        {"Host": "localhost.attacker.example"},
        {"Host": "127.0.0.1.nip.io:8000"},
        {"Host": "10.0.0.5:8000"},
    ],
)
def test_auto_needs_a_key_for_proxied_or_foreign_host_requests(
    loopback: SecuredApi, headers: dict[str, str]
) -> None:
    """A proxy header (a reverse proxy makes the API public) or a non-loopback Host (DNS
    rebinding) means a key is needed, even on a loopback server; nothing is written."""
    before = loopback.written()

    response = loopback.client.post(
        "/api/tasks", json={"id": 1, "status": "Not Started"}, headers=headers
    )

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert loopback.written() == before
    with_key = loopback.client.get("/api/tasks", headers=headers | loopback.auth("viewer"))
    assert with_key.status_code == 200


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "http://localhost:3000", "http://127.0.0.1:9999", "null"]
)
def test_auto_needs_a_key_for_a_cross_site_browser_request(
    loopback: SecuredApi, origin: str
) -> None:
    """A page of another site in a local browser reaches 127.0.0.1 under its own name (a
    form or a no-cors fetch: no preflight, the browser adds its Origin): it needs a key, so
    it cannot cancel a task or resume a provider; the same origin (Swagger UI) stays open.
    (Headless Chromium cancelled a task and resumed a provider from a localhost:8650 page.)"""
    own = {"Host": "127.0.0.1:8000"}
    created = loopback.client.post(
        "/api/tasks", json={"id": 7, "status": "In Progress"}, headers=own
    )
    assert created.status_code == 201, created.text
    before = loopback.written()
    browser = own | {"Origin": origin, "Content-Type": "text/plain"}

    cancel = loopback.client.post("/api/tasks/7/cancel", headers=browser)
    resume = loopback.client.post("/api/providers/sandbox/resume", headers=browser)
    read = loopback.client.get("/api/tasks", headers=browser)

    assert (cancel.status_code, resume.status_code, read.status_code) == (401, 401, 401)
    assert loopback.written() == before
    same_origin = own | {"Origin": "http://127.0.0.1:8000"}
    assert loopback.client.post("/api/tasks/7/cancel", headers=same_origin).status_code == 200


def test_auto_on_a_public_address_needs_a_key(make_secured: Make) -> None:
    """A server listening on 0.0.0.0 needs a key even for a loopback Host."""
    api = make_secured(auth="auto", host="0.0.0.0")

    assert api.client.get("/api/tasks").status_code == 401
    assert api.client.get("/api/tasks", headers=api.auth("viewer")).status_code == 200


def test_required_needs_a_key_on_loopback_too(make_secured: Make) -> None:
    """SLUICE_AUTH=required asks a loopback request for a key."""
    api = make_secured(auth="required", host="127.0.0.1")

    assert api.client.get("/api/tasks").status_code == 401


def test_off_is_open_to_every_request(make_secured: Make) -> None:
    """SLUICE_AUTH=off lets in a request from anywhere, through a proxy, with no key."""
    api = make_secured(auth="off", host="0.0.0.0")

    response = api.client.get(
        "/api/keys", headers={"Host": "sluice.example.com", "X-Forwarded-For": "203.0.113.9"}
    )

    assert response.status_code == 200


def test_a_key_given_on_loopback_is_used_not_ignored(loopback: SecuredApi) -> None:
    """On the open loopback mode a presented key still counts: a bad one is 401 (no
    falling back to open), a viewer's is held to its role and tenant."""
    bad = loopback.client.get("/api/tasks", headers={"Authorization": "Bearer nope"})
    as_viewer = loopback.client.post(
        "/api/tasks", json=loopback.campaign(), headers=loopback.auth("viewer")
    )

    assert bad.status_code == 401
    assert as_viewer.status_code == 403


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[KeyStore]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    db.ensure_schema(engine)
    yield KeyStore(engine)
    engine.dispose()


def test_servers_refuse_to_start_open_to_the_network(keys: KeyStore) -> None:
    """No key on a non-loopback address, or SLUICE_AUTH=off, refuses to start unless
    --insecure; each message names the way out."""
    public = Settings(host="0.0.0.0")
    with pytest.raises(errors.ConfigError, match="not loopback, and no API key exists"):
        startup_notice(public, keys, insecure=False)
    with pytest.raises(errors.ConfigError, match="--insecure"):
        startup_notice(Settings(auth="off"), keys, insecure=False)

    assert "anyone" in startup_notice(Settings(auth="off"), keys, insecure=True)
    assert "no API key exists" in startup_notice(public, keys, insecure=True)
    apikeys.create_key(keys, name="root", role="admin")
    assert startup_notice(public, keys, insecure=False) == (
        "auth is on: every request needs an API key (1 usable)"
    )


def test_the_demo_says_auth_is_off_because_of_loopback(keys: KeyStore) -> None:
    """On 127.0.0.1 in auto mode the start message says auth is off and why."""
    notice = startup_notice(Settings(host="127.0.0.1"), keys, insecure=False)

    assert notice.startswith("auth is off because the API listens on loopback (127.0.0.1) only")
