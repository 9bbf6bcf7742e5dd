"""The overview of every provider and limit key: what the console's first page and
``sluice status`` show, from one place.

Per provider: its limit keys, each with the rate configured and in force, the requests
sent in its current window against its limit, the last hour per minute, and whether it
is paused (until when, by which signal); in-flight requests against ``max_in_flight``;
the queue by status and phase; creates and polls per second (last 10 s); errors and
rate-limit pauses in the last hour; each quota's use, reset and forecast
(:func:`sluice.engine.quotas.quota_states`).

:meth:`OverviewService.budgets` adds, for one provider, how its fairness keys share its
budget (:func:`sluice.store.fairshare.shares`). Its waiting count is a ``GROUP BY`` of the
provider's due tasks (over a second at 100,000 due tasks in SQLite), so like the queue
count it is redone in the background at most every ``counts_ttl_s``, and a live page
polling four times a second never waits for it (except the very first).

Where the figures come from: usage counters every sending process adds to the database
each second (:mod:`sluice.store.usage`), the pauses table every dispatcher reads (with
each pause's signal, reason and who set it), the
limiter (in-flight leases, when this process has it), and a ``GROUP BY`` of the task
table redone in the background at most every ``counts_ttl_s`` (a million tasks take a
while to count; a page view never waits for it, except the first and one that finds the
last count older than ``counts_max_age_s``).

:meth:`OverviewService.overview` answers a plain JSON-ready dict: the API sends it as is
(``GET /api/overview``) and ``sluice status --api URL`` reads it back.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from sluice.clock import Clock, SystemClock
from sluice.controls import PauseState
from sluice.engine.quotas import QuotaState, quota_states
from sluice.engine.rates import RatesInForce
from sluice.providers.base import Provider
from sluice.ratelimit import gcra
from sluice.ratelimit.base import Limiter
from sluice.ratelimit.rate import LimitSpec, parse_rate, shown_rate
from sluice.store import fairshare
from sluice.store.pauses import Pause, PauseStore
from sluice.store.queue import due_now
from sluice.store.quotas import QuotaStore
from sluice.store.rows import tasks
from sluice.store.usage import SECOND, SECOND_BUCKETS_KEPT_S, UsageStore

log = logging.getLogger("sluice.overview")

HISTORY_MINUTES = 60
RATE_SPAN_S = 10
COUNTS_TTL_S = 5.0
COUNTS_MAX_AGE_S = 60.0
"""A count older than this is redone before answering: a watched page (it asks every 10 s)
never waits, and the first read after a quiet spell is not the last reader's count."""


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


