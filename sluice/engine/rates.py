"""The rate in force on each limit key: the lowest of the configured rate and every ceiling.

A provider's configuration gives each limit key its rate. Other parts of Sluice may lower a
key's rate for a while, each through a :class:`CeilingSource` that reads its state from the
database (so every worker and host agrees, and a restart forgets nothing):

- ``pinned``: an operator pinned a lower rate by hand (console, API, CLI);
- ``learned``: the adaptive limiter found the provider's real limit is lower;
- ``quota``: a long-window quota is running low, so the rest is spread until its reset.

:class:`RatesInForce` caches the ceilings for ``refresh_s`` (so a change reaches every
worker within about that long) and applies the lowest one to each :class:`LimitSpec`
before the limiter sees it. A ceiling never raises a rate above the configured one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sluice.clock import Clock, SystemClock
from sluice.ratelimit.rate import LimitSpec, Rate

log = logging.getLogger("sluice.rates")

CONFIGURED = "configured"
REFRESH_S = 0.5
"""How long ceilings are cached: a pin reaches every worker within about this long."""


@dataclass(frozen=True)
class Ceiling:
    """An upper bound on one limit key's rate, and where it comes from."""

    source: str
    """``"pinned"``, ``"learned"`` or ``"quota"``."""
    rate: Rate
    reason: str = ""
    since: datetime | None = None


@dataclass(frozen=True)
class InForce:
    """The rate a limit key runs at now, and why."""

    key: str
    configured: Rate
    rate: Rate
    source: str
    """``"configured"`` when no ceiling is lower, else the ceiling's source."""
    reason: str = ""
    since: datetime | None = None


class CeilingSource(Protocol):
    """Somewhere ceilings are kept (a table of the store)."""

    def ceilings(self) -> Mapping[str, Sequence[Ceiling]]:
        """Every ceiling in force now, by limit key."""
        ...


def per_second(rate: Rate) -> float:
    return rate.limit / rate.window_s


class RatesInForce:
    """Applies the lowest ceiling of every source to the limits a request must fit in.

    Thread-safe. A source that fails to answer keeps its last ceilings (the database may be
    briefly away; a lowered rate must not jump back up because of it).
    """

    def __init__(
        self,
        sources: Sequence[CeilingSource] = (),
        clock: Clock | None = None,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self._sources = list(sources)
        self._clock = clock or SystemClock()
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._by_source: list[Mapping[str, Sequence[Ceiling]]] = [{} for _ in self._sources]
        self._next_refresh = float("-inf")

    def refresh(self) -> None:
        """Read every source again now."""
        for index, source in enumerate(self._sources):
            try:
                found = source.ceilings()
            except Exception:
                log.warning("rates.source_failed", exc_info=True)
                continue
            with self._lock:
                self._by_source[index] = found
        with self._lock:
            self._next_refresh = self._clock.monotonic() + self._refresh_s

    def _refresh_if_due(self) -> None:
        if not self._sources:
            return
        with self._lock:
            due = self._clock.monotonic() >= self._next_refresh
        if due:
            self.refresh()

    def in_force(self, spec: LimitSpec) -> InForce:
        """The rate ``spec``'s key runs at now: the configured one or a lower ceiling."""
        self._refresh_if_due()
        best = InForce(spec.key, spec.rate, spec.rate, CONFIGURED)
        with self._lock:
            for found in self._by_source:
                for ceiling in found.get(spec.key, ()):
                    if per_second(ceiling.rate) < per_second(best.rate):
                        best = InForce(
                            spec.key,
                            spec.rate,
                            ceiling.rate,
                            ceiling.source,
                            ceiling.reason,
                            ceiling.since,
                        )
        return best

    def apply(self, limits: Sequence[LimitSpec]) -> list[LimitSpec]:
        """``limits`` with each rate replaced by the rate in force on its key."""
        if not self._sources:
            return list(limits)
        applied = []
        for spec in limits:
            rate = self.in_force(spec).rate
            applied.append(spec if rate is spec.rate else lowered(spec, rate))
        return applied


def lowered(spec: LimitSpec, rate: Rate) -> LimitSpec:
    """``spec`` at the lower pace of ``rate``: the configured count, cost and burst over a
    window stretched to that pace (a learned 19.5/s on ``100/s`` is 100 per 5.1 s).

    Only the window changes, so the key keeps its shape: a key configured at ``10/s``
    with burst 4 (spaced ``1/6`` s, five at once after a pause) pinned to ``1/s`` runs at
    a tenth of its configured pace. Writing the ceiling with its own count (raised to
    ``burst + 1`` when smaller, so the heaviest request still fit) ran such a key
    ``burst + 1`` times slower than the ceiling (the pin gave 0.2/s), and a learned rate
    on a ``600/min`` key with a burst used a count of 10 with the burst of 600.

    The holds stay on the configured limit (``held``): holds on the longer window kept each
    place as much longer as the window is. Their cap then lagged the rate in force
    whenever it climbed (places taken at the lower rate, held for the longer window, still
    counted): a 20/s key climbing back after a drop stalled for most of a second with
    nothing refused (``bench.adaptive``). The grants keep the ceiling's pace; the holds
    keep the provider's window.
    """
    count = spec.rate.limit
    stretched = Rate(count, count / per_second(rate))
    return LimitSpec(spec.key, stretched, spec.cost, spec.burst, held=spec.held_rate)
