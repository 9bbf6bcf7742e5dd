"""Costs: weighted sliding windows and the DV360-like profile (heavy writes count 5)."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from sluice.clock import FakeClock
from sluice.sandbox.app import create_sandbox_app
from sluice.sandbox.config import LimitSpec, SandboxConfig
from sluice.sandbox.limiter import SandboxLimiter

AUDIENCE = {"name": "office", "advertiser_id": "adv-1", "type": "ip_range", "include": []}


def _units_in_window(log: list[tuple[float, int]], end: float, window_s: float) -> int:
    """Brute force: units admitted in the half-open window (end - W, end]."""
    return sum(cost for t, cost in log if t <= end and end - t < window_s)


@settings(max_examples=300, deadline=None)
@given(
    calls=st.lists(
        st.tuples(st.integers(min_value=0, max_value=4_000), st.sampled_from([1, 1, 2, 5])),
        max_size=150,
    ).map(sorted),
    limit=st.integers(min_value=5, max_value=30),
    window_ms=st.integers(min_value=1, max_value=2_000),
)
def test_weighted_window_never_holds_more_units_than_the_limit(
    calls: list[tuple[int, int]], limit: int, window_ms: int
) -> None:
    """Units admitted in any window never exceed the limit; a refusal faced a full window."""
    window_s = window_ms / 1000
    spec = LimitSpec(name="w", limit=limit, window_s=window_s, weighted=True)
    limiter = SandboxLimiter([spec])
    admitted: list[tuple[float, int]] = []
    for ms, cost in calls:
        now = ms / 1000
        verdict = limiter.arrive(now, write=True, app_key="a", cost=cost)
        before = _units_in_window(admitted, now, window_s)
        if verdict.admitted:
            assert before + cost <= limit
            admitted.append((now, cost))
        else:
            assert before + cost > limit
            free_at = verdict.free_at
            assert _units_in_window(admitted, free_at, window_s) + cost <= limit
    for end, _ in admitted:
        assert _units_in_window(admitted, end, window_s) <= limit


def test_unweighted_limits_charge_one_whatever_the_cost() -> None:
    """A cost-5 call spends 5 of a weighted budget and 1 of an unweighted one."""
    limiter = SandboxLimiter(
        [
            LimitSpec(name="all", limit=3, window_s=60),
            LimitSpec(name="writes", scope="write", limit=10, window_s=60, weighted=True),
        ]
    )
    assert limiter.arrive(0.0, write=True, app_key="a", cost=5).admitted
    assert limiter.arrive(0.0, write=True, app_key="a", cost=5).admitted
    refused = limiter.arrive(0.0, write=True, app_key="a", cost=1)
    assert [r.limit_key for r in refused.refusals] == ["writes:a"]
    assert limiter.arrive(0.0, write=False, app_key="a").admitted
    refused = limiter.arrive(0.0, write=False, app_key="a")
    assert [r.limit_key for r in refused.refusals] == ["all:a"]
    assert limiter.snapshot()["writes:a"].report(0.0) == {
        "limit": 10,
        "window_s": 60.0,
        "max_seen": 11,
        "weighted": True,
    }


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"costs": {"POST /v1/audiences": 0}}, "at least 1"),
        ({"costs": {"audiences": 5}}, "is not a route like 'POST /v1/audiences'"),
        (
            {
                "costs": {"POST /v1/audiences": 5},
                "limits": [
                    {"name": "w", "scope": "write", "limit": 4, "window_s": 60, "weighted": True}
                ],
            },
            "limit 'w' allows 4 units, below the cost 5 of 'POST /v1/audiences'",
        ),
        (
            {
                "limits": [
                    {"name": "b", "kind": "bucket", "limit": 4, "window_s": 1, "weighted": True}
                ]
            },
            "a bucket limit cannot be weighted",
        ),
    ],
)
def test_bad_costs_are_refused_naming_the_problem(section: dict[str, Any], message: str) -> None:
    """Costs below 1, keys that are not routes and costs no weighted limit could admit fail."""
    with pytest.raises(pydantic.ValidationError, match=message):
        SandboxConfig.from_settings(section)


def test_a_read_only_limit_ignores_write_costs() -> None:
    """A weighted read budget smaller than a write's cost is fine: writes never reach it."""
    config = SandboxConfig.from_settings(
        {
            "costs": {"POST /v1/audiences": 5},
            "limits": [{"name": "r", "scope": "read", "limit": 2, "window_s": 1, "weighted": True}],
        }
    )
    assert config.limits[0].weighted


@pytest.fixture
def clock() -> FakeClock:
    """A clock that only moves when the test advances it."""
    return FakeClock()


