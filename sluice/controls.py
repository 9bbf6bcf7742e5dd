"""Operator controls and the providers' overview, shared by the API, the CLI and the console.

- **Pause** a provider (every key of it) or one of its configured limit keys by hand, with
  a reason and an optional end; **resume** ends it (and every pause below the key).
- **Pin** a lower rate on a limit key (a configured key, or one account's key of a ``per``
  limit); **unpin** goes back to the configured rate.
- **Overview**: each provider's limit keys with the configured rate, the rate in force and
  its source, pause state (until, reason, signal, who) and the in-flight cap.

The database is the source of truth: a pause is a row of ``limiter_pauses`` that every
dispatcher copies into its limiter (and clears from it when the row goes,
:meth:`sluice.engine.dispatcher.Dispatcher._sync_pauses`); a pin is a row of ``limit_pins``
read by every process through :class:`PinnedCeilings` (the ``pinned`` ceiling source of
:class:`~sluice.engine.rates.RatesInForce`, refreshed every 0.5 s). Each action and its
audit record commit in one transaction; a refused action (unknown provider or key, a pin
that would raise the rate) changes and records nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine

from sluice import errors
from sluice.clock import Clock, SystemClock, as_utc
from sluice.domain import Actor
from sluice.engine.rates import Ceiling, InForce, RatesInForce, per_second
from sluice.providers.base import Provider
from sluice.providers.limits import ConfiguredLimit
from sluice.ratelimit.base import Limiter
from sluice.ratelimit.rate import LimitSpec, Rate, parse_rate
from sluice.store import audit
from sluice.store.pauses import NO_EXPIRY, Pause, PauseStore
from sluice.store.pins import Pin, PinStore
from sluice.units import parse_duration

log = logging.getLogger("sluice.controls")

PINNED = "pinned"
MAX_REASON = 500


def actor_label(actor: Actor) -> str:
    """Who, as the overview and explanations show it: ``ops-alice (key ab12cd34ef56)``,
    ``cli``, ``loopback`` or ``system:<part>``."""
    if actor.key_id is not None:
        return f"{actor.key_name} (key {actor.key_id})"
    return actor.kind


def provider_of(key: str) -> str:
    """The provider a limit key belongs to: its first ``:``-separated part."""
    return key.split(":", 1)[0]


class PinnedCeilings:
    """The ``pinned`` ceiling source: every pin of ``limit_pins``, by key.

    A pin is given in the same terms as a configured rate, so it is stretched by the
    provider's ``rate_margin`` like the configured rates are (``stretch``, by provider).
    """

    def __init__(self, pins: PinStore, stretch: Mapping[str, float] | None = None) -> None:
        self._pins = pins
        self._stretch = dict(stretch or {})

    def ceilings(self) -> Mapping[str, Sequence[Ceiling]]:
        found: dict[str, list[Ceiling]] = {}
        for pin in self._pins.all():
            stretch = self._stretch.get(provider_of(pin.key), 1.0)
            rate = Rate(pin.rate_limit, pin.window_s * stretch)
            found.setdefault(pin.key, []).append(Ceiling(PINNED, rate, pin.reason, pin.since))
        return found


def stretches(providers: Mapping[str, Provider]) -> dict[str, float]:
    """Each provider's ``rate_margin`` stretch (applied window / configured window)."""
    result: dict[str, float] = {}
    for name, provider in providers.items():
        limits = provider.configured_limits()
        result[name] = limits[0].applied.window_s / limits[0].rate.window_s if limits else 1.0
    return result


@dataclass(frozen=True)
class PauseState:
    """A pause running on one key: until when (None: until resumed), why, set by what."""

    key: str
    until: datetime | None
    signal: str | None
    reason: str | None
    actor: str | None
    since: datetime | None

    @classmethod
    def of(cls, pause: Pause) -> PauseState:
        until = None if pause.until >= NO_EXPIRY else pause.until
        return cls(pause.key, until, pause.signal, pause.reason, pause.actor, pause.since)


