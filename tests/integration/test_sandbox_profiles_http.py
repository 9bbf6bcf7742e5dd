"""The cost, quota, hidden-limit and spacing profiles over real loopback HTTP.

Out of process the sandbox's clock is moved with ``POST /_sandbox/clock``; where a test
needs millisecond control it injects a fake clock into the served app instead.
"""

from __future__ import annotations

import itertools
import zoneinfo
from collections.abc import Iterator
from datetime import datetime, time, timedelta
from typing import Any

import httpx
import pytest

from sluice.clock import FakeClock
from sluice.sandbox.config import SandboxConfig
from sluice.sandbox.server import SandboxServer

LA = zoneinfo.ZoneInfo("America/Los_Angeles")


def _serve(profile: str, clock: FakeClock | None = None, **section: Any) -> SandboxServer:
    settings = {"profile": profile, "accept_delay_s": 0, "process_delay_s": 0, **section}
    return SandboxServer(
        SandboxConfig.from_settings(settings), clock=None if clock is None else clock.time
    )


def _client(server: SandboxServer) -> httpx.Client:
    return httpx.Client(base_url=str(server.base_url))


def test_dv360_refuses_heavy_overspend_with_resource_exhausted_and_no_headers() -> None:
    """Audiences cost 5 writes: the third of a 10-unit budget gets DV360's 429 body."""
    limits = [
        {"name": "project_writes", "scope": "write", "limit": 10, "window_s": 60, "weighted": True}
    ]
    audience = {"name": "office", "advertiser_id": "adv-1", "type": "ip_range", "include": []}
    with _serve("dv360", limits=limits) as server, _client(server) as client:
        codes = [client.post("/v1/audiences", json=audience).status_code for _ in range(3)]
        refused = client.post("/v1/campaigns", json={"name": "c", "advertiser_id": "adv-1"})
        stats = client.get("/_sandbox/stats").json()
    assert codes == [202, 202, 429]
    assert refused.status_code == 429
    assert refused.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert not {"retry-after", "x-ratelimit-reset", "ratelimit"} & set(refused.headers)
    assert stats["max_in_window"]["project_writes:anonymous"]["max_seen"] == 16


def _next_la_midnight(now: float) -> float:
    tomorrow = datetime.fromtimestamp(now, LA).date() + timedelta(days=1)
    return datetime.combine(tomorrow, time(0), tzinfo=LA).timestamp()


def test_google_ads_daily_quota_waits_for_pacific_midnight_on_a_moved_clock() -> None:
    """Spent quota answers RESOURCE_EXHAUSTED until the clock, moved over HTTP, passes midnight."""
    limits = [
        {
            "name": "daily_operations",
            "kind": "fixed",
            "limit": 3,
            "timezone": "America/Los_Angeles",
        },
        {"name": "short_rate", "kind": "bucket", "limit": 50, "window_s": 1, "burst": 10},
    ]
    with _serve("google-ads", limits=limits) as server, _client(server) as client:
        # At least two minutes ahead, so "a minute before midnight" is never in the past.
        midnight = _next_la_midnight(client.get("/_sandbox/clock").json()["now"] + 120)
        moved = client.post("/_sandbox/clock", json={"to": midnight - 60})
        assert moved.status_code == 200
        codes = [client.get("/v1/status?ids=1").status_code for _ in range(4)]
        refused = client.get("/v1/status?ids=1").json()["error"]["details"][0]["errors"][0]
        client.post("/_sandbox/clock", json={"to": midnight})
        after_midnight = client.get("/v1/status?ids=1").status_code
    assert codes == [200, 200, 200, 429]
    assert refused["error_code"] == {"quota_error": "RESOURCE_EXHAUSTED"}
    delay_s = float(refused["details"]["quota_error_details"]["retry_delay"].removesuffix("s"))
    assert 0 < delay_s <= 60
    assert after_midnight == 200


