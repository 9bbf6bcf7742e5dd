"""A hidden limit that changes on a schedule, with and without headers that reveal it."""

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
from sluice.sandbox.schedule import LimitSchedule

STEPS = [(30.0, 40), (60.0, 20)]


def test_steps_hold_for_their_duration_then_the_base_limit_holds() -> None:
    """40 from the origin, 20 from 30 s (inclusive) to 90 s, then the base 40 for good."""
    schedule = LimitSchedule(STEPS, after=40, origin=100.0)
    seen = [schedule.limit_at(100.0 + s) for s in (-5, 0, 29.999, 30, 89.999, 90, 10_000)]
    assert seen == [40, 40, 40, 20, 20, 40, 40]


def test_repeat_starts_the_steps_again() -> None:
    """With repeat the 90-second cycle comes back for ever."""
    schedule = LimitSchedule(STEPS, after=99, origin=0.0, repeat=True)
    assert [schedule.limit_at(s) for s in (0, 30, 90, 120, 185)] == [40, 20, 40, 20, 40]
    assert schedule.describe(45.0) == {
        "origin": 0.0,
        "elapsed_s": 45.0,
        "limit_now": 20,
        "steps": [[30.0, 40], [60.0, 20]],
        "after": None,
        "repeat": True,
    }


def test_schedules_are_validated() -> None:
    """Steps need a positive duration and limit; repeat needs steps; pairs are accepted."""
    spec = LimitSpec.model_validate(
        {
            "name": "h",
            "limit": 40,
            "window_s": 1,
            "schedule": [[30, 40], {"duration_s": 60, "limit": 20}],
        }
    )
    assert [(s.duration_s, s.limit) for s in spec.schedule] == STEPS
    for bad, message in (
        ({"schedule": [[0, 40]]}, "duration_s"),
        ({"schedule": [[30, 0]]}, "limit"),
        ({"repeat": True}, "repeat needs a schedule"),
    ):
        with pytest.raises(pydantic.ValidationError, match=message):
            LimitSpec.model_validate({"name": "h", "limit": 40, "window_s": 1, **bad})


def _in_window(times: list[float], end: float, window_s: float) -> int:
    return sum(1 for t in times if t <= end and end - t < window_s)


@settings(max_examples=300, deadline=None)
@given(
    times=st.lists(st.integers(min_value=0, max_value=6_000), max_size=200).map(sorted),
    steps=st.lists(
        st.tuples(st.integers(min_value=1, max_value=2_000), st.integers(min_value=1, max_value=6)),
        min_size=1,
        max_size=4,
    ),
    after=st.integers(min_value=1, max_value=6),
    window_ms=st.integers(min_value=1, max_value=1_500),
)
def test_a_scheduled_window_admits_exactly_below_the_limit_in_force(
    times: list[int], steps: list[tuple[int, int]], after: int, window_ms: int
) -> None:
    """A call is admitted iff fewer calls than the limit in force were admitted in its window."""
    window_s = window_ms / 1000
    spec = LimitSpec.model_validate(
        {
            "name": "h",
            "limit": after,
            "window_s": window_s,
            "schedule": [[d / 1000, n] for d, n in steps],
        }
    )
    limiter = SandboxLimiter([spec], origin=0.0)
    model = LimitSchedule([(d / 1000, n) for d, n in steps], after=after, origin=0.0)
    admitted: list[float] = []
    for ms in times:
        now = ms / 1000
        verdict = limiter.arrive(now, write=False, app_key="a")
        assert verdict.admitted == (_in_window(admitted, now, window_s) < model.limit_at(now))
        if verdict.admitted:
            admitted.append(now)
        else:
            assert verdict.free_at > now


def _client(clock: FakeClock, profile: str, **section: Any) -> TestClient:
    base = {"profile": profile, "accept_delay_s": 0, "process_delay_s": 0}
    return TestClient(
        create_sandbox_app(SandboxConfig.from_settings({**base, **section}), clock.time)
    )


