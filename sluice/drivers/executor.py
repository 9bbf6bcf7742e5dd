"""The executor that sends: a thread pool sends requests, one writer thread records outcomes.

Both drivers use it: the embedded thread of ``sluice up`` and the pumps of Celery workers.

A unit's grant is asked for on the pool thread that then sends it, and bound there as its
send permit: the HTTP client's request hook checks it just before the request is written,
and a grant too old to use sends nothing and comes back through ``take_unsent``
(:mod:`sluice.ratelimit.sendgate` has the why and the proof).

Outcomes are written in batches by a single thread: SQLite serialises writers, and one
transaction for many outcomes is far cheaper than one each.
"""

from __future__ import annotations

import functools
import logging
import math
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

import httpx

from sluice import errors, metrics
from sluice.clock import Clock, SystemClock
from sluice.domain import Outcome, TaskStatus, WorkUnit
from sluice.engine.dispatcher import UNLIMITED, Dispatcher, worker_name
from sluice.engine.execute import execute_unit
from sluice.engine.quotas import QuotaBook
from sluice.engine.retention import Pruner
from sluice.engine.usage import UsageRecorder
from sluice.providers.base import Provider
from sluice.providers.registry import declare_metrics
from sluice.ratelimit import holds, sendgate
from sluice.ratelimit.base import Limiter
from sluice.ratelimit.rate import Grant
from sluice.runtime import Runtime
from sluice.store import db
from sluice.store.pauses import PauseStore
from sluice.store.queue import WorkQueue
from sluice.store.usage import UsageStore
from sluice.units import parse_duration

log = logging.getLogger("sluice.executor")

WRITE_BATCH = 1000
WRITE_COALESCE_S = 0.01
WRITE_RETRY_S = 60.0
"""How long a batch of outcomes is tried again while the database is unavailable (a restart,
a failover). Half the default claim lease (``claim_lease_s``, 120 s): the outcomes of a
shorter lease are dropped by their claim's guard once the reconciler has taken it back."""
WRITE_RETRY_FIRST_S = 0.05
WRITE_RETRY_MAX_PAUSE_S = 2.0
WRITE_RETRY_CLOSING_S = 5.0
"""Once the executor is closing, how much longer a failing batch is tried."""

WRITTEN, REFUSED, UNAVAILABLE = "written", "refused", "unavailable"
"""What became of a batch of outcomes (:meth:`ThreadExecutor._write`)."""

SEND_DELAYS_KEPT = 4096
"""Send delays kept for the pump summary's percentiles: the latest seconds of sends. Each
costs 32 bytes in a process that runs for days (two series of 20,000 held 1.3 MiB)."""
SEND_WAIT_MAX_S = 0.1
"""The longest the dispatcher stays off the interpreter for one grant's sender (a grant
that may go late, ``judges = "window"``, has up to a window to be sent)."""
QUEUED_PER_THREAD = 1
"""Units needing no grant that may wait for a send thread, per thread. A thread that
finishes one takes the next at once instead of waiting for the dispatcher to be woken and
scheduled: with no limit on a loaded host, the send threads stood idle half the time with
work buffered (docs/scaling.md, "Where an unthrottled embedded engine spent its time").
A unit that needs a grant never waits behind them: it is handed over only while a thread
is free (:meth:`ThreadExecutor.capacity`), and while one waits for a free thread the
dispatcher hands over no unit needing no grant. A unit is queued only with lease left for
the wait as well (two lease guards); one still queued when the executor closes is not
sent (:meth:`ThreadExecutor.take_unsent`)."""
WRITE_WAIT_MAX_S = 1.0
"""The longest the dispatcher waits, past a grant's send window, for a request whose send
check passed to be written (a thread that lost the CPU there, or a socket that does not
drain): see "A write that ended late" in :mod:`sluice.ratelimit.sendgate`."""


