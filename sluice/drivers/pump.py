"""Bounded dispatch rounds for worker processes (Celery): the same dispatcher, in pumps.

A pump claims due work (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), takes grants from the
shared Redis limiter and sends requests from this process's threads for up to
``seconds``, then gives back what it did not send and waits for its outcomes to be
written. The broker only ever carries pump messages, never the rate-blocked backlog.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from sluice import process_memory
from sluice.drivers.executor import ThreadExecutor, build_dispatch, summarise
from sluice.engine.dispatcher import Dispatcher, monotonic_deadline
from sluice.runtime import Runtime, build_runtime
from sluice.settings import Settings

log = logging.getLogger("sluice.pump")

DRAIN_TIMEOUT_S = 60.0
SUMMARY_EVERY_S = 10.0


@dataclass
class PumpDriver:
    """One worker process's runtime, executor and dispatcher, reused across pumps."""

    runtime: Runtime
    executor: ThreadExecutor
    dispatcher: Dispatcher
    pid: int
    next_summary_at: float = 0.0

    @classmethod
    def build(cls, settings: Settings) -> PumpDriver:
        runtime = build_runtime(settings)
        executor, dispatcher = build_dispatch(runtime)
        return cls(runtime, executor, dispatcher, os.getpid())

    def pump(self, seconds: float) -> int:
        """Dispatch for up to ``seconds``; return how many requests were sent."""
        before = self.dispatcher.stats.granted
        self.dispatcher.run(threading.Event(), until=monotonic_deadline(seconds))
        end = time.monotonic() + DRAIN_TIMEOUT_S
        while not self.executor.idle() and time.monotonic() < end:
            time.sleep(0.01)
        # Grants that expired while the round ended came back after it let go of its claims.
        self.dispatcher.release_all_quietly()
        # The round's rows, bodies and responses are freed now: give their pages back, or
        # the pool process keeps its busiest round's worth (docs/scaling.md, Memory).
        process_memory.release_free_memory()
        if time.monotonic() >= self.next_summary_at:
            self.next_summary_at = time.monotonic() + SUMMARY_EVERY_S
            log.info("pump.summary", extra=summarise(self.executor, self.dispatcher))
        return self.dispatcher.stats.granted - before


_driver: PumpDriver | None = None
_lock = threading.Lock()


def pump_driver() -> PumpDriver:
    """This process's driver, built on first use (after the worker forked)."""
    global _driver
    with _lock:
        if _driver is None or _driver.pid != os.getpid():
            from sluice.settings import load_settings

            _driver = PumpDriver.build(load_settings())
            log.info("worker.ready", extra={"pid": _driver.pid})
        return _driver