SMALL = [{"name": "hidden", "limit": 4, "window_s": 1, "schedule": [[10, 4], [20, 2]]}]
"""4/s for 10 s, 2/s for 20 s, then 4/s."""


def _burst(client: TestClient, calls: int) -> list[int]:
    return [client.get("/v1/status?ids=1").status_code for _ in range(calls)]


def test_hidden_profile_refuses_with_a_bare_429_as_the_limit_drops_and_rises() -> None:
    """The true limit follows the schedule; refusals say nothing; the stats tell the truth."""
    clock = FakeClock()
    client = _client(clock, "hidden", limits=SMALL)
    assert _burst(client, 5) == [200] * 4 + [429]
    refused = client.get("/v1/status")
    assert (refused.content, set(refused.headers) & {"retry-after", "ratelimit"}) == (b"", set())
    clock.advance(10)
    assert _burst(client, 3) == [200, 200, 429]
    stats = client.get("/_sandbox/stats").json()
    assert stats["schedules"]["hidden"]["limit_now"] == 2
    assert stats["schedules"]["hidden"]["steps"] == [[10.0, 4], [20.0, 2]]
    assert stats["max_in_window"]["hidden:anonymous"]["limit_now"] == 2
    clock.advance(20)
    assert _burst(client, 5) == [200] * 4 + [429]


def test_hidden_headers_profile_reveals_limit_remaining_and_reset_on_every_answer() -> None:
    """Every answer carries X-RateLimit-* and the IETF fields; a refusal says when to return."""
    clock = FakeClock()
    start = clock.time()
    client = _client(clock, "hidden-headers", limits=SMALL)
    first = client.get("/v1/status?ids=1")
    assert first.headers["x-ratelimit-limit"] == "4"
    assert first.headers["x-ratelimit-remaining"] == "3"
    assert first.headers["x-ratelimit-reset"] == f"{start + 1:.3f}"
    assert first.headers["ratelimit-policy"] == "4;w=1"
    assert first.headers["ratelimit"] == "limit=4, remaining=3, reset=1"
    clock.advance(0.5)
    _burst(client, 3)
    refused = client.get("/v1/status?ids=1")
    assert refused.status_code == 429
    assert refused.headers["ratelimit"] == "limit=4, remaining=0, reset=1"
    assert refused.headers["x-ratelimit-reset"] == f"{start + 1:.3f}"
    missing = client.get("/v1/campaigns/cmp-404")  # every limited route is told
    assert (missing.status_code, missing.headers["x-ratelimit-remaining"]) == (429, "0")
    clock.advance(9.5)  # the limit drops to 2
    assert client.get("/v1/status").headers["ratelimit"] == "limit=2, remaining=1, reset=1"


def test_revealed_remaining_matches_what_a_burst_gets_through() -> None:
    """Remaining promises exactly the calls a burst then gets admitted, no more, no less."""
    clock = FakeClock()
    client = _client(clock, "hidden-headers", limits=SMALL)
    client.get("/v1/status")
    clock.advance(0.3)
    remaining = int(client.get("/v1/status").headers["x-ratelimit-remaining"])
    assert _burst(client, remaining + 1) == [200] * remaining + [429]


def test_timeline_counts_each_second_and_shows_the_true_limit() -> None:
    """Per second since start: arrivals, admissions, refusals and the limit in force."""
    clock = FakeClock()
    client = _client(clock, "hidden", limits=SMALL)
    _burst(client, 6)
    clock.advance(10.2)
    _burst(client, 3)
    timeline = client.get("/_sandbox/timeline").json()
    assert timeline["origin"] == pytest.approx(clock.time() - 10.2)
    assert timeline["seconds"] == [
        {"t_s": 0, "arrived": 6, "admitted": 4, "refused": 2, "limits": {"hidden": 4}},
        {"t_s": 10, "arrived": 3, "admitted": 2, "refused": 1, "limits": {"hidden": 2}},
    ]
