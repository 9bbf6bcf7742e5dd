"""Quota windows: fixed on a time zone's calendar (DST days included), or rolling."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sluice.ratelimit.quota import QuotaSpec, parse_quota


def test_a_daily_quota_resets_at_local_midnight_across_dst() -> None:
    """15000/d on Los Angeles time: 08:00Z in winter; the spring-forward day is 23 hours."""
    quota = parse_quota("15000/d", "America/Los_Angeles")
    start, end = quota.window(datetime(2026, 12, 2, 9, 30, tzinfo=UTC))
    assert (start, end) == (
        datetime(2026, 12, 2, 8, 0, tzinfo=UTC),
        datetime(2026, 12, 3, 8, 0, tzinfo=UTC),
    )
    start, end = quota.window(datetime(2026, 3, 8, 12, 0, tzinfo=UTC))
    assert end - start == timedelta(hours=23)


def test_a_window_that_divides_a_day_is_aligned_to_local_midnight() -> None:
    """600/10min resets at :00, :10, :20 ... of the zone's clock."""
    quota = parse_quota("600/10min", "Asia/Kolkata")  # UTC+05:30
    start, end = quota.window(datetime(2026, 12, 2, 9, 47, 12, tzinfo=UTC))
    assert (start, end) == (
        datetime(2026, 12, 2, 9, 40, tzinfo=UTC),
        datetime(2026, 12, 2, 9, 50, tzinfo=UTC),
    )


def test_a_rolling_quota_counts_buckets_still_inside_the_window() -> None:
    """A rolling 10 min quota keeps 10 s buckets; the oldest counting one ends after now-10min."""
    quota = parse_quota("600/10min", "rolling")
    now = datetime(2026, 12, 2, 9, 47, 15, tzinfo=UTC)
    start, end = quota.window(now)
    assert (start, end) == (now - timedelta(seconds=5), now + timedelta(seconds=5))
    since = quota.counted_since(now)
    # The bucket holding now - 10 min still has spends inside the window: it counts.
    assert since == now - timedelta(minutes=10, seconds=5)


@pytest.mark.parametrize(
    ("text", "reset", "match"),
    [
        ("10/d", "Mars/Base", "unknown time zone"),
        ("10/500ms", "UTC", "at least 1s"),
        # Windows from midnight: 60h used to be counted in 2-day windows (over-spent), 7h
        # in 1-day ones.
        ("1000/60h", "UTC", "must divide a day"),
        ("100/7h", "America/Los_Angeles", "must divide a day"),
    ],
)
def test_bad_quotas_are_refused(text: str, reset: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_quota(text, reset)


def test_a_cost_above_the_quota_is_refused() -> None:
    with pytest.raises(ValueError, match="quota cost"):
        QuotaSpec("acme:1d", parse_quota("3/d"), cost=4)


@pytest.mark.parametrize("text", ["1000/60h", "100/7h", "5/90s"])
def test_any_window_may_be_rolling(text: str) -> None:
    assert parse_quota(text, "rolling").rolling
