"""Quotas: fixed windows from local midnight, rolling windows, and the Google-Ads-like profile."""

from __future__ import annotations

import json
import zoneinfo
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from sluice.clock import FakeClock
from sluice.sandbox.app import create_sandbox_app
from sluice.sandbox.config import FixedWindowSpec, SandboxConfig
from sluice.sandbox.fixed import FixedWindowQuota, window_bounds
from sluice.sandbox.limiter import SandboxLimiter

LA = zoneinfo.ZoneInfo("America/Los_Angeles")
# Zones whose clocks change at midnight (Santiago), by half an hour (Lord Howe), or at 2 am.
ZONES = ["UTC", "America/Los_Angeles", "America/Santiago", "Australia/Lord_Howe", "Asia/Tokyo"]


def _posix(text: str, tz: zoneinfo.ZoneInfo = LA) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


@settings(max_examples=400, deadline=None)
@given(
    now=st.floats(min_value=1.5e9, max_value=2.2e9),
    zone=st.sampled_from(ZONES),
    window_s=st.sampled_from([86_400, 3_600, 600, 1]),
)
def test_windows_hold_now_and_tile_the_timeline(now: float, zone: str, window_s: int) -> None:
    """Each window contains its instant and ends exactly where the next one starts."""
    tz = zoneinfo.ZoneInfo(zone)
    start, end = window_bounds(now, tz, window_s)
    assert start <= now < end
    assert window_bounds(end, tz, window_s)[0] == end
    assert window_bounds(start, tz, window_s) == (start, end)
    if window_s == 86_400:
        local_start = datetime.fromtimestamp(start, tz)
        assert (local_start.hour, local_start.minute) in {(0, 0), (1, 0), (0, 30)}


def test_a_day_window_is_the_calendar_day_in_its_zone() -> None:
    """In Los Angeles the day runs midnight to midnight Pacific, 23 or 25 hours when DST moves."""
    assert window_bounds(_posix("2026-06-15T13:00"), LA, 86_400) == (
        _posix("2026-06-15T00:00"),
        _posix("2026-06-16T00:00"),
    )
    start, end = window_bounds(_posix("2026-03-08T12:00"), LA, 86_400)
    assert end - start == 23 * 3600
    start, end = window_bounds(_posix("2026-11-01T12:00"), LA, 86_400)
    assert end - start == 25 * 3600


@settings(max_examples=200, deadline=None)
@given(
    calls=st.lists(
        st.tuples(st.integers(min_value=0, max_value=3 * 86_400), st.sampled_from([1, 1, 3])),
        max_size=120,
    ).map(sorted),
    limit=st.integers(min_value=3, max_value=12),
    window_s=st.sampled_from([86_400, 3_600]),
)
def test_fixed_quota_is_never_exceeded_and_refuses_only_when_spent(
    calls: list[tuple[int, int]], limit: int, window_s: int
) -> None:
    """Units admitted per window never pass the quota; a refusal means the window is spent."""
    spec = FixedWindowSpec(
        name="q", kind="fixed", limit=limit, window_s=window_s, timezone="UTC", weighted=True
    )
    limiter = SandboxLimiter([spec])
    base = _posix("2026-01-01T00:00", zoneinfo.ZoneInfo("UTC"))
    spent: dict[float, int] = {}
    for offset_s, cost in calls:
        now = base + offset_s
        window = window_bounds(now, zoneinfo.ZoneInfo("UTC"), window_s)
        verdict = limiter.arrive(now, write=True, app_key="a", cost=cost)
        used = spent.get(window[0], 0)
        assert verdict.admitted == (used + cost <= limit)
        if verdict.admitted:
            spent[window[0]] = used + cost
        else:
            assert verdict.free_at == window[1]
    assert all(units <= limit for units in spent.values())


