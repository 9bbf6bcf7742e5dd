"""Continuous pruning: final task families older than the retention period, in the
background of every dispatcher, never in its way.

With ``retention_period`` set, a dispatcher's step starts a pruning thread at most every
``retention_every_s`` (never two at once in a process). The thread deletes batches of
``retention_batch`` tasks, one transaction each, with a pause between them so that other
writers (the outcome writer on SQLite) get their turn; the dispatch loop itself only
checks a clock. Several processes may prune at once: each batch locks its rows, and a
family that changed meanwhile is left for the next round (:mod:`sluice.store.retention`).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import Engine

from sluice.clock import Clock
from sluice.store.retention import Pruned, prune

log = logging.getLogger("sluice.retention")

PAUSE_BETWEEN_BATCHES_S = 0.05


class Pruner:
    """Runs :func:`sluice.store.retention.prune` in a thread, at most every ``every_s``."""

    def __init__(
        self, engine: Engine, clock: Clock, period_s: float, *, batch: int, every_s: float
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.period_s = period_s
        self.batch = batch
        self.every_s = every_s
        self.total = Pruned()
        self._next_at = 0.0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def run_if_due(self) -> bool:
        """Start a pruning thread if one is due and none runs; returns whether it started."""
        now = self.clock.monotonic()
        if now < self._next_at or (self._thread is not None and self._thread.is_alive()):
            return False
        self._next_at = now + self.every_s
        self._thread = threading.Thread(target=self.run, name="sluice-prune", daemon=True)
        self._thread.start()
        return True

    def run(self) -> Pruned:
        """Prune now, in the calling thread; returns what this run deleted."""
        wall = self.clock.now()
        try:
            done = prune(
                self.engine,
                wall - timedelta(seconds=self.period_s),
                wall,
                batch=self.batch,
                stop=self._stop,
                pause_s=PAUSE_BETWEEN_BATCHES_S,
            )
        except Exception:
            # A database outage delays pruning; the next round tries again.
            log.exception("retention.failed")
            return Pruned()
        self.total += done
        if done.tasks:
            log.info("retention.pruned", extra={"tasks": done.tasks, "events": done.events})
        return done

    def stop(self, timeout_s: float = 5.0) -> None:
        """End a running prune between batches and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
