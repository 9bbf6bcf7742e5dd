"""What every kind of sandbox limit answers, and the exact ``max_seen`` measure they share.

A limit applies to one key (an app or an advertiser). The limiter asks it, for each call:
``observe`` (every arrival, admitted or not, for the truth in the stats), ``has_room``,
then ``admit`` or ``free_at`` (when a call of that cost would be admitted). ``state``
is what revealing profiles tell the client; ``report`` is its entry in the stats.

A call may charge a limit several *units* (its cost, on weighted limits); every count
here is in units.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class LimitState:
    """What a limit would tell a client now: the count, what is left, when more frees."""

    limit: int
    """The limit in force now."""
    remaining: int
    """Units that could be admitted right now."""
    reset_at: float
    """POSIX seconds at which ``remaining`` next grows (now when it is already full)."""
    window_s: float
    """The window the limit counts over."""


class Limit(Protocol):
    """One limit applied to one key."""

    window_s: float
    quota: bool
    """Whether a refusal means "quota spent" rather than "slow down"."""
    refused: int
    """Calls this limit refused."""

    @property
    def max_seen(self) -> int:
        """The most units that arrived (admitted or refused) in any one window."""
        ...

    def limit_at(self, now: float) -> int:
        """The limit in force at ``now``."""
        ...

    def observe(self, now: float, cost: int) -> None:
        """Note an arrival of ``cost`` units, admitted or not."""
        ...

    def has_room(self, now: float, cost: int) -> bool:
        """Whether ``cost`` more units may be admitted at ``now``."""
        ...

    def free_at(self, now: float, cost: int) -> float:
        """POSIX seconds at which ``cost`` units would be admitted (after ``has_room``)."""
        ...

    def admit(self, now: float, cost: int) -> None:
        """Charge ``cost`` units admitted at ``now``."""
        ...

    def state(self, now: float) -> LimitState:
        """Limit, remaining and reset as they stand at ``now``."""
        ...

    def report(self, now: float) -> dict[str, Any]:
        """This limit's entry in ``max_in_window`` of the stats."""
        ...


class ArrivalWindow:
    """The busiest sliding window of arrivals, exactly.

    A unit that arrived at ``s`` is inside the window ending at ``t`` when
    ``t - s < window_s``: the window is the half-open interval ``(t - window_s, t]``. The
    busiest window always ends at an arrival, so counting the units still inside the
    window each time some arrive gives the exact maximum, in amortised O(1) per unit.
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.arrivals: deque[float] = deque()
        self.max_seen = 0

    def observe(self, now: float, cost: int = 1) -> None:
        """Record ``cost`` units arriving at ``now`` (times never decrease)."""
        arrivals = self.arrivals
        while arrivals and now - arrivals[0] >= self.window_s:
            arrivals.popleft()
        if cost == 1:
            arrivals.append(now)
        else:
            arrivals.extend([now] * cost)
        if len(arrivals) > self.max_seen:
            self.max_seen = len(arrivals)


def leaves_at(arrived_at: float, window_s: float) -> float:
    """The first instant at which a unit that arrived at ``arrived_at`` is out of the window.

    ``arrived_at + window_s`` may round down in floats; step up until
    ``at - arrived_at >= window_s`` holds, which is how the windows judge.
    """
    at = arrived_at + window_s
    while at - arrived_at < window_s:
        at = math.nextafter(at, math.inf)
    return at