@dataclass
class ExecutorStats:
    """What was sent and how it went, for the summary and the benchmarks."""

    requests: dict[str, int] = field(default_factory=dict)
    rate_limited: int = 0
    retries: int = 0
    outcomes: int = 0
    expired: int = 0
    """Grants not used within their send window: nothing was sent, the unit went back."""
    written_late: int = 0
    """Requests whose write ended after their send window: their keys were pushed back."""
    send_delays_s: deque[float] = field(default_factory=lambda: deque(maxlen=SEND_DELAYS_KEPT))
    """Grant-to-send delays (asking for the grant to the send check), the latest ones."""
    written_delays_s: deque[float] = field(default_factory=lambda: deque(maxlen=SEND_DELAYS_KEPT))
    """Asking for the grant to the end of writing the request's first bytes (upper bounds)."""

    def count(self, unit: WorkUnit, outcomes: list[Outcome]) -> None:
        key = f"{unit.provider} {unit.operation.value}"
        self.requests[key] = self.requests.get(key, 0) + 1
        for outcome in outcomes:
            if outcome.event == "rate_limited":
                self.rate_limited += 1
            elif outcome.event == "attempt_failed":
                self.retries += 1


class ThreadExecutor:
    """Runs units on a thread pool, each asking for its grant on the thread that sends it;
    records outcomes with a writer thread."""

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
        pauses: PauseStore | None = None,
        usage: UsageRecorder | None = None,
    ) -> None:
        self.work_queue = work_queue
        self.usage = usage
        self.providers = providers
        for provider in providers.values():
            declare_metrics(provider)
        self.clients = clients
        self.limiter = limiter
        self.clock = clock or SystemClock()
        self.threads = threads
        self.pauses = pauses
        self.stats = ExecutorStats()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sluice-send")
        self._running = 0
        self._pending = 0
        self._unsent: list[WorkUnit] = []
        self._lock = threading.Lock()
        self._results: queue.Queue[list[Outcome] | None] = queue.Queue()
        self._closing = threading.Event()
        self._closing_at = math.inf
        self._on_written = on_written
        self.on_free: Callable[[], None] | None = None
        """Called when a unit ends with a thread free or the queue at least half empty
        (the dispatcher's wake: it waits for one, :data:`QUEUED_PER_THREAD`)."""
        self._rng = rng
        self._writer = threading.Thread(target=self._write_loop, name="sluice-writer", daemon=True)
        self._writer.start()

    def capacity(self, *, needs_grant: bool = True) -> int:
        """See :meth:`sluice.engine.dispatcher.Executor.capacity`: free threads, and for a
        unit that needs no grant also the places queued behind busy ones
        (:data:`QUEUED_PER_THREAD`)."""
        with self._lock:
            free = self.threads - self._running
        return free if needs_grant else free + self.queued

    @property
    def queued(self) -> int:
        """How many units needing no grant may wait for a thread."""
        return self.threads * QUEUED_PER_THREAD

    def submit(self, unit: WorkUnit, acquire: Callable[[], Grant] | None) -> Grant:
        """See :meth:`sluice.engine.dispatcher.Executor.submit`.

        A unit that needs no grant (``acquire`` None) is handed to the pool and
        :data:`UNLIMITED` returned at once: waiting for a pool thread to wake and answer
        "no limit" was the dispatcher's largest cost with no limit set (docs/scaling.md).
        """
        # Nobody waits on an unlimited unit: no future to decide, no hand-off to watch.
        decided: Future[Grant] | None = None if acquire is None else Future()
        handoff = None if acquire is None else _Handoff()
        with self._lock:
            self._running += 1
        try:
            self._pool.submit(self._run, unit, acquire or _unlimited, decided, handoff)
        except BaseException:
            with self._lock:
                self._running -= 1
            raise
        if decided is None or handoff is None:
            return UNLIMITED
        grant = decided.result()
        if grant.granted and math.isfinite(grant.send_within_s):
            # Stay off the interpreter while the grant's thread sends it: on a busy host the
            # dispatcher taking the GIL back (to ask for the next grant) is what pushed that
            # thread past its send window. It has at most send_within_s to send, then either
            # the request is written or the grant has expired (or, for a grant that may go
            # late, the dispatcher stops waiting and asks for the next one).
            # A grant on paced keys is waited for to the end of its window (at most
            # WRITE_WAIT_MAX_S) and then settled: the next grant must not be decided while
            # it may still be written late ("A write that ended late" in sendgate).
            cap = WRITE_WAIT_MAX_S if grant.steps else SEND_WAIT_MAX_S
            if not handoff.gone.wait(min(grant.send_within_s, cap)) and grant.steps:
                _settle(handoff)
        return grant

    def take_unsent(self) -> list[WorkUnit]:
        """See :meth:`sluice.engine.dispatcher.Executor.take_unsent`."""
        with self._lock:
            unsent, self._unsent = self._unsent, []
        return unsent

    def _run(
        self,
        unit: WorkUnit,
        acquire: Callable[[], Grant],
        decided: Future[Grant] | None,
        handoff: _Handoff | None,
    ) -> None:
        """Send ``unit``; ``decided`` and ``handoff`` (None: nobody waits) tell the
        dispatcher its grant and that its request was written or will not be."""
        gone = None if handoff is None else handoff.gone
        try:
            if decided is None and self._closing.is_set():
                # Queued for a thread when the executor began closing: not in flight, so
                # not sent during the stop; its claim is given back (``take_unsent``).
                with self._lock:
                    self._unsent.append(unit)
                return
            self._grant_and_send(unit, acquire, decided, handoff)
        except BaseException as exc:
            # The pool would swallow it: say so, and never leave the dispatcher waiting.
            log.exception("unit.send_failed", extra={"provider": unit.provider})
            if decided is not None and not decided.done():
                decided.set_exception(exc)
        finally:
            if gone is not None:
                gone.set()
            with self._lock:
                self._running -= 1
                # Woken while the queue is at least half empty or a thread is free, not
                # at every unit: it hands over what it can in one step.
                wake = self._running <= self.threads + self.queued // 2
            if wake and self.on_free is not None:
                self.on_free()

    def _grant_and_send(
        self,
        unit: WorkUnit,
        acquire: Callable[[], Grant],
        decided: Future[Grant] | None,
        handoff: _Handoff | None,
    ) -> None:
        provider = self.providers[unit.provider]
        asked_at = self.clock.monotonic()
        try:
            grant = acquire()
        except BaseException as exc:
            if decided is None:
                raise
            decided.set_exception(exc)
            return
        if not grant.granted:
            if decided is not None:
                decided.set_result(grant)
            return
        gone = None if handoff is None else handoff.gone
        permit = sendgate.SendPermit(asked_at, grant.send_within_s, self.clock.monotonic)
        if gone is not None or grant.steps:
            # The event, not the hand-off (which holds the permit): no reference cycle, so
            # the permit goes with reference counting, not the collector (a refused
            # ask's cycle per grant left ~2,000 a run to it, and full collections stop
            # every thread: drivers/embedded.py).
            permit.on_written = functools.partial(self._written, provider, grant, gone)
        if handoff is not None:
            handoff.permit = permit  # before the grant is told: the dispatcher may give it up
        if decided is not None:
            decided.set_result(grant)
        sent = True
        try:
            with sendgate.bound(permit), metrics.operation(unit.operation.value):
                outcomes = execute_unit(
                    unit,
                    provider,
                    self.clients[unit.provider],
                    self.limiter,
                    self.clock.now,
                    self._rng,
                )
        except errors.GrantExpired:
            sent = False
            if gone is not None:
                gone.set()
            with self._lock:
                self.stats.expired += 1
                self._unsent.append(unit)
            metrics.grant_expired(unit.provider)
            log.info(
                "grant.expired",
                extra={"provider": unit.provider, "delay_ms": _ms(permit.delay_s)},
            )
            return
        finally:
            permit.on_written = None
            if permit.delay_s is not None:
                self.stats.send_delays_s.append(permit.delay_s)
            if permit.written_s is not None:
                self.stats.written_delays_s.append(permit.written_s)
            if grant.lease_id is not None:
                self._release_lease(provider, grant.lease_id)
            # A request whose connection failed before any byte of it was written (refused,
            # connect timeout) reached nobody: its holds and slot go back too.
            sent = sent and not permit.nothing_sent
            self._finish_holds(provider, grant, permit, sent=sent)
        self._keep_pause(provider, outcomes)
        metrics.outcomes(
            unit.provider, unit.operation.value, [(o.event, o.to_status.value) for o in outcomes]
        )
        self._count_usage(
            provider,
            unit,
            outcomes,
            reached=permit.written_s is not None,
            attempted=not permit.nothing_sent,
        )
        with self._lock:
            self.stats.count(unit, outcomes)
            self._pending += 1
        self._results.put(outcomes)

    def _written(
        self,
        provider: Provider,
        grant: Grant,
        gone: threading.Event | None,
        permit: sendgate.SendPermit,
    ) -> None:
        """A request was just written: if later than its send window, push its paced keys
        back (before the dispatcher, waiting on ``gone``, asks for the next grant).

        Never raises: a limiter that is down loses the push back, as it loses the state
        it would have changed.
        """
        try:
            if sendgate.push_back_if_late(self.limiter, grant, permit, provider.name):
                metrics.grant_written_late(provider.name)
                with self._lock:
                    self.stats.written_late += 1
        finally:
            if gone is not None:
                gone.set()

    def _release_lease(self, provider: Provider, lease_id: str) -> None:
        """Give back the in-flight lease; if the limiter is down, the lease lapses on its own.

        Never raises: the request's outcome must be written whatever the limiter does, or
        its task would wait out its whole claim before anyone looked at it again.
        """
        in_flight = provider.in_flight()
        if in_flight is None:
            return
        try:
            self.limiter.release(lease_id, in_flight.key)
        except errors.LimiterError:
            log.warning("lease.release_failed", exc_info=True, extra={"provider": provider.name})

    def _finish_holds(
        self, provider: Provider, grant: Grant, permit: sendgate.SendPermit, *, sent: bool
    ) -> None:
        """Keep the grant's window holds a window after the answer, or give them back if
        nothing was sent.

        Never raises: if the limiter is down, each hold lapses at its ttl (later, so safe).
        """
        try:
            holds.finish(self.limiter, grant, sent=sent, since_answer_s=permit.since_answer_s())
        except errors.LimiterError:
            log.warning("holds.finish_failed", exc_info=True, extra={"provider": provider.name})

    def _count_usage(
        self,
        provider: Provider,
        unit: WorkUnit,
        outcomes: list[Outcome],
        *,
        reached: bool,
        attempted: bool,
    ) -> None:
        """Count the request for the console: per limit key, operation, errors and pauses.

        ``sent`` counts only a request that was written to the provider's socket (``reached``):
        the learned rates' cap is twice what was sent, and counting calls that could not
        connect let the cap climb while the provider was unreachable. The operation
        (``create``, ``poll``, ``lookup``: creates/s in ``sluice status`` and the console)
        counts a request that may have reached the provider: not one whose connection
        failed (``attempted`` False, :attr:`~sluice.ratelimit.sendgate.SendPermit.
        nothing_sent`), nor one that could not be made because the provider (or its token
        endpoint) was unreachable; an outage showed as creates. Both count as errors."""
        usage = self.usage
        if usage is None:
            return
        try:
            payload = unit.tasks[0].payload if unit.tasks else None
            if reached:
                for spec in provider.limits_for(unit.operation.access, payload):
                    usage.count(spec.key, "sent")
            name = provider.name
            unreachable = bool(outcomes) and all(o.event == "unreachable" for o in outcomes)
            if attempted and not unreachable:
                usage.count(name, _OPERATION_METRIC[unit.operation.value])
            failed = sum(
                1
                for o in outcomes
                if o.event in ("attempt_failed", "unreachable") or o.to_status is TaskStatus.ERROR
            )
            if failed:
                usage.count(name, "error", failed)
            if any(o.pause_s is not None and o.event != "unreachable" for o in outcomes):
                usage.count(name, "rate_limited")
        except Exception:
            log.warning("usage.count_failed", exc_info=True, extra={"provider": provider.name})

    def _keep_pause(self, provider: Provider, outcomes: list[Outcome]) -> None:
        """Write the provider's pause to the database too: Redis may lose it."""
        paused = [o for o in outcomes if o.pause_s is not None]
        if not paused or self.pauses is None:
            return
        longest = max(paused, key=lambda o: o.pause_s or 0.0)
        try:
            now = self.clock.now()
            until = now + timedelta(seconds=longest.pause_s or 0.0)
            self.pauses.record(
                provider.pause_key(),
                until,
                signal="unreachable" if longest.event == "unreachable" else "rate_limited",
                reason=longest.detail,
                since=now,
            )
        except Exception:
            # The limiter holds the pause meanwhile; only a Redis loss could forget it.
            log.warning("pause.write_failed", exc_info=True, extra={"provider": provider.name})

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
            self._write(batch)
            with self._lock:
                self._pending -= taken
            if self._on_written is not None:
                self._on_written()
            if stop:
                return

    def _write(
        self, batch: list[Outcome], *, alone: bool = False, began: float | None = None
    ) -> str:
        """Write ``batch``, trying again while the database fails for a reason of the moment
        (down, restarting, a deadlock) for up to :data:`WRITE_RETRY_S`.

        Trying again is safe: each outcome applies only while its task still has the status
        and the claim the worker saw, so a batch whose commit went through before the
        connection dropped changes nothing the second time. A batch given up on leaves its
        tasks claimed; the reconciler makes them due again after the lease (a create is
        then looked up before it is sent again). A batch the database refuses for good (a
        value it cannot store) is written again one outcome at a time, so only the outcome
        at fault is lost that way. Those writes keep to the batch's time (``began``), and
        once one is given up on with the database unavailable so are the rest; the whole is
        one log line with how many were refused (a refusal that is no one outcome's, e.g. a
        missing table, is not logged once per outcome: ``alone``).

        :data:`WRITTEN`, :data:`REFUSED` (the database refused some for good) or
        :data:`UNAVAILABLE` (given up on while the database stayed unavailable).
        """
        began = time.monotonic() if began is None else began
        deadline = began + WRITE_RETRY_S
        pause = WRITE_RETRY_FIRST_S
        while True:
            try:
                self.work_queue.apply(batch, self.clock.now())
            except Exception as exc:
                if self._closing.is_set():
                    closing = max(self._closing_at, began) + WRITE_RETRY_CLOSING_S
                    deadline = min(deadline, closing)
                if not db.transient(exc) and len(batch) > 1:
                    # One outcome the database refuses must not take the others with it.
                    refused: list[Outcome] = []
                    given_up = 0
                    for done, outcome in enumerate(batch):
                        written = self._write([outcome], alone=True, began=began)
                        if written == UNAVAILABLE:
                            given_up = len(batch) - done  # this one and the rest
                            break
                        if written == REFUSED:
                            refused.append(outcome)
                    log.warning(
                        "outcomes.write_one_by_one",
                        exc_info=exc,
                        extra={
                            "count": len(batch),
                            "refused": len(refused),
                            "task_ids": [o.task_id for o in refused][:20],
                            "given_up": given_up,
                            "error": type(exc).__name__,
                        },
                    )
                    if given_up:
                        return UNAVAILABLE
                    return REFUSED if refused else WRITTEN
                if not db.transient(exc) or time.monotonic() + pause > deadline:
                    if db.transient(exc) or not alone:
                        log.exception("outcomes.write_failed", extra={"count": len(batch)})
                    return UNAVAILABLE if db.transient(exc) else REFUSED
                log.warning(
                    "outcomes.write_retry",
                    extra={"count": len(batch), "error": type(exc).__name__, "in_s": pause},
                )
                time.sleep(pause)
                pause = min(pause * 2, WRITE_RETRY_MAX_PAUSE_S)
                continue
            with self._lock:
                self.stats.outcomes += len(batch)
            return WRITTEN

    def idle(self) -> bool:
        """No request running and no outcome waiting to be written."""
        with self._lock:
            return self._running == 0 and self._pending == 0

    def close(self) -> None:
        """Finish running units, write their outcomes, stop the writer."""
        self._closing_at = time.monotonic()
        self._closing.set()
        self._pool.shutdown(wait=True)
        self._results.put(None)
        self._writer.join(timeout=30)
        if self.usage is not None:
            self.usage.close()


