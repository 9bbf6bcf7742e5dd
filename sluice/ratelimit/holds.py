"""Window holds: the sliding-window limit kept at the provider, whenever it stamps arrivals.

The GCRA (:mod:`gcra`) spaces *grants*, and the send gate (:mod:`sendgate`) bounds the delay
from grant to send. Neither can bound what happens after the request leaves: a provider
(or a network path) that stalls, then stamps the requests that queued meanwhile all at
once, sees them bunched however well they were spaced. Measured on a loaded two-core host,
the time from the send check to the sandbox's stamp varied by 28 to 348 ms
(``bench/results/limit_fidelity.json``), far more than any small margin covers.

What Sluice does know, on its own clock, is that a request arrives at the provider after
it was sent and before its answer comes back. So a request on a key limited to ``L`` per
``W`` (for windows up to :data:`HOLD_MAX_WINDOW_S`) takes a **hold**, one of ``L`` places
on that key, just after its grant and before it is sent, and keeps it until ``W`` after
its answer came back (or until the hold lapses, ``ttl`` after it was taken, for a sender
that died). A hold is only given when fewer than ``L`` are held.

Guarantee: for any delays, however uneven, no window ``(t - W, t]`` of the provider's clock
holds more than ``L`` arrivals on the key, provided (1) the provider stamps a request
between its sending and its answer (it must count it before it answers), (2) the clocks
involved tick at the same rate, and (3) a request is answered, or has arrived, before its
hold's ``ttl`` runs out (``ttl = 2 * timeout + W``, so a sender that died frees its place).

Proof. Suppose ``L + 1`` arrivals ``a_0 .. a_L`` fall in one window, so ``a_j - a_i < W`` for
every pair. Let ``m`` be the one whose hold was taken last, at ``H_m``. It was sent after
that, so ``H_m <= a_m``. Every other request ``i`` took its hold at ``H_i <= H_m`` and keeps
it until ``E_i + W``, where ``E_i`` (its answer reaching this host: the kernel's receive stamp
of one of its packets where the transport reads one, else the moment it was read,
:meth:`~sluice.ratelimit.sendgate.SendPermit.answered`; every byte of the answer was sent
after the provider stamped the request) comes after its stamp: ``E_i >= a_i``. Then
``E_i + W >= a_i + W > a_m >= H_m``: at ``H_m`` every one of the ``L`` others still held its
place, so ``m`` got none. A contradiction. The proof uses nothing about how requests were
spaced, which threads sent them or in what order they arrived, so it holds across workers
and hosts (the holds live in the shared limiter), through crashes (a dead sender's hold
lapses only after its ``ttl``) and whatever the provider's own scheduling does.

Cost: a place is held for ``W`` plus the request's round trip, so a key can carry at most
``L / (W + rtt)`` requests a second: 99.7% of the limit at a 3 ms round trip over loopback,
95% when a loaded host stretches it to 50 ms. That is the adaptation: the spacing (the GCRA
margin) stays small, and a slow or stalled provider slows Sluice down by exactly as much
as it stretched its own round trips. Long windows (a minute and more) are left to the GCRA
margin, which already leaves more room than any round trip (1% of a minute is 600 ms).

**Costs.** A provider that charges a request ``c`` units of ``L`` (``cost``) counts units,
not requests: such a request takes ``c`` places, one at a time (each only while fewer
than ``L`` are held; a refused one gives back those already taken). The proof is the same
with units for arrivals: when the last place of ``m`` was taken, the others' units that
could share its window were all still held, so at most ``L`` units arrive in any window.
Taking the places one by one costs ``c - 1`` more limiter round trips per heavy request;
a place taken by a request that then gives up only delays others, it never lets a unit
too many through.

A hold that is taken but whose request is never sent (its grant expired at the send gate,
or its connection could not be made: :attr:`~sluice.ratelimit.sendgate.SendPermit.
nothing_sent`) is given back at once, and so is the grant's spacing slot when no grant followed it
(:meth:`~sluice.ratelimit.base.Limiter.give_back`): a busy host then loses no slot.
The same goes for a grant whose hold was refused. The holds of a key live in the limiter
as an in-flight set (:class:`~sluice.ratelimit.base.InFlight`) under :func:`hold_key`; a
:meth:`~sluice.ratelimit.base.Limiter.hold` moves a hold's expiry to ``W`` after the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from sluice.ratelimit import sendgate
from sluice.ratelimit.base import InFlight, Limiter
from sluice.ratelimit.rate import Grant, Hold, LimitSpec

HOLD_MAX_WINDOW_S = 60.0
"""Keys with windows up to this long take holds; longer ones rely on the GCRA margin."""

HOLD_SUFFIX = "#window"

SPACING_SHARE = 0.25
"""A grant on held keys may be sent this share of a spacing after it was asked for..."""

MAX_SPACING_SHARE = 0.35
"""... and up to this share while the host's recent grant-to-send delays need it."""


