"""The sandbox's own rate limiter: every configured limit, per app or per advertiser.

It judges Sluice's limiter, so it shares no code with it. Each configured limit becomes,
per key it applies to, one of three kinds (see their modules for the exact rule):

* :class:`~sluice.sandbox.sliding.SlidingLog`: at most N units in any window (optionally
  on a schedule that changes N; with ``quota`` a rolling quota);
* :class:`~sluice.sandbox.bucket.LeakyBucket`: spacing judged to the millisecond (GCRA);
* :class:`~sluice.sandbox.fixed.FixedWindowQuota`: N units per window restarting at local
  midnight (daily quotas).

A call is admitted only when every limit that applies has room for it; then it is charged
to all of them (its cost on weighted limits, 1 elsewhere). A refused call is charged to
none, but every limit notes its arrival, so ``max_seen`` counts what clients *sent*.

Not thread-safe: the app drives it from one event loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sluice.sandbox.bucket import LeakyBucket
from sluice.sandbox.config import AnyLimitSpec, BucketSpec, FixedWindowSpec
from sluice.sandbox.fixed import FixedWindowQuota
from sluice.sandbox.limit import Limit, LimitState
from sluice.sandbox.schedule import LimitSchedule
from sluice.sandbox.sliding import SlidingLog

ANONYMOUS = "anonymous"
"""The app key of every request when auth is off."""


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused: the full limit that refused it, and when it frees."""

    limit_key: str
    limit: int
    """The limit in force when the call was refused."""
    window_s: float
    free_at: float
    """POSIX seconds at which the same call would be admitted by this limit."""
    quota: bool = False
    """The limit is a quota (spent until its window ends) rather than a rate."""
    per: str = "app"
    """Whom the limit counts: ``app`` or ``advertiser``."""


@dataclass(frozen=True)
class Verdict:
    """The outcome of one arrival: admitted, or refused by one or more limits."""

    refusals: tuple[Refusal, ...] = ()
    checked: tuple[tuple[str, Limit], ...] = field(default=(), compare=False)
    """Every (limit key, limit) the call was judged by, for profiles that reveal them."""

    @property
    def admitted(self) -> bool:
        """Whether the request was let through."""
        return not self.refusals

    @property
    def free_at(self) -> float:
        """When every refusing limit has room again (0.0 when admitted)."""
        return max((refusal.free_at for refusal in self.refusals), default=0.0)

    @property
    def binding(self) -> Refusal | None:
        """The refusal that frees last, the one a client must wait for."""
        return max(self.refusals, key=lambda refusal: refusal.free_at, default=None)

    def tightest(self, now: float) -> tuple[str, LimitState] | None:
        """The checked limit with the fewest units remaining at ``now`` (None: no limits)."""
        states = [(key, limit.state(now)) for key, limit in self.checked]
        return min(states, key=lambda pair: (pair[1].remaining, -pair[1].reset_at), default=None)


class SandboxLimiter:
    """Every configured limit, keyed per app or per advertiser."""

    def __init__(self, specs: Iterable[AnyLimitSpec], *, origin: float = 0.0) -> None:
        """Build the limiter.

        Args:
            specs: the configured limits.
            origin: POSIX seconds from which limit schedules count (start, reset, change).
        """
        self.specs = tuple(specs)
        self.origin = origin
        self.schedules = {
            spec.name: LimitSchedule(
                [(step.duration_s, step.limit) for step in spec.schedule],
                after=spec.limit,
                origin=origin,
                repeat=spec.repeat,
            )
            for spec in self.specs
            if spec.kind == "sliding" and spec.schedule
        }
        self._limits: dict[str, Limit] = {}
        self._last = float("-inf")

    def arrive(
        self,
        now: float,
        *,
        write: bool,
        app_key: str,
        advertiser_id: str | None = None,
        cost: int = 1,
    ) -> Verdict:
        """Judge a call of ``cost`` units arriving at ``now``: admitted everywhere or nowhere."""
        # A clock that steps back must not unsort the logs.
        now = self._last = max(now, self._last)
        checked = tuple(
            self._limit(spec, key)
            for spec in self.specs
            if (key := _key_for(spec, write=write, app_key=app_key, advertiser_id=advertiser_id))
        )
        refusals = []
        for (name, limit), spec in checked:
            units = cost if spec.weighted else 1
            limit.observe(now, units)
            if not limit.has_room(now, units):
                limit.refused += 1
                refusals.append(
                    Refusal(
                        name,
                        limit.limit_at(now),
                        limit.window_s,
                        limit.free_at(now, units),
                        quota=limit.quota,
                        per=spec.per,
                    )
                )
        if not refusals:
            for (_, limit), spec in checked:
                limit.admit(now, cost if spec.weighted else 1)
        return Verdict(tuple(refusals), tuple(pair for pair, _ in checked))

    def snapshot(self) -> dict[str, Limit]:
        """Every (limit, key) seen so far, by limit key ``"<limit name>:<key>"``."""
        return dict(self._limits)

    def report(self, now: float) -> dict[str, dict[str, Any]]:
        """Each limit key's entry in ``max_in_window`` of the stats."""
        return {key: limit.report(now) for key, limit in self._limits.items()}

    def describe_schedules(self, now: float) -> dict[str, dict[str, Any]]:
        """Each scheduled limit's steps and the limit in force at ``now``, by limit name."""
        return {name: schedule.describe(now) for name, schedule in self.schedules.items()}

    def _limit(self, spec: AnyLimitSpec, key: str) -> tuple[tuple[str, Limit], AnyLimitSpec]:
        name = f"{spec.name}:{key}"
        limit = self._limits.get(name)
        if limit is None:
            limit = self._limits[name] = self._new_limit(spec)
        return (name, limit), spec

    def _new_limit(self, spec: AnyLimitSpec) -> Limit:
        if isinstance(spec, BucketSpec):
            return LeakyBucket(spec.limit, spec.window_s, burst=spec.burst, quota=spec.quota)
        if isinstance(spec, FixedWindowSpec):
            return FixedWindowQuota(spec.limit, spec.window_s, spec.timezone, quota=spec.quota)
        return SlidingLog(
            spec.limit,
            spec.window_s,
            schedule=self.schedules.get(spec.name),
            quota=spec.quota,
            weighted=spec.weighted,
        )


def _key_for(
    spec: AnyLimitSpec, *, write: bool, app_key: str, advertiser_id: str | None
) -> str | None:
    """The key ``spec`` applies to for this request, or None when it does not apply."""
    if spec.scope == "read" and write:
        return None
    if spec.scope == "write" and not write:
        return None
    if spec.per == "app":
        return app_key
    return advertiser_id
