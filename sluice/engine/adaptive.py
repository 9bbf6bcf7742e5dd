"""Adaptive limits: each key's real rate, learned from what answers say and from refusals.

Two ways, both opt-in per provider (``adaptive = true``, docs/ratelimit.md):

**What answers say** (``X-RateLimit-*``, the IETF ``RateLimit`` fields, Meta's usage
percentages; parsed by :func:`sluice.providers.signals.read_limits`). A limit lower than
the configured rate rules; when ``remaining / reset`` is below the configured pace, the
rest is spread until the reset; of several readings the one with the least remaining
wins. Every worker reads the same counters from the provider, so these ceilings live in
each process's memory and need no coordination.

**Refusals that state no limit** (a bare 429, or a ``Retry-After`` alone). The key's
rate drops to ``decrease`` times the rate it was refused at when refused again soon after
a drop (the limit fell), a third as deep when refused at about the last refused rate (a
probe), half as deep otherwise (:meth:`CubicLaw.after_refusal`), then climbs back along a
cubic (as CUBIC and botocore's adaptive mode do): concave up to the refused rate in
``climb`` seconds, then convex towards the configured rate in as long again, probing.
Never above the configured rate, never below ``floor``, and never above twice the rate
the key was used at in the last few seconds (by every process: the database's usage
counters), nor below the rate it dropped to: a key with little demand does not climb on
time alone.

What makes it work across processes and restarts: the database keeps only the **last
drop** of each key (the rate refused at, the rate dropped to, when), and the rate at any
moment is a deterministic function of that row and the time (:meth:`CubicLaw.rate_at`).
So climbing needs no writes, and every worker and host computes the same rate. A drop is
a conditional ``UPDATE`` on the row version read (its ``dropped_at_s``), done only when
the previous drop is more than ``hold`` old: the refusals of one burst, seen by many
workers at once, make one drop. Each drop writes an audit record on the provider
(``provider.rate_learned``, actor ``system:limiter``).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sluice.clock import Clock, SystemClock
from sluice.engine.rates import Ceiling, RatesInForce, per_second
from sluice.providers.base import LimitObservation, LimitReading
from sluice.providers.config import AdaptiveConfig
from sluice.ratelimit.rate import LimitSpec, Rate
from sluice.store.learned import LearnedDrop, LearnedRateStore

log = logging.getLogger("sluice.adaptive")

SOURCE = "learned"
HEADER_TTL_S = 60.0
"""How long a limit an answer stated holds when no later answer restates it."""
PROBE_SHARE = 0.95
"""A refusal at this share of the last refused rate or above is a probe, not a fallen limit."""
PROBE_PEAK = 0.98
"""A probe's refused rate is remembered this much lower: the climb levels off below it."""
FALL_SHARE = 0.25
"""Refused again within this share of ``climb`` after a drop: the limit fell (a full drop)."""
DELIVERED_MULTIPLE = 2.0
"""A learned rate climbs to at most this many times the rate the key was used at (botocore
caps its rate at twice its measured send rate)."""
DELIVERED_SPAN_S = 5
"""The rate a key was used at is measured over this many whole seconds..."""
DELIVERED_LAG_S = 1
"""... ending this long before the current second (processes add their counts about once
a second)."""
MIN_SPREAD_S = 1.0
"""A reset this near or nearer is left to the limiter's spacing and the pause. Resets come
in whole seconds (the IETF fields' delta-seconds, most ``X-RateLimit-Reset``s), so ``1``
can be any time under a second: spread over a whole second, ``remaining`` on a per-second
limit (the rest after this window's own sends) held the key at half its limit."""
FORGET_AFTER_S = 86_400.0
"""A key's last drop is deleted this long after it was made, once its climb is over (twice
``climb``): the key then starts like one never refused. Without it every per-account key
ever refused kept a row for ever, each process reading them all every refresh, and an idle
one stayed held at twice the rate it was last used at."""
FORGET_EVERY_S = 600.0
"""How often a process looks for drops to forget (with the rows it reads anyway)."""


