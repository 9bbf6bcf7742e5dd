"""Spending quotas from the dispatcher: reserved in blocks from the database, used locally.

A unit of work that draws on quotas (``quota = "15000/d"``, :mod:`sluice.ratelimit.quota`)
takes its cost from each of them before it asks the limiter for a grant. The
:class:`QuotaBook` keeps, per quota key, a small allowance reserved from the database
(:class:`sluice.store.quotas.QuotaStore`, one atomic ``UPDATE`` per block, about one
lookahead's worth), so a request costs no database round trip on its way out and the
send window (:mod:`sluice.ratelimit.sendgate`) is not spent waiting for one. A unit the
limiter refuses, or whose grant expires unsent, gives its units back to the allowance
(or to the database, if the allowance has moved on to another window or bucket); at
shutdown and at the end of a pump round the allowance goes back to the database, and so do
the units left in a rolling quota's bucket when the next bucket begins. A worker that dies keeps its
allowance counted: the quota is under-used by at most one block per process, never
exceeded, and a block is at most 1/1,000 of the quota (:func:`reservation_block`).

When a quota is spent, :meth:`QuotaBook.take` answers with the reset: the dispatcher gives
the unit's tasks back with ``next_attempt_at`` at the reset (not an attempt, not a failure,
as a pause does), and :func:`quota_states` says so to the API and the console, with a
forecast of when each quota runs out at the pace it is being spent.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sluice.clock import Clock, SystemClock
from sluice.domain import Operation, Phase, operation_of
from sluice.engine.rates import Ceiling
from sluice.providers.base import Provider
from sluice.providers.limits import account_value, in_key_form
from sluice.ratelimit.quota import Quota, QuotaSpec, zone
from sluice.ratelimit.rate import Rate
from sluice.store.quotas import QuotaStore, WaitsOn, Window

SPENT_RECHECK_S = 1.0
"""How long a spent quota is answered from memory before the database is asked again."""

RESERVE_SHARE = 1_000
"""A process reserves at most 1/1,000 of a quota at a time (at least one unit): one that
dies keeps what it reserved counted, so a crash wastes at most that much of a window."""


def reservation_block(specs: Sequence[QuotaSpec], lookahead: int) -> int:
    """Units to reserve from the database at a time for ``specs``: about one lookahead's
    worth (``lookahead`` units), but no more than 1/:data:`RESERVE_SHARE` of the smallest
    quota. (A unit's cost is still taken whole: :meth:`QuotaBook.take` reserves at least
    that.) Under ~1,000 units a window, every request reserves its own units: one
    conditional ``UPDATE``, a few ms, before the limiter's grant, so the send window is not
    spent on it (docs/ratelimit.md, Quotas, has what crashes cost)."""
    smallest = min(spec.quota.limit for spec in specs)
    return max(1, min(lookahead, smallest // RESERVE_SHARE))


def window_of(spec_key: str, quota: Quota, now: datetime) -> Window:
    """The database window ``quota`` counts ``now`` in."""
    start, end = quota.window(now)
    since = quota.counted_since(now) if quota.rolling else None
    return Window(spec_key, start, end, quota.limit, since)


@dataclass
class _Allowance:
    window: Window
    units: int = 0


@dataclass(frozen=True)
class Taken:
    """Units a unit of work took from the book, to give back if it is not sent."""

    parts: tuple[tuple[str, datetime, int], ...] = ()


@dataclass(frozen=True)
class QuotaVerdict:
    """Whether the quotas let a unit go; if not, which one is spent and until when."""

    ok: bool
    taken: Taken = field(default_factory=Taken)
    key: str = ""
    resets_at: datetime | None = None


class QuotaBook:
    """Per-process allowances of every quota this dispatcher spends (thread-safe)."""

    def __init__(
        self,
        store: QuotaStore,
        clock: Clock | None = None,
        providers: Mapping[str, Provider] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock or SystemClock()
        self.providers = providers
        """What the quota keys are of: units given back wake only the work drawing on
        their own key (a :class:`~sluice.engine.dispatcher.Dispatcher` sets its own)."""
        self._lock = threading.Lock()
        self._allowances: dict[str, _Allowance] = {}
        # key -> (window start, when to ask the database again): a spent quota is not
        # asked about for every unit that needs it (another worker may give units back).
        self._spent: dict[str, tuple[datetime, datetime]] = {}

    def take(self, specs: Sequence[QuotaSpec], block: int = 1) -> QuotaVerdict:
        """Take each spec's cost, all or nothing, reserving ``block`` units at a time.

        Returns a refusal naming the first quota that is spent and when it resets.
        """
        if not specs:
            return QuotaVerdict(True)
        now = self.clock.now()
        taken: list[tuple[str, datetime, int]] = []
        with self._lock:
            for spec in specs:
                allowance = self._allowance(spec, now)
                spent_start, recheck_at = self._spent.get(spec.key, (None, now))
                known_spent = spent_start == allowance.window.start and now < recheck_at
                if allowance.units < spec.cost and not known_spent:
                    want = max(spec.cost, block) - allowance.units
                    allowance.units += self.store.reserve(allowance.window, want, now)
                if allowance.units < spec.cost:
                    self._return_locally(taken, now)
                    if allowance.units:
                        # Fewer units than the cost, useless here and counted as used: they
                        # go back, so that with other workers' leftovers one more unit fits.
                        self._give_back(spec.key, allowance.window.start, allowance.units, now)
                        allowance.units = 0
                    if not known_spent:
                        recheck = now + timedelta(seconds=SPENT_RECHECK_S)
                        self._spent[spec.key] = (allowance.window.start, recheck)
                    # A rolling quota's work is given back until the current bucket's end,
                    # not until its units free (frees_at): units another worker gives back
                    # to this bucket wake exactly that work (QuotaStore.give_back).
                    return QuotaVerdict(False, Taken(), spec.key, allowance.window.end)
                allowance.units -= spec.cost
                taken.append((spec.key, allowance.window.start, spec.cost))
        return QuotaVerdict(True, Taken(tuple(taken)))

    def give(self, taken: Taken) -> None:
        """Put back units a unit took and did not send (refused, or its grant expired)."""
        if taken.parts:
            with self._lock:
                self._return_locally(list(taken.parts), self.clock.now())

    def flush(self) -> None:
        """Give every unspent allowance back to the database (shutdown, the end of a pump
        round). Units a unit gives back later go straight to the database."""
        now = self.clock.now()
        with self._lock:
            allowances = list(self._allowances.values())
            self._allowances.clear()
        for allowance in allowances:
            if allowance.units and _still_counts(allowance.window, now):
                self._give_back(allowance.window.key, allowance.window.start, allowance.units, now)

    def _give_back(self, key: str, start: datetime, units: int, now: datetime) -> None:
        """Units back to the database; the work they wake comes due once every worker's
        memory of the quota as spent (``SPENT_RECHECK_S``) has lapsed, so that it is not
        sent back to wait for the reset from that memory."""
        wake_at = now + timedelta(seconds=SPENT_RECHECK_S)
        self.store.give_back(key, start, units, now, wake_at=wake_at, waits_on=self._waits_on(key))

    def _waits_on(self, key: str) -> WaitsOn | None:
        """Whether a waiting task draws on quota ``key`` (None: its provider is unknown
        here, so any task waiting for the window's end may be woken)."""
        provider = None if self.providers is None else self.providers.get(key.partition(":")[0])
        if provider is None:
            return None

        def waits_on(kind: str | None, payload: Mapping[str, Any] | None, phase: str) -> bool:
            operation = operation_of(Phase(phase))
            sent = payload if operation is Operation.SUBMIT else None
            return any(spec.key == key for spec in provider.quotas_for(operation, sent, [kind]))

        return waits_on

    def _allowance(self, spec: QuotaSpec, now: datetime) -> _Allowance:
        window = window_of(spec.key, spec.quota, now)
        current = self._allowances.get(spec.key)
        if current is not None and current.window.start == window.start:
            return current
        if current is not None and current.units and _still_counts(current.window, now):
            self._give_back(current.window.key, current.window.start, current.units, now)
        fresh = _Allowance(window)
        self._allowances[spec.key] = fresh
        return fresh

    def _return_locally(self, parts: list[tuple[str, datetime, int]], now: datetime) -> None:
        """Units back into the allowance they came from; if it has moved on to another
        window or bucket (or was flushed), back to the database, where they are counted."""
        for key, start, units in parts:
            allowance = self._allowances.get(key)
            if allowance is not None and allowance.window.start == start:
                allowance.units += units
            else:
                self._give_back(key, start, units, now)


def frees_at(quota: Quota, window: Window, oldest_use: datetime | None) -> datetime:
    """When a spent quota counting ``now`` in ``window`` has units again: a fixed window at
    its end; a rolling quota when the oldest bucket holding use stops counting (its end
    leaves the window), not at the end of the current bucket (1/60 of the window), which
    said "resets in 2 s" of a rolling quota spent for the next two minutes."""
    if not quota.rolling or oldest_use is None:
        return window.end
    bucket_end = oldest_use + timedelta(seconds=quota.bucket_s())
    return max(window.end, bucket_end + timedelta(seconds=quota.rate.window_s))


def _still_counts(window: Window, now: datetime) -> bool:
    """Whether units of ``window`` still count: a fixed window until its end, a rolling
    quota's bucket for a whole window after it (units left in it at the turn to the next
    bucket were stranded there, counted and never sent)."""
    return window.counted_since is not None or window.end > now


@dataclass(frozen=True)
class QuotaState:
    """One quota now: what is used, when it resets, when it runs out at the current pace."""

    key: str
    quota: str
    reset: str
    limit: int
    used: int
    remaining: int
    window_start: datetime
    resets_at: datetime
    runs_out_at: datetime | None
    """When the remaining units are spent at the pace of this window so far; ``None`` if
    nothing was spent yet or they last until the reset."""
    waiting: bool
    """Spent: work on this quota waits for ``resets_at``."""
    zone: str | None = None
    """The IANA time zone of a fixed window's calendar (``None``: a rolling quota)."""
    resets_at_local: str | None = None
    """``resets_at`` on the clock of ``zone``, e.g. ``2026-12-03 00:00 PST`` (``None``:
    rolling)."""


def quota_state(
    store: QuotaStore,
    key: str,
    quota: Quota,
    now: datetime,
    used: int | None = None,
    oldest_use: datetime | None = None,
) -> QuotaState:
    """The state of one quota key at ``now`` (:class:`QuotaState`); ``used`` (and for a
    rolling quota ``oldest_use``, see :func:`frees_at`): already read by the caller (else
    read from ``store``)."""
    window = window_of(key, quota, now)
    if used is None:
        used = store.used(window)
        oldest_use = store.oldest_use(window) if quota.rolling else None
    used = min(used, quota.limit)
    remaining = quota.limit - used
    start = window.counted_since or window.start
    if quota.rolling:
        # A rolling quota never resets at once: this is when its oldest use stops counting.
        resets_at = frees_at(quota, window, oldest_use)
        started = now - timedelta(seconds=quota.rate.window_s)
    else:
        resets_at = window.end
        started = start
    elapsed_s = max((now - max(started, start)).total_seconds(), 1e-3)
    runs_out: datetime | None = None
    if used > 0 and remaining > 0:
        at = now + timedelta(seconds=remaining * elapsed_s / used)
        runs_out = at if at < resets_at else None
    elif remaining == 0:
        runs_out = now
    return QuotaState(
        key=key,
        quota=str(quota.rate),
        reset=quota.describe_reset(),
        limit=quota.limit,
        used=used,
        remaining=remaining,
        window_start=start,
        resets_at=resets_at,
        runs_out_at=runs_out,
        waiting=remaining == 0,
        zone=None if quota.rolling else quota.reset,
        resets_at_local=None if quota.rolling else local_time(resets_at, quota.reset),
    )


def local_time(moment: datetime, zone_name: str) -> str:
    """``moment`` on the clock of ``zone_name``: ``2026-12-03 00:00 PST``."""
    return moment.astimezone(zone(zone_name)).strftime("%Y-%m-%d %H:%M %Z")


def most_used(store: QuotaStore, pattern: str, quota: Quota, now: datetime) -> int:
    """The use of a ``per`` quota's (key ``pattern``, with ``*`` for the account) most used
    account now, counted as :func:`quota_states` counts each account's, capped at its
    limit; one aggregate read."""
    prefix, suffix = pattern.split("=*", 1)
    window = window_of(pattern, quota, now)
    counted = window.counted_since or window.start
    return min(store.most_used(prefix + "=", suffix, counted, window.start), quota.limit)


def quota_states(store: QuotaStore, provider: Provider, now: datetime) -> list[QuotaState]:
    """Every quota of ``provider`` now; a ``per`` quota once for each account seen using it."""
    states: list[QuotaState] = []
    for key, quota, _scope, per in provider.quotas():
        if per is None:
            states.append(quota_state(store, key, quota, now))
            continue
        prefix = key.split("=*", 1)[0] + "="
        since = quota.counted_since(now) - timedelta(seconds=quota.bucket_s())
        suffix = key.split("=*", 1)[1]
        # One read for every account (the console asks several times a second): each
        # account's use is its rows that count now, as QuotaStore.used would sum them.
        window = window_of(key, quota, now)
        counted = window.counted_since or window.start
        used: dict[str, int] = {}
        oldest: dict[str, datetime] = {}
        for row in store.rows(prefix, since):
            if row.key.endswith(suffix):
                inside = counted <= row.start <= window.start
                used[row.key] = used.get(row.key, 0) + (row.used if inside else 0)
                if inside and row.used > 0 and row.key not in oldest:
                    oldest[row.key] = row.start  # rows come oldest first for each key
        states += [
            quota_state(store, account, quota, now, used[account], oldest.get(account))
            for account in sorted(used)
        ]
    return states


class QuotaPace:
    """Ceilings for quotas configured to pace (``quota_pace = true``, ``pace = true``).

    A quota is spent in bursts by default: only the short rates pace it, and once spent,
    work waits for the reset. With ``pace``, what is left is also spread evenly until the
    reset: ``remaining / seconds to reset`` becomes a ceiling on the provider's rate keys of
    the same scope (:mod:`sluice.engine.rates`: the rate in force is the lowest of the
    configured, pinned, learned and quota pace). Quotas per account (``per``) have no
    single key to slow and are not paced.
    """

    def __init__(
        self, store: QuotaStore, providers: Mapping[str, Provider], clock: Clock | None = None
    ) -> None:
        self.store = store
        self.providers = providers
        self.clock = clock or SystemClock()

    def ceilings(self) -> Mapping[str, Sequence[Ceiling]]:
        now = self.clock.now()
        found: dict[str, list[Ceiling]] = {}
        for provider in self.providers.values():
            for key, quota, scope, per in provider.quotas():
                if not quota.pace or per is not None:
                    continue
                state = quota_state(self.store, key, quota, now)
                # A rolling quota paces to its current bucket's end, as before its state
                # said when its oldest use frees (left as it was: not measured).
                resets_at = window_of(key, quota, now).end if quota.rolling else state.resets_at
                seconds = max((resets_at - now).total_seconds(), 1.0)
                rate = Rate(max(state.remaining, 1), seconds)
                reads = {s.key for s in provider.limits_for("read", None)}
                writes = {s.key for s in provider.limits_for("write", None)}
                keys = {"all": reads & writes, "read": reads - writes, "write": writes - reads}
                reason = f"quota {key}: {state.remaining} left until {resets_at:%H:%M:%S}Z"
                for limit_key in keys[scope]:
                    found.setdefault(limit_key, []).append(Ceiling("quota", rate, reason))
        return found


def adopt_stored_keys(store: QuotaStore, providers: Mapping[str, Provider], now: datetime) -> int:
    """Move quota use stored before digest forms to the keys Sluice now spends from;
    returns how many keys moved.

    Before, a ``per`` value was written into its quota key as it was
    (``acme:write:advertiser_id=urn:li:sponsoredAccount:123:1d``); now a value that is not
    plain is written in its digest form (:func:`~sluice.providers.limits.account_value`).
    Use still counting under the old key would otherwise be forgotten at the upgrade, and
    the account's quota handed out again in the same window, past the provider's. Keys of
    plain values and keys already in digest form are left as they are; run at start, a
    second run finds nothing to move.
    """
    moved = 0
    for provider in providers.values():
        for pattern, quota, _scope, per in provider.quotas():
            if per is None:
                continue
            head, tail = pattern.split("=*", 1)
            head += "="
            since = quota.counted_since(now) - timedelta(seconds=quota.bucket_s())
            for key in sorted({row.key for row in store.rows(head, since)}):
                if not key.endswith(tail) or len(key) < len(head) + len(tail):
                    continue
                value = key[len(head) : len(key) - len(tail)]
                if in_key_form(value):  # plain, or already a digest form
                    continue
                store.rekey(key, head + account_value(value) + tail, now)
                moved += 1
    return moved
