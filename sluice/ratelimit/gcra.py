"""GCRA with zero burst tolerance: the pure algorithm both limiters run (no I/O).

Each limit key keeps one number, its *theoretical arrival time* (TAT): the earliest
moment the next request on that key may go. A request at ``now`` is allowed iff
``now >= tat``; the grant then moves the TAT to ``max(tat, now - credit) + spacing`` where
``spacing = interval_s * (1 + margin)`` rounded *up* to whole microseconds.

``credit`` (the *catch-up*, default 0) lets a caller that arrives a little late for its
slot keep the schedule instead of losing the lateness forever: a dispatcher that wakes
1 ms late for 20 ms slots would otherwise run at 95% of the rate. It is capped per key at
half the slack the margin buys, ``limit * spacing - window``; the other half is for the
time between grant and arrival at the provider (:mod:`sluice.ratelimit.sendgate`).

Why this never exceeds ``limit`` requests in any sliding window of ``window_s``:
    Each grant at ``a_k`` sets ``tat_{k+1} >= a_k - credit + spacing``, and later TATs grow
    by ``spacing`` per grant, so any ``limit + 1`` grants span ``>= limit * spacing - credit
    >= window_s`` (the cap on ``credit``) and cannot share a window of that length.

All times are integer microseconds (the Redis ``TIME`` resolution): integer arithmetic
is exact in Python and in Redis' Lua doubles (below 2**53), so both backends agree to
the microsecond and the bound above holds exactly, even with ``margin=0``.
``margin`` exists because the provider counts arrivals on *its* clock, and a grant is not
an arrival: the delay from grant to send and the network can bunch two requests we spaced
correctly. :mod:`sluice.ratelimit.sendgate` bounds the first part and proves what is left.

A request may need several limits (provider, operation, advertiser...). Acquisition is
all-or-nothing: it is allowed only if every limit allows it now; on refusal nothing is
consumed and the wait is the longest among them.

**A limiter that lost its state** (a new process, a flushed or restarted Redis) does not
know when each key last granted. It records the instant it found itself empty, ``born``,
and treats every key as if its TAT were at least ``born + hold``, with
``hold = max(spacing, COLD_HOLD)`` (1 s: at least one window for windows up to 1 s).
Why the limit still holds across the loss:
    Had the state survived, the TAT would be ``tat_true <= a_last + spacing`` where
    ``a_last <= born`` is the last grant before the loss (a grant at ``a`` sets the TAT to
    ``max(tat, a - credit) + spacing`` with ``tat <= a``). Starting again from
    ``born + hold >= tat_true`` only ever *raises* the TAT, and the bound above uses nothing
    but "each grant at ``a_k`` sets ``tat_{k+1} >= a_k - credit + spacing``", which still
    holds for every grant on either side of the loss. So any ``limit + 1`` grants, before
    and after the loss together, still span at least ``window_s``. One spacing would do;
    the rest of the hold (up to 1 s) gives every process time to restore the pauses the
    database keeps before anything is sent (see ``docs/ratelimit.md``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sluice import errors
from sluice.ratelimit.rate import LimitSpec, Rate

US_PER_S = 1_000_000

COLD_HOLD_US = 1_000_000
"""A limiter that lost its state holds each key this long, or one spacing if longer."""

SCOPE_SEPARATOR = ":"


def to_us(seconds: float) -> int:
    """Seconds to whole microseconds, rounding to nearest."""
    return round(seconds * US_PER_S)


def spacing_us(rate: Rate, margin: float) -> int:
    """Minimum microseconds between two grants on a key limited to ``rate``.

    Rounded up, so ``rate.limit * spacing_us(rate, m) >= rate.window_s * 1e6`` always.
    """
    check_margin(margin)
    return max(1, math.ceil(rate.window_s * US_PER_S * (1.0 + margin) / rate.limit))


def check_margin(margin: float) -> None:
    """Refuse a margin that would break the guarantee or the arithmetic."""
    if not (math.isfinite(margin) and margin >= 0):
        raise errors.InvalidValue(f"limiter margin must be a finite number >= 0, got {margin!r}")


def spacings(limits: Sequence[LimitSpec], margin: float) -> dict[str, int]:
    """Map each key of ``limits`` to its spacing; a key listed twice keeps the stricter one."""
    by_key: dict[str, int] = {}
    for spec in limits:
        spacing = spacing_us(spec.rate, margin)
        by_key[spec.key] = max(spacing, by_key.get(spec.key, 0))
    return by_key


def slack_us(rate: Rate, margin: float) -> int:
    """What the margin buys: ``limit * spacing - window``, in microseconds (>= 0).

    It is shared out by the catch-up credit (at most half of it, :func:`credit_us`), the
    time a grant may take to be sent, and the network (:mod:`sluice.ratelimit.sendgate`).
    """
    return max(0, rate.limit * spacing_us(rate, margin) - to_us(rate.window_s))


def credit_us(rate: Rate, margin: float, catch_up_us: int) -> int:
    """The catch-up one key may use: ``catch_up_us``, capped at half its slack."""
    if catch_up_us < 0:
        raise errors.InvalidValue(f"limiter catch-up must be >= 0, got {catch_up_us!r} us")
    return min(catch_up_us, slack_us(rate, margin) // 2)


def credits(limits: Sequence[LimitSpec], margin: float, catch_up_us: int) -> dict[str, int]:
    """Map each key to the catch-up it may use (:func:`credit_us`).

    Capped by the slack, it keeps ``limit + 1`` grants at least a window apart; capped at
    half of it, it leaves the other half for the grant-to-send delay and the network.
    """
    by_key: dict[str, int] = {}
    for spec in limits:
        credit = credit_us(spec.rate, margin, catch_up_us)
        by_key[spec.key] = min(credit, by_key.get(spec.key, credit))
    return by_key


def cold_hold_us(rate: Rate, margin: float) -> int:
    """How long a limiter that lost its state holds a key: see the module docstring."""
    return max(spacing_us(rate, margin), COLD_HOLD_US)


def cold_holds(limits: Sequence[LimitSpec], margin: float) -> dict[str, int]:
    """Map each key to its cold-start hold; a key listed twice keeps the longer one."""
    by_key: dict[str, int] = {}
    for spec in limits:
        hold = cold_hold_us(spec.rate, margin)
        by_key[spec.key] = max(hold, by_key.get(spec.key, hold))
    return by_key


def cold_floors(limits: Sequence[LimitSpec], margin: float, born_us: int) -> dict[str, int]:
    """Map each key to the TAT a limiter born at ``born_us`` starts it from."""
    return {key: born_us + hold for key, hold in cold_holds(limits, margin).items()}


def pause_scopes(key: str) -> list[str]:
    """Every key whose pause holds back ``key``: itself and each ``:``-prefix of it.

    ``pause_scopes("dsp:write:adv=1") == ["dsp", "dsp:write", "dsp:write:adv=1"]``, i.e.
    ``pause(p)`` applies to ``key`` iff ``key == p`` or ``key.startswith(p + ":")``.
    """
    parts = key.split(SCOPE_SEPARATOR)
    return [SCOPE_SEPARATOR.join(parts[: i + 1]) for i in range(len(parts))]


def pause_scopes_all(keys: Iterable[str]) -> list[str]:
    """The union of :func:`pause_scopes` over ``keys``, without duplicates, in order."""
    seen: dict[str, None] = {}
    for key in keys:
        for scope in pause_scopes(key):
            seen.setdefault(scope, None)
    return list(seen)


@dataclass(frozen=True)
class Verdict:
    """Whether a request may go at ``now_us`` and, if not, how long to wait and why.

    ``new_tats`` holds the TATs to commit when allowed (empty otherwise).
    """

    allowed: bool
    wait_us: int
    reason: str
    new_tats: Mapping[str, int]


def decide(
    now_us: int,
    tats: Mapping[str, int],
    spacing_by_key: Mapping[str, int],
    pause_untils: Iterable[int] = (),
    credit_by_key: Mapping[str, int] | None = None,
    floor_by_key: Mapping[str, int] | None = None,
) -> Verdict:
    """Decide one all-or-nothing request against pauses and the GCRA of every key.

    Args:
        now_us: the limiter clock, microseconds.
        tats: current TAT per key; a missing key has never been granted (or expired).
        spacing_by_key: the spacing each key needs, from :func:`spacings`.
        pause_untils: end of every pause that applies to the request.
        credit_by_key: the catch-up each key may use, from :func:`credits` (default none).
        floor_by_key: the lowest TAT of each key, from :func:`cold_floors` (a limiter that
            lost its state); default none.

    Returns:
        A refusal with reason ``"paused"`` (any pause still running) or ``"rate"``, whose
        wait is the longest among pauses and keys; or an allowance with the TATs to commit.
    """
    floor = floor_by_key or {}
    tat = {key: max(tats.get(key, 0), floor.get(key, 0)) for key in spacing_by_key}
    pause_wait = max((until - now_us for until in pause_untils), default=0)
    rate_wait = max((tat[key] - now_us for key in spacing_by_key), default=0)
    if pause_wait > 0 or rate_wait > 0:
        reason = "paused" if pause_wait > 0 else "rate"
        return Verdict(False, max(pause_wait, rate_wait), reason, {})
    credit = credit_by_key or {}
    new_tats = {
        key: max(tat[key], now_us - credit.get(key, 0)) + spacing
        for key, spacing in spacing_by_key.items()
    }
    return Verdict(True, 0, "", new_tats)


def given_back(tat_us: int, granted_at_us: int, spacing: int, credit: int) -> int | None:
    """The TAT after giving back a grant made at ``granted_at_us`` that sent nothing, or None.

    The grant set ``TAT = max(tat_before, granted_at - credit) + spacing <= granted_at +
    spacing`` (it was granted, so ``tat_before <= granted_at``). Any later grant, at some
    ``b >= TAT``, set ``TAT >= TAT + spacing > granted_at + spacing`` once ``spacing >
    credit``. So a TAT still at most ``granted_at + spacing`` means no grant followed (or
    every one that did was given back too), and ``TAT - spacing = max(tat_before,
    granted_at - credit)``: never below the TAT any grant that *was* sent left behind, so
    every bound above holds for the grants that were sent. Otherwise: None (keep it).
    """
    if spacing <= credit or tat_us > granted_at_us + spacing:
        return None
    return tat_us - spacing


def in_flight_wait(now_us: int, lease_expiries: Iterable[int], max_in_flight: int) -> int:
    """Microseconds until a lease slot is sure to be free; 0 when one is free now.

    Leases whose expiry is ``<= now_us`` are dead and do not count.
    """
    live = sorted(expiry for expiry in lease_expiries if expiry > now_us)
    if len(live) < max_in_flight:
        return 0
    # The slot frees when enough of the earliest-expiring leases have lapsed.
    return live[len(live) - max_in_flight] - now_us