@dataclass(frozen=True)
class CubicLaw:
    """The rate of one key (per second) after a drop, as a function of time."""

    configured: float
    floor: float
    climb_s: float
    decrease: float

    @classmethod
    def of(cls, config: AdaptiveConfig, configured: float) -> CubicLaw:
        floor = min(config.floor_per_s(configured), configured)
        return cls(configured, floor, config.climb, config.decrease)

    def clamp(self, rate: float) -> float:
        return min(self.configured, max(self.floor, rate))

    def rate_at(self, drop: LearnedDrop | None, now: float) -> float:
        """The rate at ``now``: back up to the refused rate in ``climb_s`` (concave), then
        on to the configured rate in as long again (convex)."""
        if drop is None:
            return self.configured
        peak = self.clamp(drop.peak_per_s)
        low = min(self.clamp(drop.low_per_s), peak)
        elapsed = now - drop.dropped_at_s
        if elapsed <= 0:
            return low
        k = self.climb_s
        if elapsed <= k:
            rate = peak - (peak - low) * (1.0 - elapsed / k) ** 3
        else:
            rate = peak + (self.configured - peak) * min(1.0, (elapsed - k) / k) ** 3
        return self.clamp(rate)

    def after_refusal(
        self, drop: LearnedDrop | None, now: float, cap: float = math.inf
    ) -> tuple[float, float]:
        """``(peak, low)`` of the drop a refusal at ``now`` makes.

        - Refused at or near the rate of the last refusal (:data:`PROBE_SHARE`): a probe
          past a limit that is about where it was. The drop is a third as deep (0.9 with
          the default ``decrease``) and the refused rate is remembered
          :data:`PROBE_PEAK` lower, so the climb levels off just below the limit instead of
          on the rate that was refused (which sits a little above it).
        - Refused again soon after a drop (within :data:`FALL_SHARE` of ``climb``), below
          the last refused rate: the limit fell, so the full ``decrease``.
        - Refused later in the climb, below the last refused rate: one refusal of a
          provider that stamped a few requests together, or a limit that fell a little.
          Half as deep; a fallen limit refuses again soon and gets the full drop.
        - The first refusal: half as deep.

        ``cap`` is the most the key may run at now besides the law (:meth:`delivered_cap`):
        the drop is from the rate that was in force.
        """
        current = min(self.rate_at(drop, now), self.clamp(cap))
        if drop is None:
            return current, self.clamp(current * self._share_of_decrease(2.0))
        peak = self.clamp(drop.peak_per_s)
        if current >= PROBE_SHARE * peak:
            low = self.clamp(current * self._share_of_decrease(3.0))
            return max(low, self.clamp(current * PROBE_PEAK)), low
        if now - drop.dropped_at_s < FALL_SHARE * self.climb_s:
            return current, self.clamp(current * self.decrease)
        return current, self.clamp(current * self._share_of_decrease(2.0))

    def delivered_cap(self, drop: LearnedDrop, delivered_per_s: float) -> float:
        """The most a key climbing after ``drop`` may run at, having been used at
        ``delivered_per_s``: :data:`DELIVERED_MULTIPLE` times that, never below the rate
        it dropped to (known to be admitted). A key with little demand then does not climb
        to the configured rate on time alone, to be refused in a burst when demand returns.
        """
        return self.clamp(max(drop.low_per_s, DELIVERED_MULTIPLE * delivered_per_s))

    def _share_of_decrease(self, shallower: float) -> float:
        """The factor of a drop ``shallower`` times less deep than ``decrease``."""
        return 1.0 - (1.0 - self.decrease) / shallower


class Delivered(Protocol):
    """What every process sent under each key, per second (the database's usage counters,
    :meth:`sluice.store.usage.UsageStore.sent_per_s`)."""

    def sent_per_s(self, keys: Iterable[str], since: datetime, until: datetime) -> dict[str, float]:
        """The rate each of ``keys`` was used at from ``since`` until ``until``."""
        ...


@dataclass(frozen=True)
class _Told:
    """A ceiling an answer stated, until it lapses (monotonic seconds)."""

    per_s: float
    reason: str
    since: datetime
    until_mono: float


