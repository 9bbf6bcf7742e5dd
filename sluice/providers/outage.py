"""How long a provider that cannot be reached is left alone.

A connection the provider's host refuses, or that is not made within the timeout, sent
nothing: the provider is down, restarting or cut off, and every task would fail the same
way. Counted as each task's failed attempt, a two-minute outage ended a whole backlog in
Error ("gave up after 8 attempts"), while the dispatcher kept sending about 20 requests a
second into it. So the provider is paused instead, the attempt not counted (as for a rate
limit), for a pause that doubles with each new failure from ``retry_base`` up to
``retry_max`` or :data:`MAX_PAUSE_S`, whichever is shorter (so a provider that is back is
tried again within that), and starts again at ``retry_base`` once any answer comes back.

A request that was already under way when the pause began and fails during it does not
double it again: it waits out what is left. The state is per process; the pause itself
goes to the limiter, so every worker sharing it stops sending.

Only a failure that says the host is down or cut off counts (:func:`says_unreachable`): a
connection refused, reset or timed out, a host or network unreachable, a name server that
did not answer. A name that does not resolve or a TLS handshake that fails (a certificate,
``https://`` on a plain port) is a configuration that stays wrong: those stay transient
failures of each task, which end it in Error after ``max_attempts``.
"""

from __future__ import annotations

import errno
import socket
import ssl
import threading

import httpx

from sluice.clock import Clock

_DOWN_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
    }
)


def says_unreachable(exc: httpx.TransportError) -> bool:
    """Whether a connect failure says the provider's host is down or cut off (not a name or
    TLS problem that would fail the same way for good): its causes are read, as httpx and
    httpcore chain them (httpx's error caused by httpcore's, raised while handling the
    socket's ``OSError``)."""
    if isinstance(exc, httpx.ConnectTimeout):
        return True
    if not isinstance(exc, httpx.ConnectError):
        return False
    cause: BaseException | None = exc.__cause__ or exc.__context__
    for _ in range(8):  # a chain is a handful long; never loop on a cycle
        if cause is None:
            break
        if isinstance(cause, ssl.SSLError):
            return False
        if isinstance(cause, socket.gaierror):
            return cause.errno == socket.EAI_AGAIN  # the name server did not answer
        if isinstance(cause, OSError) and cause.errno in _DOWN_ERRNOS:
            return True
        if isinstance(cause, TimeoutError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


MAX_PAUSE_S = 30.0
"""The longest pause for an unreachable provider: how late, at most, Sluice notices it is back."""


SPELL_WARNING_EVERY_S = 60.0
"""At most one spell a minute is said at WARNING (its start and its end): a provider that
refuses every other connection would otherwise log two warnings per request."""


class Outage:
    """The back-off of one provider's unreachable spells."""

    def __init__(self, clock: Clock, base_s: float, max_s: float) -> None:
        self._clock = clock
        self._base_s = base_s
        self._max_s = max(base_s, min(max_s, MAX_PAUSE_S))
        self._lock = threading.Lock()
        self._pause_s = 0.0
        self._until = 0.0
        self._warned_at: float | None = None
        self._warned = False

    def failed(self) -> tuple[float, bool]:
        """A connection could not be made: the seconds to leave the provider alone, and
        whether to say that this failure began a spell (the first since the last answer,
        decided under the lock so that two threads failing together do not both begin one;
        at most one spell per :data:`SPELL_WARNING_EVERY_S` is said)."""
        with self._lock:
            now = self._clock.monotonic()
            began = not self._pause_s and (
                self._warned_at is None or now - self._warned_at >= SPELL_WARNING_EVERY_S
            )
            if began:
                self._warned_at, self._warned = now, True
            if now < self._until:
                return self._until - now, began
            self._pause_s = min(self._max_s, self._pause_s * 2) if self._pause_s else self._base_s
            self._until = now + self._pause_s
            return self._pause_s, began

    def answered(self) -> bool:
        """The provider answered (whatever it said): the next outage starts short. Whether
        to say this ended a spell (the first answer after a spell whose start was said)."""
        if not self._pause_s:
            return False
        with self._lock:
            ended = self._pause_s > 0 and self._warned
            self._pause_s = 0.0
            self._until = 0.0
            self._warned = False
        return ended
