"""Grants expire: a request that cannot leave soon after its grant is not sent at all.

The GCRA (:mod:`gcra`) spaces *grants*; the provider counts *arrivals*. Between the two lie
the grant-to-send delay (the limiter's answer travelling back, a thread waking on a busy
host, the request being built) and the network. A spacing ``s`` with a delay that varies
by ``J`` puts ``(W + J) / s`` requests in a window ``W``: on a loaded two-core host ``J``
reaches tens of milliseconds, more than a 1.5% margin covers. So a grant carries
``send_within_s``, and the thread that sends checks it immediately before the request's
first byte is handed to the socket (:mod:`sluice.providers.transport`; the HTTP client's
request hook checks it once earlier too): if more than that has passed since it *asked*
for the grant, on its own monotonic clock, it sends nothing and asks again
(:class:`~sluice.errors.GrantExpired`). A late request is thrown away, never squeezed in.

For one key, let ``L`` be its limit, ``W`` its window, ``b`` its burst, ``s`` its spacing,
``c`` its catch-up credit and ``slack = (L - b) * s - W`` what the margin buys
(``c <= slack / 2``). The
send window is ``D = (slack - c) * SEND_SHARE``; a request needing several keys gets the
smallest of their windows.

Guarantee: if the time from the send check to the provider's counter varies by at most
``N = slack - c - D`` (``N >= D`` with the default share), no window ``(t - W, t]`` of the
provider's clock ever holds more than ``L`` arrivals on the key, however late threads wake.

Proof. Take grant ``k``. Let ``Q_k`` be the instant its sender asked, ``R_k`` the instant
the limiter decided (inside the Redis script or the in-memory lock), ``S_k`` the instant
the send check passed and ``A_k`` the arrival at the provider. The question leaves before
the decision is made, so ``Q_k <= R_k``; the check passed, so ``S_k - Q_k <= D``; hence
``R_k <= S_k <= R_k + D``. The network gives ``A_k = S_k + delta + nu_k`` with a constant
``delta`` and ``0 <= nu_k <= N``. Suppose more than ``L`` units (costs summed) arrived in
one window, so their requests span less than ``W``. Among their grants let ``i`` be
decided first and ``j`` last: grants ``i..j`` hold at least those units, and the GCRA puts
any run of grants holding ``L + 1`` units or more at least ``(L - b) * s - c`` apart
(:mod:`gcra`), so ``R_j - R_i >= (L - b)*s - c``. Then
``A_j - A_i >= (R_j + delta) - (R_i + D + delta + N) >= (L - b)*s - c - D - N = W``, a
contradiction. A limiter that lost its state keeps the GCRA bound (see :mod:`gcra`), so
the same proof covers grants on both sides of a Redis restart.

What it assumes: clocks tick at the same rate to within NTP's slew (<= 0.05%, 0.5 ms a
second), and the time between the check and the bytes reaching the socket (a few
bytecodes, unless the thread loses the CPU right there) counts as network;
:attr:`SendPermit.written_s` measures it from the other side. What it does not cover: a network
or provider that delays some requests by more than ``N`` relative to others; a larger
``SLUICE_RATE_MARGIN`` buys room for that, and for windows up to a minute window holds
(:mod:`holds`) keep the sliding window whatever that delay is; a held grant's send window
is then sized for spacing (:func:`holds.send_within_s`) rather than by the formula above.
With margin 1.5% and catch-up 2 ms a 1 s window gives ``slack = 15 ms``, ``D = 6.5 ms``
and ``N = 6.5 ms``; at Sluice's default 0.5%, ``D = N = 1.5 ms`` for keys not held.

**A write that ended late.** The check and the write are a few bytecodes apart, but a
thread can lose the CPU right there (on a loaded host for tens of milliseconds, holding
the interpreter lock, so nothing else in the process moves either) and then write its
request long after its window: ``A_k - S_k`` exceeds ``N``, which the proof above does not
cover. The thread knows once the write returns (:attr:`SendPermit.written_late`), and it
then moves each of the grant's paced keys (:attr:`~sluice.ratelimit.rate.Grant.steps`,
every key but a ``wide`` one, whose window the holds keep) to at least
``now + step - D`` on the limiter's clock (:meth:`Limiter.push_back`), ``now`` being read
after the write ended. From then on grant ``k`` counts as decided at
``R'_k = now - D``: it was sent within ``D`` of that (its write ended before ``now``), so
``A_k <= R'_k + D + delta + N``, and the key's TAT is at least
``R'_k + c_k * s >= R'_k - credit + c_k * s``, as if the limiter had decided it then; its
lower bound ``A_k >= R_k + delta`` is still the one of its real decision. Both bounds of
the proof then hold for every pair of grants one of which is ``k``, provided no grant on
its keys was decided between ``R_k`` and the push back. The dispatcher sees to that for
the grants it asks for (``sluice.drivers.executor``): after a grant on paced keys it asks
for the next one only once the request is written (and pushed back if late) or can no
longer be sent. It waits to the end of the send window, then gives up a request not yet
admitted (:meth:`SendPermit.give_up`, atomic with :meth:`SendPermit.admit`: it is never
sent) or waits for the write under way. Not covered: a write still under way after
``WRITE_WAIT_MAX_S`` (1 s: a socket that does not drain must not stop dispatching; nor is a
send window longer than that waited out), a token request (a send thread asks for its grant
when a token runs out, beside the dispatcher's; it pushes back when late all the same), and
grants decided by another process on the same key (Celery workers do not wait for each
other): against a leaky bucket those can still be refused. A write slow for another reason
(a body larger than the socket's send buffer on a slow link) counts as late too: the
provider counts the request once it has all of it, so pushing back is right, but such
requests then go at most one per write time plus ``s - D``. Without the push back, one
stalled write was enough: the key's schedule still had the stalled grant at ``R_k``, the
next grant (asked late) went at once with the catch-up credit, and the one after it came
``s - credit`` after that, one request early on top of the burst the late write had used.

Cost: a grant that expires is a slot nobody uses. ``bench.limit_fidelity`` measures how
often that happens on a loaded host.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

from sluice import errors
from sluice.ratelimit import gcra
from sluice.ratelimit.base import Limiter
from sluice.ratelimit.rate import Grant, LimitSpec

log = logging.getLogger("sluice.sendgate")

SEND_SHARE = 0.5
"""Share of the slack left after the catch-up credit that a grant may spend before sending."""

UNBOUNDED = math.inf


def send_within_us(spec: LimitSpec, margin: float, catch_up_us: int) -> int:
    """How long a grant on ``spec`` stays good to send, in microseconds (``D`` above)."""
    slack = gcra.slack_us(spec.rate, margin, spec.burst)
    credit = gcra.credit_us(spec.rate, margin, catch_up_us, spec.burst)
    return int((slack - credit) * SEND_SHARE)


def send_within_s(limits: Sequence[LimitSpec], margin: float, catch_up_us: int) -> float:
    """The send window of a grant on all of ``limits``: the smallest; unbounded for none."""
    if not limits:
        return UNBOUNDED
    specs = gcra.merged(limits, margin).values()
    return min(send_within_us(spec, margin, catch_up_us) for spec in specs) / gcra.US_PER_S


class DelayTracker:
    """The grant-to-send delays this process measured lately (thread-safe appends).

    :mod:`holds` sizes the send window of held grants from them: a busy host gets a wider
    window (up to half a spacing) instead of throwing most of its grants away.
    """

    def __init__(self, size: int = 256) -> None:
        self._delays: deque[float] = deque(maxlen=size)

    def note(self, delay_s: float) -> None:
        self._delays.append(delay_s)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the recent delays; 0 before any was measured."""
        delays = sorted(self._delays)
        if not delays:
            return 0.0
        return delays[min(len(delays) - 1, int(q * len(delays)))]