class Learner:
    """The adaptive limiter: a :class:`~sluice.providers.base.LimitObserver` for every
    adaptive provider and the ``learned`` :class:`~sluice.engine.rates.CeilingSource`.

    Thread-safe. ``observe`` never raises (a broken header or a database hiccup must not
    crash a worker); ``on_change`` is called after this process made a drop, so its own
    rates in force are refreshed at once (other processes follow within the refresh time).
    """

    def __init__(
        self,
        store: LearnedRateStore,
        configs: Mapping[str, AdaptiveConfig],
        clock: Clock | None = None,
        delivered: Delivered | None = None,
    ) -> None:
        self._store = store
        self._configs = {name: c for name, c in configs.items() if c.enabled}
        self._clock = clock or SystemClock()
        self._delivered = delivered
        self._lock = threading.Lock()
        self._drops: dict[str, LearnedDrop] = {}
        self._caps: dict[str, float] = {}
        self._configured: dict[str, float] = {}
        self._told: dict[str, _Told] = {}
        self._forget_at = 0.0
        self.on_change: Callable[[], None] | None = None

    @property
    def providers(self) -> frozenset[str]:
        return frozenset(self._configs)

    def law(self, provider: str, configured: float) -> CubicLaw | None:
        config = self._configs.get(provider)
        return None if config is None else CubicLaw.of(config, configured)

    def learned_keys(self) -> dict[str, tuple[str, float]]:
        """Every key with a learned drop: its provider and configured rate (per second)."""
        with self._lock:
            return {
                key: (drop.provider, self._configured.get(key, drop.configured_per_s))
                for key, drop in self._drops.items()
            }

    # --- the ceiling source --------------------------------------------------------------

    def ceilings(self) -> Mapping[str, Sequence[Ceiling]]:
        """The learned ceiling of every key whose rate is below its configured one now."""
        drops = {d.key: d for d in self._store.all()}
        now = self._clock.time()
        mono = self._clock.monotonic()
        if mono >= self._forget_at:
            self._forget_at = mono + FORGET_EVERY_S
            drops = self._forget_old(drops, now)
        delivered = self._delivered_per_s(drops, now)
        with self._lock:
            self._drops = drops
            told = dict(self._told)
            configured = dict(self._configured)
            caps = dict(self._caps)
        found: dict[str, list[Ceiling]] = {}
        for key, drop in drops.items():
            law = self.law(drop.provider, drop.configured_per_s)
            if law is None:
                continue
            rate = law.rate_at(drop, now)
            reason = (
                f"refused at {drop.peak_per_s:.3g}/s, dropped to "
                f"{drop.low_per_s:.3g}/s, climbing ({drop.reason})"
            )
            if delivered is not None:
                caps[key] = law.delivered_cap(drop, delivered.get(key, 0.0))
            cap = caps.get(key, math.inf)
            if cap < rate:
                rate = cap
                if cap <= law.clamp(drop.low_per_s):
                    reason += (
                        f"; held at the rate it dropped to (used at under "
                        f"1/{DELIVERED_MULTIPLE:g} of it since)"
                    )
                else:
                    reason += f"; held at {DELIVERED_MULTIPLE:g}x the rate it was used at"
            if rate < law.configured:
                found.setdefault(key, []).append(
                    Ceiling(
                        SOURCE,
                        rate_of(rate, configured.get(key, drop.configured_per_s)),
                        reason,
                        datetime.fromtimestamp(drop.dropped_at_s, UTC),
                    )
                )
        with self._lock:
            self._caps = {key: cap for key, cap in caps.items() if key in drops}
        for key, stated in told.items():
            if stated.until_mono > mono:
                found.setdefault(key, []).append(
                    Ceiling(
                        SOURCE,
                        rate_of(stated.per_s, configured.get(key, stated.per_s)),
                        stated.reason,
                        stated.since,
                    )
                )
        return found

    def _forget_old(self, drops: dict[str, LearnedDrop], now: float) -> dict[str, LearnedDrop]:
        """``drops`` without those :data:`FORGET_AFTER_S` old and past their climb, which
        are deleted (a failure leaves them for the next look)."""
        old = [
            drop
            for drop in drops.values()
            if (law := self.law(drop.provider, drop.configured_per_s)) is not None
            and now - drop.dropped_at_s >= max(FORGET_AFTER_S, 2 * law.climb_s)
        ]
        if not old:
            return drops
        try:
            self._store.forget_drops(old)
        except Exception:
            log.warning("adaptive.forget_failed", exc_info=True)
            return drops
        log.info("adaptive.forgotten", extra={"keys": len(old)})
        gone = {drop.key for drop in old}
        return {key: drop for key, drop in drops.items() if key not in gone}

    def _delivered_per_s(
        self, drops: Mapping[str, LearnedDrop], now: float
    ) -> dict[str, float] | None:
        """The rate each learned key was used at lately, by every process; None when not
        measured (no source, or it failed: the caps measured last stay)."""
        if self._delivered is None or not drops:
            return None
        until = datetime.fromtimestamp(math.floor(now) - DELIVERED_LAG_S, UTC)
        try:
            return self._delivered.sent_per_s(
                drops, until - timedelta(seconds=DELIVERED_SPAN_S), until
            )
        except Exception:
            log.warning("adaptive.delivered_failed", exc_info=True)
            return None

    # --- the observer --------------------------------------------------------------------

    def observe(self, observation: LimitObservation) -> None:
        try:
            self._observe(observation)
        except Exception:
            log.warning(
                "adaptive.observe_failed",
                exc_info=True,
                extra={"provider": observation.provider},
            )

    def _observe(self, observation: LimitObservation) -> None:
        config = self._configs.get(observation.provider)
        if config is None:
            return
        with self._lock:
            for spec in observation.limits:
                self._configured[spec.key] = per_second(spec.rate)
        stated = False
        if observation.readings:
            stated = self._read(observation, config)
        # A refusal that states no limit lowers the rate, even one that says when to come
        # back: resuming at the configured rate after the pause would be refused again.
        if observation.refused and not stated:
            changed = False
            for spec in observation.limits:
                changed |= self._drop(observation.provider, spec, observation.at, config)
            if changed and self.on_change is not None:
                self.on_change()

    def _read(self, observation: LimitObservation, config: AdaptiveConfig) -> bool:
        """Record the ceilings the answer's readings state; whether they held numbers."""
        mono = self._clock.monotonic()
        since = datetime.fromtimestamp(observation.at, UTC)
        numbers = False
        for spec in observation.limits:
            configured = per_second(spec.rate)
            law = CubicLaw.of(config, configured)
            best = told_ceiling(observation.readings, spec, law, config, observation.stretch)
            if best is None:
                with self._lock:
                    self._told.pop(spec.key, None)
                numbers = numbers or any(
                    r.limit is not None and _names_window(r, spec, observation.stretch)
                    for r in observation.readings
                )
                continue
            numbers = True
            per_s, reason, lasts_s = best
            with self._lock:
                previous = self._told.get(spec.key)
                kept_since = (
                    previous.since
                    if previous is not None and abs(previous.per_s - per_s) < 1e-9
                    else since
                )
                self._told[spec.key] = _Told(per_s, reason, kept_since, mono + lasts_s)
            if previous is None or abs(previous.per_s - per_s) > 0.1 * configured:
                log.info(
                    "adaptive.told",
                    extra={"provider": observation.provider, "key": spec.key, "rate": per_s},
                )
        return numbers

    def _drop(self, provider: str, spec: LimitSpec, at: float, config: AdaptiveConfig) -> bool:
        configured = per_second(spec.rate)
        with self._lock:
            cached = self._drops.get(spec.key)
        if cached is not None and at - cached.dropped_at_s < config.hold:
            return False
        law = CubicLaw.of(config, configured)
        current = self._store.get(spec.key)
        if current is not None and at - current.dropped_at_s < config.hold:
            with self._lock:
                self._drops[spec.key] = current
            return False
        with self._lock:
            cap = self._caps.get(spec.key, math.inf)
        peak, low = law.after_refusal(current, at, cap)
        drop = LearnedDrop(
            key=spec.key,
            provider=provider,
            configured_per_s=configured,
            peak_per_s=peak,
            low_per_s=low,
            dropped_at_s=at,
            decreases=(current.decreases if current is not None else 0) + 1,
            reason="refused with no numbers",
        )
        made = self._store.record_drop(
            drop, None if current is None else current.dropped_at_s, at=self._clock.now()
        )
        if made:
            with self._lock:
                self._drops[spec.key] = drop
            log.info(
                "adaptive.drop",
                extra={"provider": provider, "key": spec.key, "from": peak, "to": low},
            )
        return made


