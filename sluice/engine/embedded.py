"""The embedded engine: dispatcher + local executor in background threads of one process."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping

import httpx

from sluice.clock import Clock, SystemClock
from sluice.engine.dispatcher import Dispatcher
from sluice.executors.local import LocalExecutor
from sluice.providers.base import Provider
from sluice.ratelimit.base import Limiter
from sluice.store.queue import WorkQueue

log = logging.getLogger("sluice.engine")


def worker_name() -> str:
    """A name for this process in claims: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


class EmbeddedEngine:
    """Runs the dispatch loop in a thread; ``stop()`` finishes in-flight work cleanly."""

    def __init__(
        self,
        work_queue: WorkQueue,
        providers: Mapping[str, Provider],
        clients: Mapping[str, httpx.Client],
        limiter: Limiter,
        *,
        threads: int = 16,
        batch: int = 500,
        idle_s: float = 0.05,
        lease_s: float = 120.0,
        reconcile_every_s: float = 30.0,
        clock: Clock | None = None,
    ) -> None:
        self.queue = work_queue
        self.clock = clock or SystemClock()
        self.executor = LocalExecutor(
            work_queue, providers, clients, limiter, threads=threads, clock=self.clock
        )
        self.dispatcher = Dispatcher(
            work_queue,
            providers,
            limiter,
            self.executor,
            worker_id=worker_name(),
            clock=self.clock,
            batch=batch,
            idle_s=idle_s,
            lease_s=lease_s,
            reconcile_every_s=reconcile_every_s,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sluice-dispatcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self.dispatcher.run(self._stop)
        except Exception:
            log.exception("dispatcher.crashed")
            raise

    def wake(self) -> None:
        """Look for due work now rather than at the next idle tick."""
        self.dispatcher.wake()

    def stop(self) -> None:
        """Stop dispatching, let running requests finish and their outcomes be written."""
        self._stop.set()
        self.dispatcher.wake()
        self._thread.join(timeout=60)
        self.executor.close()

    def all_final(self) -> bool:
        """Every task in the store has a final status and nothing is running."""
        return self.executor.idle() and self.queue.unfinished_count() == 0
