"""Counting what a process sends, per limit key, for the console's live view and history.

Each sending process has one :class:`UsageRecorder`. The executor calls :meth:`count` for
every request it sends (by limit key and operation) and every outcome that matters (errors,
rate-limit pauses); a thread adds the counts to the database about once a second
(:class:`sluice.store.usage.UsageStore`), so the overview of any process (the API, `sluice
status`) sees every worker's traffic, and the history outlives restarts. Counting itself
is a dict increment under a lock: nothing on the send path waits for the database.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from sluice.clock import Clock, SystemClock
from sluice.logs import FailureStreak
from sluice.store.usage import UsageStore

log = logging.getLogger("sluice.usage")

FLUSH_S = 1.0
PRUNE_EVERY_S = 60.0
MAX_PENDING = 100_000
"""Distinct (key, metric, second) counts kept while the database is unreachable."""


class UsageRecorder:
    """Counts per (limit key, metric, second), added to the database every ``flush_s``."""

    def __init__(
        self,
        store: UsageStore,
        *,
        clock: Clock | None = None,
        retention_s: float = 7 * 86_400,
        flush_s: float = FLUSH_S,
    ) -> None:
        self.store = store
        self.clock = clock or SystemClock()
        self.retention_s = retention_s
        self.flush_s = flush_s
        # Keyed by the POSIX second (an int): a datetime per count cost the send threads
        # about 4% of their interpreter time; the store gets datetimes at the flush.
        self._counts: dict[tuple[str, str, int], int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_prune = 0.0
        # An outage's first failed flush logs its traceback, the next ones one line each
        # (a worker process logged one traceback a second while PostgreSQL was down).
        self._flush_failures = FailureStreak(log, "usage.flush_failed", "usage.flush_recovered")

    def count(self, key: str, metric: str, n: int = 1) -> None:
        """Add ``n`` to ``metric`` of ``key`` in the current second."""
        slot = (key, metric, int(self.clock.time()))
        with self._lock:
            self._counts[slot] = self._counts.get(slot, 0) + n

    def start(self) -> UsageRecorder:
        """Start the thread that adds counts to the database."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sluice-usage", daemon=True)
            self._thread.start()
        return self

    def flush(self) -> None:
        """Add what was counted so far to the database (kept for the next try on failure)."""
        with self._lock:
            pending, self._counts = self._counts, {}
        if not pending:
            return
        try:
            self.store.add(
                {
                    (key, metric, datetime.fromtimestamp(second, UTC)): n
                    for (key, metric, second), n in pending.items()
                }
            )
        except Exception as exc:
            self._flush_failures.failed(exc, counts=len(pending))
            with self._lock:
                for slot, n in pending.items():
                    if len(self._counts) < MAX_PENDING or slot in self._counts:
                        self._counts[slot] = self._counts.get(slot, 0) + n
            return
        self._flush_failures.succeeded()

    def close(self) -> None:
        """Stop the thread and add the last counts."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()
            self._prune()

    def _prune(self) -> None:
        now = self.clock.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY_S
        try:
            self.store.prune(self.clock.now(), self.retention_s)
        except Exception:
            log.warning("usage.prune_failed", exc_info=True)
