"""The embedded driver: the dispatcher loop and the executor in threads of one process."""

from __future__ import annotations

import gc
import logging
import threading

from sluice import errors
from sluice.clock import Clock
from sluice.drivers.executor import build_dispatch, summarise
from sluice.runtime import Runtime

log = logging.getLogger("sluice.driver")

_frozen = threading.Event()


def freeze_long_lived() -> None:
    """Put what this process holds before it first dispatches out of the collector's reach.

    A full collection of the cyclic garbage collector walks every object it tracks, holding
    the interpreter lock: about 130,000 objects once a runtime is built (modules, classes,
    the settings, the catalog, SQLAlchemy's and httpx's state), 65-90 ms of CPU. One came
    about once per 20 s of creates at 50/s, on whichever thread allocated last, and every
    other thread waited for it: on a loaded host it was the largest gap between two sends
    of the run (190-440 ms with a CPU hog beside it, 10-20 slots of a 20 ms spacing lost for
    good: ``bench.limit_fidelity --creates-only``, collections traced with ``gc.callbacks``).
    After ``gc.freeze()`` those objects are never walked (nor collected; they live
    as long as the process anyway) and a full collection covers only what came since.
    Once per process: cyclic garbage frozen by a later call could never be collected. A
    later call collects what is garbage by then (a driver stopped before, an earlier
    runtime closed), so that no full collection while this driver dispatches has it to
    walk: one found 14,000 objects a previous runtime left and stopped every thread for
    250 ms on a loaded host (docs/ratelimit.md, "The collector").
    """
    gc.collect()  # what is garbage already is not kept for good, nor walked later
    if _frozen.is_set():
        return
    _frozen.set()
    gc.freeze()


class EmbeddedDriver:
    """Runs the dispatch loop in a thread; ``stop()`` finishes in-flight work cleanly."""

    def __init__(self, runtime: Runtime, *, clock: Clock | None = None) -> None:
        self.queue = runtime.queue
        self.executor, self.dispatcher = build_dispatch(runtime, clock)
        self.clock = self.dispatcher.clock
        self._stop = threading.Event()
        self._stopping = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="sluice-dispatcher", daemon=True)

    def start(self, *, sole: bool = False) -> None:
        """Start the dispatch loop. ``sole``: this engine holds a lock that proves no other
        engine works on the database (:func:`sluice.drivers.engine_lock.holder_is_gone`),
        so the claims a killed engine left are recovered now rather than after their lease."""
        if sole:
            self.take_over()
        freeze_long_lived()
        self._thread.start()

    def take_over(self) -> None:
        """Recover every claim in the store (logged with the counts); a store that cannot
        be written now leaves them to the reconciler, after their lease."""
        try:
            uncertain, released = self.queue.take_over(self.clock.now())
        except errors.SluiceError as exc:
            log.warning("tasks.take_over_failed", extra={"error": str(exc)})
            return
        if uncertain or released:
            log.warning(
                "tasks.recovered",
                extra={
                    "count": uncertain + released,
                    "uncertain": uncertain,
                    "released": released,
                    "reason": "left claimed by an engine that stopped without giving them "
                    "back; the uncertain ones are looked up before any re-create",
                },
            )

    def _run(self) -> None:
        try:
            self.dispatcher.run(self._stop)
        except Exception:
            log.exception("dispatcher.crashed")
            raise

    def wake(self) -> None:
        """Look for due work now rather than at the next idle tick."""
        self.dispatcher.wake()

    def lost(self, reason: str) -> None:
        """Another engine took this database's engine lock: stop sending (the API, if
        this process serves one, goes on; the other engine sends what it takes in)."""
        log.error("engine.stopping", extra={"reason": reason})
        self.stop()

    def stop(self) -> None:
        """Stop dispatching, let running requests finish and their outcomes be written,
        and give back every claim not sent (a clean stop leaves nothing ``uncertain``).
        Once: a second call does nothing."""
        with self._stopping:
            if self._stopped:
                return
            self._stopped = True
            self._stop_now()

    def _stop_now(self) -> None:
        self._stop.set()
        self.dispatcher.wake()
        if self._thread.ident is not None:  # started (a stop before start has no loop)
            self._thread.join(timeout=60)
        if self.dispatcher.pruner is not None:
            self.dispatcher.pruner.stop()
        self.executor.close()
        # Grants that expired while the loop was stopping came back after it let go.
        self.dispatcher.release_all_quietly()
        log.info("engine.stopped", extra=self.executor_summary())

    def executor_summary(self) -> dict[str, object]:
        """Requests, expired grants and grant-to-send delays so far (for logs and benchmarks)."""
        return summarise(self.executor, self.dispatcher)

    def all_final(self) -> bool:
        """Every task in the store has a final status and nothing is running."""
        return self.executor.idle() and self.queue.unfinished_count() == 0


def build_embedded_driver(runtime: Runtime) -> EmbeddedDriver:
    """The embedded driver over ``runtime``'s store, providers and limiter (not started)."""
    return EmbeddedDriver(runtime)
