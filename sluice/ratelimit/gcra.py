"""GCRA with costs and a burst per key: the pure algorithm both limiters run (no I/O).

Each limit key keeps one number, its *theoretical arrival time* (TAT). A key has a limit
``L`` per window ``W``, a ``burst`` ``b`` (``0 <= b < L``: how many units beyond one may go
at once; 0, the default, means evenly paced) and a spacing

    s = ceil(W * (1 + margin) / (L - b))      # whole microseconds

A request of ``cost`` ``c`` (``1 <= c <= b + 1``: it uses ``c`` of the limit's units) is
allowed at ``now`` iff ``now >= tat - (b + 1 - c) * s``; the grant then moves the TAT to
``max(tat, now - credit) + c * s``. With ``b = 0`` and ``c = 1`` this is plain zero-burst
GCRA: allowed iff ``now >= tat``, next TAT ``max(tat, now - credit) + s``.

``credit`` (the *catch-up*, default 0) lets a caller that arrives a little late for its
slot keep the schedule instead of losing the lateness forever: a dispatcher that wakes
1 ms late for 20 ms slots would otherwise run at 95% of the rate. It is capped per key at
half the slack the margin buys, ``slack = (L - b) * s - W``; the other half is for the
time between grant and arrival at the provider (:mod:`sluice.ratelimit.sendgate`).

Why no window of ``W`` ever holds more than ``L`` units (``cost`` summed):
    Number the grants on a key in the order they were decided (one lock, one Lua script:
    decisions are serial), grant ``k`` at ``a_k`` with cost ``c_k``, ``T_k`` the TAT it
    saw and ``T_{k+1} = max(T_k, a_k - credit) + c_k * s`` the TAT it left.
    *Lower bound.* ``T_{k+1} >= T_k + c_k * s`` and ``T_{k+1} >= a_k - credit + c_k * s``,
    so for grants ``i < j``: ``T_{j+1} >= a_i - credit + U * s`` with ``U = c_i + ... + c_j``.
    *Upper bound.* Grant ``j`` was allowed, so ``T_j <= a_j + (b + 1 - c_j) * s``, and
    ``a_j - credit + c_j * s <= a_j + (b + 1) * s`` because ``c_j <= b + 1``; hence
    ``T_{j+1} <= a_j + (b + 1) * s``.
    Together: ``a_j - a_i >= (U - 1 - b) * s - credit``. If grants ``i..j`` held
    ``U >= L + 1`` units, ``a_j - a_i >= (L - b) * s - credit = W + slack - credit >= W``
    (``credit <= slack / 2``): they cannot share a window of length ``W``.

**Lowered rates.** A key's rate may be lowered while it runs (a pin, a learned rate, a
quota's pace: :func:`sluice.engine.rates.lowered`), so grants ``i..j`` may have been
decided under different spacings ``s_k``, each at least the configured one ``s_c``. A
request may then go at most ``(b + 1 - c) * s_c`` ahead of the TAT, not ``(b + 1 - c) *
s_k``: the room of the lowered spacing would let a TAT built at the configured pace be
overtaken by ``b`` units at once (a 10/s key with burst 4 lowered to 2/s let 14 units
into one second). With that room the bounds become ``T_{j+1} >= a_i - credit + sum(c_k *
s_k)`` and ``T_{j+1} <= a_j + (b + 1 - c_j) * s_c + c_j * s_j``, so ``a_j - a_i >= (U - 1
- b) * s_c - credit``: no configured window holds more than ``L`` units (the credit is
also the smaller of the two specs').

**Wide catch-up** (``wide`` keys of :func:`plan`). A key whose sliding window is kept at
the provider by window holds (:mod:`holds`), for a provider that judges windows and not
spacing (``judges = "window"``), does not need the bound above: the holds' proof uses
nothing about how grants were spaced. Such a key may use the credit of
:func:`wide_credit_us`: :data:`WIDE_CATCH_UP_US` (250 ms) while it runs at its configured
rate, never less than the ordinary one. Then ``a_j - a_i >= (U - 1 - b) * s - credit``
still holds (the two bounds above use nothing about the credit's size) but no longer keeps
two grants apart: after a stall a dispatcher may take up to ``credit / s`` slots it missed
at once (12 at 50/s), and the window at the provider is the holds'. What it buys: lateness
is made up instead of lost for good. A loaded host wakes a dispatcher 10-75 ms late after a
rate refusal, and a window that stayed full for ``W`` plus a stretched round trip holds a
key back; a credit under a spacing lost every millisecond of both (``bench.limit_gaps``).
A key whose rate was **lowered** (a pin, a learned rate, a quota's pace: the holds keep the
configured window, not the lower pace) keeps at most half a spacing (and at most
:data:`LOWERED_WIDE_CATCH_UP_US`): the lower pace is Sluice's own promise, which only the
GCRA bound keeps, and a burst of missed slots would break it. A grant that sent nothing
still gives its slot back exactly, whatever the credit (below).
The credit is for lateness, not idleness: a key further behind its TAT than the wide credit
(idle, or more than 250 ms late) starts again with the ordinary credit (``idle_credit`` of
:class:`KeyPlan`), so it does not open with a dozen requests at once. That burst kept
itself going: the window's places, taken together, freed together a window later, while
the schedule had fallen behind waiting for them, so a dozen went at once again, every
window, and their round trips on a loaded host stretched the window's hold (measured with
``bench.limit_gaps``: 0.965-0.977 of the limit at load 10). Both bounds above still hold:
the idle start leaves ``T_{k+1} = a_k - idle_credit + c_k * s >= max(T_k, a_k - credit) +
c_k * s`` since ``T_k < a_k - credit``.

Why a cost-``c`` grant must wait for ``b + 1 - c`` slots, not only its first one: with
``b = 0`` and a key paced at one unit per ``s``, ``L - 1`` units went out in the last
``(L - 1) * s < W``; a cost-5 grant allowed at ``tat`` would put ``L + 4`` units in one
window. Waiting until its *last* unit's slot (``tat + (c - 1) * s``) is what the upper
bound above needs, and that is what the burst room ``b >= c - 1`` pays for: the spacing is
``W / (L - b)`` instead of ``W / L``, so a key whose heaviest request costs 5 runs at
``L - 4`` units per window when every request is heavy or every one is light, and any
mix in between stays within ``L``. (Keeping the spacing at ``W / L`` and waiting ``c - 1``
extra slots instead would halve the rate of a stream of heavy requests.)

All times are integer microseconds (the Redis ``TIME`` resolution): integer arithmetic
is exact in Python and in Redis' Lua doubles (below 2**53), so both backends agree to
the microsecond and the bound above holds exactly, even with ``margin=0``.
``margin`` exists because the provider counts arrivals on *its* clock, and a grant is not
an arrival: the delay from grant to send and the network can bunch two requests we spaced
correctly. :mod:`sluice.ratelimit.sendgate` bounds the first part and proves what is left.

A request may need several limits (provider, operation, advertiser...). Acquisition is
all-or-nothing: it is allowed only if every limit allows it now; on refusal nothing is
consumed and the wait is the longest among them.

**Giving a slot back** (:func:`undone`). A grant whose request was never sent (its hold was
refused, or it expired at the send gate) undoes what it did to each key's TAT, ``before``
to ``after``, while the key's TAT is still ``after``: then it goes back to ``before``.
Every grant raises a TAT strictly (``T_{k+1} >= T_k + c_k * s`` and ``s >= 1``), so a TAT
still at ``after`` means no grant followed (or every one that did was given back too), and
the key is exactly as if the unsent grant had never been decided: every bound above holds
for the grants that were sent. Otherwise the slot stays spent (always safe). Comparing
values, not times, is what makes this exact for any credit and any burst (an earlier
version compared the TAT with the grant's time plus a spacing, which needed a credit below
the spacing and no burst).

**A limiter that lost its state** (a new process, a flushed or restarted Redis) does not
know when each key last granted. It records the instant it found itself empty, ``born``,
and treats every key as if its TAT were at least ``born + hold``, with
``hold = max((b + 1) * s, COLD_HOLD)`` (1 s: at least one window for windows up to 1 s).
Why the limit still holds across the loss:
    Had the state survived, the TAT would be ``T_true <= a_last + (b + 1) * s`` (the upper
    bound above) where ``a_last <= born`` is the last grant before the loss. Starting again
    from ``born + hold >= T_true`` only ever *raises* the TAT, and the lower bound above uses
    nothing but ``T_{k+1} >= max(T_k, a_k - credit) + c_k * s``, which still holds for every
    grant on either side of the loss; the upper bound is checked against the raised TAT. So
    any grants, before and after the loss together, still hold at most ``L`` units per
    window. One ``(b + 1) * s`` would do; the rest of the hold (up to 1 s) gives every
    process time to restore the pauses the database keeps before anything is sent (see
    ``docs/ratelimit.md``).
A ``wide`` key's window rests on its holds, which are lost with the state, and its credit
may exceed the slack, so across the loss it needs the GCRA bound *without* the credit: its
hold is ``max((b + 1) * s + credit, COLD_HOLD)`` (:func:`plan`). Grants ``i`` (before the
loss, ``U_i`` units from ``i`` on) and ``j`` (after it, ``U_j`` units up to ``j``): the lower
bound gives ``T_true >= a_i - credit + U_i * s``, so the new TAT ``born + hold >= T_true +
credit >= a_i + U_i * s``; from there ``a_j >= born + hold + (U_j - 1 - b) * s``, hence
``a_j - a_i >= (U_i + U_j - 1 - b) * s``, and ``L + 1`` units span at least ``W + slack``.
With the plain hold a 10/10s key took one grant 250 ms late, nine on time, lost its state,
and put 11 grants in 9.85 s.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from sluice import errors
from sluice.ratelimit.rate import LimitSpec, Rate

US_PER_S = 1_000_000

WIDE_CATCH_UP_US = 250_000
"""The catch-up of a ``wide`` key at its configured rate (see the module docstring), in
microseconds: more than a loaded host's late wake-ups and stretched round trips."""

