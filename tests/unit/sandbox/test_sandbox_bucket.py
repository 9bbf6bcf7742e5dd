"""The leaky bucket judged to the millisecond (GCRA), against a brute-force model."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.sandbox.bucket import LeakyBucket, ms_to_s, whole_ms
from sluice.sandbox.config import BucketSpec
from sluice.sandbox.limiter import SandboxLimiter

EPOCH = 1_767_225_600.0
"""2026-01-01T00:00:00Z: real-looking POSIX seconds, where float rounding bites."""


def _at(ms: float) -> float:
    return EPOCH + ms / 1000


def _leaky(limit: int = 50, window_s: float = 1.0, burst: int = 1) -> SandboxLimiter:
    spec = BucketSpec(name="spacing", kind="bucket", limit=limit, window_s=window_s, burst=burst)
    return SandboxLimiter([spec])


def _admitted(limiter: SandboxLimiter, ms: float) -> bool:
    return limiter.arrive(_at(ms), write=True, app_key="a").admitted


def test_one_call_may_come_one_slot_early_never_two() -> None:
    """At 50/s with one call of burst, two calls at once pass, a third in the same slot fails."""
    limiter = _leaky()
    assert _admitted(limiter, 0)
    assert _admitted(limiter, 0)  # one slot early
    assert not _admitted(limiter, 0)  # two slots early
    assert not _admitted(limiter, 19)
    assert _admitted(limiter, 20)  # still one slot early: slot 3 is due at 40 ms
    assert not _admitted(limiter, 39)
    assert _admitted(limiter, 40)


def test_an_evenly_paced_client_is_never_refused_and_keeps_its_slack() -> None:
    """A call every 20 ms is always admitted, one full interval ahead of the violation line."""
    limiter = _leaky()
    assert all(_admitted(limiter, 20 * i) for i in range(500))
    report = limiter.snapshot()["spacing:a"].report(_at(10_000))
    assert report["min_slack_ms"] == 20.0
    assert (report["interval_ms"], report["burst"], report["max_seen"]) == (20.0, 1, 50)


def test_calls_exactly_one_interval_apart_pass_a_bucket_with_no_burst() -> None:
    """On real epoch times, float rounding never turns an exact 20 ms gap into 19 ms."""
    limiter = _leaky(burst=0)
    assert all(_admitted(limiter, 20 * i) for i in range(3_000))


def test_arrivals_are_truncated_to_the_millisecond() -> None:
    """With no burst, 19.999 ms after a call is 19 ms (refused) and 20.0004 ms is 20 (admitted)."""
    limiter = _leaky(burst=0)
    assert _admitted(limiter, 0.9)  # counts as 0 ms
    assert not _admitted(limiter, 19.999)
    assert _admitted(limiter, 20.0004)


def test_free_at_is_the_first_instant_that_passes() -> None:
    """A refused call's free_at is admitted, and one microsecond earlier is not."""
    limiter = _leaky(limit=3, window_s=0.1, burst=0)  # T = 33 1/3 ms
    assert _admitted(limiter, 0)
    refused = limiter.arrive(_at(10), write=True, app_key="a")
    assert not refused.admitted
    assert whole_ms(refused.free_at) == whole_ms(_at(34))
    assert not limiter.arrive(refused.free_at - 1e-6, write=True, app_key="a").admitted
    assert limiter.arrive(refused.free_at, write=True, app_key="a").admitted


def test_ms_helpers_agree_on_real_epoch_times() -> None:
    """ms_to_s gives a time that whole_ms maps back to the same millisecond."""
    for ms in (0, 1, 19, 20, 123, 999, 86_399_999):
        target = whole_ms(_at(ms))
        assert whole_ms(ms_to_s(target)) == target


def test_state_counts_the_calls_that_could_come_back_to_back() -> None:
    """remaining is what a burst right now would get through, and grows at reset_at."""
    bucket = LeakyBucket(50, 1.0, burst=3)
    now = _at(0)
    assert bucket.state(now).remaining == 4
    bucket.admit(now)
    bucket.admit(now)
    state = bucket.state(now)
    assert state.remaining == 2
    assert whole_ms(state.reset_at) == whole_ms(_at(20))
    assert bucket.state(state.reset_at).remaining == 3


def _brute_force_admits(admitted_ms: list[int], t: int, interval: Fraction, burst: int) -> bool:
    """GCRA unrolled: t conforms unless some admitted a_i has t - a_i < (k_i - burst) * T."""
    m = len(admitted_ms)
    return all(t - a >= (m - i - burst) * interval for i, a in enumerate(admitted_ms))


@settings(max_examples=300, deadline=None)
@given(
    gaps_us=st.lists(st.integers(min_value=0, max_value=60_000), max_size=120),
    limit=st.integers(min_value=1, max_value=100),
    window_ms=st.integers(min_value=1, max_value=2_000),
    burst=st.integers(min_value=0, max_value=4),
)
def test_bucket_matches_the_brute_force_definition_of_a_violation(
    gaps_us: list[int], limit: int, window_ms: int, burst: int
) -> None:
    """Every verdict equals the brute-force rule on whole-ms times, and refusals keep TAT."""
    bucket = LeakyBucket(limit, window_ms / 1000, burst=burst)
    interval = Fraction(window_ms, limit)
    admitted: list[int] = []
    now_us = 0
    for gap in gaps_us:
        now_us += gap
        now = EPOCH + now_us / 1_000_000
        t = whole_ms(now)
        expected = _brute_force_admits(admitted, t, interval, burst)
        assert bucket.has_room(now) == expected
        if expected:
            bucket.admit(now)
            admitted.append(t)
        else:
            assert whole_ms(bucket.free_at(now)) > t
            assert _brute_force_admits(admitted, whole_ms(bucket.free_at(now)), interval, burst)


@settings(max_examples=200, deadline=None)
@given(
    gaps_ms=st.lists(st.integers(min_value=0, max_value=100), max_size=120),
    interval_ms=st.integers(min_value=1, max_value=50),
    burst=st.integers(min_value=0, max_value=3),
)
def test_no_window_of_n_intervals_holds_more_than_n_plus_burst_calls(
    gaps_ms: list[int], interval_ms: int, burst: int
) -> None:
    """Admitted calls never exceed n + burst in any span shorter than n intervals (n >= 1)."""
    limiter = _leaky(limit=1, window_s=interval_ms / 1000, burst=burst)
    admitted: list[int] = []
    now = 0
    for gap in gaps_ms:
        now += gap
        if _admitted(limiter, now):
            admitted.append(now)
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            span = admitted[j] - start
            calls = j - i + 1
            # calls spaced at least (calls - 1 - burst) intervals apart in whole ms
            assert span >= (calls - 1 - burst) * interval_ms
