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

For a provider without ``max_in_flight`` each send thread keeps its own connections
(:class:`ThreadConnections`) instead of sharing httpcore's pool, whose lock the threads
handed to each other twice per request; the gate is under them in the same way.
"""

from __future__ import annotations

import ssl
import threading
import weakref
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from sluice import errors
from sluice.ratelimit import sendgate

_METHODS = frozenset({b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS"})
MAX_JOINED_BODY = 256 * 1024
"""A request whose body is at most this long is written with its head in one call."""


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

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._inner.read(max_bytes, timeout)
        permit = sendgate.current()
        if permit is not None and data:
            # The provider counted the request before this answer left it (window holds).
            permit.answered()
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
        permit.admit()
        self._inner.write(buffer, timeout)
        permit.written()

    def _write_held(self, timeout: float | None) -> None:
        """Check the held request's grant and write head and body in one call."""
        held, permit = b"".join(self._held), self._permit
        self._held, self._permit = [], None
        assert permit is not None
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


def gated_transport(limits: httpx.Limits, *, per_thread: bool = False) -> httpx.HTTPTransport:
    """httpx's own transport whose connections write through :class:`GatedBackend`.

    ``per_thread``: each sending thread keeps its own connections (:class:`ThreadConnections`)
    instead of taking one from httpcore's pool, which then caps nothing (``limits`` is
    kept for the pool's other settings: the keep-alive expiry).

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
    if per_thread:
        transport._pool = ThreadConnections(pool)  # type: ignore[assignment]
    return transport


class _Mine:
    """One thread's connections (its ``threading.local`` value; closed when it ends)."""

    def __init__(self) -> None:
        self.connections: list[httpcore.HTTPConnection] = []


def _close_each(connections: list[httpcore.HTTPConnection]) -> None:
    for connection in connections:
        connection.close()


class ThreadConnections:
    """In place of httpcore's connection pool: each thread keeps its own connections.

    httpcore's ``ConnectionPool`` serves all threads from one list under one lock. Every
    request takes that lock twice, to be given a connection and, as its answer is closed, to
    give it back, and each time walks every connection of the pool; with 16 send threads
    the handoffs of that lock between threads cost more interpreter time than the rest of
    the request (docs/scaling.md, "Efficiency"). Here a thread finds its own keep-alive
    connection (one per origin, a second only while an answer it read is still open)
    without a lock or a walk. Threads are the engine's send threads, a fixed set, so the
    connections stay as many as the pool's.

    A connection is chosen as the pool chooses one: one that has expired (its keep-alive
    ran out, or the provider closed it: its socket reads as readable while idle) is closed
    and passed over; one that turns out unavailable as the request starts
    (``ConnectionNotAvailable``: nothing was written on it) is dropped and the request goes
    on a new one. Any other failure goes to the caller as it would from the pool, and a
    connection it left closed is dropped. A thread's connections are closed when the thread
    ends, and :meth:`close` closes every connection still open.
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
        self._local = threading.local()
        self._lock = threading.Lock()
        self._every: weakref.WeakSet[httpcore.HTTPConnection] = weakref.WeakSet()

    def _mine(self) -> list[httpcore.HTTPConnection]:
        mine: _Mine | None = getattr(self._local, "mine", None)
        if mine is None:
            mine = self._local.mine = _Mine()
            weakref.finalize(mine, _close_each, mine.connections)
        return mine.connections

    def _connection(
        self, mine: list[httpcore.HTTPConnection], origin: httpcore.Origin
    ) -> httpcore.HTTPConnection:
        """This thread's open, idle connection to ``origin``, or a new one."""
        for connection in list(mine):
            if connection.has_expired():
                mine.remove(connection)
                connection.close()
            elif connection.can_handle_request(origin) and connection.is_available():
                return connection
        connection = httpcore.HTTPConnection(origin=origin, **self._options)
        mine.append(connection)
        with self._lock:
            self._every.add(connection)
        return connection

    def handle_request(self, request: httpcore.Request) -> httpcore.Response:
        mine = self._mine()
        while True:
            connection = self._connection(mine, request.url.origin)
            try:
                return connection.handle_request(request)
            except httpcore.ConnectionNotAvailable:
                mine.remove(connection)
                connection.close()
            except BaseException:
                if connection.is_closed():
                    mine.remove(connection)
                raise

    def close(self) -> None:
        with self._lock:
            every = list(self._every)
        _close_each(every)

    def __enter__(self) -> ThreadConnections:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
