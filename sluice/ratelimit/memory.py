"""In-process limiter for embedded mode: the GCRA of :mod:`gcra` behind one lock.

Limits are shared by every thread of this process and no further; run
:class:`~sluice.ratelimit.redis.RedisLimiter` when several processes or hosts submit.
Time is the clock's *monotonic* reading, so a wall-clock step neither stalls grants nor
lets one through early. A new limiter knows nothing of what the process before it sent,
so it starts cold: each key waits its hold from :func:`gcra.cold_hold_us` first.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Collection, Sequence

from sluice.clock import Clock, SystemClock
from sluice.ratelimit import gcra, sendgate
from sluice.ratelimit.base import (
    InFlight,
    check_acquire_args,
    check_pause_seconds,
    clock_us,
    monotonic_us,
)
from sluice.ratelimit.rate import Grant, LimitSpec

# Expired entries are swept every this many calls, so idle keys cannot pile up forever.
_SWEEP_EVERY = 1024


class MemoryLimiter:
    """Thread-safe in-memory :class:`~sluice.ratelimit.base.Limiter`.

    Args:
        clock: time source; tests pass a ``FakeClock``.
        margin: extra fraction of the interval kept between grants (see :mod:`gcra`).
        catch_up_s: how late a caller may be for its slot without the schedule slipping
            (see :mod:`gcra`; capped at half the margin's slack).
        cold_start: hold every key as a limiter that lost its state must (see :mod:`gcra`);
            off only for tests that start from a known-empty past.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        margin: float = 0.01,
        catch_up_s: float = 0.0,
        *,
        cold_start: bool = True,
    ) -> None:
        gcra.check_margin(margin)
        self._clock: Clock = clock or SystemClock()
        self._margin = margin
        self._catch_up_us = gcra.to_us(catch_up_s)
        self._lock = threading.Lock()
        self._born_us = monotonic_us(self._clock) if cold_start else None
        # granted_at is the monotonic decision time shown as POSIX seconds: one reading, so
        # grants keep exactly the spacing they were given (a second clock read would not).
        self._posix_offset_us = clock_us(self._clock) - monotonic_us(self._clock)
        self._tats: dict[str, int] = {}
        self._pauses: dict[str, int] = {}
        self._leases: dict[str, dict[str, int]] = {}
        self._calls = 0

    def acquire(
        self,
        limits: Sequence[LimitSpec],
        *,
        in_flight: InFlight | None = None,
        wide: Collection[str] = (),
    ) -> Grant:
        """See :meth:`Limiter.acquire`."""
        check_acquire_args(limits, in_flight)
        plans = gcra.plan(limits, self._margin, self._catch_up_us, wide)
        floor_by_key = gcra.cold_floors(plans, self._born_us) if self._born_us is not None else None
        guarded = list(plans) + ([in_flight.key] if in_flight else [])
        scopes = gcra.pause_scopes_all(guarded)
        with self._lock:
            now_us = monotonic_us(self._clock)
            self._maybe_sweep(now_us)
            verdict = gcra.decide(
                now_us,
                self._tats,
                plans,
                (self._pauses[scope] for scope in scopes if scope in self._pauses),
                floor_by_key,
            )
            if not verdict.allowed:
                return Grant(False, verdict.wait_us / gcra.US_PER_S, verdict.reason)
            if in_flight is not None and self._born_us is not None:
                # An in-flight cap is held cold too: with no rate key, nothing else would.
                cold_us = self._born_us + gcra.COLD_HOLD_US - now_us
                if cold_us > 0:
                    return Grant(False, cold_us / gcra.US_PER_S, "rate")
            lease_id = None
            if in_flight is not None:
                leases = self._live_leases(in_flight.key, now_us)
                wait_us = gcra.in_flight_wait(now_us, leases.values(), in_flight.max_in_flight)
                if wait_us > 0:
                    return Grant(False, wait_us / gcra.US_PER_S, "in_flight")
                lease_id = uuid.uuid4().hex
                leases[lease_id] = now_us + gcra.to_us(in_flight.ttl_s)
            self._tats.update(verdict.new_tats)
        granted_at = (now_us + self._posix_offset_us) / gcra.US_PER_S
        within = sendgate.send_within_s(limits, self._margin, self._catch_up_us)
        steps = gcra.paced_steps(plans, wide)
        return Grant(True, 0.0, "", lease_id, granted_at, within, undo=verdict.undo(), steps=steps)

    def release(self, lease_id: str, key: str) -> None:
        """See :meth:`Limiter.release`."""
        with self._lock:
            leases = self._leases.get(key)
            if leases is not None:
                leases.pop(lease_id, None)
                if not leases:
                    del self._leases[key]

    def hold(self, lease_id: str, key: str, seconds: float) -> None:
        """See :meth:`Limiter.hold`."""
        check_pause_seconds(seconds)
        with self._lock:
            until_us = monotonic_us(self._clock) + gcra.to_us(seconds)
            self._leases.setdefault(key, {})[lease_id] = until_us

    def give_back(self, undo: Sequence[tuple[str, int, int]]) -> None:
        """See :meth:`Limiter.give_back`."""
        with self._lock:
            for key, before, after in undo:
                back = gcra.undone(self._tats.get(key), before, after)
                if back is not None:
                    self._tats[key] = back

    def push_back(self, moves: Sequence[tuple[str, int]]) -> None:
        """See :meth:`Limiter.push_back`."""
        with self._lock:
            now_us = monotonic_us(self._clock)
            for key, offset_us in moves:
                moved = gcra.pushed_back(self._tats.get(key), now_us, offset_us)
                if moved is not None:
                    self._tats[key] = moved

    def pause(self, key: str, seconds: float) -> None:
        """See :meth:`Limiter.pause`."""
        check_pause_seconds(seconds)
        with self._lock:
            until_us = monotonic_us(self._clock) + gcra.to_us(seconds)
            if until_us > self._pauses.get(key, 0):
                self._pauses[key] = until_us

    def paused_until(self, key: str) -> float | None:
        """See :meth:`Limiter.paused_until`."""
        with self._lock:
            now_us = monotonic_us(self._clock)
            until_us = max(self._pauses.get(scope, 0) for scope in gcra.pause_scopes(key))
            wall_us = clock_us(self._clock)
        return (wall_us + until_us - now_us) / gcra.US_PER_S if until_us > now_us else None

    def unpause(self, key: str) -> None:
        """See :meth:`Limiter.unpause`."""
        with self._lock:
            self._pauses.pop(key, None)

    def in_flight_count(self, key: str) -> int:
        """See :meth:`Limiter.in_flight_count`."""
        with self._lock:
            now_us = monotonic_us(self._clock)
            return sum(1 for expiry in self._leases.get(key, {}).values() if expiry > now_us)

    def reset(self) -> None:
        """See :meth:`Limiter.reset`; like a new limiter, it starts cold."""
        with self._lock:
            self._tats.clear()
            self._pauses.clear()
            self._leases.clear()
            if self._born_us is not None:
                self._born_us = monotonic_us(self._clock)

    def _live_leases(self, key: str, now_us: int) -> dict[str, int]:
        leases = self._leases.setdefault(key, {})
        for lease_id in [lid for lid, expiry in leases.items() if expiry <= now_us]:
            del leases[lease_id]
        return leases

    def _maybe_sweep(self, now_us: int) -> None:
        self._calls += 1
        if self._calls % _SWEEP_EVERY:
            return
        # A TAT more than any catch-up (wide ones too) in the past, or a pause in the past,
        # constrains nothing: forgetting it changes no answer (max(tat, now - credit)
        # ignores it, and a wide key that far behind starts from idle either way). One
        # exactly a credit old is kept: the wide credit still reaches it (now - tat <= credit).
        horizon = now_us - max(self._catch_up_us, gcra.WIDE_CATCH_UP_US)
        self._tats = {key: tat for key, tat in self._tats.items() if tat >= horizon}
        self._pauses = {key: until for key, until in self._pauses.items() if until > now_us}
        for key in list(self._leases):
            if not self._live_leases(key, now_us):
                del self._leases[key]