def _unlimited() -> Grant:
    return UNLIMITED


_OPERATION_METRIC = {"submit": "create", "poll": "poll", "lookup": "lookup"}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def summarise(executor: ThreadExecutor, dispatcher: Dispatcher) -> dict[str, object]:
    """What a driver did: grants, expired grants, writes that ended late, stale claims,
    grant-to-send delays (ms)."""
    delays = sorted(executor.stats.send_delays_s)
    written = sorted(executor.stats.written_delays_s)

    def quantile(values: list[float], q: float) -> float | None:
        return _ms(values[min(len(values) - 1, int(q * len(values)))]) if values else None

    return {
        "granted": dispatcher.stats.granted,
        "refused": dispatcher.stats.refused,
        "expired": executor.stats.expired,
        "written_late": executor.stats.written_late,
        "stale": dispatcher.stats.stale,
        "send_delay_p50_ms": quantile(delays, 0.5),
        "send_delay_p99_ms": quantile(delays, 0.99),
        "send_delay_max_ms": _ms(delays[-1]) if delays else None,
        "written_delay_p99_ms": quantile(written, 0.99),
        "written_delay_max_ms": _ms(written[-1]) if written else None,
    }


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
        pauses=runtime.pauses,
        usage=UsageRecorder(
            UsageStore(runtime.repo.engine),
            clock=clock,
            retention_s=settings.usage_retention_s,
        ).start(),
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
        pauses=runtime.pauses,
        rates=runtime.rates,
        pruner=_pruner(runtime, clock),
        fair_share=settings.fair_share,
        quotas=QuotaBook(runtime.quotas, clock) if runtime.quotas is not None else None,
        background_claims=True,
    )
    executor.on_free = dispatcher.wake
    return executor, dispatcher