class OverviewService:
    """Builds the overview; thread-safe, one per process."""

    def __init__(
        self,
        engine: Engine,
        providers: Mapping[str, Provider],
        *,
        limiter: Limiter | None = None,
        rates: RatesInForce | None = None,
        clock: Clock | None = None,
        counts_ttl_s: float = COUNTS_TTL_S,
        counts_max_age_s: float = COUNTS_MAX_AGE_S,
    ) -> None:
        self.engine = engine
        self.providers = providers
        self.limiter = limiter
        self.rates = rates
        self.clock = clock or SystemClock()
        self.usage = UsageStore(engine)
        self.pauses = PauseStore(engine)
        self.quotas = QuotaStore(engine)
        self.counts_ttl_s = counts_ttl_s
        self.counts_max_age_s = counts_max_age_s
        self._shares: dict[str, tuple[float, list[fairshare.Share]]] = {}
        self._sharing: set[str] = set()
        self._counts: dict[str | None, tuple[float, list[dict[str, Any]], datetime]] = {}
        self._history: tuple[float, dict[tuple[str, str], dict[datetime, int]]] | None = None
        self._counting: set[str | None] = set()
        self._lock = threading.Lock()

    # -- the whole picture --------------------------------------------------------------

    def overview(self, tenant: str | None = None, *, provider_wide: bool = True) -> dict[str, Any]:
        """Everything the overview shows. ``provider_wide=False`` (a tenant's key) leaves
        out limits, pauses and usage, and counts only ``tenant``'s tasks."""
        now = self.clock.now()
        queue, counted_at = self.queue_counts(tenant)
        by_provider: dict[str, list[dict[str, Any]]] = {}
        for row in queue:
            by_provider.setdefault(row["provider"], []).append(row)
        providers: list[dict[str, Any]] = []
        if provider_wide:
            live = self.live(now)
            history = self.history(now)
            for entry in live:
                keys = entry["keys"]
                for key in keys:
                    key["history"] = _series(history.get((key["key"], "sent"), {}), now)
                name = entry["name"]
                entry["errors_hour"] = sum(history.get((name, "error"), {}).values())
                entry["rate_limited_hour"] = sum(history.get((name, "rate_limited"), {}).values())
                entry["creates_hour"] = sum(history.get((name, "create"), {}).values())
                entry["polls_hour"] = sum(history.get((name, "poll"), {}).values())
                entry["queue"] = by_provider.pop(name, [])
                providers.append(entry)
        for name, rows in sorted(by_provider.items()):
            providers.append({"name": name, "keys": [], "queue": rows, "configured": False})
        return {
            "at": _iso(now),
            "provider_wide": provider_wide,
            "tenant": tenant,
            "queue_counted_at": _iso(counted_at),
            "providers": providers,
        }

    # -- the fast part: pauses, current windows, rates --------------------------------------

    def live(self, now: datetime | None = None, *, only: str | None = None) -> list[dict[str, Any]]:
        """Per provider (or provider ``only``): pause, in-flight, creates/polls per second,
        each limit key's rate and use of its current window, and each quota's state. Two
        small queries, and one per quota, whatever the task count."""
        now = now or self.clock.now()
        active = self.pauses.details(now)
        per_second = self._per_second(now)
        out = []
        for name, provider in sorted(self.providers.items()):
            if only is not None and name != only:
                continue
            specs = _provider_keys(provider)
            seen = {spec.key for spec in specs}
            account_keys = sorted(
                {k for (k, m) in per_second if m == "sent" and k.startswith(name + ":")} - seen
            )
            keys = [self._key_view(spec, now, active, per_second) for spec in specs]
            keys += [
                self._key_view(LimitSpec(k, specs[0].rate), now, active, per_second)
                | {"configured": None, "rate": None, "limit": None, "account": True}
                for k in account_keys
                if specs
            ]
            pause = _pause_of(provider.pause_key(), now, active)
            in_flight = provider.in_flight()
            out.append(
                {
                    "name": name,
                    "configured": True,
                    "keys": keys,
                    "quotas": [
                        quota_view(q, now) for q in quota_states(self.quotas, provider, now)
                    ],
                    **pause,
                    "in_flight": self._in_flight(in_flight.key) if in_flight else None,
                    "max_in_flight": in_flight.max_in_flight if in_flight else None,
                    "creates_per_s": round(
                        _recent(per_second, name, "create", now) / RATE_SPAN_S, 2
                    ),
                    "polls_per_s": round(_recent(per_second, name, "poll", now) / RATE_SPAN_S, 2),
                }
            )
        return out

    def _key_view(
        self,
        spec: LimitSpec,
        now: datetime,
        active: Mapping[str, Pause],
        per_second: Mapping[tuple[str, str], dict[datetime, int]],
    ) -> dict[str, Any]:
        in_force = self.rates.in_force(spec) if self.rates is not None else None
        rate = in_force.rate if in_force is not None else spec.rate
        window = max(1, round(rate.window_s))
        if window <= SECOND_BUCKETS_KEPT_S:
            # Counts land about a second late (engine/usage.py flushes once a second): the
            # window ending a second ago is the newest one complete, the one ending now may
            # be missing its sends. Either may be the larger; show that.
            used = max(
                _recent(per_second, spec.key, "sent", now, window),
                _recent(per_second, spec.key, "sent", now - timedelta(seconds=1), window),
            )
        else:  # long windows (hours, days): the per-minute buckets
            used = sum(
                n
                for at, n in self.history(now).get((spec.key, "sent"), {}).items()
                if at > now - timedelta(seconds=rate.window_s)
            )
        return {
            "key": spec.key,
            "configured": str(spec.rate),
            "rate": shown_rate(rate),
            "rate_source": in_force.source if in_force is not None else "configured",
            "rate_reason": in_force.reason if in_force is not None else "",
            "limit": rate.limit,
            "window_s": rate.window_s,
            "used": used,
            "account": False,
            **_pause_of(spec.key, now, active),
        }

    def _per_second(self, now: datetime) -> dict[tuple[str, str], dict[datetime, int]]:
        """Per-second counts of the last 5 minutes: ``{(key, metric): {second: n}}``."""
        return self.usage.series(now - timedelta(seconds=SECOND_BUCKETS_KEPT_S), SECOND)

    def _in_flight(self, key: str) -> int | None:
        reader = getattr(self.limiter, "in_flight_count", None)
        if reader is None:
            return None
        try:
            return int(reader(key))
        except Exception:
            return None

    # -- one provider's budgets: quotas and fair shares -------------------------------------

    def budgets(
        self, name: str, tenant: str | None = None, *, provider_wide: bool = True
    ) -> dict[str, Any] | None:
        """Provider ``name``'s live card, quotas and fair shares (``None``: no such provider).

        ``provider_wide=False`` (a tenant's key) leaves out the card and the quotas (they
        are the operators', as in :meth:`overview`) and shows of the fair shares only the
        line of the tenant's own fairness key, and only when the provider's fairness key
        is the tenant: a ``fairness_field`` (an advertiser id...) may be shared between
        tenants, so its lines are not any one tenant's to see.
        """
        provider = self.providers.get(name)
        if provider is None:
            return None
        now = self.clock.now()
        card: dict[str, Any] | None = None
        if provider_wide:
            card = next(entry for entry in self.live(now, only=name) if entry["name"] == name)
        shares = self.shares(name)
        if not provider_wide:
            mine = provider.fairness_field is None and tenant is not None
            shares = [s for s in shares if mine and s.key == tenant]
        return {
            "name": name,
            "at": _iso(now),
            "provider_wide": provider_wide,
            "card": card,
            "quotas": card["quotas"] if card is not None else [],
            "fairness_field": provider.fairness_field,
            "shares": [
                {
                    "key": s.key,
                    "weight": s.weight,
                    "waiting": s.waiting,
                    "granted_last_minute": s.granted_last_minute,
                    "share": s.share,
                }
                for s in shares
            ],
        }

    def shares(self, name: str) -> list[fairshare.Share]:
        """Each fairness key's share of provider ``name``: at most ``counts_ttl_s`` old,
        redone in the background when stale (only the very first read waits for it, and
        one that finds it older than ``counts_max_age_s``)."""
        with self._lock:
            cached = self._shares.get(name)
            age = math.inf if cached is None else time.monotonic() - cached[0]
            too_old = age >= self.counts_max_age_s
            start = self.counts_ttl_s <= age < self.counts_max_age_s and name not in self._sharing
            if start:
                self._sharing.add(name)
        if cached is None or too_old:
            return self._share_now(name)
        if start:
            threading.Thread(target=self._share_in_background, args=(name,), daemon=True).start()
        return cached[1]

    def _share_in_background(self, name: str) -> None:
        try:
            self._share_now(name)
        except Exception:
            log.warning("overview.shares_failed", exc_info=True)
        finally:
            with self._lock:
                self._sharing.discard(name)

    def _share_now(self, name: str) -> list[fairshare.Share]:
        weights = self.providers[name].fairness_weights
        now = self.clock.now()
        found = fairshare.shares(self.engine, name, weights, due_now(now), now)
        with self._lock:
            self._shares[name] = (time.monotonic(), found)
        return found

    # -- the slow parts, cached ------------------------------------------------------------

    def history(self, now: datetime) -> dict[tuple[str, str], dict[datetime, int]]:
        """Per-minute counts of the last hour (cached for a few seconds)."""
        with self._lock:
            cached = self._history
        if cached is not None and time.monotonic() - cached[0] < self.counts_ttl_s:
            return cached[1]
        series = self.usage.minutes(now - timedelta(minutes=HISTORY_MINUTES))
        with self._lock:
            self._history = (time.monotonic(), series)
        return series

    def queue_counts(self, tenant: str | None = None) -> tuple[list[dict[str, Any]], datetime]:
        """Tasks by provider, status and phase, and when they were counted.

        Counted at most every ``counts_ttl_s`` per tenant scope, in the background: a page
        view after that gets the last count at once and starts a new one (a million tasks
        take a while to count; no page view waits for it, except the very first and one
        that finds the last count older than ``counts_max_age_s``: nobody looked for a
        while, and the last count is not what the reader asked about).
        """
        with self._lock:
            cached = self._counts.get(tenant)
            age = math.inf if cached is None else time.monotonic() - cached[0]
            too_old = age >= self.counts_max_age_s
            start = (
                self.counts_ttl_s <= age < self.counts_max_age_s and tenant not in self._counting
            )
            if start:
                self._counting.add(tenant)
        if cached is None or too_old:
            return self._count_now(tenant)
        if start:
            threading.Thread(target=self._count_in_background, args=(tenant,), daemon=True).start()
        return cached[1], cached[2]

    def _count_in_background(self, tenant: str | None) -> None:
        try:
            self._count_now(tenant)
        except Exception:
            log.warning("overview.count_failed", exc_info=True)
        finally:
            with self._lock:
                self._counting.discard(tenant)

    def _count_now(self, tenant: str | None) -> tuple[list[dict[str, Any]], datetime]:
        query = select(tasks.c.provider, tasks.c.status, tasks.c.phase, func.count()).group_by(
            tasks.c.provider, tasks.c.status, tasks.c.phase
        )
        if tenant is not None:
            query = query.where(tasks.c.tenant == tenant)
        with self.engine.connect() as conn:
            rows = [
                {"provider": p, "status": s, "phase": ph, "count": int(n)}
                for p, s, ph, n in conn.execute(query)
            ]
        rows.sort(key=lambda r: (r["provider"], r["status"], r["phase"]))
        counted_at = self.clock.now()
        with self._lock:
            self._counts[tenant] = (time.monotonic(), rows, counted_at)
        return rows, counted_at