def test_quota_state_and_report_show_use_and_reset() -> None:
    """The report says how much of the window is used and when it resets."""
    quota = FixedWindowQuota(5, 86_400, "America/Los_Angeles")
    now = _posix("2026-06-15T23:00")
    quota.observe(now, 2)
    quota.admit(now, 2)
    state = quota.state(now)
    assert (state.limit, state.remaining, state.reset_at) == (5, 3, _posix("2026-06-16T00:00"))
    report = quota.report(now)
    assert report["used"] == 2
    assert report["resets_at"] == _posix("2026-06-16T00:00")
    assert report["timezone"] == "America/Los_Angeles"
    assert quota.state(_posix("2026-06-16T00:00")).remaining == 5


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ({"kind": "fixed", "limit": 5, "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"kind": "fixed", "limit": 5, "window_s": 7_000}, "must divide a day"),
        ({"kind": "fixed", "limit": 5, "window_s": 172_800}, "window_s"),
        ({"kind": "hourly", "limit": 5}, "kind must be 'sliding'"),
    ],
)
def test_bad_quotas_are_refused_naming_the_problem(limit: dict[str, Any], message: str) -> None:
    """Unknown time zones, windows that do not divide a day and unknown kinds fail."""
    with pytest.raises(pydantic.ValidationError, match=message):
        SandboxConfig.from_settings({"limits": [{"name": "q", **limit}]})


def _google_ads(clock: FakeClock, **section: Any) -> TestClient:
    base = {"profile": "google-ads", "accept_delay_s": 0, "process_delay_s": 0}
    return TestClient(
        create_sandbox_app(SandboxConfig.from_settings({**base, **section}), clock.time)
    )


def _quota_error(response: Any) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]["details"][0]["errors"][0]
    return error


def test_google_ads_profile_has_basic_access_quota_and_a_short_rate() -> None:
    """15,000 operations a day reset at Pacific midnight, paced by a token bucket."""
    kinds = {
        spec.name: spec for spec in SandboxConfig.from_settings({"profile": "google-ads"}).limits
    }
    daily = kinds["daily_operations"]
    assert isinstance(daily, FixedWindowSpec)
    assert (daily.limit, daily.window_s, daily.timezone, daily.quota) == (
        15_000,
        86_400,
        "America/Los_Angeles",
        True,
    )
    assert kinds["short_rate"].kind == "bucket"


def test_short_rate_refusal_is_temporarily_exhausted_with_a_retry_delay() -> None:
    """Over the token bucket: 429, RESOURCE_TEMPORARILY_EXHAUSTED and the exact retry_delay."""
    clock = FakeClock()
    client = _google_ads(
        clock,
        limits=[{"name": "short_rate", "kind": "bucket", "limit": 4, "window_s": 1, "burst": 1}],
    )
    assert client.get("/v1/status?ids=1").status_code == 200
    assert client.get("/v1/status?ids=1").status_code == 200
    refused = client.get("/v1/status?ids=1")
    assert refused.status_code == 429
    body = refused.json()["error"]
    assert (body["code"], body["status"]) == (429, "RESOURCE_EXHAUSTED")
    error = _quota_error(refused)
    assert error["error_code"] == {"quota_error": "RESOURCE_TEMPORARILY_EXHAUSTED"}
    assert error["details"]["quota_error_details"] == {
        "rate_scope": "DEVELOPER",
        "rate_name": "short_rate",
        "retry_delay": "0.250s",
    }
    clock.advance(0.25)
    assert client.get("/v1/status?ids=1").status_code == 200


