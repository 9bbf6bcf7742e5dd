"""The HTTP transport that counts: every request to a provider, its status class and latency.

It wraps the transport that sends (:mod:`sluice.providers.transport`), so provider calls
and token requests alike are counted once, under the operation the sending thread is in
(:func:`sluice.metrics.operation`: submit, poll, lookup, token). A request refused by its
send check (a grant too old) never left and is not counted. The latency runs from handing
the request to the transport to its answer's headers.
"""

from __future__ import annotations

import time

import httpx

from sluice import errors, metrics


class MeteredTransport(httpx.BaseTransport):
    """Records each request that ``inner`` sends to provider ``provider``."""

    def __init__(self, provider: str, inner: httpx.BaseTransport) -> None:
        self.provider = provider
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        call = metrics.upstream_started(self.provider, time.perf_counter())
        outcome: str | None = "error"
        try:
            response = self.inner.handle_request(request)
            outcome = metrics.status_class(response.status_code)
            return response
        except errors.GrantExpired:
            outcome = None
            raise
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):
            outcome = "connect_error"
            raise
        except httpx.TimeoutException:
            outcome = "timeout"
            raise
        except httpx.TransportError:
            outcome = "disconnected"
            raise
        finally:
            metrics.upstream_ended(call, outcome, time.perf_counter())

    def close(self) -> None:
        self.inner.close()