LOWERED_WIDE_CATCH_UP_US = 50_000
"""The most catch-up a ``wide`` key whose rate was lowered may use: half a spacing, at most
this, in microseconds."""

COLD_HOLD_US = 1_000_000
"""A limiter that lost its state holds each key this long, or one spacing if longer."""

SCOPE_SEPARATOR = ":"


def to_us(seconds: float) -> int:
    """Seconds to whole microseconds, rounding to nearest."""
    return round(seconds * US_PER_S)


def spacing_us(rate: Rate, margin: float, burst: int = 0) -> int:
    """Microseconds one unit of a key limited to ``rate`` with ``burst`` takes up.

    Rounded up, so ``(rate.limit - burst) * spacing_us(rate, m, burst) >= window`` always.
    """
    check_margin(margin)
    paced = rate.limit - burst
    if not 0 <= burst < rate.limit:
        raise errors.InvalidValue(f"burst must be in 0..{rate.limit - 1}, got {burst!r}")
    return max(1, math.ceil(rate.window_s * US_PER_S * (1.0 + margin) / paced))


def check_margin(margin: float) -> None:
    """Refuse a margin that would break the guarantee or the arithmetic."""
    if not (math.isfinite(margin) and margin >= 0):
        raise errors.InvalidValue(f"limiter margin must be a finite number >= 0, got {margin!r}")