def quota_view(state: QuotaState, now: datetime) -> dict[str, Any]:
    """One quota as the overview shows it (JSON-ready): use, reset (UTC and local),
    forecast, and whether work waits for the reset."""
    return {
        "key": state.key,
        "quota": state.quota,
        "quota_shown": str(parse_rate(state.quota)),
        "reset": state.reset,
        "limit": state.limit,
        "used": state.used,
        "remaining": state.remaining,
        "window_start": _iso(state.window_start),
        "resets_at": _iso(state.resets_at),
        "resets_at_local": state.resets_at_local,
        "zone": state.zone,
        "resets_in_s": max(0, round((state.resets_at - now).total_seconds())),
        "runs_out_at": _iso(state.runs_out_at),
        "waiting": state.waiting,
    }


def _provider_keys(provider: Provider) -> list[LimitSpec]:
    """The provider-wide limit keys (all, read, write scopes), each once."""
    specs: dict[str, LimitSpec] = {}
    for access in ("write", "read"):
        for spec in provider.limits_for(access, None):
            specs.setdefault(spec.key, spec)
    return list(specs.values())


def _pause_of(key: str, now: datetime, active: Mapping[str, Pause]) -> dict[str, Any]:
    """Whether ``key`` is held by a pause on itself or a scope above it, and why."""
    found: Pause | None = None
    for scope in gcra.pause_scopes(key):
        pause = active.get(scope)
        if pause is not None and pause.until > now and (found is None or pause.until > found.until):
            found = pause
    if found is None:
        return {"paused": False, "paused_until": None, "pause_left_s": None}
    shown = PauseState.of(found)
    return {
        "paused": True,
        "paused_until": _iso(shown.until),
        "pause_left_s": None
        if shown.until is None
        else max(0, round((shown.until - now).total_seconds())),
        "pause_key": found.key,
        "pause_signal": found.signal or "pause",
        "pause_reason": found.reason,
        "pause_actor": found.actor,
        "pause_since": _iso(found.since),
    }


