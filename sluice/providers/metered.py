"""The HTTP transport that counts: every request to a provider, its status class and latency.

It wraps the transport that sends (:mod:`sluice.providers.transport`), so provider calls
and token requests alike are counted once, under the operation the sending thread is in
(:func:`sluice.metrics.operation`: submit, poll, lookup, token). A request refused by its
send check (a grant too old) never left and is not counted. The latency runs from handing
the request to the transport to its answer's headers.

A request is counted when its answer's body has been read (or closed unread), not when its
headers arrive: an answer the provider starts and then cuts off (a 200 whose connection
drops halfway through the body) failed like any dropped connection, so it counts as
``disconnected`` (or ``timeout``), never under the status its headers announced. Until then
it is in flight.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx

from sluice import errors, metrics


def failure_kind(exc: BaseException) -> str | None:
    """The ``status_class`` of a request that failed with ``exc`` (None: not a transport
    failure)."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return "connect_error"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.TransportError):
        return "disconnected"
    return None


class MeteredTransport(httpx.BaseTransport):
    """Records each request that ``inner`` sends to provider ``provider``."""

    def __init__(self, provider: str, inner: httpx.BaseTransport) -> None:
        self.provider = provider
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        call = metrics.upstream_started(self.provider, time.perf_counter())
        try:
            response = self.inner.handle_request(request)
        except errors.GrantExpired:
            metrics.upstream_ended(call, None, time.perf_counter())
            raise
        except BaseException as exc:
            metrics.upstream_ended(call, failure_kind(exc) or "error", time.perf_counter())
            raise
        if call is None or not isinstance(response.stream, httpx.SyncByteStream):
            metrics.upstream_ended(
                call, metrics.status_class(response.status_code), time.perf_counter()
            )
            return response
        response.stream = _MeteredBody(
            response.stream,
            call,
            metrics.status_class(response.status_code),
            time.perf_counter(),
        )
        return response

    def close(self) -> None:
        self.inner.close()


class _MeteredBody(httpx.SyncByteStream):
    """An answer's body: its request counts once the body ends, fails or is closed."""

    def __init__(
        self,
        inner: httpx.SyncByteStream,
        call: metrics.UpstreamCall,
        answered: str,
        headers_at: float,
    ) -> None:
        self._inner = inner
        self._call = call
        self._answered = answered
        self._headers_at = headers_at
        self._ended = False

    def _end(self, outcome: str) -> None:
        if not self._ended:
            self._ended = True
            metrics.upstream_ended(self._call, outcome, self._headers_at)

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._inner
        except BaseException as exc:
            self._end(failure_kind(exc) or "error")
            raise
        self._end(self._answered)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._end(self._answered)
