"""Quotas: a count of units per long window, spent in bursts, reset on the provider's clock.

A *rate* (``rate_limit = "50/s"``) is a pace: the limiter spreads it evenly
(:mod:`sluice.ratelimit.gcra`). A *quota* (``quota = "15000/d"``) is a budget: up to its
count may go as fast as the provider's short rates allow, and once it is spent nothing
more goes until it resets. It is never exceeded.

Two resets, as providers document them:

- **fixed** windows on a time zone's calendar (``reset = "America/Los_Angeles"``, default
  ``"UTC"``): a ``d`` quota resets at local midnight (a 23 or 25 hour day at a DST
  change), a window that divides a day (``"600/10min"``, ``"1000/h"``) at local midnight
  and every window after it, a window of several days at local midnight every that many
  days counted from 1970-01-01;
- **rolling** (``reset = "rolling"``): no more than the count in any window ending now.
  Use is kept in :data:`ROLLING_BUCKETS` buckets per window, and a bucket counts until
  the *end* of the bucket leaves the window, so a rolling quota may wait up to one bucket
  (1/60 of the window) longer than an exact log would: never shorter.

This module is pure (no I/O). The counts live in the database (``store/quotas.py``), so a
restart or a lost Redis never hands out a window twice.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sluice import errors
from sluice.ratelimit.rate import Rate, parse_rate

ROLLING = "rolling"
ROLLING_BUCKETS = 60
DAY_S = 86_400
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ZONE_NAME = re.compile(r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$")


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``.

    Raises:
        errors.InvalidValue: no such zone.
    """
    if not isinstance(name, str) or not _ZONE_NAME.match(name):
        raise errors.InvalidValue(f"unknown time zone {name!r}; use an IANA name like 'UTC'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise errors.InvalidValue(
            f"unknown time zone {name!r}; use an IANA name like 'America/Los_Angeles' or "
            f"'UTC', or 'rolling' for a rolling window"
        ) from None


@dataclass(frozen=True)
class Quota:
    """At most ``rate.limit`` units per window of ``rate.window_s``, reset by ``reset``.

    ``reset`` is an IANA time zone (fixed windows on its calendar) or ``"rolling"``.
    ``pace``: also spread what is left evenly until the reset (a ceiling on the rate in
    force, :mod:`sluice.engine.rates`) instead of spending it in bursts.
    """

    rate: Rate
    reset: str = "UTC"
    pace: bool = False

    def __post_init__(self) -> None:
        if self.reset != ROLLING:
            zone(self.reset)
        if self.rate.window_s < 1:
            raise errors.InvalidValue(f"a quota window must be at least 1s, got {self.rate}")
        window_s = self.rate.window_s
        if self.reset != ROLLING and not (
            (window_s < DAY_S and DAY_S % window_s == 0) or window_s % DAY_S == 0
        ):
            # Fixed windows run from local midnight: one that neither divides a day nor is
            # whole days has no calendar (60h was counted as 2 days, 7h as one).
            raise errors.InvalidValue(
                f"a quota window that resets on a calendar must divide a day (1h, 6h) or be "
                f'whole days (2d, 7d), got {self.rate}; use reset = "rolling" for any window'
            )

    @property
    def limit(self) -> int:
        return self.rate.limit

    @property
    def rolling(self) -> bool:
        return self.reset == ROLLING

    def bucket_s(self) -> float:
        """How long one bucket of use lasts: the window, or 1/60 of it when rolling."""
        return self.rate.window_s / ROLLING_BUCKETS if self.rolling else self.rate.window_s

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        """The fixed window holding ``now`` (start, end), or for a rolling quota the bucket."""
        if self.rolling:
            return _aligned(now, self.bucket_s(), _EPOCH)
        tz = zone(self.reset)
        local = now.astimezone(tz)
        window_s = self.rate.window_s
        midnight = datetime(local.year, local.month, local.day, tzinfo=tz)
        if window_s == DAY_S:
            next_day = (midnight + timedelta(days=1, hours=3)).replace(hour=0)
            return midnight.astimezone(UTC), next_day.astimezone(UTC)
        if window_s < DAY_S and DAY_S % window_s == 0:
            start, end = _aligned(now, window_s, midnight.astimezone(UTC))
            next_day = (midnight + timedelta(days=1, hours=3)).replace(hour=0).astimezone(UTC)
            return start, min(end, next_day)
        days = int(window_s // DAY_S)
        origin = datetime(1970, 1, 1, tzinfo=tz)
        ordinal = (local.date() - origin.date()).days
        first = local.date() - timedelta(days=ordinal % days)
        start_local = datetime(first.year, first.month, first.day, tzinfo=tz)
        end_date = first + timedelta(days=days)
        end_local = datetime(end_date.year, end_date.month, end_date.day, tzinfo=tz)
        return start_local.astimezone(UTC), end_local.astimezone(UTC)

    def counted_since(self, now: datetime) -> datetime:
        """The start of the oldest bucket whose use still counts at ``now``."""
        if not self.rolling:
            return self.window(now)[0]
        # A bucket [b, b + g) counts while b + g > now - window: the oldest is the one that
        # holds the instant now - window.
        oldest, _ = self.window(now - timedelta(seconds=self.rate.window_s))
        return oldest

    def describe_reset(self) -> str:
        if self.rolling:
            return f"rolling: at most {self.rate.limit} in any {self.rate.window_s:g}s"
        return f"fixed windows from midnight {self.reset}"


def parse_quota(text: str, reset: str = "UTC", pace: bool = False) -> Quota:
    """``"15000/d"`` with its reset (``"America/Los_Angeles"`` or ``"rolling"``)."""
    return Quota(parse_rate(text), reset, pace)


@dataclass(frozen=True)
class QuotaSpec:
    """One quota a request draws ``cost`` units from, under ``key``."""

    key: str
    quota: Quota
    cost: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise errors.InvalidValue(f"quota key must be a non-empty string, got {self.key!r}")
        if self.cost < 1 or self.cost > self.quota.limit:
            raise errors.InvalidValue(
                f"quota cost must be in 1..{self.quota.limit} on {self.key!r}, got {self.cost}"
            )


def _aligned(now: datetime, step_s: float, origin: datetime) -> tuple[datetime, datetime]:
    step_us = round(step_s * 1_000_000)
    elapsed_us = (now - origin) // timedelta(microseconds=1)
    start = origin + timedelta(microseconds=math.floor(elapsed_us / step_us) * step_us)
    return start, start + timedelta(microseconds=step_us)
