"""The shared state a scrape of ``/metrics`` reports: tasks, queue age, pauses, rates,
fair shares.

Read from the database, the limiter and the rates in force when Prometheus scrapes (not
recorded by each process, since every process would report the same cluster-wide
numbers). Task counts and fair shares are cached for :data:`TASKS_CACHE_S`, so however
often and by however many scrapers, the tasks table is counted at most once per that
interval; fair shares (a ``GROUP BY`` of the due tasks) are recounted in the background, so
no scrape but the first waits for them.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import Engine

from sluice.clock import Clock, SystemClock
from sluice.domain import TaskStatus
from sluice.engine.quotas import most_used, quota_state
from sluice.engine.rates import RatesInForce, per_second
from sluice.logs import FailureStreak
from sluice.metrics import (
    FAIR_SHARE_TOP_KEYS,
    FairShare,
    Pause,
    QuotaUse,
    RateInForce,
    State,
    StateFamilies,
)
from sluice.providers.base import Provider
from sluice.ratelimit.base import Limiter
from sluice.ratelimit.rate import LimitSpec
from sluice.store import counts, fairshare
from sluice.store.pauses import NO_EXPIRY, PauseStore
from sluice.store.queue import due_now
from sluice.store.quotas import QuotaStore

log = logging.getLogger("sluice.metrics")

TASKS_CACHE_S = 5.0


class StateReader:
    """Reads :class:`sluice.metrics.State`; thread-safe, task counts cached."""

    def __init__(
        self,
        engine: Engine,
        providers: Mapping[str, Provider],
        limiter: Limiter,
        pauses: PauseStore,
        rates: RatesInForce,
        clock: Clock | None = None,
        cache_s: float = TASKS_CACHE_S,
        fair_share_keys: int = FAIR_SHARE_TOP_KEYS,
        quotas: QuotaStore | None = None,
    ) -> None:
        self.engine = engine
        self.providers = providers
        self.limiter = limiter
        self.pauses = pauses
        self.rates = rates
        self.clock = clock or SystemClock()
        self.cache_s = cache_s
        self.fair_share_keys = fair_share_keys
        self.quotas = quotas
        self._quota_use: list[QuotaUse] = []
        self._lock = threading.Lock()
        self._tasks: dict[tuple[str, str], int] = {}
        self._oldest: dict[str, float] = {}
        self._shares: list[FairShare] | None = None
        self._sharing = False
        self._next_count = float("-inf")
        # Read at every scrape: while the database or Redis is down, a traceback once.
        self._failures = {
            what: FailureStreak(log, f"metrics.{what}_failed", f"metrics.{what}_recovered")
            for what in ("count", "quotas", "shares", "pauses", "limiter")
        }
        self.counted = 0
        """How many times the tasks table was counted (tests check the cache)."""

    def read(self) -> State:
        """The state now (task counts up to ``cache_s`` old)."""
        names = sorted(self.providers)
        with self._lock:
            if self.clock.monotonic() >= self._next_count:
                self._count(names)
            tasks, oldest, shares = dict(self._tasks), dict(self._oldest), list(self._shares or [])
            quota_use = list(self._quota_use)
        return State(
            tasks=tasks,
            oldest_due_s=oldest,
            pauses=self._pauses(),
            providers=names,
            rates=self._rates(),
            shares=shares,
            quotas=quota_use,
            fair_share_keys=self.fair_share_keys,
        )

    def _count(self, names: list[str]) -> None:
        now = self.clock.now()
        try:
            # Every status of every provider, 0 when no task has it: the first task to
            # reach one is then a change of a series, which delta() and increase() see.
            found = {(name, status.value): 0 for name in names for status in TaskStatus}
            found.update(counts.tasks_by_provider_status(self.engine))
            self._tasks = found
            self._oldest = {
                provider: max(0.0, (now - due).total_seconds())
                for provider, due in counts.oldest_due(self.engine, names, now).items()
            }
            self.counted += 1
        except Exception as exc:
            # A scrape must answer: the last counts stand until the database is back.
            self._failures["count"].failed(exc)
        else:
            self._failures["count"].succeeded()
        try:
            self._quota_use = self._read_quotas(now)
        except Exception as exc:
            self._failures["quotas"].failed(exc)
        else:
            self._failures["quotas"].succeeded()
        if self._shares is None:  # the first scrape waits for them; later ones never do
            self._share(names)
        elif not self._sharing:
            self._sharing = True
            threading.Thread(target=self._share, args=(names,), daemon=True).start()
        self._next_count = self.clock.monotonic() + self.cache_s

    def _share(self, names: list[str]) -> None:
        """Fair shares, read apart from the scrape: their waiting counts are a ``GROUP BY``
        of each provider's due tasks (about a second at 100,000 due)."""
        try:
            found = self._read_shares(names, self.clock.now())
        except Exception as exc:
            self._failures["shares"].failed(exc)
            found = self._shares or []
        else:
            self._failures["shares"].succeeded()
        self._shares = found
        self._sharing = False

    def _read_shares(self, names: list[str], now: datetime) -> list[FairShare]:
        found: list[FairShare] = []
        for name in names:
            weights = self.providers[name].fairness_weights
            for share in fairshare.shares(self.engine, name, weights, due_now(now), now):
                found.append(
                    FairShare(name, share.key, share.share, share.waiting, share.key in weights)
                )
        return found

    def _read_quotas(self, now: datetime) -> list[QuotaUse]:
        """Every quota's use now: one read per quota (a ``per`` quota's most used account
        in one aggregate), cached with the task counts."""
        if self.quotas is None:
            return []
        found: list[QuotaUse] = []
        for provider in self.providers.values():
            for key, quota, _scope, per in provider.quotas():
                if per is None:
                    used = quota_state(self.quotas, key, quota, now).used
                else:  # thousands of accounts: one aggregate, not a row per account
                    used = most_used(self.quotas, key, quota, now)
                found.append(QuotaUse(key, quota.limit, used))
        return found

    def _pauses(self) -> list[Pause]:
        wall = self.clock.now()
        found: dict[str, float] = {}
        try:
            for key, until in self.pauses.active(wall).items():
                found[key] = _left(until.timestamp(), wall.timestamp())
        except Exception as exc:
            self._failures["pauses"].failed(exc)
        else:
            self._failures["pauses"].succeeded()
        now_s = wall.timestamp()
        for provider in self.providers.values():
            key = provider.pause_key()
            try:
                until_s = self.limiter.paused_until(key)
            except Exception as exc:
                self._failures["limiter"].failed(exc)
                break
            if until_s is not None and until_s > now_s:
                found[key] = max(found.get(key, 0.0), _left(until_s, now_s))
        else:
            self._failures["limiter"].succeeded()
        return [Pause(key, seconds) for key, seconds in sorted(found.items()) if seconds > 0]

    def _rates(self) -> list[RateInForce]:
        found: list[RateInForce] = []
        for provider in self.providers.values():
            specs: dict[str, LimitSpec] = {}
            for access in ("write", "read"):
                for spec in provider.limits_for(access, None):
                    specs.setdefault(spec.key, spec)
            for spec in specs.values():
                in_force = self.rates.in_force(spec)
                found.append(
                    RateInForce(
                        spec.key,
                        per_second(in_force.configured),
                        per_second(in_force.rate),
                        in_force.source,
                    )
                )
        return found

    def collector(self) -> StateFamilies:
        """A prometheus_client collector reporting this reader's state at each scrape."""
        return StateFamilies(self.read)


def _left(until_s: float, now_s: float) -> float:
    """Seconds a pause has left: +Inf for one set until resumed (stored as :data:`NO_EXPIRY`),
    rather than the seconds to that stand-in date."""
    if until_s >= NO_EXPIRY.timestamp() - 1.0:
        return math.inf
    return until_s - now_s
