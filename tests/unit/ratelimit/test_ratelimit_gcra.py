"""The pure GCRA: spacing, decisions, pause scopes and in-flight waits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.ratelimit import LimitSpec, Rate, gcra, parse_rate


def plans(spacing_by_key: dict[str, int]) -> dict[str, gcra.KeyPlan]:
    """Cost-1, zero-burst plans with the given spacings and no credit."""
    return {key: gcra.KeyPlan(s, s, 0, 0, s) for key, s in spacing_by_key.items()}


def test_spacing_adds_margin_and_rounds_up_to_microseconds() -> None:
    """10/s with a 1% margin spaces grants 101 ms apart; 3/s rounds its 333333.3 µs up."""
    assert gcra.spacing_us(parse_rate("10/s"), 0.01) == 101_000
    assert gcra.spacing_us(parse_rate("10/s"), 0.0) == 100_000
    assert gcra.spacing_us(parse_rate("3/s"), 0.0) == 333_334


@given(
    limit=st.integers(1, 100_000),
    window_us=st.integers(1, 10**10),
    margin=st.floats(0.0, 0.5),
)
def test_spacing_times_limit_always_covers_the_window(
    limit: int, window_us: int, margin: float
) -> None:
    """limit grants spaced by spacing_us never fit inside one window."""
    rate = Rate(limit, window_us / 1e6)
    assert limit * gcra.spacing_us(rate, margin) >= round(rate.window_s * 1e6)


@pytest.mark.parametrize("margin", [-0.01, float("nan"), float("inf")])
def test_margin_must_be_finite_and_not_negative(margin: float) -> None:
    """A negative or non-finite margin is refused, since it would break the bound."""
    with pytest.raises(ValueError, match="margin"):
        gcra.spacing_us(parse_rate("1/s"), margin)


def test_duplicate_keys_keep_the_stricter_spacing() -> None:
    """A key listed twice in one request is held to the slower of its two rates."""
    limits = [LimitSpec("dsp", parse_rate("10/s")), LimitSpec("dsp", parse_rate("300/min"))]
    assert gcra.spacings(limits, 0.0) == {"dsp": 200_000}


def test_pause_scopes_are_the_key_and_its_colon_prefixes() -> None:
    """A pause on a key holds back the key itself and everything below it at ':' boundaries."""
    assert gcra.pause_scopes("dsp") == ["dsp"]
    assert gcra.pause_scopes("dsp:write:adv=1") == ["dsp", "dsp:write", "dsp:write:adv=1"]
    assert gcra.pause_scopes_all(["dsp:read", "dsp:write"]) == ["dsp", "dsp:read", "dsp:write"]


def test_decide_allows_at_or_after_tat_and_commits_now_plus_spacing() -> None:
    """A request exactly at the TAT is allowed and moves every key's TAT to now + spacing."""
    verdict = gcra.decide(1_000, {"a": 1_000, "b": 500}, plans({"a": 10, "b": 20}))
    assert verdict.allowed
    assert verdict.new_tats == {"a": 1_010, "b": 1_020}


def test_decide_refuses_with_the_longest_wait_and_commits_nothing() -> None:
    """One key not ready refuses the whole request, waiting for the slowest key."""
    verdict = gcra.decide(
        1_000, {"a": 1_300, "b": 1_100, "c": 0}, plans({"a": 10, "b": 10, "c": 10})
    )
    assert (verdict.allowed, verdict.wait_us, verdict.reason) == (False, 300, "rate")
    assert verdict.new_tats == {}


def test_decide_reports_pause_over_rate_and_waits_for_both() -> None:
    """While paused the reason is 'paused' and the wait covers the pause and the rate."""
    verdict = gcra.decide(1_000, {"a": 1_500}, plans({"a": 10}), pause_untils=[1_200, 900])
    assert (verdict.allowed, verdict.wait_us, verdict.reason) == (False, 500, "paused")
    expired = gcra.decide(1_000, {"a": 1_000}, plans({"a": 10}), pause_untils=[1_000])
    assert expired.allowed


def test_in_flight_wait_counts_live_leases_only() -> None:
    """Expired leases free their slot; a full cap waits for enough leases to lapse."""
    assert gcra.in_flight_wait(100, [50, 100, 150], 2) == 0
    assert gcra.in_flight_wait(100, [150, 300], 2) == 50
    assert gcra.in_flight_wait(100, [400, 150, 300, 200], 2) == 200


def test_burst_divides_the_window_by_the_paced_part_of_the_limit() -> None:
    """10/s with burst 4 spaces units 1/6 s apart: 4 may go at once, 6 more are paced."""
    assert gcra.spacing_us(parse_rate("10/s"), 0.0, burst=4) == 166_667
    with pytest.raises(ValueError, match="burst"):
        gcra.spacing_us(parse_rate("10/s"), 0.0, burst=10)


def test_a_cost_waits_for_its_last_unit_and_books_all_of_them() -> None:
    """Cost 3 with burst 2 on 10/s: spacing 1/8 s; allowed 0.25 s ahead of the TAT, adds 3."""
    spec = LimitSpec("dsp", parse_rate("10/s"), cost=3, burst=2)
    plan = gcra.plan([spec], 0.0, 0)["dsp"]
    assert (plan.spacing, plan.step, plan.allow) == (125_000, 375_000, 0)
    light = gcra.plan([LimitSpec("dsp", parse_rate("10/s"), cost=1, burst=2)], 0.0, 0)["dsp"]
    assert (light.step, light.allow) == (125_000, 250_000)
    refused = gcra.decide(1_000_000, {"dsp": 1_100_000}, {"dsp": plan})
    assert (refused.allowed, refused.wait_us) == (False, 100_000)
    allowed = gcra.decide(1_000_000, {"dsp": 1_100_000}, {"dsp": light})
    assert allowed.new_tats == {"dsp": 1_225_000}


@pytest.mark.parametrize(
    ("cost", "burst", "match"),
    [(0, 0, "cost"), (2, 0, "burst >= 1"), (1, 10, "below its count"), (1, -1, "burst")],
)
def test_limit_spec_refuses_costs_that_do_not_fit(cost: int, burst: int, match: str) -> None:
    """A cost below 1, or above burst + 1, and a burst at or above the count are refused."""
    with pytest.raises(ValueError, match=match):
        LimitSpec("dsp", parse_rate("10/s"), cost=cost, burst=burst)
