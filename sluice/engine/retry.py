"""Retry timing: exponential backoff with full jitter, bounded."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delays for attempt n: uniform(0, min(max_s, base_s * 2**(n-1)))."""

    base_s: float = 1.0
    max_s: float = 300.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full-jitter delay before attempt ``attempt + 1`` (``attempt`` >= 1 failures so far)."""
        # 2**62 seconds outlasts any max_s; a larger power would overflow a float.
        doublings = min(max(0, attempt - 1), 62)
        ceiling = min(self.max_s, self.base_s * (2**doublings))
        return (rng or random).uniform(0, ceiling)


@dataclass(frozen=True)
class PollSchedule:
    """Adaptive poll interval: grows while nothing changes, resets on change."""

    base_s: float
    max_s: float
    factor: float = 1.5

    def next_interval(self, current_s: float | None, changed: bool) -> float:
        if changed or current_s is None:
            return self.base_s
        return min(self.max_s, current_s * self.factor)