def slack_us(rate: Rate, margin: float, burst: int = 0) -> int:
    """What the margin buys: ``(limit - burst) * spacing - window``, in microseconds (>= 0).

    It is shared out by the catch-up credit (at most half of it, :func:`credit_us`), the
    time a grant may take to be sent, and the network (:mod:`sluice.ratelimit.sendgate`).
    """
    paced = rate.limit - burst
    return max(0, paced * spacing_us(rate, margin, burst) - to_us(rate.window_s))


def credit_us(rate: Rate, margin: float, catch_up_us: int, burst: int = 0) -> int:
    """The catch-up one key may use: ``catch_up_us``, capped at half its slack."""
    if catch_up_us < 0:
        raise errors.InvalidValue(f"limiter catch-up must be >= 0, got {catch_up_us!r} us")
    return min(catch_up_us, slack_us(rate, margin, burst) // 2)


def wide_credit_us(
    rate: Rate, margin: float, catch_up_us: int, burst: int = 0, *, lowered: bool = False
) -> int:
    """The catch-up of a key whose window is held (see the module docstring):
    :data:`WIDE_CATCH_UP_US`, or for a ``lowered`` rate half a spacing and at most
    :data:`LOWERED_WIDE_CATCH_UP_US`; never less than :func:`credit_us`."""
    ordinary = credit_us(rate, margin, catch_up_us, burst)
    if not lowered:
        return max(ordinary, WIDE_CATCH_UP_US)
    spacing = spacing_us(rate, margin, burst)
    return max(ordinary, min(LOWERED_WIDE_CATCH_UP_US, spacing // 2))


def cold_hold_us(rate: Rate, margin: float, burst: int = 0) -> int:
    """How long a limiter that lost its state holds a key: see the module docstring."""
    return max((burst + 1) * spacing_us(rate, margin, burst), COLD_HOLD_US)


@dataclass(frozen=True)
class KeyPlan:
    """What one key of a request needs from the algorithm (all microseconds).

    ``spacing`` is one unit's share of the window, ``step`` what this request adds to the
    TAT (``cost * spacing``), ``allow`` how far ahead of the TAT it may go
    (``(burst + 1 - cost) * spacing``), ``credit`` the catch-up, ``hold`` the cold start.
    ``idle_credit`` is the catch-up of a key further behind its TAT than ``credit`` (idle,
    not late): the ordinary one, so a wide key starts from idle without a burst (see
    "Wide catch-up" in the module docstring); ``credit`` itself when not given.
    """

    spacing: int
    step: int
    allow: int
    credit: int
    hold: int
    idle_credit: int | None = None

    def credit_at(self, tat_us: int, now_us: int) -> int:
        """The catch-up a grant at ``now_us`` uses on a key whose TAT is ``tat_us``."""
        if self.idle_credit is None or now_us - tat_us <= self.credit:
            return self.credit
        return self.idle_credit


def merged(limits: Sequence[LimitSpec], margin: float) -> dict[str, LimitSpec]:
    """One spec per key: a key listed twice keeps the smaller burst (at least the higher
    cost less one), the higher cost, and of the two rates the one that spaces grants
    further apart at that burst.

    Keeping the spec with the larger spacing is not enough once bursts differ (``5/s``
    paced and ``10/s`` with burst 9 let 10 go at once): with the smaller burst ``b`` and
    the spacing ``max(W_i / (L_i - b))``, any run of ``L_i + 1`` units spans at least
    ``W_i`` for both (the bound in the module docstring, for each).

    Raises:
        errors.InvalidValue: the higher cost does not fit the kept count.
    """
    by_key: dict[str, LimitSpec] = {}
    for spec in limits:
        seen = by_key.get(spec.key)
        if seen is None:
            by_key[spec.key] = spec
            continue
        cost = max(seen.cost, spec.cost)
        burst = max(min(seen.burst, spec.burst), cost - 1)
        strict = max(
            (seen, spec),
            key=lambda s: (spacing_us(s.rate, margin, burst), s.rate.limit),
        )
        if burst >= strict.rate.limit:
            raise errors.InvalidValue(
                f"a cost of {cost} on {spec.key!r} does not fit its limit {strict.rate}"
            )
        by_key[spec.key] = LimitSpec(spec.key, strict.rate, cost, burst, held=strict.held)
    return by_key


def plan(
    limits: Sequence[LimitSpec],
    margin: float,
    catch_up_us: int,
    wide: Collection[str] = (),
) -> dict[str, KeyPlan]:
    """Map each key of ``limits`` to its :class:`KeyPlan` (see :func:`merged`).

    Keys in ``wide`` (held, judged by windows only) get :func:`wide_credit_us`.
    """
    plans: dict[str, KeyPlan] = {}
    listed: dict[str, list[LimitSpec]] = {}
    for given in limits:
        listed.setdefault(given.key, []).append(given)
    for key, spec in merged(limits, margin).items():
        spacing = spacing_us(spec.rate, margin, spec.burst)
        # A lowered rate (a pin, a learned rate, a quota's pace) spaces grants further
        # apart, but the room ahead of the TAT stays the configured spacing's: see
        # "Lowered rates" in the module docstring.
        # Every rate listed for the key, once (one spec not lowered: only its own rate).
        rates = {rate for given in listed[key] for rate in (given.rate, given.held_rate)}
        # More than one rate (lowered, or listed twice): a pace the GCRA bound alone
        # keeps, so only the narrow wide credit (see "Wide catch-up").
        lowered = len(rates) > 1
        room = min(spacing_us(rate, margin, spec.burst) for rate in rates)
        # The smallest catch-up of every rate listed for the key: each one's bound needs
        # the credit within half its own slack (a wide key's: see above).
        credit = min(
            wide_credit_us(rate, margin, catch_up_us, spec.burst, lowered=lowered)
            if key in wide
            else credit_us(rate, margin, catch_up_us, spec.burst)
            for rate in rates
        )
        plans[key] = KeyPlan(
            spacing=spacing,
            step=spec.cost * spacing,
            allow=(spec.burst + 1 - spec.cost) * room,
            credit=credit,
            # A wide key's holds are lost with the state: its hold covers its credit too
            # (see "A limiter that lost its state").
            hold=max(
                cold_hold_us(spec.rate, margin, spec.burst),
                (spec.burst + 1) * spacing + credit if key in wide else 0,
            ),
            idle_credit=(
                min(credit_us(rate, margin, catch_up_us, spec.burst) for rate in rates)
                if key in wide
                else None
            ),
        )
    return plans


def spacings(limits: Sequence[LimitSpec], margin: float) -> dict[str, int]:
    """Map each key of ``limits`` to its spacing; a key listed twice keeps the stricter one."""
    return {key: p.spacing for key, p in plan(limits, margin, 0).items()}


def cold_floors(plans: Mapping[str, KeyPlan], born_us: int) -> dict[str, int]:
    """Map each key to the TAT a limiter born at ``born_us`` starts it from."""
    return {key: born_us + p.hold for key, p in plans.items()}


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
    old_tats: Mapping[str, int] = field(default_factory=dict)

    def undo(self) -> tuple[tuple[str, int, int], ...]:
        """``(key, before, after)`` per key of an allowance: :attr:`Grant.undo`."""
        return tuple((key, self.old_tats[key], after) for key, after in self.new_tats.items())


def decide(
    now_us: int,
    tats: Mapping[str, int],
    plans: Mapping[str, KeyPlan],
    pause_untils: Iterable[int] = (),
    floor_by_key: Mapping[str, int] | None = None,
) -> Verdict:
    """Decide one all-or-nothing request against pauses and the GCRA of every key.

    Args:
        now_us: the limiter clock, microseconds.
        tats: current TAT per key; a missing key has never been granted (or expired).
        plans: what each key needs, from :func:`plan`.
        pause_untils: end of every pause that applies to the request.
        floor_by_key: the lowest TAT of each key, from :func:`cold_floors` (a limiter that
            lost its state); default none.

    Returns:
        A refusal with reason ``"paused"`` (any pause still running) or ``"rate"``, whose
        wait is the longest among pauses and keys; or an allowance with the TATs to commit.
    """
    floor = floor_by_key or {}
    tat = {key: max(tats.get(key, 0), floor.get(key, 0)) for key in plans}
    pause_wait = max((until - now_us for until in pause_untils), default=0)
    rate_wait = max((tat[key] - p.allow - now_us for key, p in plans.items()), default=0)
    if pause_wait > 0 or rate_wait > 0:
        reason = "paused" if pause_wait > 0 else "rate"
        return Verdict(False, max(pause_wait, rate_wait), reason, {})
    new_tats = {
        key: max(tat[key], now_us - p.credit_at(tat[key], now_us)) + p.step
        for key, p in plans.items()
    }
    return Verdict(True, 0, "", new_tats, tat)


def undone(current: int | None, before: int, after: int) -> int | None:
    """The TAT after giving back a grant that moved a key's TAT from ``before`` to
    ``after`` and sent nothing, given the key's TAT now (``None``: forgotten); or None
    to leave the key as it is (see "Giving a slot back" in the module docstring)."""
    return before if current == after else None


def pushed_back(current: int | None, now_us: int, offset_us: int) -> int | None:
    """The TAT of a key whose grant's request was written late, given its TAT now
    (``None``: forgotten): at least ``now_us + offset_us``; or None to leave the key as it
    is (already later). See "A write that ended late" in :mod:`sluice.ratelimit.sendgate`."""
    target = now_us + offset_us
    return target if current is None or current < target else None


def paced_steps(plans: Mapping[str, KeyPlan], wide: Collection[str]) -> tuple[tuple[str, int], ...]:
    """``(key, step)`` of each key paced by its spacing (not ``wide``): :attr:`Grant.steps`."""
    return tuple((key, p.step) for key, p in plans.items() if key not in wide)


def in_flight_wait(now_us: int, lease_expiries: Iterable[int], max_in_flight: int) -> int:
    """Microseconds until a lease slot is sure to be free; 0 when one is free now.

    Leases whose expiry is ``<= now_us`` are dead and do not count.
    """
    live = sorted(expiry for expiry in lease_expiries if expiry > now_us)
    if len(live) < max_in_flight:
        return 0
    # The slot frees when enough of the earliest-expiring leases have lapsed.
    return live[len(live) - max_in_flight] - now_us