def test_daily_quota_refusal_is_resource_exhausted_until_pacific_midnight() -> None:
    """With the quota spent: RESOURCE_EXHAUSTED until midnight in Los Angeles, not in UTC."""
    clock = FakeClock(datetime(2026, 6, 15, 20, 0, tzinfo=UTC))  # 13:00 in Los Angeles
    client = _google_ads(
        clock,
        limits=[
            {"name": "daily_operations", "kind": "fixed", "limit": 3,
             "timezone": "America/Los_Angeles"},
            {"name": "short_rate", "kind": "bucket", "limit": 50, "window_s": 1, "burst": 10},
        ],
    )  # fmt: skip
    create = {"name": "c", "advertiser_id": "adv-1"}
    assert client.post("/v1/campaigns", json=create).status_code == 202
    assert client.get("/v1/campaigns/cmp-9/status").status_code == 404  # a failed call counts
    assert client.get("/v1/status?ids=cmp-1").status_code == 200  # so does a poll
    refused = client.post("/v1/campaigns", json=create)
    assert refused.status_code == 429
    error = _quota_error(refused)
    assert error["error_code"] == {"quota_error": "RESOURCE_EXHAUSTED"}
    assert error["details"]["quota_error_details"]["retry_delay"] == f"{11 * 3600}s"
    clock.advance(5 * 3600)  # 01:00 UTC the next day, still 18:00 in Los Angeles
    assert _quota_error(client.get("/v1/status?ids=1"))["error_code"] == {
        "quota_error": "RESOURCE_EXHAUSTED"
    }
    clock.advance(6 * 3600)  # midnight in Los Angeles
    assert client.post("/v1/campaigns", json=create).status_code == 202
    stats = client.get("/_sandbox/stats").json()
    entry = stats["max_in_window"]["daily_operations:anonymous"]
    assert (entry["used"], entry["max_seen"]) == (1, 5)  # the busiest day saw 5 calls
    assert stats["refused"] == {"daily_operations:anonymous": 2}


def test_a_rolling_quota_frees_one_call_at_a_time() -> None:
    """A sliding quota refuses with RESOURCE_EXHAUSTED until the oldest call is a window old."""
    clock = FakeClock()
    client = _google_ads(
        clock, limits=[{"name": "rolling", "limit": 2, "window_s": 86_400, "quota": True}]
    )
    assert client.get("/v1/status").status_code == 200
    clock.advance(3600)
    assert client.get("/v1/status").status_code == 200
    refused = client.get("/v1/status")
    error = _quota_error(refused)
    assert error["error_code"] == {"quota_error": "RESOURCE_EXHAUSTED"}
    assert error["details"]["quota_error_details"]["retry_delay"] == f"{23 * 3600}s"
    clock.advance(23 * 3600)
    assert client.get("/v1/status").status_code == 200
    assert client.get("/v1/status").status_code == 429


def test_the_clock_endpoint_moves_the_sandbox_clock_forward_only() -> None:
    """POST /_sandbox/clock advances by seconds or to a time; moving back is refused."""
    clock = FakeClock(datetime(2026, 6, 15, 20, 0, tzinfo=UTC))
    client = _google_ads(
        clock,
        limits=[{"name": "day", "kind": "fixed", "limit": 1, "timezone": "America/Los_Angeles"}],
    )
    assert client.get("/v1/status").status_code == 200
    assert client.get("/v1/status").status_code == 429
    moved = client.post("/_sandbox/clock", json={"advance_s": 3600})
    assert moved.json()["offset_s"] == 3600
    midnight = _posix("2026-06-16T00:00")
    at_midnight = client.post("/_sandbox/clock", json={"to": midnight}).json()
    assert at_midnight["now"] == midnight
    assert at_midnight["utc"] == "2026-06-16T07:00:00+00:00"
    assert client.get("/v1/status").status_code == 200
    back = client.post("/_sandbox/clock", json={"to": midnight - 1})
    assert back.status_code == 400
    assert "time only moves forward" in back.json()["error"]["message"]
    for bad in ({"advance_s": -1}, {"advance_s": "soon"}, {"offset": 3}, []):
        assert client.post("/_sandbox/clock", json=bad).status_code == 400
    # Past the last date an answer can show: refused naming the field, never a 500.
    for huge in ({"advance_s": 1e300}, {"to": 1e300}, {"advance_s": 10**400}):
        refused = client.post("/_sandbox/clock", content=json.dumps(huge))
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["field"] == next(iter(huge))
    assert client.get("/_sandbox/clock").json()["now"] == midnight
    client.post("/_sandbox/reset")
    assert client.get("/_sandbox/clock").json()["now"] == midnight