def _recent(
    per_second: Mapping[tuple[str, str], dict[datetime, int]],
    key: str,
    metric: str,
    now: datetime,
    span_s: int = RATE_SPAN_S,
) -> int:
    """The count of ``metric`` on ``key`` in the ``span_s`` seconds up to ``now`` (its second
    included)."""
    end = now.replace(microsecond=0)
    start = end - timedelta(seconds=span_s - 1)
    return sum(n for at, n in per_second.get((key, metric), {}).items() if start <= at <= end)


def _series(minutes: Mapping[datetime, int], now: datetime) -> list[int]:
    """The last hour, oldest first, one count per minute (0 where nothing was sent)."""
    current = now.replace(second=0, microsecond=0)
    return [
        minutes.get(current - timedelta(minutes=HISTORY_MINUTES - 1 - i), 0)
        for i in range(HISTORY_MINUTES)
    ]


ACCOUNT_KEYS_SHOWN = 8
"""Account keys (``per = "advertiser_id"``: one per advertiser) named on a provider's card,
in its hour charts and by ``sluice status``; the others are counted, not drawn. Thousands
of advertisers made the console's overview megabytes, sent again to every live stream on
every change, and ``sluice status`` a table of thousands of lines."""


def busiest_accounts(providers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``providers`` with each one's account keys cut to the :data:`ACCOUNT_KEYS_SHOWN`
    that matter most (paused first, then the most used now, then over the hour) and
    ``more_accounts``, how many are left out. Configured keys are all kept, in order."""
    for provider in providers:
        keys = provider.get("keys", [])
        accounts = [k for k in keys if k.get("account")]
        accounts.sort(
            key=lambda k: (
                not k.get("paused"),
                -int(k.get("used") or 0),
                -sum(k.get("history") or ()),
                str(k["key"]),
            )
        )
        provider["keys"] = [k for k in keys if not k.get("account")] + accounts[:ACCOUNT_KEYS_SHOWN]
        provider["more_accounts"] = max(0, len(accounts) - ACCOUNT_KEYS_SHOWN)
    return providers