def hold_key(key: str) -> str:
    """The in-flight key a limit key's holds live under."""
    return key + HOLD_SUFFIX


@dataclass(frozen=True)
class HoldCap:
    """A key's holds: at most ``limit`` held, each until ``window_s`` after its answer; a
    request takes ``places`` of them (its cost on the key: the provider counts units)."""

    in_flight: InFlight
    window_s: float
    places: int = 1


def hold_caps(limits: Sequence[LimitSpec], timeout_s: float) -> list[HoldCap]:
    """The holds a request on ``limits`` needs: one per key with a window up to a minute,
    each of as many places as the request costs on that key.

    A key listed twice keeps the stricter cap (the smaller limit, the longer window) and
    the larger cost. The cap is the key's configured limit (:attr:`LimitSpec.held_rate`),
    also when a ceiling lowered its pace. ``timeout_s`` is the provider's request timeout:
    a hold lapses ``2 * timeout_s + W`` after it was taken, so a sender that died frees its
    place.
    """
    by_key: dict[str, tuple[int, float, int]] = {}
    for spec in limits:
        held = spec.held_rate
        window = held.window_s
        if window > HOLD_MAX_WINDOW_S:
            continue
        limit, cost = held.limit, spec.cost
        if spec.key in by_key:
            old_limit, old_window, old_cost = by_key[spec.key]
            limit, window = min(limit, old_limit), max(window, old_window)
            cost = max(cost, old_cost)
        by_key[spec.key] = (limit, window, cost)
    return [
        HoldCap(
            InFlight(hold_key(key), limit, 2 * max(timeout_s, 0.0) + window + 1.0),
            window,
            min(cost, limit),
        )
        for key, (limit, window, cost) in by_key.items()
    ]


def wide_keys(limits: Sequence[LimitSpec]) -> frozenset[str]:
    """The keys of ``limits`` that take holds on every limit they are listed with (each
    window up to :data:`HOLD_MAX_WINDOW_S`): they may use the wide catch-up
    (:func:`gcra.wide_credit_us`) for a provider that judges windows only.

    A key also listed with a longer window keeps the ordinary credit: that window rests on
    the GCRA bound, which the ordinary credit keeps. The window that counts is the one the
    holds keep (:attr:`LimitSpec.held_rate`): a ceiling's longer window is only a pace.
    """
    keys = {spec.key for spec in limits}
    long = {spec.key for spec in limits if spec.held_rate.window_s > HOLD_MAX_WINDOW_S}
    return frozenset(keys - long)


def acquire(
    limiter: Limiter,
    limits: Sequence[LimitSpec],
    *,
    in_flight: InFlight | None,
    timeout_s: float,
    judges_spacing: bool = True,
) -> Grant:
    """A grant on ``limits`` (and ``in_flight``) together with a hold on every short window.

    ``judges_spacing`` is the provider's (:attr:`~sluice.providers.base.Provider.
    judges_spacing`): when False, a grant whose every key is held may be sent late
    (:func:`send_within_s`) instead of being thrown away, and held keys catch up on late
    wake-ups with the wide credit (:func:`wide_keys`): their window rests on the holds.

    The grant is asked for first; then each hold. If a hold is refused, everything taken
    is given back (the spacing slot too, unless someone was granted since) and the answer
    is a refusal with reason ``"in_flight"`` (the places are held by requests still running
    or answered less than a window ago), whose wait is when the place frees at the latest.
    ``judges_spacing`` is the provider's (:func:`send_within_s`).
    """
    wide = frozenset() if judges_spacing else wide_keys(limits)
    grant = limiter.acquire(limits, in_flight=in_flight, wide=wide)
    if not grant.granted:
        return grant
    taken: list[Hold] = []
    for cap in hold_caps(limits, timeout_s):
        for _ in range(cap.places):
            held = limiter.acquire([], in_flight=cap.in_flight)
            if not held.granted or held.lease_id is None:
                for hold in taken:
                    limiter.release(hold.lease_id, hold.key)
                if grant.lease_id is not None and in_flight is not None:
                    limiter.release(grant.lease_id, in_flight.key)
                limiter.give_back(grant.undo)
                return Grant(False, held.retry_after_s, held.reason or "in_flight")
            taken.append(Hold(cap.in_flight.key, held.lease_id, cap.window_s))
    if not taken:
        return grant
    return replace(
        grant,
        holds=tuple(taken),
        send_within_s=send_within_s(
            limits, grant, judges_spacing=judges_spacing, timeout_s=timeout_s
        ),
    )


