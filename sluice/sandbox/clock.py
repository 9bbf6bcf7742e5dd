"""The sandbox's clock: the injected one plus an offset that tests may move forward.

Daily quotas, schedules and processing delays are only testable if time can jump. In
process, tests inject a fake clock and advance it. A sandbox in another process cannot be
reached that way, so ``POST /_sandbox/clock`` moves its clock forward instead:
``{"advance_s": 3600}`` or ``{"to": <POSIX seconds>}``. Everything the sandbox does reads
this clock, so objects process, tokens expire and windows end as if the time had passed.

The clock never moves back (limiter logs must stay sorted); reset keeps the offset.
This is the sandbox's alone: Sluice's own clocks are untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sluice.sandbox.errors import InvalidRequest

LATEST_S = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
"""The latest the clock may show: the last second a date can hold (its answers carry one)."""


class SandboxClock:
    """POSIX seconds from ``base`` plus a forward-only offset."""

    def __init__(self, base: Callable[[], float]) -> None:
        self._base = base
        self.offset_s = 0.0

    def time(self) -> float:
        """The sandbox's now, in POSIX seconds."""
        return self._base() + self.offset_s

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward.

        Raises:
            ValueError: ``seconds`` is negative or not finite, or would pass :data:`LATEST_S`.
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"advance_s must be a finite number >= 0, got {seconds!r}")
        if self.time() + seconds > LATEST_S:
            raise ValueError(f"advance_s {seconds:g} would move the clock past the year 9999")
        self.offset_s += seconds

    def advance_to(self, at: float) -> None:
        """Move the clock forward to ``at`` (POSIX seconds).

        Raises:
            ValueError: ``at`` lies before the sandbox's now, is not finite, or is past
                :data:`LATEST_S`.
        """
        if not math.isfinite(at) or at > LATEST_S:
            raise ValueError(f"to must be finite POSIX seconds before the year 10000, got {at!r}")
        now = self.time()
        if at < now:
            raise ValueError(
                f"to {at:.3f} lies before the sandbox's now {now:.3f}; time only moves forward"
            )
        self.offset_s += at - now

    def apply(self, body: Any) -> None:
        """Apply a ``POST /_sandbox/clock`` body: ``{"advance_s": N}`` or ``{"to": T}``.

        Raises:
            InvalidRequest: anything else, or a move back in time.
        """
        if not isinstance(body, dict) or len(body) != 1 or not {"advance_s", "to"} >= set(body):
            raise InvalidRequest('body must be {"advance_s": <seconds>} or {"to": <POSIX seconds>}')
        ((key, value),) = body.items()
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequest(f"{key} must be a number", field=key)
        try:
            if key == "advance_s":
                self.advance(float(value))
            else:
                self.advance_to(float(value))
        except OverflowError:
            raise InvalidRequest(f"{key} is too large", field=key) from None
        except ValueError as exc:
            raise InvalidRequest(str(exc), field=key) from None

    def describe(self) -> dict[str, Any]:
        """``{"now", "utc", "offset_s"}``: the ``/_sandbox/clock`` answer."""
        now = self.time()
        return {
            "now": now,
            "utc": datetime.fromtimestamp(now, UTC).isoformat(),
            "offset_s": self.offset_s,
        }