@dataclass(frozen=True)
class KeyState:
    """One limit key of a provider: its configured rate, the rate in force and why, its pause.

    A ``per`` limit is listed once with ``*`` for the account (its configured rate), and
    again for each account key that has a pin or a pause of its own.
    """

    key: str
    scope: str
    per: str | None
    configured: Rate
    in_force: Rate
    source: str
    reason: str
    since: datetime | None
    pause: PauseState | None


@dataclass(frozen=True)
class InFlightState:
    key: str
    max_in_flight: int
    in_flight: int | None
    """Live leases now; None when the limiter could not be asked."""


@dataclass(frozen=True)
class ProviderState:
    """A provider as the overview shows it."""

    name: str
    pause: PauseState | None
    """The pause on the provider's own key, which holds every key of it."""
    keys: list[KeyState]
    in_flight: InFlightState | None


@dataclass(frozen=True)
class ControlResult:
    """What a control action did: its audit name, target, and what it changed."""

    action: str
    target: str
    at: datetime
    changed: bool
    detail: dict[str, Any] = field(default_factory=dict)


class Controls:
    """Pause, resume, pin and unpin; the providers' overview (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        providers: Mapping[str, Provider],
        limiter: Limiter,
        rates: RatesInForce,
        *,
        pauses: PauseStore | None = None,
        pins: PinStore | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.engine = engine
        self.providers = providers
        self.limiter = limiter
        self.rates = rates
        self.pauses = pauses or PauseStore(engine)
        self.pins = pins or PinStore(engine)
        self.clock = clock or SystemClock()

    # -- what exists -------------------------------------------------------------------

    def provider(self, name: str) -> Provider:
        """The provider called ``name``, or :class:`~sluice.errors.UnknownLimit` naming it."""
        provider = self.providers.get(name)
        if provider is None:
            known = ", ".join(sorted(self.providers)) or "none"
            raise errors.UnknownLimit(f"unknown provider {name!r}; known providers: {known}")
        return provider

    def limit_of(self, key: str) -> ConfiguredLimit:
        """The configured limit ``key`` belongs to (a key or one account's key), or 404."""
        provider = self.provider(provider_of(key))
        limits = provider.configured_limits()
        for limit in limits:
            if limit.matches(key):
                return limit
        known = ", ".join(limit.key for limit in limits) or "none"
        raise errors.UnknownLimit(
            f"unknown limit key {key!r} of provider {provider.name!r}; its keys: {known}"
        )

    def _pause_target(self, target: str) -> str:
        """``target`` if it names a provider or one of its configured (not per-account) keys."""
        if target in self.providers:
            return target
        limit = self.limit_of(target)
        if limit.per is not None:
            raise errors.InvalidControl(
                f"{target!r} is one account's key of a per-{limit.per} limit: pause its "
                f"provider or a configured key, or pin a lower rate on it"
            )
        return target

    # -- controls ----------------------------------------------------------------------

    def pause(
        self, target: str, *, reason: str, until: datetime | None, actor: Actor
    ) -> ControlResult:
        """Pause a provider or one of its keys until ``until`` (None: until resumed)."""
        key = self._pause_target(target)
        reason = _reason(reason)
        now = self.clock.now()
        if until is not None and until <= now:
            raise errors.InvalidControl(f"the pause's end {until.isoformat()} is not in the future")
        end = min(until, NO_EXPIRY) if until is not None else NO_EXPIRY
        with self.engine.begin() as conn:
            pause = self.pauses.set_manual(conn, key, end, reason, actor_label(actor), now)
            shown = PauseState.of(pause)
            detail = {
                "reason": reason,
                "until": shown.until.isoformat(timespec="seconds") if shown.until else None,
            }
            self._audit(conn, actor, "limit.pause", key, now, detail)
        self._limiter_call("pause", lambda: self.limiter.pause(key, _seconds(pause.until, now)))
        return ControlResult("limit.pause", key, now, True, detail)

    def resume(self, target: str, *, actor: Actor) -> ControlResult:
        """End the pause on a provider or key, and every pause below it."""
        key = self._pause_target(target)
        now = self.clock.now()
        with self.engine.begin() as conn:
            lifted = self.pauses.lift(conn, key, now, provider_of(key))
            detail: dict[str, Any] = {"lifted": [pause.key for pause in lifted]}
            self._audit(conn, actor, "limit.resume", key, now, detail)
        for pause_key in sorted({key, *(pause.key for pause in lifted)}):
            self._limiter_call("unpause", functools.partial(self.limiter.unpause, pause_key))
        return ControlResult("limit.resume", key, now, bool(lifted), detail)

    def pin(self, key: str, rate: Rate, *, reason: str, actor: Actor) -> ControlResult:
        """Pin ``rate`` on ``key``: at most its configured rate (a pin only lowers)."""
        limit = self.limit_of(key)
        reason = _reason(reason)
        if per_second(rate) > per_second(limit.rate):
            raise errors.InvalidControl(
                f"a pin only lowers: {rate} is above {key}'s configured rate {limit.rate}"
            )
        now = self.clock.now()
        with self.engine.begin() as conn:
            before = self.pins.get(conn, key)
            self.pins.put(
                conn, Pin(key, rate.limit, rate.window_s, reason, actor_label(actor), now)
            )
            detail = {
                "rate": str(rate),
                "configured": str(limit.rate),
                "reason": reason,
                "previous": None
                if before is None
                else str(Rate(before.rate_limit, before.window_s)),
            }
            self._audit(conn, actor, "limit.pin", key, now, detail)
        self.rates.refresh()
        return ControlResult("limit.pin", key, now, True, detail)

    def unpin(self, key: str, *, actor: Actor) -> ControlResult:
        """Clear the pin on ``key``: its rate goes back to the configured one."""
        limit = self.limit_of(key)
        now = self.clock.now()
        with self.engine.begin() as conn:
            cleared = self.pins.clear(conn, key)
            detail = {
                "cleared": None
                if cleared is None
                else str(Rate(cleared.rate_limit, cleared.window_s)),
                "configured": str(limit.rate),
            }
            self._audit(conn, actor, "limit.unpin", key, now, detail)
        self.rates.refresh()
        return ControlResult("limit.unpin", key, now, cleared is not None, detail)

    # -- reads -------------------------------------------------------------------------

    def overview(self, names: Sequence[str] | None = None) -> list[ProviderState]:
        """Every provider (or those named), in name order."""
        if names is not None:
            for name in names:
                self.provider(name)
        now = self.clock.now()
        pauses = {key: PauseState.of(p) for key, p in self.pauses.details(now).items()}
        pinned = [pin.key for pin in self.pins.all()]
        shown = []
        for name in sorted(names if names is not None else self.providers):
            provider = self.providers[name]
            keys: list[KeyState] = []
            for limit in provider.configured_limits():
                keys.append(self._key_state(limit, limit.key, pauses))
                if limit.per is not None:
                    accounts = sorted(
                        {k for k in (*pinned, *pauses) if k != limit.key and limit.matches(k)}
                    )
                    keys += [self._key_state(limit, key, pauses) for key in accounts]
            shown.append(
                ProviderState(name, pauses.get(name), keys, self.in_flight_state(provider))
            )
        return shown

    def in_force(self, key: str, rate: Rate) -> InForce:
        """The rate in force on ``key`` whose limiter rate is ``rate``."""
        return self.rates.in_force(LimitSpec(key, rate))

    def _key_state(
        self, limit: ConfiguredLimit, key: str, pauses: Mapping[str, PauseState]
    ) -> KeyState:
        force = self.in_force(key, limit.applied)
        # Shown in configured terms: the configured rate unless a ceiling is lower.
        in_force = limit.rate if force.source == "configured" else force.rate
        return KeyState(
            key,
            limit.scope,
            limit.per,
            limit.rate,
            in_force,
            force.source,
            force.reason,
            force.since,
            pauses.get(key),
        )

    def in_flight_state(self, provider: Provider) -> InFlightState | None:
        cap = provider.in_flight()
        if cap is None:
            return None
        try:
            count: int | None = self.limiter.in_flight_count(cap.key)
        except errors.LimiterError as exc:
            log.warning("controls.in_flight_unavailable", extra={"error": str(exc)})
            count = None
        return InFlightState(cap.key, cap.max_in_flight, count)

    # -- helpers -----------------------------------------------------------------------

    def _audit(
        self,
        conn: Connection,
        actor: Actor,
        action: str,
        key: str,
        now: datetime,
        detail: dict[str, Any],
    ) -> None:
        target = f"provider:{key}" if key in self.providers else f"key:{key}"
        audit.record(conn, actor, action, target, tenant=None, at=now, detail=detail)

    def _limiter_call(self, what: str, call: Callable[[], object]) -> None:
        """Tell this process's limiter at once; if it is down, every dispatcher copies the
        database's pauses into its limiter within :data:`PAUSE_SYNC_S` anyway."""
        try:
            call()
        except errors.LimiterError as exc:
            # Expected while Redis is down, and handled: one line, not a traceback (which
            # `sluice pause` printed by the dozen lines).
            log.warning("controls.limiter_unavailable", extra={"call": what, "error": str(exc)})


def pause_end(
    now: datetime, *, duration: str | None = None, until: datetime | None = None
) -> datetime | None:
    """When a pause asked for with ``duration`` (``"30min"``) or ``until`` ends (None: until
    resumed); :class:`~sluice.errors.InvalidControl` for both, a bad duration or a past end."""
    if duration is not None and until is not None:
        raise errors.InvalidControl("give the pause a duration or an end (until), not both")
    if duration is not None:
        try:
            seconds = parse_duration(duration)
        except errors.InvalidValue as exc:
            raise errors.InvalidControl(f"duration {exc}") from None
        if seconds <= 0:
            raise errors.InvalidControl(f"duration must be longer than 0, got {duration!r}")
        return now + timedelta(seconds=seconds)
    if until is not None:
        try:
            return as_utc(until)
        except errors.InvalidValue as exc:
            raise errors.InvalidControl(f"until {exc}") from None
    return None


def pin_rate(text: str) -> Rate:
    """The rate of a pin (``"5/s"``, ``"100/min"``); InvalidControl naming the text."""
    try:
        return parse_rate(text)
    except errors.InvalidValue as exc:
        raise errors.InvalidControl(str(exc)) from None


def _reason(reason: str) -> str:
    reason = reason.strip()
    if not reason:
        raise errors.InvalidControl("give a reason: it is shown beside the pause or pin")
    if len(reason) > MAX_REASON:
        raise errors.InvalidControl(f"the reason is longer than {MAX_REASON} characters")
    return reason


def _seconds(until: datetime, now: datetime) -> float:
    return max(0.0, (until - now).total_seconds())


def adopt_stored_pins(store: PinStore, providers: Mapping[str, Provider]) -> int:
    """Move each pin stored before digest forms on an account's value as it was
    (``acme:write:advertiser_id=a b``) to the account's digest key, which Sluice spends
    from; returns how many moved. Left where it was, the operator's lower rate would stop
    applying at the upgrade. Where the digest key has a pin already, the lower rate stays.
    """
    moved = 0
    limits = [limit for p in providers.values() for limit in p.configured_limits() if limit.per]
    for pin in store.all():
        found = (limit.current_key(pin.key) for limit in limits)
        current = next((key for key in found if key is not None), None)
        if current is None:
            continue
        with store.engine.begin() as conn:
            there = store.get(conn, current)
            moving = dataclasses.replace(pin, key=current)
            if there is None or per_second(_rate(moving)) < per_second(_rate(there)):
                store.put(conn, moving)
            store.clear(conn, pin.key)
        log.info("pin.adopted", extra={"key": current})
        moved += 1
    return moved


def _rate(pin: Pin) -> Rate:
    return Rate(pin.rate_limit, pin.window_s)
