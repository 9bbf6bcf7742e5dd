"""Injectable clocks: timezone-aware UTC everywhere, a fake one for tests."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sluice import errors


class Clock(Protocol):
    """Source of the current time."""

    def now(self) -> datetime:
        """Current time, timezone-aware UTC."""
        ...

    def time(self) -> float:
        """Current time as POSIX seconds."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never steps back: for measuring waits and delays.

        Only differences between two readings mean anything. In-process scheduling uses it,
        so a wall-clock step (NTP, a VM resuming) neither stalls nor hurries dispatch.
        """
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (a fake clock advances instead)."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class FakeClock:
    """A clock that only moves when told to; thread-safe.

    ``advance`` moves the wall clock and the monotonic clock together; ``step_wall`` moves
    only the wall clock, as NTP stepping a host's time would.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        # A timedelta, like the wall clock, so both round the same way when advanced.
        self._monotonic = timedelta(seconds=1000)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def time(self) -> float:
        return self.now().timestamp()

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic.total_seconds()

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        with self._lock:
            step = timedelta(seconds=seconds)
            self._now += step
            self._monotonic += step

    def step_wall(self, seconds: float) -> None:
        """Step the wall clock by ``seconds`` (negative: back) without moving the monotonic one."""
        with self._lock:
            self._now += timedelta(seconds=seconds)

    def sleep(self, seconds: float) -> None:
        """Stand-in for ``time.sleep`` that advances instead of waiting."""
        self.advance(seconds)


def utcnow() -> datetime:
    """Timezone-aware UTC now, for column defaults."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Return ``value`` as aware UTC (SQLite hands back naive datetimes).

    Raises:
        errors.InvalidValue: the instant is before year 1 or after year 9999 in UTC
            (``0001-01-01T00:00:00+14:00``), which no datetime can hold.
    """
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise errors.InvalidValue(
            f"{value.isoformat()} is out of range in UTC (years 1 to 9999)"
        ) from None
