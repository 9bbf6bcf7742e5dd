"""The arrival log and the per-second timeline: bounded, exact, on the sandbox's clock."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from sluice.clock import FakeClock
from sluice.sandbox.app import create_sandbox_app
from sluice.sandbox.arrivals import ArrivalLog, Timeline
from sluice.sandbox.config import SandboxConfig


@settings(max_examples=200, deadline=None)
@given(
    cap=st.integers(min_value=0, max_value=20),
    batches=st.lists(st.integers(min_value=0, max_value=15), max_size=6),
    cursor=st.integers(min_value=0, max_value=100),
)
def test_the_log_keeps_the_last_cap_entries_in_order_and_counts_the_rest(
    cap: int, batches: list[int], cursor: int
) -> None:
    """After any appends and clears: the newest min(cap, n) entries, numbered on, rest dropped."""
    log = ArrivalLog(cap)
    seq = 0
    since_clear: list[int] = []
    for size in batches:
        for _ in range(size):
            seq += 1
            since_clear.append(seq)
            log.record(float(seq), "GET /v1/status", 200, "admitted")
        answer = log.answer()
        kept = since_clear[-cap:] if cap else []
        assert [entry[0] for entry in answer["arrivals"]] == kept
        assert answer["dropped"] == len(since_clear) - len(kept)
        assert answer["recorded"] == seq
        assert [entry[0] for entry in log.answer(cursor)["arrivals"]] == [
            n for n in kept if n > cursor
        ]
        log.clear()
        since_clear = []


def test_timeline_keeps_the_last_seconds_that_saw_calls() -> None:
    """Rows are per whole second since the origin; the oldest go once the cap is reached."""
    timeline = Timeline(origin=100.0, cap_s=2)
    for now, admitted in ((100.1, True), (100.9, False), (103.0, True), (107.5, True)):
        timeline.record(now, admitted=admitted)
    rows = timeline.answer(lambda at: {})["seconds"]
    assert rows == [
        {"t_s": 3, "arrived": 1, "admitted": 1, "refused": 0},
        {"t_s": 7, "arrived": 1, "admitted": 1, "refused": 0},
    ]


def _client(clock: FakeClock, **section: Any) -> TestClient:
    base = {"accept_delay_s": 0, "process_delay_s": 0}
    return TestClient(
        create_sandbox_app(SandboxConfig.from_settings({**base, **section}), clock.time)
    )


def test_every_v1_call_is_logged_with_the_time_the_limiter_judged_it() -> None:
    """Admitted, refused and unauthorized calls appear with route, status and outcome."""
    clock = FakeClock()
    start = clock.time()
    client = _client(clock, auth=True, limits=[{"name": "app", "limit": 1, "window_s": 10}])
    token = client.post("/oauth/token", json={"client_id": "a", "client_secret": "b"}).json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    client.get("/v1/status")
    clock.advance(0.25)
    client.post("/v1/campaigns", json={"name": "c", "advertiser_id": "adv-1"}, headers=headers)
    clock.advance(0.25)
    client.get("/v1/campaigns/cmp-1", headers=headers)
    client.get("/_sandbox/stats")
    answer = client.get("/_sandbox/arrivals").json()
    assert answer["fields"] == ["seq", "t", "route", "status", "outcome"]
    assert answer["arrivals"] == [
        [1, start, "GET /v1/status", 401, "unauthorized"],
        [2, start + 0.25, "POST /v1/campaigns", 202, "admitted"],
        [3, start + 0.5, "GET /v1/campaigns/{id}", 429, "refused"],
    ]
    assert client.get("/_sandbox/arrivals", params={"after": 2}).json()["arrivals"][0][0] == 3
    assert client.get("/_sandbox/arrivals", params={"after": "x"}).status_code == 400
    assert client.get("/_sandbox/timeline").json()["seconds"] == [
        {"t_s": 0, "arrived": 2, "admitted": 1, "refused": 1}
    ]


def test_arrivals_can_be_cleared_and_reset_forgets_them() -> None:
    """DELETE empties the log and keeps numbering; reset starts everything again."""
    clock = FakeClock()
    client = _client(clock, arrival_log_cap=2, timeline_cap_s=0)
    for _ in range(3):
        client.get("/v1/status")
    answer = client.get("/_sandbox/arrivals").json()
    assert (answer["cap"], answer["dropped"], len(answer["arrivals"])) == (2, 1, 2)
    assert client.delete("/_sandbox/arrivals").json() == {"cleared": True}
    client.get("/v1/status")
    assert [a[0] for a in client.get("/_sandbox/arrivals").json()["arrivals"]] == [4]
    assert client.get("/_sandbox/timeline").json()["seconds"] == []
    client.post("/_sandbox/reset")
    assert client.get("/_sandbox/arrivals").json()["recorded"] == 0