def _pruner(runtime: Runtime, clock: Clock) -> Pruner | None:
    """The background pruner when ``retention_period`` is set (docs/scaling.md)."""
    settings = runtime.settings
    if settings.retention_period is None:
        return None
    return Pruner(
        runtime.queue.engine,
        clock,
        parse_duration(settings.retention_period),
        batch=settings.retention_batch,
        every_s=settings.retention_every_s,
    )


class _Handoff:
    """What the dispatcher watches while a grant's thread sends it: ``gone`` is set once the
    request was written (its keys pushed back if late) or will not be; ``permit`` is the
    grant's send permit, there before the dispatcher hears of the grant."""

    __slots__ = ("gone", "permit")

    def __init__(self) -> None:
        self.gone = threading.Event()
        self.permit: sendgate.SendPermit | None = None


def _settle(handoff: _Handoff) -> None:
    """After a grant's send window: make sure its request goes now or never, so that no
    later grant is decided while it may still be written late (see "A write that ended
    late" in :mod:`sluice.ratelimit.sendgate`). A request not admitted yet is given up
    (its thread finds its grant expired); one being written is waited for, up to
    :data:`WRITE_WAIT_MAX_S`."""
    permit = handoff.permit
    if permit is None or permit.give_up():
        return
    handoff.gone.wait(WRITE_WAIT_MAX_S)
