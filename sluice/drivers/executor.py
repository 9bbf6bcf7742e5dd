"""The executor that sends: a thread pool sends requests, one writer thread records outcomes.

Both drivers use it: the embedded thread of ``sluice up`` and the pumps of Celery workers.

Outcomes are written in batches by a single thread: SQLite serialises writers, and one
transaction for many outcomes is far cheaper than one each.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from sluice.clock import Clock, SystemClock
from sluice.domain import Outcome, WorkUnit
from sluice.engine.dispatcher import Dispatcher, worker_name
from sluice.engine.execute import execute_unit
from sluice.providers.base import Provider
from sluice.ratelimit.base import Limiter
from sluice.ratelimit.rate import Grant
from sluice.runtime import Runtime
from sluice.store.queue import WorkQueue

log = logging.getLogger("sluice.executor")

WRITE_BATCH = 1000
WRITE_COALESCE_S = 0.01


@dataclass
class ExecutorStats:
    """What was sent and how it went, for the summary."""

    requests: dict[str, int] = field(default_factory=dict)
    rate_limited: int = 0
    retries: int = 0
    outcomes: int = 0

    def count(self, unit: WorkUnit, outcomes: list[Outcome]) -> None:
        key = f"{unit.provider} {unit.operation.value}"
        self.requests[key] = self.requests.get(key, 0) + 1
        for outcome in outcomes:
            if outcome.event == "rate_limited":
                self.rate_limited += 1
            elif outcome.event == "attempt_failed":
                self.retries += 1


class ThreadExecutor:
    """Runs granted units on a thread pool; records outcomes with a writer thread."""

    def __init__(
        self,
        work_queue: WorkQueue,
        providers: Mapping[str, Provider],
        clients: Mapping[str, httpx.Client],
        limiter: Limiter,
        *,
        threads: int = 16,
        clock: Clock | None = None,
        on_written: Callable[[], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.work_queue = work_queue
        self.providers = providers
        self.clients = clients
        self.limiter = limiter
        self.clock = clock or SystemClock()
        self.threads = threads
        self.stats = ExecutorStats()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sluice-send")
        self._running = 0
        self._pending = 0
        self._lock = threading.Lock()
        self._results: queue.Queue[list[Outcome] | None] = queue.Queue()
        self._on_written = on_written
        self._rng = rng
        self._writer = threading.Thread(target=self._write_loop, name="sluice-writer", daemon=True)
        self._writer.start()

    def capacity(self) -> int:
        with self._lock:
            return self.threads - self._running

    def submit(self, unit: WorkUnit, grant: Grant) -> None:
        with self._lock:
            self._running += 1
        self._pool.submit(self._run, unit, grant)

    def _run(self, unit: WorkUnit, grant: Grant) -> None:
        provider = self.providers[unit.provider]
        try:
            outcomes = execute_unit(
                unit, provider, self.clients[unit.provider], self.limiter, self.clock.now, self._rng
            )
        finally:
            if grant.lease_id is not None:
                in_flight = provider.in_flight()
                if in_flight is not None:
                    self.limiter.release(grant.lease_id, in_flight.key)
            with self._lock:
                self._running -= 1
        with self._lock:
            self.stats.count(unit, outcomes)
            self._pending += 1
        self._results.put(outcomes)

    def _write_loop(self) -> None:
        while True:
            first = self._results.get()
            if first is None:
                return
            batch = list(first)
            taken = 1
            stop = False
            # While requests are still running, wait a little for their outcomes too: one
            # transaction per handful of outcomes instead of one each.
            deadline = time.monotonic() + WRITE_COALESCE_S
            while len(batch) < WRITE_BATCH:
                wait = deadline - time.monotonic()
                try:
                    if wait > 0 and self._running > 0:
                        more = self._results.get(timeout=wait)
                    else:
                        more = self._results.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                taken += 1
                batch.extend(more)
            try:
                self.work_queue.apply(batch, self.clock.now())
                with self._lock:
                    self.stats.outcomes += len(batch)
            except Exception:
                # The tasks stay claimed; the reconciler makes them due again after the lease.
                log.exception("outcomes.write_failed", extra={"count": len(batch)})
            with self._lock:
                self._pending -= taken
            if self._on_written is not None:
                self._on_written()
            if stop:
                return

    def idle(self) -> bool:
        """No request running and no outcome waiting to be written."""
        with self._lock:
            return self._running == 0 and self._pending == 0

    def close(self) -> None:
        """Finish running units, write their outcomes, stop the writer."""
        self._pool.shutdown(wait=True)
        self._results.put(None)
        self._writer.join(timeout=30)


def build_dispatch(
    runtime: Runtime, clock: Clock | None = None
) -> tuple[ThreadExecutor, Dispatcher]:
    """An executor over ``runtime`` and the dispatcher that feeds it, as settings say.

    Both drivers run this pair: the embedded thread for as long as ``sluice up`` runs, a
    Celery worker process in bounded pumps.
    """
    settings = runtime.settings
    clock = clock or SystemClock()
    executor = ThreadExecutor(
        runtime.queue,
        runtime.providers,
        runtime.clients,
        runtime.limiter,
        threads=settings.executor_threads,
        clock=clock,
    )
    dispatcher = Dispatcher(
        runtime.queue,
        runtime.providers,
        runtime.limiter,
        executor,
        worker_id=worker_name(),
        clock=clock,
        batch=settings.dispatch_batch,
        idle_s=settings.dispatch_idle_s,
        lease_s=settings.claim_lease_s,
        reconcile_every_s=settings.reconcile_every_s,
    )
    return executor, dispatcher
