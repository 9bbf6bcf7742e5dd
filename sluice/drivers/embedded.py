"""The embedded driver: the dispatcher loop and the executor in threads of one process."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

import httpx

from sluice.clock import Clock, SystemClock
from sluice.drivers.executor import ThreadExecutor
from sluice.engine.dispatcher import Dispatcher, worker_name
from sluice.providers.base import Provider
from sluice.ratelimit.base import Limiter
from sluice.runtime import Runtime
from sluice.store.queue import WorkQueue

log = logging.getLogger("sluice.driver")


class EmbeddedDriver:
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
        self.executor = ThreadExecutor(
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


def build_embedded_driver(runtime: Runtime) -> EmbeddedDriver:
    """The embedded driver over ``runtime``'s store, providers and limiter (not started)."""
    return EmbeddedDriver(
        runtime.queue,
        runtime.providers,
        runtime.clients,
        runtime.limiter,
        threads=runtime.settings.executor_threads,
        batch=runtime.settings.dispatch_batch,
        idle_s=runtime.settings.dispatch_idle_s,
        lease_s=runtime.settings.claim_lease_s,
        reconcile_every_s=runtime.settings.reconcile_every_s,
    )
