"""Values the limiter speaks in: a rate, a limit to satisfy, and the answer (a grant).

``parse_rate`` reads the ``"<count>/<window>"`` strings found in provider configuration::

    parse_rate("10/s")      # 10 requests per second
    parse_rate("40/min")    # 40 per minute
    parse_rate("1000/h")    # 1000 per hour
    parse_rate("5/2s")      # 5 per 2 seconds
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from sluice import errors
from sluice.units import MAX_DURATION_S, UNIT_S, format_window

# The window's unit comes from sluice.units, which refuses "m" (minutes or milliseconds?).
_RATE_RE = re.compile(
    r"^\s*(?P<limit>\d+)\s*/\s*(?P<count>\d+(?:\.\d+)?)?\s*(?P<unit>[a-z]+)\s*$",
    re.IGNORECASE,
)

_ACCEPTED = "'<count>/<window>' like '10/s', '40/min', '1000/h' or '5/2s' (units: ms, s, min, h, d)"

REASONS = frozenset({"", "rate", "paused", "in_flight"})


@dataclass(frozen=True)
class Rate:
    """At most ``limit`` requests in any window of ``window_s`` seconds."""

    limit: int
    window_s: float

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise errors.InvalidValue(f"rate limit must be a positive integer, got {self.limit!r}")
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise errors.InvalidValue(
                f"rate window_s must be a positive number, got {self.window_s!r}"
            )

    @property
    def interval_s(self) -> float:
        """Seconds between requests when they are spread evenly."""
        return self.window_s / self.limit

    def __str__(self) -> str:
        """As configuration writes it: ``20/s``, ``40/min``, ``1000/h``, else ``5/2s``."""
        return f"{self.limit}/{format_window(self.window_s)}"


def shown_rate(rate: Rate) -> str:
    """``rate`` for a reader: as configuration writes it when that text is exact (``20/s``,
    ``5/2s``), else per second to 3 significant digits, as ``sluice rates`` shows it.

    A learned or quota-paced rate keeps its key's count over a stretched window: a learned
    30/s on ``100/s`` read "100/3.33467s" in the console, the overview and explain.
    """
    text = str(rate)
    try:
        exact = parse_rate(text) == rate
    except errors.InvalidValue:
        exact = False
    return text if exact else f"{rate.limit / rate.window_s:.3g}/s"


def parse_rate(text: str) -> Rate:
    """Parse ``"10/s"``, ``"40/min"``, ``"1000/h"`` or ``"5/2s"`` into a :class:`Rate`.

    Raises:
        errors.InvalidValue: naming the bad text and the accepted forms.
    """
    match = _RATE_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise errors.InvalidValue(f"invalid rate {text!r}; expected {_ACCEPTED}")
    unit = match["unit"].lower()
    if unit not in UNIT_S:
        raise errors.InvalidValue(
            f"invalid rate {text!r}: unknown unit {unit!r}; expected {_ACCEPTED}"
        )
    limit = int(match["limit"])
    count = float(match["count"]) if match["count"] else 1.0
    if limit < 1 or count <= 0:
        raise errors.InvalidValue(
            f"invalid rate {text!r}: count and window must be > 0; expected {_ACCEPTED}"
        )
    window_s = count * UNIT_S[unit]
    if window_s > MAX_DURATION_S:
        raise errors.InvalidValue(
            f"invalid rate {text!r}: the window must be at most 3650d (ten years)"
        )
    return Rate(limit=limit, window_s=window_s)


@dataclass(frozen=True)
class LimitSpec:
    """One limit a request must satisfy, e.g. key ``"sandbox:write"`` at ``10/s``.

    Keys are ``:``-separated scopes: a pause on ``"sandbox"`` also holds back
    ``"sandbox:write"`` and ``"sandbox:advertiser=adv-1"``.

    ``cost`` is how many of the limit's units this request uses (a write-heavy call that
    the provider counts as 5 writes has cost 5). ``burst`` is a property of the key: how
    many units beyond one may go at once after the key was idle (0: evenly paced). A
    cost-``c`` request needs ``burst >= c - 1``, and ``burst < limit``. The key's spacing is
    ``window / (limit - burst)``, so a key never holds more than ``limit`` units in any
    window (proof in :mod:`sluice.ratelimit.gcra`).

    ``held`` is the rate whose window the key's holds keep at the provider
    (:mod:`sluice.ratelimit.holds`) when it differs from ``rate``: a ceiling (a pin, a
    learned rate, a quota's pace) lowers ``rate``, the pace of the grants, and leaves the
    holds on the configured limit's own window (``None``: ``rate``'s).
    """

    key: str
    rate: Rate
    cost: int = 1
    burst: int = 0
    held: Rate | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise errors.InvalidValue(f"limit key must be a non-empty string, got {self.key!r}")
        if isinstance(self.cost, bool) or not isinstance(self.cost, int) or self.cost < 1:
            raise errors.InvalidValue(f"limit cost must be an integer >= 1, got {self.cost!r}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 0:
            raise errors.InvalidValue(f"limit burst must be an integer >= 0, got {self.burst!r}")
        if self.burst >= self.rate.limit:
            raise errors.InvalidValue(
                f"limit burst {self.burst} on {self.key!r} must be below its count "
                f"({self.rate.limit})"
            )
        if self.cost > self.burst + 1:
            raise errors.InvalidValue(
                f"a cost of {self.cost} on {self.key!r} needs burst >= {self.cost - 1} "
                f"(it has {self.burst}); the provider config derives it from its costs"
            )

    @property
    def held_rate(self) -> Rate:
        """The limit whose window the key's holds keep (``held``, else ``rate``)."""
        return self.rate if self.held is None else self.held