def _names_window(reading: LimitReading, spec: LimitSpec, stretch: float) -> bool:
    """Whether ``reading`` speaks of ``spec``'s key: it names no window, or the key's
    window as the provider counts it (``spec``'s window is stretched by ``rate_margin``)."""
    if reading.window_s is None:
        return True
    window = spec.rate.window_s
    return abs(reading.window_s * stretch - window) <= 1e-9 * max(1.0, window)


def told_ceiling(
    readings: Sequence[LimitReading],
    spec: LimitSpec,
    law: CubicLaw,
    config: AdaptiveConfig,
    stretch: float = 1.0,
) -> tuple[float, str, float] | None:
    """The lowest rate (per second) the readings allow ``spec``'s key, why, and for how long
    (seconds); None when none is below the configured rate.

    A stated limit applies to the key whose window it names (or any key when it names
    none); ``remaining / reset`` is taken from the reading with the least remaining. The
    key's window is the provider's stretched by ``stretch`` (its ``rate_margin``), and so
    is a stated limit: ``limit`` per window at the provider is ``limit`` per the key's
    window here, the margin kept.
    """
    configured = law.configured
    window = spec.rate.window_s
    found: list[tuple[float, str, float]] = []
    for reading in readings:
        if reading.limit is None or not _names_window(reading, spec, stretch):
            continue
        per_s = reading.limit / window
        if per_s < configured:
            found.append(
                (
                    per_s,
                    f"{reading.source}: limit {reading.limit:g} per "
                    f"{reading.window_s or window / stretch:g}s",
                    HEADER_TTL_S,
                )
            )
    counted = [
        (r.remaining, r.limit or 0.0, r.reset_s, r.source)
        for r in readings
        if r.remaining is not None and r.reset_s is not None
    ]
    if counted:
        remaining, _limit, reset_s, source = min(counted)
        if reset_s > MIN_SPREAD_S:
            pace = remaining / reset_s / stretch
            if pace < configured:
                found.append((pace, f"{source}: {remaining:g} left for {reset_s:g}s", reset_s))
    for reading in readings:
        if reading.used_fraction is None:
            continue
        slow_above = config.usage_slow_above / 100.0
        if reading.reset_s is not None and reading.reset_s > 0:
            found.append(
                (
                    law.floor,
                    f"{reading.source}: regain access in {reading.reset_s:g}s",
                    reading.reset_s,
                )
            )
        elif reading.used_fraction >= slow_above:
            share = max(0.0, 1.0 - reading.used_fraction) / (1.0 - slow_above)
            found.append(
                (
                    configured * share,
                    f"{reading.source}: {reading.used_fraction * 100:.0f}% used",
                    HEADER_TTL_S,
                )
            )
    if not found:
        return None
    per_s, reason, lasts_s = min(found)
    return law.clamp(per_s), reason, lasts_s


