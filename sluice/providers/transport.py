"""The HTTP transport that sends: each request's grant is checked right before its first byte.

httpx calls request hooks before it picks a connection, builds the request head and takes
its pool's lock; on a busy host that Python code can be descheduled for tens of
milliseconds, and whatever time passes there reaches the provider as jitter the margin must
absorb. So the connection pool here writes through a thin network stream that admits the
request under its send permit (:mod:`sluice.ratelimit.sendgate`) in the same call that
hands the request head to the socket, and notes when the write returned.

Only the first write of a request (its head, which starts with the method) is checked;
the body that follows is part of the same request. A head that announces a body of up to
:data:`MAX_JOINED_BODY` bytes (``Content-Length``) is held until that body has been handed
over too, and the request is checked and written in one call. httpcore writes the two
apart, and a sending thread that lost the CPU between them sent the head on time and the
body 16-114 ms later; a provider that judges the complete request counts it then, bunched
with the next one (traced with ``bench.limit_fidelity --creates-only --profile leaky`` and a
CPU hog: the sandbox's leaky bucket refused five requests that way, each time after a
request whose head was on time). Held, a late thread makes the grant expire instead, and
nothing is sent late. HTTP/1.1 only, as Sluice's clients are.

A connection that cannot be made (``connect_tcp`` or ``start_tls`` raising: refused, timed
out, TLS) is noted on the sending thread's permit before the error goes on: its request
wrote nothing, so its grant's holds and slot go back
(:attr:`~sluice.ratelimit.sendgate.SendPermit.nothing_sent`). httpcore connects on the
thread whose request the new connection is for, so the permit is that request's.

**When the answer came.** Window holds (:mod:`sluice.ratelimit.holds`) keep a place until
``W`` after the request's answer reached this host. The moment a thread reads the answer
is later than that by its wake-up and its wait for the interpreter lock: 1.5-2.7 ms on
average on a loaded two-core host (7 busy loops), up to 26-56 ms, each a millisecond the
key's window stayed full for nothing. On a plain TCP connection (Linux, x86-64 or arm64)
the stream asks the kernel to stamp what it receives (``SO_TIMESTAMPNS``) and reads with
``recvmsg``: the answer is noted at the stamp the read came with
(:meth:`~sluice.ratelimit.sendgate.SendPermit.answered`), the arrival of one of the
answer's packets, each sent after the provider counted the request. The stamp is on the
wall clock; its age is measured there, less any step the wall clock took while the request
was out (the gap between the wall and the monotonic clocks at the write and at the read),
so a clock set once meanwhile never shortens a hold; a stamp more than 100 ms old is not
used (:data:`MAX_STAMP_AGE_NS`). TLS connections read through :mod:`ssl`, which has no
``recvmsg``: their answers are noted when read, as before.

For a provider without ``max_in_flight`` idle connections wait on a stack
(:class:`ConnectionStack`) instead of in httpcore's pool, whose lock the send threads
handed to each other twice per request; the gate is under them in the same way.
"""

from __future__ import annotations

import platform
import socket
import ssl
import struct
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx
from httpcore._backends.sync import SyncStream

from sluice import errors
from sluice.ratelimit import sendgate