DELAYS = DelayTracker()
"""This process's recent grant-to-send delays (every send check notes one)."""


class SendPermit:
    """The right to write one request, good until ``within_s`` after the grant was asked for.

    Args:
        asked_at: the sender's monotonic reading taken just *before* it asked the limiter.
        within_s: the grant's ``send_within_s``.
        monotonic: the clock ``asked_at`` was read on.
        on_written: called with the permit once the request was handed to the socket.
    """

    def __init__(
        self,
        asked_at: float,
        within_s: float,
        monotonic: Callable[[], float] = time.monotonic,
        on_written: Callable[[SendPermit], object] | None = None,
    ) -> None:
        self.asked_at = asked_at
        self.on_written = on_written
        self.within_s = within_s
        self._monotonic = monotonic
        self.delay_s: float | None = None
        """Grant-to-send delay measured by the last check (also when it was too late)."""
        self.written_s: float | None = None
        """Grant to the end of the write of the request's first bytes (an upper bound)."""
        self.used = False
        self.answered_at: float | None = None
        """Monotonic reading when the answer had come back, for :mod:`holds`: the kernel's
        receive stamp of one of its packets where the transport has one, else the moment
        its first bytes were read (they came back no later) (:meth:`answered`)."""
        self.connect_failed = False
        """A connection for the request could not be made (refused, timed out, TLS): noted
        by the transport (:mod:`sluice.providers.transport`), see :attr:`nothing_sent`."""
        self._given_up = False
        self._admitting = threading.Lock()

    def check(self) -> None:
        """Refuse the request if its grant is already too old; consumes nothing.

        Raises:
            errors.GrantExpired: more than ``within_s`` has passed since the grant was asked
                for; nothing was sent, so asking again is safe.
        """
        self.delay_s = self._monotonic() - self.asked_at
        DELAYS.note(self.delay_s)
        # In whole microseconds, as the limiter counts: float seconds would blur the bound.
        if self.within_s < UNBOUNDED and gcra.to_us(self.delay_s) > gcra.to_us(self.within_s):
            raise errors.GrantExpired(
                f"grant not used within {self.within_s * 1000:.1f} ms "
                f"(took {self.delay_s * 1000:.1f} ms); nothing was sent"
            )

    def admit(self) -> None:
        """Let the request go now, or refuse it; call immediately before its first byte.

        Raises:
            errors.GrantExpired: see :meth:`check`.
            errors.GrantSpent: the permit already let one request through.
        """
        with self._admitting:
            if self.used:
                raise errors.GrantSpent("one grant lets one request through; this one was used")
            if self._given_up:
                raise errors.GrantExpired(
                    f"grant not used within {self.within_s * 1000:.1f} ms and given up; "
                    "nothing was sent"
                )
            self.check()
            self.used = True

    def give_up(self) -> bool:
        """Make sure the request goes now or never: True if it was not admitted yet (it
        never will be: :meth:`admit` refuses it), False if it was (its write is under way
        or done). Atomic with :meth:`admit`: no request slips in between."""
        with self._admitting:
            if self.used:
                return False
            self._given_up = True
            return True

    @property
    def written_late(self) -> bool:
        """Whether the write of the request ended later than its send window after the
        grant was asked for: the thread lost the CPU between its send check and the socket
        (see "A write that ended late" above)."""
        return (
            self.written_s is not None
            and self.within_s < UNBOUNDED
            and gcra.to_us(self.written_s) > gcra.to_us(self.within_s)
        )

    def written(self) -> None:
        """Note that the request's first bytes were handed to the socket just now."""
        self.written_s = self._monotonic() - self.asked_at
        if self.on_written is not None:
            self.on_written(self)

    def answered(self, age_s: float = 0.0) -> None:
        """Note that the answer's first bytes were read just now (the first call counts).

        ``age_s`` is how long before this read the answer had reached this host, when the
        transport knows it (the kernel's receive stamp of one of the packets read,
        :mod:`sluice.providers.transport`; 0 when it does not): the answer is then noted at
        that arrival, not when a thread got round to reading it. An arrival before the
        request was admitted cannot be its answer (stale bytes, or a stamp the transport got
        wrong): the read's instant is noted instead. Either way the instant noted lies
        between the admission and now.
        """
        if self.used and self.answered_at is None:
            now = self._monotonic()
            arrived = now - age_s
            admitted = self.asked_at + (self.delay_s or 0.0)
            self.answered_at = arrived if age_s > 0.0 and admitted <= arrived else now

    def not_connected(self) -> None:
        """Note that a connection for the request failed before it was written."""
        self.connect_failed = True

    @property
    def nothing_sent(self) -> bool:
        """Whether the request surely sent nothing: its connection failed (refused, timed
        out, TLS handshake) and no byte of it was handed to a socket (never admitted).

        A request admitted and then failing (a write or read error, a read timeout, a
        dropped keep-alive connection) may have reached the provider: it is sent. So is a
        request under a transport that notes no connect failures (a mock): never known
        unsent.
        """
        return self.connect_failed and not self.used

    def since_answer_s(self) -> float:
        """Seconds since :meth:`answered` (0 when no answer was read)."""
        if self.answered_at is None:
            return 0.0
        return max(0.0, self._monotonic() - self.answered_at)