def rate_of(per_s: float, configured_per_s: float) -> Rate:
    """A :class:`Rate` of ``per_s`` requests a second, as a limiter key takes it."""
    if per_s <= 0:
        per_s = 1e-6
    limit = max(1, round(configured_per_s)) if configured_per_s >= 1 else 1
    return Rate(limit, limit / per_s)


@dataclass(frozen=True)
class KeyRate:
    """One limit key's configured rate beside the rate in force, and why (for explain,
    the console, ``sluice status``)."""

    provider: str
    key: str
    configured_per_s: float
    in_force_per_s: float
    source: str
    reason: str
    since: datetime | None


def rates_in_force(
    providers: Mapping[str, Any], rates: RatesInForce, learner: Learner | None = None
) -> list[KeyRate]:
    """Every provider-wide and read/write key of ``providers`` (and every key with a learned
    ceiling), configured beside in force, with the source, reason and time of a change."""
    specs: dict[str, tuple[str, LimitSpec]] = {}
    for name, provider in providers.items():
        for access in ("write", "read"):
            for spec in provider.limits_for(access, None):
                specs.setdefault(spec.key, (name, spec))
    if learner is not None:
        for key, (provider, per_s) in learner.learned_keys().items():
            specs.setdefault(key, (provider, LimitSpec(key, rate_of(per_s, per_s))))
    found = []
    for key, (name, spec) in sorted(specs.items()):
        now = rates.in_force(spec)
        found.append(
            KeyRate(
                name,
                key,
                per_second(spec.rate),
                per_second(now.rate),
                now.source,
                now.reason,
                now.since,
            )
        )
    return found


def rates_in_force_now(
    providers: Mapping[str, Any], rates: RatesInForce, learner: Learner | None = None
) -> list[KeyRate]:
    """:func:`rates_in_force` after reading every ceiling source again (pins, learned rates,
    quota pace): what ``sluice rates`` shows, on the local database or through ``GET
    /api/rates``, so both answer from the database as it is now."""
    rates.refresh()
    return rates_in_force(providers, rates, learner)
