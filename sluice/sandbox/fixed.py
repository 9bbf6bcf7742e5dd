"""A quota over fixed windows that restart at local midnight (Google Ads' daily operations).

Google Ads' basic access allows 15,000 operations a day; the day ends at midnight in the
time zone the provider documents, not 24 hours after the first call. A quota may be spent
in bursts: nothing paces it, it only ends.

Windows are laid from each local midnight in ``timezone``: ``[midnight + k * window_s,
midnight + (k + 1) * window_s)`` in real seconds, except that the day's last window ends at
the next local midnight. With ``window_s = 86400`` each window is one calendar day, 23 or
25 hours long on the days clocks change; shorter windows are exact except the day's last
on such days. When a new window starts, everything spent is forgotten.
"""

from __future__ import annotations

import math
import zoneinfo
from datetime import date, datetime, time, timedelta
from typing import Any

from sluice.sandbox.limit import LimitState

SECONDS_PER_DAY = 86_400


def window_bounds(now: float, tz: zoneinfo.ZoneInfo, window_s: int) -> tuple[float, float]:
    """The window ``[start, end)`` holding ``now`` (POSIX seconds)."""
    day = datetime.fromtimestamp(now, tz).date()
    midnight = _day_starts(day, tz)
    if now < midnight:  # between the two occurrences of a midnight: still the day before
        day -= timedelta(days=1)
        midnight = _day_starts(day, tz)
    last = SECONDS_PER_DAY // window_s - 1
    index = min(int((now - midnight) // window_s), last)
    start = midnight + index * window_s
    end = _day_starts(day + timedelta(days=1), tz) if index == last else start + window_s
    return start, end


def _day_starts(day: date, tz: zoneinfo.ZoneInfo) -> float:
    """When ``day`` starts in ``tz``: its local midnight.

    A midnight the clocks skip starts the day at the jump; a midnight that happens twice
    (clocks set back across it) starts it at the second occurrence, so the day before is
    the longer one. Either way it is the later of the two readings of 00:00.
    """
    return max(datetime.combine(day, time(0, fold=fold), tzinfo=tz).timestamp() for fold in (0, 1))


class FixedWindowQuota:
    """One fixed-window quota applied to one key."""

    def __init__(self, limit: int, window_s: int, timezone: str, *, quota: bool = True) -> None:
        self.limit = limit
        self.window_s = float(window_s)
        self.timezone = timezone
        self.quota = quota
        self.refused = 0
        self.used = 0
        """Units admitted in the current window."""
        self.max_seen = 0
        """The most units that arrived (admitted or refused) in one window."""
        self._tz = zoneinfo.ZoneInfo(timezone)
        self._whole_s = window_s
        self._start = self._end = -math.inf
        self._arrived = 0

    def _roll(self, now: float) -> None:
        if not self._start <= now < self._end:
            self._start, self._end = window_bounds(now, self._tz, self._whole_s)
            self.used = self._arrived = 0

    def limit_at(self, now: float) -> int:
        """The quota, which never changes."""
        return self.limit

    def observe(self, now: float, cost: int = 1) -> None:
        """Count an arrival in its window and update ``max_seen``."""
        self._roll(now)
        self._arrived += cost
        self.max_seen = max(self.max_seen, self._arrived)

    def has_room(self, now: float, cost: int = 1) -> bool:
        """Whether ``cost`` more units fit in this window's quota."""
        self._roll(now)
        return self.used + cost <= self.limit

    def free_at(self, now: float, cost: int = 1) -> float:
        """The start of the next window (the configuration keeps costs within the quota)."""
        self._roll(now)
        return self._end

    def admit(self, now: float, cost: int = 1) -> None:
        """Spend ``cost`` units of this window's quota."""
        self._roll(now)
        self.used += cost

    def state(self, now: float) -> LimitState:
        """What is left of the quota and when it is whole again."""
        self._roll(now)
        reset_at = now if self.used == 0 else self._end
        return LimitState(self.limit, self.limit - self.used, reset_at, self.window_s)

    def report(self, now: float) -> dict[str, Any]:
        """Limit, window, ``max_seen``, and this window's use and end."""
        self._roll(now)
        return {
            "limit": self.limit,
            "window_s": self.window_s,
            "max_seen": self.max_seen,
            "quota": self.quota,
            "timezone": self.timezone,
            "used": self.used,
            "window_start": self._start,
            "resets_at": self._end,
        }