_METHODS = frozenset({b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS"})
MAX_JOINED_BODY = 256 * 1024
"""A request whose body is at most this long is written with its head in one call."""


SO_TIMESTAMPNS = 35
"""Linux's ``SO_TIMESTAMPNS`` (its control messages are ``SCM_TIMESTAMPNS``, the same
number) on x86-64 and arm64 (``asm-generic/socket.h``); Python's :mod:`socket` does not
name it."""
_STAMPS = sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64")
"""Whether this platform's numbers and layout are the ones this module knows."""
_TIMESPEC = struct.Struct("qq")
"""A ``struct timespec`` on those machines: seconds and nanoseconds, 64 bits each."""
_STAMP_SPACE = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0
MAX_STAMP_AGE_NS = 100_000_000
"""A stamp older than this at the read (100 ms) is not used: the read's instant is noted.
The wall clock set twice in opposite directions while a request was out leaves the gap
between the clocks as it was and makes the stamp look older than it is; this bounds what
that could take off a hold. Measured beside 7 busy loops, reads came at most 26-56 ms
after their answer's packet."""


def stamped_socket(stream: object) -> socket.socket | None:
    """The plain TCP socket under ``stream``, set to have the kernel stamp what it
    receives; None where that is not done: another platform, TLS, or a stream that is not
    httpcore's own (whose read is a plain ``recv``, which :func:`read_stamped` replaces;
    another stream may buffer)."""
    if not _STAMPS or type(stream) is not SyncStream:
        return None
    sock = stream.get_extra_info("socket")
    if type(sock) is not socket.socket or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return None
    return sock


def read_stamped(sock: socket.socket, max_bytes: int, timeout: float | None) -> tuple[bytes, int]:
    """Read as httpcore's stream reads (its errors too), with the kernel's wall-clock stamp
    (nanoseconds) of the last packet read, 0 when none came with it. The stamp is the
    arrival of a byte the read returned (not always the first: TCP gives a packet merged
    into one already waiting the other's stamp)."""
    try:
        sock.settimeout(timeout)
        data, ancillary, _, _ = sock.recvmsg(max_bytes, _STAMP_SPACE)
    except TimeoutError as exc:
        raise httpcore.ReadTimeout(exc) from exc
    except OSError as exc:
        raise httpcore.ReadError(exc) from exc
    for level, kind, raw in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) == _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack(raw)
            return data, seconds * 1_000_000_000 + nanoseconds
    return data, 0


def clock_gap_ns() -> int:
    """The wall clock less the monotonic one: it moves only when the wall clock is set."""
    return time.time_ns() - time.monotonic_ns()


def arrival_age_s(stamp_ns: int, gap_at_write_ns: int) -> float:
    """How long ago the packet stamped ``stamp_ns`` (wall clock) arrived, never more than it
    truly is if the wall clock was set at most once since ``gap_at_write_ns``
    (:func:`clock_gap_ns` before the request was written): less whatever it was set by.
    0.0 for no stamp, or one older than :data:`MAX_STAMP_AGE_NS`."""
    if stamp_ns <= 0:
        return 0.0
    now = time.time_ns()
    stepped = abs((now - time.monotonic_ns()) - gap_at_write_ns)
    age = now - stamp_ns - stepped
    return age / 1e9 if 0 < age <= MAX_STAMP_AGE_NS else 0.0


def starts_a_request(buffer: bytes) -> bool:
    """Whether ``buffer`` is an HTTP/1.1 request head (``POST /v1/campaigns HTTP/1.1...``)."""
    method, space, _ = buffer[:8].partition(b" ")
    return bool(space) and method in _METHODS


def body_length(head: bytes) -> int | None:
    """The ``Content-Length`` a request head announces (None: none, or not a number)."""
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"content-length":
            value = value.strip()
            return int(value) if value.isdigit() else None
    return None


class GatedStream(httpcore.NetworkStream):
    """A network stream that admits each request under its send permit as it writes it."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner
        self._held: list[bytes] = []
        """A request head and the part of its body handed over so far, not yet written."""
        self._missing = 0
        """How many bytes of the held request's body are still to come."""
        self._permit: sendgate.SendPermit | None = None
        self._stamped = stamped_socket(inner)
        """The socket whose packets the kernel stamps (None: answers noted when read)."""
        self._gap_at_write = 0
        """:func:`clock_gap_ns` as the last request was admitted."""

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        stamped, permit = self._stamped, sendgate.current()
        if stamped is None or permit is None or not permit.used or permit.answered_at is not None:
            data = self._inner.read(max_bytes, timeout)
            if permit is not None and data:
                # The provider counted the request before this answer left it (window holds).
                permit.answered()
            return data
        # The answer's first read: noted when its packets reached this host (their stamp).
        data, stamp = read_stamped(stamped, max_bytes, timeout)
        if data:
            permit.answered(arrival_age_s(stamp, self._gap_at_write))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if self._held:  # the held request's body (Content-Length framing: it all follows)
            self._held.append(buffer)
            self._missing -= len(buffer)
            if self._missing <= 0:
                self._write_held(timeout)
            return
        if not starts_a_request(buffer):
            self._inner.write(buffer, timeout)
            return
        permit = sendgate.current()
        if permit is None:
            self._inner.write(buffer, timeout)
            return
        length = body_length(buffer)
        if length is not None and 0 < length <= MAX_JOINED_BODY:
            if permit.used:
                raise errors.GrantSpent("one grant lets one request through; this one was used")
            permit.check()  # a grant already too old fails here, as an unheld head does
            self._held, self._missing, self._permit = [buffer], length, permit
            return
        self._gap_at_write = clock_gap_ns()
        permit.admit()
        self._inner.write(buffer, timeout)
        permit.written()

    def _write_held(self, timeout: float | None) -> None:
        """Check the held request's grant and write head and body in one call."""
        held, permit = b"".join(self._held), self._permit
        self._held, self._permit = [], None
        assert permit is not None
        self._gap_at_write = clock_gap_ns()
        permit.admit()
        self._inner.write(held, timeout)
        permit.written()

    def close(self) -> None:
        self._held = []
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        try:
            inner = self._inner.start_tls(ssl_context, server_hostname, timeout)
        except BaseException:
            sendgate.note_not_connected()
            raise
        return GatedStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class GatedBackend(httpcore.NetworkBackend):
    """httpcore's network backend, with every stream a :class:`GatedStream`."""

    def __init__(self, inner: httpcore.NetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        except BaseException:
            sendgate.note_not_connected()
            raise
        return GatedStream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            stream = self._inner.connect_unix_socket(path, timeout, socket_options)
        except BaseException:
            sendgate.note_not_connected()
            raise
        return GatedStream(stream)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def gated_transport(limits: httpx.Limits, *, stacked: bool = False) -> httpx.HTTPTransport:
    """httpx's own transport whose connections write through :class:`GatedBackend`.

    ``stacked``: idle connections are kept on a :class:`ConnectionStack` instead of in
    httpcore's pool, and nothing caps how many are open (``limits`` gives the keep-alive
    expiry).

    Raises:
        errors.ConfigError: the installed httpx keeps its pool elsewhere (a test fails first:
            an upgrade of httpx needs this function adapted).
    """
    transport = httpx.HTTPTransport(limits=limits)
    pool = getattr(transport, "_pool", None)
    if not isinstance(pool, httpcore.ConnectionPool) or not hasattr(pool, "_network_backend"):
        raise errors.ConfigError(
            f"httpx {httpx.__version__} keeps its connection pool elsewhere: Sluice cannot "
            "check grants as requests are written; install the httpx version Sluice declares"
        )
    pool._network_backend = GatedBackend(pool._network_backend)
    if stacked:
        transport._pool = ConnectionStack(pool)  # type: ignore[assignment]
    return transport


class ConnectionStack:
    """In place of httpcore's connection pool: idle connections on a stack, the last one
    given back taken first.

    httpcore's ``ConnectionPool`` serves all threads from one list under one lock. Every
    request takes that lock twice, to be given a connection and, as its answer is closed, to
    give it back, and each time walks every connection of the pool under it, asking each
    idle one's socket whether the provider closed it (a system call, which lets the other
    threads run and queue up for the lock). With 16 send threads the handoffs of that lock
    cost more interpreter time than the rest of the request (docs/scaling.md,
    "Efficiency"). Here the lock is held only to push or pop one connection; whether the
    popped connection is still good is asked after, outside it.

    A connection is chosen as the pool chooses one: one that has expired (its keep-alive
    ran out, or the provider closed it: its socket reads as readable while idle) is closed
    and passed over; one that turns out unavailable as the request starts
    (``ConnectionNotAvailable``: nothing was written on it) is dropped and the request goes
    on another. The most recently used connection goes first, so a low rate handed round
    many send threads keeps one connection warm (a connect before the first byte would
    spend a grant's send window on the handshake); the ones below it expire and are closed
    as they are met, and at most once per keep-alive, as a connection is given back, those
    idle past their keep-alive at the bottom of every origin's stack are closed, as the
    pool closes them whatever the origin of the request at hand (a target may be an
    absolute URL: kept until a request to its own origin came, each origin ever used would
    hold sockets open for the life of the worker). An answer gives its connection back when
    it is closed, if the connection can take another request. :meth:`close` closes every
    connection still open.
    There is no cap: at most one connection per request in flight, which the send threads
    bound (a provider's ``max_in_flight`` keeps httpcore's pool, whose size caps it).
    """

    def __init__(self, pool: httpcore.ConnectionPool) -> None:
        self._options: dict[str, Any] = {
            "ssl_context": pool._ssl_context,
            "keepalive_expiry": pool._keepalive_expiry,
            "http1": True,
            "http2": False,
            "retries": pool._retries,
            "local_address": pool._local_address,
            "uds": pool._uds,
            "network_backend": pool._network_backend,
            "socket_options": pool._socket_options,
        }
        self._lock = threading.Lock()
        self._idle: dict[tuple[bytes, bytes, int], list[tuple[float, httpcore.HTTPConnection]]]
        self._idle = {}
        """Idle connections by origin (scheme, host, port: httpcore's ``Origin`` is not
        hashable) with when each was given back, the last given back last."""
        self._keepalive_s: float | None = pool._keepalive_expiry
        self._sweep_at = 0.0
        """When to look for connections idle past their keep-alive next."""
        self._every: weakref.WeakSet[httpcore.HTTPConnection] = weakref.WeakSet()

    def _take(self, origin: httpcore.Origin) -> httpcore.HTTPConnection:
        """The most recently given back connection to ``origin`` still good, or a new one."""
        while True:
            with self._lock:
                idle = self._idle.get(_key(origin))
                connection = idle.pop()[1] if idle else None
            if connection is None:
                connection = httpcore.HTTPConnection(origin=origin, **self._options)
                with self._lock:
                    self._every.add(connection)
                return connection
            if connection.is_available() and not connection.has_expired():
                return connection
            connection.close()

    def give_back(self, connection: httpcore.HTTPConnection) -> None:
        """Put ``connection`` on top if it can take another request; close it otherwise."""
        if not (connection.is_available() and not connection.is_closed()):
            connection.close()
            return
        now = time.monotonic()
        with self._lock:
            self._idle.setdefault(_key(connection._origin), []).append((now, connection))
            stale = self._expired(now) if now >= self._sweep_at else []
        for old in stale:
            old.close()

    def _expired(self, now: float) -> list[httpcore.HTTPConnection]:
        """Take the idle connections past their keep-alive off the stacks (under the lock):
        the oldest of each origin, at its bottom."""
        if self._keepalive_s is None:
            self._sweep_at = float("inf")
            return []
        self._sweep_at = now + self._keepalive_s
        cutoff = now - self._keepalive_s
        expired: list[httpcore.HTTPConnection] = []
        for key, idle in list(self._idle.items()):
            count = 0
            while count < len(idle) and idle[count][0] < cutoff:
                count += 1
            expired.extend(connection for _, connection in idle[:count])
            del idle[:count]
            if not idle:
                del self._idle[key]
        return expired

    def handle_request(self, request: httpcore.Request) -> httpcore.Response:
        while True:
            connection = self._take(request.url.origin)
            try:
                response = connection.handle_request(request)
            except httpcore.ConnectionNotAvailable:
                # Closed since it was taken (nothing was written on it), as the pool drops
                # it without closing: were it in use elsewhere, closing would break that.
                continue
            except BaseException:
                self.give_back(connection)
                raise
            assert isinstance(response.stream, Iterable)  # a sync connection's answer
            return httpcore.Response(
                status=response.status,
                headers=response.headers,
                content=_GivenBackOnClose(response.stream, self, connection),
                extensions=response.extensions,
            )

    def close(self) -> None:
        with self._lock:
            every = list(self._every)
            self._idle.clear()
        for connection in every:
            connection.close()

    def __enter__(self) -> ConnectionStack:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _key(origin: httpcore.Origin) -> tuple[bytes, bytes, int]:
    return origin.scheme, origin.host, origin.port


class _GivenBackOnClose:
    """An answer's body: closing it gives its connection back to the stack."""

    def __init__(
        self,
        stream: Iterable[bytes],
        stack: ConnectionStack,
        connection: httpcore.HTTPConnection,
    ) -> None:
        self._stream = stream
        self._stack = stack
        self._connection: httpcore.HTTPConnection | None = connection

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            close = getattr(self._stream, "close", None)
            if close is not None:
                close()
        finally:
            self._stack.give_back(connection)
