"""A limit that changes on a schedule, hidden from clients (The Trade Desk, Amazon Ads).

Real DSPs lower and raise their limits without saying so. A schedule is a list of steps,
``(duration_s, limit)``, counted from an origin (the sandbox's start, a reset, or new
limits put at run time): each step's limit holds for its duration, then the base limit
holds for good, or, with ``repeat``, the steps start again from the first.

Step boundaries are half-open: a step of ``[start, start + duration_s)`` owns its start
instant, so at exactly ``origin + 30`` the second step of ``[(30, 40), (60, 20)]`` is in
force. Before the origin (a clock set back) the first step is.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from typing import Any


class LimitSchedule:
    """The limit in force at each moment: the steps from ``origin``, then ``after``."""

    def __init__(
        self,
        steps: Sequence[tuple[float, int]],
        *,
        after: int,
        origin: float,
        repeat: bool = False,
    ) -> None:
        """Build a schedule.

        Args:
            steps: ``(duration_s, limit)`` pairs, in order; durations > 0.
            after: the limit once the steps are over (unused with ``repeat``).
            origin: POSIX seconds at which the first step starts.
            repeat: start the steps again after the last one, forever.
        """
        if not steps:
            raise ValueError("a schedule needs at least one step")
        self.steps = tuple((float(duration_s), int(limit)) for duration_s, limit in steps)
        self.after = after
        self.origin = origin
        self.repeat = repeat
        self._ends = list(itertools.accumulate(duration_s for duration_s, _ in self.steps))
        self.cycle_s = self._ends[-1]

    def limit_at(self, now: float) -> int:
        """The limit in force at ``now``."""
        elapsed = now - self.origin
        if elapsed < 0:
            return self.steps[0][1]
        if self.repeat:
            elapsed %= self.cycle_s
        elif elapsed >= self.cycle_s:
            return self.after
        # The first step whose end lies after `elapsed` owns it (steps own their start).
        index = bisect.bisect_right(self._ends, elapsed)
        return self.steps[min(index, len(self.steps) - 1)][1]

    def describe(self, now: float) -> dict[str, Any]:
        """The schedule as the stats show it, with the limit in force at ``now``."""
        return {
            "origin": self.origin,
            "elapsed_s": now - self.origin,
            "limit_now": self.limit_at(now),
            "steps": [[duration_s, limit] for duration_s, limit in self.steps],
            "after": None if self.repeat else self.after,
            "repeat": self.repeat,
        }
