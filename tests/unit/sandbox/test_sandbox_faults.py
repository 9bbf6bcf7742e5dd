"""Fault injection: seeded, off by default, and each fault answers as documented."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from starlette.testclient import TestClient

from sluice.clock import FakeClock
from sluice.sandbox.app import create_sandbox_app
from sluice.sandbox.config import FaultRates, SandboxConfig
from sluice.sandbox.faults import Fault, FaultInjector

CAMPAIGN = {"name": "c", "advertiser_id": "adv-1", "client_ref": "r1"}


class RecordingSleep:
    """Stands in for asyncio.sleep: advances the fake clock and remembers each wait."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(seconds)


def _client(faults: dict[str, Any], **section: Any) -> tuple[TestClient, RecordingSleep]:
    clock = FakeClock()
    sleep = RecordingSleep(clock)
    config = SandboxConfig.from_settings({"faults": faults, **section})
    return TestClient(create_sandbox_app(config, clock.time, sleep=sleep)), sleep


def _draws(rates: FaultRates, seed: int, count: int) -> list[Fault | None]:
    injector = FaultInjector(rates, seed)
    return [injector.draw(create=True, auth=False).fault for _ in range(count)]


def test_same_seed_same_faults_and_rates_are_honoured() -> None:
    """One seed always yields the same fault sequence, at about the configured rates."""
    rates = FaultRates(error_5xx=0.1, reset=0.05)
    first = _draws(rates, seed=42, count=20_000)
    assert first == _draws(rates, seed=42, count=20_000)
    assert first != _draws(rates, seed=43, count=20_000)
    counts = Counter(first)
    assert 0.09 < counts[Fault.ERROR_5XX] / 20_000 < 0.11
    assert 0.04 < counts[Fault.RESET] / 20_000 < 0.06


def test_creates_only_and_auth_only_faults_stay_in_their_lane() -> None:
    """commit_then_timeout never hits reads and token_expiry never hits without auth."""
    injector = FaultInjector(FaultRates(commit_then_timeout=0.5, token_expiry=0.5), seed=1)
    plans = [injector.draw(create=False, auth=False) for _ in range(1_000)]
    assert all(plan.fault is None for plan in plans)


def test_faults_are_off_by_default() -> None:
    """Without a faults table, every call succeeds and no fault is counted."""
    client, _ = _client({})
    assert {client.get("/v1/status?ids=1").status_code for _ in range(40)} == {200}
    assert client.get("/_sandbox/stats").json()["faults"] == {}


def test_error_5xx_answers_500_and_creates_nothing() -> None:
    """An injected 500 carries code INTERNAL and the create did not happen."""
    client, _ = _client({"error_5xx": 1})
    response = client.post("/v1/campaigns", json=CAMPAIGN)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "INTERNAL"
    stats = client.get("/_sandbox/stats").json()
    assert "campaigns" not in stats["objects"]
    assert stats["faults"] == {"error_5xx": 1}


def test_unavailable_503_says_retry_after_one_second() -> None:
    """An injected 503 carries Retry-After: 1."""
    client, _ = _client({"unavailable_503": 1})
    response = client.get("/v1/status")
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")


def test_error_body_is_a_200_whose_body_is_an_error() -> None:
    """The error_body fault answers 200 with an error object instead of the data."""
    client, _ = _client({"error_body": 1})
    response = client.get("/v1/status?ids=1")
    assert response.status_code == 200
    assert response.json()["error"]["is_transient"] is True


def test_commit_then_timeout_creates_the_object_then_hangs() -> None:
    """The object exists (findable by client_ref) although the answer waits hang_s."""
    client, sleep = _client({"commit_then_timeout": 1, "hang_s": 30})
    response = client.post("/v1/campaigns", json=CAMPAIGN)
    assert sleep.waits == [30]
    assert response.status_code == 202
    client.put("/_sandbox/config", json={"faults": {"commit_then_timeout": 0}})
    found = client.get("/v1/campaigns?client_ref=r1").json()["data"]
    assert [o["id"] for o in found] == ["cmp-1"]
    assert client.get("/_sandbox/stats").json()["faults"] == {"commit_then_timeout": 1}


def test_slow_answers_normally_but_late() -> None:
    """A slow call waits slow_s and then answers as usual."""
    client, sleep = _client({"slow": 1, "slow_s": 4})
    response = client.post("/v1/campaigns", json=CAMPAIGN)
    assert (response.status_code, sleep.waits) == (202, [4])


def test_token_expiry_answers_401_to_a_valid_token() -> None:
    """With auth on, token_expiry makes a fresh token look expired."""
    client, _ = _client({"token_expiry": 1}, auth=True)
    token = client.post("/oauth/token", json={"client_id": "a", "client_secret": "b"}).json()
    response = client.get(
        "/v1/status", headers={"Authorization": f"Bearer {token['access_token']}"}
    )
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]


@pytest.mark.parametrize("fault", ["error_5xx", "unavailable_503", "reset"])
def test_refused_calls_draw_no_fault(fault: str) -> None:
    """A call the limiter refuses is answered as refused, never as a fault."""
    client, _ = _client({fault: 1}, limits=[{"name": "app", "limit": 1, "window_s": 60}])
    client.get("/v1/status")
    assert client.get("/v1/status").status_code == 429
    assert client.get("/_sandbox/stats").json()["faults"] == {fault: 1}
