"""A leaky bucket judged to the millisecond: GCRA on whole-millisecond arrival times.

Many third parties enforce spacing rather than a count per window: calls are due one
*emission interval* ``T = window_s / limit`` apart, and a call may come at most ``burst``
intervals early. This is the Generic Cell Rate Algorithm (virtual scheduling), with
tolerance ``tau = burst * T``:

* arrival times are taken to the microsecond, then truncated to whole milliseconds
  (12.3456 s counts as 12345 ms); ``T`` and the theoretical arrival time ``TAT`` are kept
  as exact fractions of a millisecond, so no rounding ever decides a verdict;
* a call arriving at ``t`` is refused (a *violation*) when ``t < TAT - tau``; otherwise it
  is admitted and ``TAT = max(t, TAT) + T``. Refused calls leave ``TAT`` alone.

Unrolled, ``TAT = max_i(a_i + k_i * T)`` over the admitted arrivals ``a_i``, where ``k_i``
counts the calls admitted from ``a_i`` on. So a call is refused exactly when, for some
earlier admitted call, the ``k`` calls admitted since it (itself included) and the new
one span less than ``(k - burst) * T`` milliseconds. With ``burst = 1``: one call may
come one slot early, never two; three calls inside one interval are always a violation,
and a client whose calls, in whole milliseconds, are never closer than ``T`` is never
refused.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from sluice.sandbox.limit import ArrivalWindow, LimitState


def whole_ms(now: float) -> int:
    """POSIX seconds to whole milliseconds: nearest microsecond, then truncated."""
    return round(now * 1_000_000) // 1000


def ms_to_s(ms: int) -> float:
    """The earliest POSIX seconds that :func:`whole_ms` maps to ``ms`` or later."""
    at = ms / 1000
    while whole_ms(at) < ms:
        at = math.nextafter(at, math.inf)
    return at


class LeakyBucket:
    """One GCRA limit applied to one key (see the module docstring for the rule)."""

    def __init__(self, limit: int, window_s: float, *, burst: int = 0, quota: bool = False) -> None:
        self.limit = limit
        self.window_s = window_s
        self.burst = burst
        self.quota = quota
        self.interval_ms = Fraction(str(window_s)) * 1000 / limit
        """The emission interval ``T``, exactly."""
        self.tolerance_ms = burst * self.interval_ms
        self.tat_ms: Fraction | None = None
        """The theoretical arrival time of the next call (None before the first)."""
        self.refused = 0
        self.min_slack_ms: Fraction | None = None
        """The least margin by which an admitted call beat its violation line."""
        self._arrivals = ArrivalWindow(window_s)

    @property
    def max_seen(self) -> int:
        """The most calls that arrived (admitted or refused) in any ``window_s`` window."""
        return self._arrivals.max_seen

    def limit_at(self, now: float) -> int:
        """The limit (calls per ``window_s``), which never changes."""
        return self.limit

    def observe(self, now: float, cost: int = 1) -> None:
        """Record an arrival (admitted or not) and update ``max_seen``."""
        self._arrivals.observe(now, cost)

    def has_room(self, now: float, cost: int = 1) -> bool:
        """Whether a call at ``now`` keeps to the spacing (``t >= TAT - tau``)."""
        return self.tat_ms is None or whole_ms(now) >= self.tat_ms - self.tolerance_ms

    def free_at(self, now: float, cost: int = 1) -> float:
        """The first instant a call would be admitted (after has_room)."""
        assert self.tat_ms is not None, "free_at() follows a refusal"
        return ms_to_s(math.ceil(self.tat_ms - self.tolerance_ms))

    def admit(self, now: float, cost: int = 1) -> None:
        """Move the theoretical arrival time one interval on."""
        t = whole_ms(now)
        if self.tat_ms is None:
            self.tat_ms = Fraction(t) + self.interval_ms
            return
        slack = t - (self.tat_ms - self.tolerance_ms)
        if self.min_slack_ms is None or slack < self.min_slack_ms:
            self.min_slack_ms = slack
        self.tat_ms = max(Fraction(t), self.tat_ms) + self.interval_ms

    def state(self, now: float) -> LimitState:
        """How many calls could come back to back now, and when one more could."""
        t = whole_ms(now)
        full = self.burst + 1
        if self.tat_ms is None or self.tat_ms <= t:
            return LimitState(self.limit, full, now, self.window_s)
        slack = t + self.tolerance_ms - self.tat_ms
        remaining = min(full, math.floor(slack / self.interval_ms) + 1) if slack >= 0 else 0
        grows_at = self.tat_ms - self.tolerance_ms + remaining * self.interval_ms
        return LimitState(self.limit, remaining, ms_to_s(math.ceil(grows_at)), self.window_s)

    def report(self, now: float) -> dict[str, Any]:
        """Limit, window, ``max_seen``, and the spacing: interval, burst, least slack."""
        return {
            "limit": self.limit,
            "window_s": self.window_s,
            "max_seen": self.max_seen,
            "burst": self.burst,
            "interval_ms": float(self.interval_ms),
            "min_slack_ms": None if self.min_slack_ms is None else float(self.min_slack_ms),
        }
