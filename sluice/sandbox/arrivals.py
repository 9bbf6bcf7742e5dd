"""What arrived when: a bounded log of every ``/v1`` call and a per-second timeline.

Benchmarks judge spacing and effective rates from arrival times. The sandbox notes each
``/v1`` call when it judges it, on its own clock (POSIX seconds, the clock the limiter
uses, so a time here is exactly what the limiter saw):

* :class:`ArrivalLog`, ``GET /_sandbox/arrivals``: one entry per call,
  ``[seq, t, route, status, outcome]``, in a ring buffer of ``arrival_log_cap`` entries
  (default 100,000; the oldest are forgotten first and counted in ``dropped``). ``seq``
  numbers calls from 1 and keeps counting across clears, so ``?after=<seq>`` fetches only
  what is new. ``outcome`` is ``admitted``, ``refused`` (by a limit) or ``unauthorized``.
* :class:`Timeline`, ``GET /_sandbox/timeline``: per whole second since the sandbox
  started or was reset, how many calls reached the limiter, were admitted and refused,
  for the last ``timeline_cap_s`` seconds that saw calls (default 3,600).

Each call costs O(1) here: an append and a counter.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable
from typing import Any

ARRIVAL_FIELDS = ("seq", "t", "route", "status", "outcome")
"""What each entry of ``/_sandbox/arrivals`` holds, in order."""

Arrival = tuple[int, float, str, int | str, str]


class ArrivalLog:
    """The last ``cap`` arrivals, oldest first."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.dropped = 0
        """Entries forgotten because the log was full (since the last clear)."""
        self._entries: deque[Arrival] = deque(maxlen=cap)
        self._seq = 0

    def record(self, t: float, route: str, status: int | str, outcome: str) -> None:
        """Note one call judged at ``t``."""
        self._seq += 1
        if not self.cap:
            self.dropped += 1
            return
        if len(self._entries) == self.cap:
            self.dropped += 1
        self._entries.append((self._seq, t, route, status, outcome))

    def after(self, seq: int) -> list[Arrival]:
        """The entries numbered above ``seq`` (all of them for 0)."""
        if not self._entries:
            return []
        # Entries are numbered consecutively: skip straight to the first one wanted.
        skip = max(0, seq - self._entries[0][0] + 1)
        return list(itertools.islice(self._entries, skip, None))

    def clear(self) -> None:
        """Forget every entry (numbering carries on)."""
        self._entries.clear()
        self.dropped = 0

    def answer(self, after: int = 0) -> dict[str, Any]:
        """The ``GET /_sandbox/arrivals`` answer."""
        return {
            "cap": self.cap,
            "recorded": self._seq,
            "dropped": self.dropped,
            "fields": list(ARRIVAL_FIELDS),
            "arrivals": [list(entry) for entry in self.after(after)],
        }


class Timeline:
    """Calls that reached the limiter, per whole second since ``origin``."""

    def __init__(self, origin: float, cap_s: int) -> None:
        self.origin = origin
        self.cap_s = cap_s
        self._rows: deque[list[int]] = deque(maxlen=cap_s)
        """``[second, arrived, admitted, refused]``, one per second that saw calls."""

    def record(self, now: float, *, admitted: bool) -> None:
        """Count one call judged at ``now``."""
        if not self.cap_s:
            return
        second = math.floor(now - self.origin)
        rows = self._rows
        if not rows or rows[-1][0] < second:
            rows.append([second, 0, 0, 0])
        row = rows[-1]  # a clock stepping back counts in the latest second
        row[1] += 1
        row[2 if admitted else 3] += 1

    def answer(self, limits_at: Callable[[float], dict[str, int]]) -> dict[str, Any]:
        """The ``GET /_sandbox/timeline`` answer.

        Args:
            limits_at: the scheduled limits in force at a time, by limit name; each row
                shows them as they stood at the start of its second.
        """
        seconds = []
        for second, arrived, admitted, refused in self._rows:
            row: dict[str, Any] = {
                "t_s": second,
                "arrived": arrived,
                "admitted": admitted,
                "refused": refused,
            }
            limits = limits_at(self.origin + second)
            if limits:
                row["limits"] = limits
            seconds.append(row)
        return {"origin": self.origin, "cap_s": self.cap_s, "seconds": seconds}
