"""Readiness checks of the servers a deployment uses besides its database (``/readyz``),
and :class:`BoundedChecks`, which runs them under a deadline."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor

from sluice.api.deps import ReadinessCheck

CHECK_TIMEOUT_S = 5.0


class ReadinessTimeout(Exception):
    """A server did not answer its readiness check in time."""


class BoundedChecks:
    """Runs readiness checks side by side, each given at most ``timeout_s`` to answer.

    A server that hangs (stopped, or behind a network partition: its connections stay open
    and nothing answers) used to hold ``/readyz`` for as long as it hung, over a minute,
    and a load balancer's probe got no answer at all. A check still running when its time
    is up is reported as :class:`ReadinessTimeout`; it goes on in its thread, and the next
    probe waits for that run instead of starting another one, so a hung server never holds
    more than one thread per check.
    """

    def __init__(self, timeout_s: float = CHECK_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sluice-readyz")
        # Keyed by the check itself: each API (tests build many in one process) has its own.
        self._running: dict[ReadinessCheck, Future[None]] = {}
        self._lock = threading.Lock()

    async def wait(self, checks: Mapping[str, ReadinessCheck]) -> dict[str, Exception | None]:
        """Each check's failure (None when it passed), waited for on the event loop, without
        a thread of the server's pool.

        ``/readyz`` used to be a plain function, run on the pool that every route reading
        the database shares: while the database's host was cut off, requests waiting on
        it filled that pool and the probe queued behind them (no answer within 3 s for
        about 10 s with 60 clients), however quickly its own checks gave up.
        """
        running = self._start(checks)
        waited = {name: asyncio.wrap_future(future) for name, future in running.items()}
        if waited:
            # Side by side, one deadline for all: two hung servers still answer the probe
            # within timeout_s, not one timeout_s after the other. asyncio.wait cancels nothing.
            await asyncio.wait(waited.values(), timeout=self.timeout_s)
        results: dict[str, Exception | None] = {}
        for name, future in waited.items():
            if not future.done():
                # Only this wait ends: a run already going goes on, and the next probe
                # waits for it (a run the pool had not started yet is dropped).
                future.cancel()
                results[name] = self._timeout()
                continue
            error = future.exception()
            if error is not None and not isinstance(error, Exception):
                raise error
            results[name] = error
        return results

    def _timeout(self) -> ReadinessTimeout:
        return ReadinessTimeout(f"no answer within {self.timeout_s:g} s")

    def _start(self, checks: Mapping[str, ReadinessCheck]) -> dict[str, Future[None]]:
        """Each check's run: the one still going, or a new one."""
        with self._lock:
            for check in checks.values():
                if check not in self._running or self._running[check].done():
                    self._running[check] = self._pool.submit(check)
            running = {name: self._running[check] for name, check in checks.items()}
            # Only runs still going are kept (an API built and dropped leaves nothing here).
            for check in [c for c, f in self._running.items() if f.done()]:
                del self._running[check]
        return running


def redis_check(url: str) -> ReadinessCheck:
    """A check that pings the Redis server at ``url`` (every primary of a Redis Cluster,
    whose client is made at the first check, so a cluster down at start-up fails the check,
    not the API)."""
    from sluice.ratelimit.redis import Client, connect

    made: list[Client] = []

    def check() -> None:
        if not made:
            made.append(connect(url, socket_timeout=2, socket_connect_timeout=2))
        made[0].ping()

    return check


def broker_check(url: str) -> ReadinessCheck:
    """A check that connects to the Celery broker at ``url``."""
    from kombu.connection import Connection

    def check() -> None:
        with Connection(url, connect_timeout=2) as connection:  # type: ignore[no-untyped-call]
            connection.ensure_connection(max_retries=1)

    return check