def _dv360(clock: FakeClock, **section: Any) -> TestClient:
    settings_ = {"profile": "dv360", "accept_delay_s": 0, "process_delay_s": 0, **section}
    return TestClient(create_sandbox_app(SandboxConfig.from_settings(settings_), clock.time))


def test_dv360_profile_has_the_published_budgets_and_heavy_audiences() -> None:
    """Per project 1,500/min (700 writes), per advertiser 300/min (150 writes), audiences cost 5."""
    config = SandboxConfig.from_settings({"profile": "dv360"})
    budgets = {(s.name, s.per, s.scope, s.limit, s.window_s, s.weighted) for s in config.limits}
    assert budgets == {
        ("project", "app", "all", 1500, 60, False),
        ("project_writes", "app", "write", 700, 60, True),
        ("advertiser", "advertiser", "all", 300, 60, False),
        ("advertiser_writes", "advertiser", "write", 150, 60, True),
    }
    assert config.costs == {"POST /v1/audiences": 5}


def test_dv360_heavy_writes_spend_five_and_overspend_is_resource_exhausted(
    clock: FakeClock,
) -> None:
    """Two audiences fill a 10-unit write budget; the next write gets DV360's bare 429 body."""
    client = _dv360(
        clock,
        limits=[
            {"name": "adv_writes", "per": "advertiser", "scope": "write", "limit": 10,
             "window_s": 60, "weighted": True},
        ],
    )  # fmt: skip
    assert client.post("/v1/audiences", json=AUDIENCE).status_code == 202
    assert client.post("/v1/audiences", json=AUDIENCE).status_code == 202
    refused = client.post("/v1/campaigns", json={"name": "c", "advertiser_id": "adv-1"})
    assert refused.status_code == 429
    assert refused.json() == {
        "error": {
            "code": 429,
            "message": "Resource has been exhausted (e.g. check quota).",
            "status": "RESOURCE_EXHAUSTED",
        }
    }
    assert not {"retry-after", "x-ratelimit-reset", "ratelimit"} & set(refused.headers)
    other = client.post("/v1/campaigns", json={"name": "c", "advertiser_id": "adv-2"})
    assert other.status_code == 202
    clock.advance(60)
    assert client.post("/v1/campaigns", json={"name": "c", "advertiser_id": "adv-1"}).is_success
    stats = client.get("/_sandbox/stats").json()
    assert stats["max_in_window"]["adv_writes:adv-1"]["max_seen"] == 11
    assert stats["refused"] == {"adv_writes:adv-1": 1}


def test_dv360_failed_calls_and_reads_of_an_advertisers_objects_spend_its_budget(
    clock: FakeClock,
) -> None:
    """A rejected create and a read of the advertiser's object count; batch polls do not."""
    client = _dv360(
        clock,
        limits=[{"name": "adv", "per": "advertiser", "limit": 3, "window_s": 60}],
    )
    assert client.post("/v1/campaigns", json={"name": "c", "advertiser_id": "adv-1"}).is_success
    assert client.post("/v1/campaigns", json={"advertiser_id": "adv-1"}).status_code == 400
    for _ in range(3):
        assert client.get("/v1/status", params={"ids": "cmp-1"}).status_code == 200
    assert client.get("/v1/campaigns/cmp-1/status").status_code == 200
    assert client.get("/v1/campaigns/cmp-1").status_code == 429
    stats = client.get("/_sandbox/stats").json()
    assert stats["refused"] == {"adv:adv-1": 1}
    assert stats["max_in_window"]["adv:adv-1"]["max_seen"] == 4


def test_costs_can_change_at_run_time(clock: FakeClock) -> None:
    """PUT /_sandbox/config with costs makes campaigns heavy from then on."""
    client = _dv360(
        clock,
        limits=[{"name": "w", "scope": "write", "limit": 5, "window_s": 60, "weighted": True}],
    )
    changed = client.put("/_sandbox/config", json={"costs": {"POST /v1/campaigns": 5}})
    assert changed.json()["costs"] == {"POST /v1/audiences": 5, "POST /v1/campaigns": 5}
    assert client.post("/v1/campaigns", json={"name": "c", "advertiser_id": "adv-1"}).is_success
    assert (
        client.post("/v1/campaigns", json={"name": "c", "advertiser_id": "adv-1"}).status_code
        == 429
    )
    too_heavy = client.put("/_sandbox/config", json={"costs": {"POST /v1/ads": 6}})
    assert too_heavy.status_code == 400
    assert "below the cost 6" in too_heavy.json()["error"]["message"]
