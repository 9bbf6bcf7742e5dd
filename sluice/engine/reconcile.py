"""Reconciling: tasks whose worker died mid-request are made due again.

A claim is a lease. When a worker dies (SIGKILL, a lost host) its leases expire; a task it
left ``submitting`` may have reached the provider, so it becomes ``uncertain`` and is
looked up by client reference before any re-create, while other claimed tasks are simply
released (:meth:`sluice.store.queue.WorkQueue.recover_stuck`). Every dispatcher runs a
:class:`Reconciler` from its loop: embedded, that is the ``sluice up`` thread; distributed,
each worker process's pumps. Nothing else triggers it.
"""

from __future__ import annotations

import logging

from sluice.clock import Clock
from sluice.store.queue import WorkQueue

log = logging.getLogger("sluice.reconcile")


class Reconciler:
    """Recovers stuck tasks at most every ``every_s`` seconds (at once on the first call)."""

    def __init__(self, queue: WorkQueue, clock: Clock, every_s: float) -> None:
        self.queue = queue
        self.clock = clock
        self.every_s = every_s
        self._next_at = 0.0

    def run_if_due(self) -> int:
        """Recover stuck tasks if ``every_s`` has passed since the last time; returns how many."""
        now = self.clock.monotonic()  # a wall-clock step must not stop reconciling
        if now < self._next_at:
            return 0
        self._next_at = now + self.every_s
        return self.run()

    def run(self) -> int:
        """Recover stuck tasks now; returns how many were made due or released."""
        recovered = self.queue.recover_stuck(self.clock.now())
        if recovered:
            log.warning("tasks.recovered", extra={"count": recovered})
        return recovered