@dataclass(frozen=True)
class Hold:
    """One of a key's places held by a request (:mod:`sluice.ratelimit.holds`).

    ``key`` is the in-flight key the hold lives under, ``lease_id`` the place, and
    ``window_s`` how long after the request's answer the place stays held.
    """

    key: str
    lease_id: str
    window_s: float


@dataclass(frozen=True)
class Grant:
    """The limiter's answer to one ``acquire``.

    Attributes:
        granted: the request may go now; everything it needed was consumed.
        retry_after_s: on refusal, seconds until asking again can succeed (0 when granted).
            For ``"in_flight"`` it is when the oldest lease expires, an upper bound:
            a ``release`` frees a slot sooner.
        reason: ``""`` when granted, else ``"rate"``, ``"paused"`` or ``"in_flight"``.
        lease_id: the in-flight lease taken, to hand back to ``release``.
        granted_at: POSIX seconds of the limiter clock the decision used (the Redis
            server's clock for ``RedisLimiter``); ``None`` on refusal.
        send_within_s: how long after *asking* the request may still be sent; later, it
            must not go at all (:mod:`sluice.ratelimit.sendgate`). Unbounded when no rate
            limit applies.
        holds: the window holds taken with the grant (:mod:`sluice.ratelimit.holds`), to
            keep after the answer or give back if nothing was sent.
        undo: what the grant did to each limit key's TAT, ``(key, before, after)`` in the
            limiter's microseconds, so that a grant sent nowhere can give its slot back
            (:meth:`Limiter.give_back`).
        steps: ``(key, step)`` for each limit key paced by its spacing (not a ``wide``
            key): what the grant added to the key's TAT at its pace, in microseconds, so
            that a request written late can move the key's schedule after it
            (:meth:`Limiter.push_back`, :mod:`sluice.ratelimit.sendgate`).
    """

    granted: bool
    retry_after_s: float
    reason: str = ""
    lease_id: str | None = None
    granted_at: float | None = None
    send_within_s: float = math.inf
    holds: tuple[Hold, ...] = ()
    undo: tuple[tuple[str, int, int], ...] = ()
    steps: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise errors.InvalidValue(
                f"unknown grant reason {self.reason!r}; known: {sorted(REASONS)}"
            )
