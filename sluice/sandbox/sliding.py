"""The sliding log: at most ``limit`` admitted units in any ``window_s`` seconds.

Simple enough to be obviously right, because it judges Sluice's limiter. It keeps one
timestamp per admitted unit (a call costing 5 units is logged five times at its arrival
time) and refuses a call when admitting it would put more than ``limit`` units in the
window ``(t - window_s, t]``: the busiest window a client can be judged on. Refused calls
are not logged and spend nothing. The log is pruned from the left, so each unit costs
amortised O(1).

With a :class:`~sluice.sandbox.schedule.LimitSchedule` the limit changes over time (the
hidden-limit profiles); the log itself stays the same, only the count it is held to
moves. A long window with ``quota`` set is a rolling quota (e.g. 15,000 per 86,400 s).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from sluice.sandbox.limit import ArrivalWindow, LimitState, leaves_at
from sluice.sandbox.schedule import LimitSchedule


class SlidingLog:
    """One sliding-window limit applied to one key."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        schedule: LimitSchedule | None = None,
        quota: bool = False,
        weighted: bool = False,
    ) -> None:
        self.limit = limit
        """The base limit (the one in force after a schedule ends)."""
        self.window_s = window_s
        self.schedule = schedule
        self.quota = quota
        self.weighted = weighted
        self.admitted: deque[float] = deque()
        """One arrival time per admitted unit, oldest first."""
        self.refused = 0
        self._arrivals = ArrivalWindow(window_s)

    @property
    def max_seen(self) -> int:
        """The most units that arrived (admitted or refused) in any window."""
        return self._arrivals.max_seen

    def limit_at(self, now: float) -> int:
        """The limit in force at ``now``."""
        return self.limit if self.schedule is None else self.schedule.limit_at(now)

    def observe(self, now: float, cost: int = 1) -> None:
        """Record an arrival (admitted or not) and update ``max_seen``."""
        self._arrivals.observe(now, cost)

    def has_room(self, now: float, cost: int = 1) -> bool:
        """Whether ``cost`` more units may be admitted at ``now``."""
        admitted = self.admitted
        while admitted and now - admitted[0] >= self.window_s:
            admitted.popleft()
        return len(admitted) + cost <= self.limit_at(now)

    def free_at(self, now: float, cost: int = 1) -> float:
        """When the window will hold few enough units for ``cost`` more (after has_room).

        Judged by the limit in force at ``now``; a schedule may change it before then.
        """
        keep = max(0, self.limit_at(now) - cost)
        # The oldest units must leave until at most `keep` remain; the last to go decides.
        last_to_leave = self.admitted[len(self.admitted) - keep - 1]
        return leaves_at(last_to_leave, self.window_s)

    def admit(self, now: float, cost: int = 1) -> None:
        """Log ``cost`` units admitted at ``now``."""
        if cost == 1:
            self.admitted.append(now)
        else:
            self.admitted.extend([now] * cost)

    def state(self, now: float) -> LimitState:
        """Remaining units now, and when that number next grows."""
        self.has_room(now, 0)  # prune
        limit = self.limit_at(now)
        count = len(self.admitted)
        if count >= limit:
            reset_at = self.free_at(now, 1)
        elif count:
            reset_at = leaves_at(self.admitted[0], self.window_s)
        else:
            reset_at = now
        return LimitState(limit, max(0, limit - count), reset_at, self.window_s)

    def report(self, now: float) -> dict[str, Any]:
        """``{"limit", "window_s", "max_seen"}``, plus what sets this limit apart."""
        entry: dict[str, Any] = {
            "limit": self.limit,
            "window_s": self.window_s,
            "max_seen": self.max_seen,
        }
        if self.schedule is not None:
            entry["limit_now"] = self.limit_at(now)
        if self.weighted:
            entry["weighted"] = True
        if self.quota:
            entry["quota"] = True
        return entry