def test_hidden_headers_reveal_the_scheduled_drop_and_the_timeline_records_it() -> None:
    """Revealing fields follow the hidden limit as the clock moves into its 20/s step."""
    with _serve("hidden-headers") as server, _client(server) as client:
        before = client.get("/v1/status").headers
        client.post("/_sandbox/clock", json={"advance_s": 31})
        during = client.get("/v1/status").headers
        stats = client.get("/_sandbox/stats").json()
        timeline = client.get("/_sandbox/timeline").json()["seconds"]
    assert before["ratelimit-policy"] == "40;w=1"
    assert before["x-ratelimit-limit"] == "40"
    assert during["ratelimit-policy"] == "20;w=1"
    assert during["ratelimit"] == "limit=20, remaining=19, reset=1"
    assert stats["schedules"]["hidden"]["limit_now"] == 20
    assert [row["limits"]["hidden"] for row in timeline] == [40, 20]
    assert sum(row["arrived"] for row in timeline) == 2


def test_hidden_profile_refuses_bare_and_counts_every_arrival() -> None:
    """Over the hidden limit: a bare 429; the stats count arrivals and refusals exactly."""
    limits = [{"name": "hidden", "limit": 3, "window_s": 60, "schedule": [[600, 3]]}]
    with _serve("hidden", limits=limits) as server, _client(server) as client:
        answers = [client.get("/v1/status") for _ in range(5)]
        stats = client.get("/_sandbox/stats").json()
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    assert answers[-1].content == b""
    assert stats["max_in_window"]["hidden:anonymous"]["max_seen"] == 5
    assert stats["refused_total"] == 2


@pytest.fixture
def leaky() -> Iterator[tuple[SandboxServer, FakeClock]]:
    """The leaky profile (50/s, one call of burst) served over HTTP on a fake clock."""
    clock = FakeClock()
    with _serve("leaky", clock) as server:
        yield server, clock


def test_leaky_bucket_over_http_tolerates_one_early_call_never_two(
    leaky: tuple[SandboxServer, FakeClock],
) -> None:
    """Paced calls pass, one call may come a slot early, a second early call gets 429."""
    server, clock = leaky
    codes = []
    with _client(server) as client:
        for _ in range(10):
            codes.append(client.get("/v1/status").status_code)
            clock.advance(0.020)
        codes += [client.get("/v1/status").status_code for _ in range(3)]
        refused = client.get("/v1/status")
        stats = client.get("/_sandbox/stats").json()["max_in_window"]["spacing:anonymous"]
        arrivals = client.get("/_sandbox/arrivals").json()["arrivals"]
    assert codes == [200] * 10 + [200, 200, 429]
    assert (refused.status_code, refused.headers["retry-after"]) == (429, "1")
    assert stats["interval_ms"] == 20.0
    assert stats["min_slack_ms"] == 0.0
    gaps_ms = [round((b[1] - a[1]) * 1000, 3) for a, b in itertools.pairwise(arrivals)]
    assert gaps_ms[:9] == [20.0] * 9
    assert [a[4] for a in arrivals][-4:] == ["admitted", "admitted", "refused", "refused"]


def test_arrival_log_over_http_matches_what_the_client_sent() -> None:
    """Every call a client makes is in the log once, in order, readable in pages by seq."""
    limits = [{"name": "app", "limit": 5, "window_s": 60}]
    with _serve("standard", limits=limits) as server, _client(server) as client:
        sent = [client.get(f"/v1/campaigns/cmp-{i}/status").status_code for i in range(8)]
        first = client.get("/_sandbox/arrivals").json()
        client.get("/v1/status")
        page = client.get("/_sandbox/arrivals", params={"after": first["recorded"]}).json()
    assert [entry[3] for entry in first["arrivals"]] == sent == [404] * 5 + [429] * 3
    assert [entry[2] for entry in page["arrivals"]] == ["GET /v1/status"]
    times = [entry[1] for entry in first["arrivals"]]
    assert times == sorted(times)