def send_within_s(
    limits: Sequence[LimitSpec],
    grant: Grant,
    recent_delay_s: float | None = None,
    *,
    judges_spacing: bool = True,
    timeout_s: float | None = None,
) -> float:
    """The send window of a grant whose every key is held: a quarter to 0.35 of a spacing,
    or a whole spacing for a provider that only counts windows (``judges_spacing=False``).

    With holds, the sliding window no longer rests on the send window (the proof above uses
    none), so the window only has to keep the *spacing* good enough for a provider that
    judges spacing (a leaky bucket tolerating one request early): grants ``s`` apart with a
    catch-up ``c``, sent within ``D`` and stamped with a jitter ``N`` keep any three arrivals
    ``2s - c - D - N`` apart, at least one interval while ``N <= s - c - D`` (12 ms at
    50/s with ``D = s/4`` and ``c = 2 ms``, 10 ms with ``D = 0.35 s``). It follows the
    host: a quarter spacing while this process's recent grant-to-send delays (their 90th
    percentile, ``recent_delay_s``, :data:`sendgate.DELAYS`) fit in it, up to 0.35 of a
    spacing when they do not (a busy host would otherwise throw most grants away). A key
    not held keeps the limiter's window.

    A provider that counts requests in windows (sliding or fixed) and judges no spacing
    (``judges = "window"``) needs none of that: its limit rests on the holds alone (whose
    proof uses no send window), so a grant may be sent up to the shortest held window after
    it was asked for, and never later than the provider's ``timeout_s`` (so the request has
    arrived within ``2 * timeout_s`` of its hold, well before the hold lapses). Measured on a
    loaded two-core host, the asking alone (two limiter round trips and a thread's wake-up)
    took more than a quarter spacing for 9-40% of grants (``bench.adaptive``, load 9-30),
    and thrown-away grants cost a 50/s key shared by 4 workers a quarter to half of its rate
    (``bench.fairness``, load 13-30); each was a slot nobody used. A starved host whose
    short send windows threw nearly every grant away was refused nothing, so a learned rate
    climbed to the configured one.
    """
    if any(spec.held_rate.window_s > HOLD_MAX_WINDOW_S for spec in limits):
        return grant.send_within_s
    spacing = min(spec.rate.window_s / spec.rate.limit for spec in limits)
    if not judges_spacing:
        shortest = min(spec.held_rate.window_s for spec in limits)
        window = max(grant.send_within_s, spacing, shortest)
        if timeout_s is not None and timeout_s > 0:
            # Never past the timeout, also when a lowered rate spaces grants further apart:
            # the hold lapses 2 * timeout + W after it was taken.
            window = min(window, timeout_s)
        return window
    if recent_delay_s is None:
        recent_delay_s = sendgate.DELAYS.quantile(0.9)
    window = min(MAX_SPACING_SHARE * spacing, max(SPACING_SHARE * spacing, 1.25 * recent_delay_s))
    return max(grant.send_within_s, window)


def finish(limiter: Limiter, grant: Grant, *, sent: bool, since_answer_s: float = 0.0) -> None:
    """After the request: keep each hold ``W`` after the answer if sent, else give it back.

    "Sent" means "may have reached the provider": anything but a grant that expired at the
    send gate or a request whose connection failed before any byte of it was written
    (:attr:`~sluice.ratelimit.sendgate.SendPermit.nothing_sent`). Call it once the request
    is over. ``since_answer_s`` is how long ago, on the caller's monotonic clock, the
    answer's first bytes were read (0 if unknown or none came): the hold is kept
    ``W - since_answer_s`` from now, still at least ``W`` after the answer reached this
    host, since the read returned after the bytes had come.
    """
    for hold in grant.holds:
        if sent:
            limiter.hold(hold.lease_id, hold.key, max(0.0, hold.window_s - since_answer_s))
        else:
            limiter.release(hold.lease_id, hold.key)
    if not sent and grant.undo:
        # Nothing went: the slot goes back too, unless someone was granted after it. A
        # thread descheduled past its send window then costs the schedule nothing.
        limiter.give_back(grant.undo)
