"""The sandbox's own rate limiter: a sliding log of arrivals, simple enough to be obviously right.

It judges Sluice's limiter, so it shares no code with it. For every limit and key it keeps
two logs of timestamps:

* ``admitted``: requests let through. A request is refused when admitting it would put more
  than ``limit`` admitted requests in the window, i.e. when ``limit`` of them already
  arrived less than ``window_s`` seconds ago.
* ``arrivals``: every request, admitted or refused, to measure ``max_seen`` exactly.

A request at time ``s`` is inside the window ending at ``t`` when ``t - s < window_s``: the
window is the half-open interval ``(t - window_s, t]``. The busiest window always ends at an
arrival, so counting the arrivals still inside the window at each arrival gives the exact
maximum. Both logs are pruned from the left, so each request costs amortised O(1) per limit.

Not thread-safe: the app drives it from one event loop.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from sluice.sandbox.config import LimitSpec

ANONYMOUS = "anonymous"
"""The app key of every request when auth is off."""


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused: the full limit that refused it, and when a slot frees."""

    limit_key: str
    limit: int
    window_s: float
    free_at: float
    """POSIX seconds at which one more request would be admitted by this limit."""


@dataclass(frozen=True)
class Verdict:
    """The outcome of one arrival: admitted, or refused by one or more limits."""

    refusals: tuple[Refusal, ...] = ()

    @property
    def admitted(self) -> bool:
        """Whether the request was let through."""
        return not self.refusals

    @property
    def free_at(self) -> float:
        """When every refusing limit has a free slot again (0.0 when admitted)."""
        return max((refusal.free_at for refusal in self.refusals), default=0.0)

    @property
    def binding(self) -> Refusal | None:
        """The refusal that frees last, the one a client must wait for."""
        return max(self.refusals, key=lambda refusal: refusal.free_at, default=None)


class SlidingLog:
    """One limit applied to one key."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self.admitted: deque[float] = deque()
        self.arrivals: deque[float] = deque()
        self.max_seen = 0
        self.refused = 0

    def observe(self, now: float) -> None:
        """Record an arrival (admitted or not) and update ``max_seen``."""
        arrivals = self.arrivals
        while arrivals and now - arrivals[0] >= self.window_s:
            arrivals.popleft()
        arrivals.append(now)
        if len(arrivals) > self.max_seen:
            self.max_seen = len(arrivals)

    def has_room(self, now: float) -> bool:
        """Whether one more request may be admitted at ``now``."""
        admitted = self.admitted
        while admitted and now - admitted[0] >= self.window_s:
            admitted.popleft()
        return len(admitted) < self.limit

    def free_at(self) -> float:
        """When the window will hold fewer than ``limit`` admitted requests (after has_room)."""
        # The oldest request that must leave for a slot to open is the one `limit` from the end.
        oldest = self.admitted[len(self.admitted) - self.limit]
        at = oldest + self.window_s
        # Float rounding: make sure `at - oldest >= window_s` (how has_room judges) holds.
        while at - oldest < self.window_s:
            at = math.nextafter(at, math.inf)
        return at


class SandboxLimiter:
    """Every configured limit, keyed per app or per advertiser."""

    def __init__(self, specs: Iterable[LimitSpec]) -> None:
        self.specs = tuple(specs)
        self._logs: dict[str, SlidingLog] = {}
        self._last = float("-inf")

    def arrive(
        self, now: float, *, write: bool, app_key: str, advertiser_id: str | None = None
    ) -> Verdict:
        """Judge one request arriving at ``now``; admitted requests are logged in every limit."""
        # A clock that steps back must not unsort the logs.
        now = self._last = max(now, self._last)
        logs = [
            self._log(spec, key)
            for spec in self.specs
            if (key := _key_for(spec, write=write, app_key=app_key, advertiser_id=advertiser_id))
        ]
        refusals = []
        for name, log in logs:
            log.observe(now)
            if not log.has_room(now):
                log.refused += 1
                refusals.append(Refusal(name, log.limit, log.window_s, log.free_at()))
        if not refusals:
            for _, log in logs:
                log.admitted.append(now)
        return Verdict(tuple(refusals))

    def snapshot(self) -> dict[str, SlidingLog]:
        """Every (limit, key) log seen so far, by limit key ``"<limit name>:<key>"``."""
        return dict(self._logs)

    def _log(self, spec: LimitSpec, key: str) -> tuple[str, SlidingLog]:
        name = f"{spec.name}:{key}"
        log = self._logs.get(name)
        if log is None:
            log = self._logs[name] = SlidingLog(spec.limit, spec.window_s)
        return name, log


def _key_for(
    spec: LimitSpec, *, write: bool, app_key: str, advertiser_id: str | None
) -> str | None:
    """The key ``spec`` applies to for this request, or None when it does not apply."""
    if spec.scope == "read" and write:
        return None
    if spec.scope == "write" and not write:
        return None
    if spec.per == "app":
        return app_key
    return advertiser_id
