"""The sandbox DSP served by real uvicorn on a loopback port, spoken to with httpx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sluice.sandbox.config import SandboxConfig
from sluice.sandbox.server import SandboxServer


def _serve(**section: Any) -> SandboxServer:
    config = SandboxConfig.from_settings({"accept_delay_s": 0, "process_delay_s": 0, **section})
    return SandboxServer(config)


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    """The demo profile with faults off and a 5-per-minute limit, on a free port."""
    server = _serve(
        profile="demo",
        faults={"error_5xx": 0, "unavailable_503": 0, "reset": 0, "commit_then_timeout": 0},
        limits=[{"name": "app", "limit": 5, "window_s": 60}],
    )
    with server:
        yield server


def test_server_answers_on_a_free_loopback_port(sandbox: SandboxServer) -> None:
    """start() returns a working base URL on 127.0.0.1 with a real port."""
    assert sandbox.base_url == f"http://127.0.0.1:{sandbox.port}"
    assert sandbox.port != 0
    response = httpx.get(f"{sandbox.base_url}/healthz")
    assert response.json() == {"status": "ok"}
    assert response.headers["x-request-id"]


def test_create_poll_and_fixtures_over_http(sandbox: SandboxServer) -> None:
    """Over keep-alive HTTP a create is processed and batch status includes the fixtures."""
    with httpx.Client(base_url=str(sandbox.base_url)) as client:
        created = client.post("/v1/campaigns", json={"name": "c", "advertiser_id": "adv-1"})
        assert created.status_code == 202
        answer = client.get("/v1/status", params={"ids": f"{created.json()['id']},3"}).json()
    assert answer == [
        {"id": "cmp-1", "status": "Completed", "error_message": None},
        {"id": "3", "status": "Error", "error_message": "Invalid IP range: 192.168.1.256"},
    ]


def test_rate_limit_is_enforced_and_reported_truthfully(sandbox: SandboxServer) -> None:
    """Eight quick calls against 5 per minute: three 429s, and the stats say so exactly."""
    with httpx.Client(base_url=str(sandbox.base_url)) as client:
        codes = [client.get("/v1/status?ids=1").status_code for _ in range(8)]
        stats = client.get("/_sandbox/stats").json()
    assert codes == [200] * 5 + [429] * 3
    assert stats["refused"] == {"app:anonymous": 3}
    assert stats["max_in_window"]["app:anonymous"]["max_seen"] == 8


def test_reset_fault_drops_the_connection() -> None:
    """With reset at 100%, the client sees a broken answer rather than any status."""
    with _serve(faults={"reset": 1}) as server, httpx.Client(base_url=str(server.base_url)) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            c.get("/v1/status?ids=1")
        assert c.get("/_sandbox/stats").json()["requests"]["GET /v1/status"] == {"reset": 1}


def test_commit_then_timeout_times_the_client_out_but_the_object_exists() -> None:
    """The client times out, yet a lookup by client_ref finds the committed object."""
    faults = {"commit_then_timeout": 1, "hang_s": 30}
    with _serve(faults=faults) as server, httpx.Client(base_url=str(server.base_url)) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post(
                "/v1/campaigns",
                json={"name": "c", "advertiser_id": "adv-1", "client_ref": "order-1"},
                timeout=0.3,
            )
        found = c.get("/v1/campaigns", params={"client_ref": "order-1"}).json()["data"]
    assert [o["id"] for o in found] == ["cmp-1"]


def test_expired_tokens_are_refused_over_http() -> None:
    """With auth on, no token is 401 and a token from /oauth/token is accepted."""
    with _serve(auth=True) as server, httpx.Client(base_url=str(server.base_url)) as client:
        assert client.get("/v1/status").status_code == 401
        token = client.post("/oauth/token", json={"client_id": "a", "client_secret": "b"}).json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        assert client.get("/v1/status", headers=headers).status_code == 200
