"""The limiter seam: the ``Limiter`` protocol both backends implement, and its values.

Key scopes: limit keys are ``:``-separated (``"sandbox"``, ``"sandbox:write"``,
``"sandbox:advertiser=adv-1"``). ``pause(p)`` holds back every limit whose key is ``p``
or starts with ``p + ":"``, so pausing ``"sandbox"`` stops every sandbox call while
pausing ``"sandbox:write"`` leaves reads alone.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sluice import errors
from sluice.clock import Clock
from sluice.ratelimit.rate import Grant, LimitSpec

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


@dataclass(frozen=True)
class InFlight:
    """At most ``max_in_flight`` requests on ``key`` running at once.

    A lease lapses ``ttl_s`` after it was taken, so a worker that dies without calling
    ``release`` never holds a slot forever.
    """

    key: str
    max_in_flight: int
    ttl_s: float

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise errors.InvalidValue(f"in-flight key must be a non-empty string, got {self.key!r}")
        if isinstance(self.max_in_flight, bool) or self.max_in_flight < 1:
            raise errors.InvalidValue(f"max_in_flight must be >= 1, got {self.max_in_flight!r}")
        if not (math.isfinite(self.ttl_s) and self.ttl_s > 0):
            raise errors.InvalidValue(
                f"in-flight ttl_s must be a positive number, got {self.ttl_s!r}"
            )


class Limiter(Protocol):
    """Grants requests under rate limits shared by every caller of the same backend."""

    def acquire(
        self,
        limits: Sequence[LimitSpec],
        *,
        in_flight: InFlight | None = None,
        wide: Collection[str] = (),
    ) -> Grant:
        """Atomically check pauses, the in-flight cap and every rate; commit all or nothing.

        Pauses are checked on every limit key and on ``in_flight.key``. Only when all
        pass are the rates consumed and (with ``in_flight``) a lease taken. Keys in
        ``wide`` use the wide catch-up (:func:`gcra.wide_credit_us`): only for keys whose
        window the caller holds (:mod:`sluice.ratelimit.holds`).
        """
        ...

    def release(self, lease_id: str, key: str) -> None:
        """Give back the in-flight lease ``lease_id`` on ``key``; unknown ids are ignored."""
        ...

    def hold(self, lease_id: str, key: str, seconds: float) -> None:
        """Keep the lease ``lease_id`` on ``key`` until ``seconds`` from now, no longer.

        Sets its expiry to the limiter clock's now plus ``seconds`` (taking it again if it
        had lapsed): a window hold kept after the request's answer (:mod:`holds`).
        """
        ...

    def give_back(self, undo: Sequence[tuple[str, int, int]]) -> None:
        """Undo the spacing of a grant that sent nothing (its :attr:`Grant.undo`).

        Per key, only while no grant has followed it: a TAT still at the value this grant
        left goes back to the one it found (see "Giving a slot back" in :mod:`gcra`);
        otherwise the key is left alone.
        """
        ...

    def push_back(self, moves: Sequence[tuple[str, int]]) -> None:
        """Move each key's TAT to at least the limiter clock's now plus its microseconds.

        Called when a request was written later than its grant's send window (see "A write
        that ended late" in :mod:`sluice.ratelimit.sendgate`): the key's next grants are then
        spaced from that write, as if it had been granted just now. Only ever raises a TAT.
        """
        ...

    def pause(self, key: str, seconds: float) -> None:
        """Refuse ``key`` and its sub-keys with reason ``"paused"`` for ``seconds``.

        A pause only ever extends an existing one, never shortens it.
        """
        ...

    def paused_until(self, key: str) -> float | None:
        """POSIX seconds when calls on ``key`` stop being held back by a pause, if paused.

        Pauses on ``key``'s ancestors count, as they do in ``acquire``.
        """
        ...

    def unpause(self, key: str) -> None:
        """End the pause set on exactly ``key`` (an operator resumed it); pauses on its
        ancestors or sub-keys are left alone. Unknown keys are ignored."""
        ...

    def in_flight_count(self, key: str) -> int:
        """How many in-flight leases on ``key`` are live now (a read; takes nothing)."""
        ...

    def reset(self) -> None:
        """Drop all state (tests and benchmarks)."""
        ...


def clock_us(clock: Clock) -> int:
    """The clock's time in whole microseconds, exactly (no float rounding)."""
    return (clock.now() - _EPOCH) // _ONE_US


def monotonic_us(clock: Clock) -> int:
    """The clock's monotonic reading in whole microseconds."""
    return round(clock.monotonic() * 1_000_000)


def check_acquire_args(limits: Sequence[LimitSpec], in_flight: InFlight | None) -> None:
    """Refuse an ``acquire`` that asks for nothing: it would grant unlimited traffic."""
    if not limits and in_flight is None:
        raise errors.InvalidValue("acquire needs at least one LimitSpec or an InFlight cap")


def check_pause_seconds(seconds: float) -> None:
    """Refuse a pause length that is negative or not a number."""
    if not (math.isfinite(seconds) and seconds >= 0):
        raise errors.InvalidValue(f"pause seconds must be a finite number >= 0, got {seconds!r}")
