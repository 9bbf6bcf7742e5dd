"""The pure GCRA: spacing, decisions, pause scopes and in-flight waits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.ratelimit import LimitSpec, Rate, gcra, parse_rate


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
    verdict = gcra.decide(1_000, {"a": 1_000, "b": 500}, {"a": 10, "b": 20})
    assert verdict.allowed
    assert verdict.new_tats == {"a": 1_010, "b": 1_020}


def test_decide_refuses_with_the_longest_wait_and_commits_nothing() -> None:
    """One key not ready refuses the whole request, waiting for the slowest key."""
    verdict = gcra.decide(1_000, {"a": 1_300, "b": 1_100, "c": 0}, {"a": 10, "b": 10, "c": 10})
    assert (verdict.allowed, verdict.wait_us, verdict.reason) == (False, 300, "rate")
    assert verdict.new_tats == {}


def test_decide_reports_pause_over_rate_and_waits_for_both() -> None:
    """While paused the reason is 'paused' and the wait covers the pause and the rate."""
    verdict = gcra.decide(1_000, {"a": 1_500}, {"a": 10}, pause_untils=[1_200, 900])
    assert (verdict.allowed, verdict.wait_us, verdict.reason) == (False, 500, "paused")
    expired = gcra.decide(1_000, {"a": 1_000}, {"a": 10}, pause_untils=[1_000])
    assert expired.allowed


def test_in_flight_wait_counts_live_leases_only() -> None:
    """Expired leases free their slot; a full cap waits for enough leases to lapse."""
    assert gcra.in_flight_wait(100, [50, 100, 150], 2) == 0
    assert gcra.in_flight_wait(100, [150, 300], 2) == 50
    assert gcra.in_flight_wait(100, [400, 150, 300, 200], 2) == 200