def push_back_if_late(limiter: Limiter, grant: Grant, permit: SendPermit, provider: str) -> bool:
    """If ``permit``'s request was written after its send window, move each of ``grant``'s
    paced keys to the limiter's now plus its step less the window (see "A write that ended
    late" above); whether it was late. Logs it; never raises: a limiter that cannot be
    reached loses the push back, as it loses the state the push back would have changed.
    """
    if not (permit.written_late and grant.steps):
        return False
    written_ms = None if permit.written_s is None else round(permit.written_s * 1000, 3)
    log.info("grant.written_late", extra={"provider": provider, "written_ms": written_ms})
    within_us = gcra.to_us(permit.within_s)
    try:
        limiter.push_back([(key, step - within_us) for key, step in grant.steps])
    except errors.LimiterError as exc:
        log.warning("limiter.push_back_failed", extra={"provider": provider, "error": str(exc)})
    return True


_current: ContextVar[SendPermit | None] = ContextVar("sluice_send_permit", default=None)


@contextmanager
def bound(permit: SendPermit | None) -> Iterator[SendPermit | None]:
    """Requests made in this block (on this thread) are admitted by ``permit``.

    ``None`` means "no grant needed here" (a request the configuration does not limit).
    """
    token = _current.set(permit)
    try:
        yield permit
    finally:
        _current.reset(token)


def current() -> SendPermit | None:
    """The permit bound to this context, if any."""
    return _current.get()


def check_current() -> None:
    """Refuse a request whose permit is already too old (see :meth:`SendPermit.check`)."""
    permit = _current.get()
    if permit is not None:
        permit.check()


def note_not_connected() -> None:
    """Note on the permit bound here, if any, that its request's connection failed."""
    permit = _current.get()
    if permit is not None:
        permit.not_connected()


def admit_current() -> None:
    """Admit a request under the permit bound to this context, if any (see :meth:`admit`)."""
    permit = _current.get()
    if permit is not None:
        permit.admit()
