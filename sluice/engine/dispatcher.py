"""The dispatcher: hands due work to an executor only as fast as the limiter grants it.

Per provider it keeps a short buffer of *claimed* work units (about ``lookahead_s`` worth
at the provider's rate) and offers the head unit to the executor, which asks the limiter
for its grant *on the thread that will send it* and sends at once when granted: nothing
lies between the grant and the request but building it. A grant not used within its send
window (:mod:`sluice.ratelimit.sendgate`) comes back unsent and waits at the head of its
lane again. A refusal only sets an in-memory "not before" time for that provider: waiting
costs no database write and no sleeping worker. The same loop runs embedded (one process,
forever) and inside Celery workers (bounded pumps).

Claims are leases. A unit is offered only while its claim has long enough left for the
request to end before the lease does (:func:`lease_guard_s`); an older unit is given back
unsent while the claim is still this worker's, so a task recovered by another worker
after its lease expired is never also sent from a stale buffer here. A lane that waits
out a provider's pause claims nothing more until the pause is about to end.

A top-up (a claim made while the lane still holds work) runs on a claimer thread of its
own, so the dispatcher keeps asking for grants while the claim's SQL runs; a lane that ran
dry waits for it. The claimed units join the lane at the dispatcher's next step.

Scheduling uses the clock's monotonic reading: a wall-clock step neither stalls dispatch
nor hurries it. Times written to the store stay wall-clock UTC.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sluice import metrics
from sluice.clock import Clock, SystemClock
from sluice.domain import DueTask, Operation, WorkUnit
from sluice.engine.quotas import QuotaBook, QuotaVerdict, Taken, reservation_block
from sluice.engine.rates import RatesInForce, per_second
from sluice.engine.reconcile import Reconciler
from sluice.engine.retention import Pruner
from sluice.logs import FailureStreak
from sluice.providers.base import Provider
from sluice.ratelimit import holds
from sluice.ratelimit.base import Limiter
from sluice.ratelimit.rate import Grant, LimitSpec
from sluice.store.pauses import PauseStore
from sluice.store.queue import WorkQueue

log = logging.getLogger("sluice.dispatcher")

STEP_FAILURE_BACKOFF_S = 1.0
MIN_WAIT_S = 0.0001
# An in-flight refusal's retry_after_s is when leases would *expire*; a finishing request
# frees its slot much sooner, so look again shortly.
IN_FLIGHT_RECHECK_S = 0.005
CAPACITY_RECHECK_S = 0.01
"""With every send slot busy, look again after this long at the latest: the executor wakes
the dispatcher as soon as a thread frees, or its queue of units needing no grant is half
empty (stepping every millisecond to find out cost the sending threads the interpreter)."""
# How many units refused on their own account's limit a step passes over to reach others.
MAX_SKIPS_PER_STEP = 8
QUOTA_TAKEN_KEPT = 4096
"""How many units' quota reservations are remembered, to give back if their grant expires
(an expired grant comes back within milliseconds)."""
PAUSE_SYNC_S = 0.25
"""How often pauses kept in the database are copied into the limiter (a lost Redis
forgets them; the limiter's 1 s cold-start hold outlasts this)."""
PAUSE_PRUNE_S = 60.0
"""How often pauses that have ended are deleted from the database."""
PAUSE_PRUNE_AFTER_S = 300.0
"""A pause's row is deleted this long after its end (hosts' clocks differ by less)."""
PAUSE_REFILL_LEAD_S = 0.1
"""A paused lane claims again this long before its pause ends, to be ready on time."""
LEASE_GUARD_TIMEOUTS = 3.0
"""A request may take up to about three timeouts (pool wait, connect, read)."""
OWN_RATE_WINDOW_S = 2.0
"""Fair claims: the window over which a lane measures its own grant rate."""
OWN_RATE_HEADROOM = 1.5
"""Fair claims: a saturated lane claims this many lookaheads of its own grant rate."""
MIN_FAIR_CLAIM = 4
"""Fair claims: the smallest claim a saturated lane makes."""


def worker_name() -> str:
    """A name for this process in claims: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Executor(Protocol):
    """Runs granted work units."""

    def capacity(self, *, needs_grant: bool = True) -> int:
        """How many more units could start right now; with ``needs_grant`` False, also
        how many may wait, queued, for a thread (a unit that needs no grant: nothing
        about it goes stale while it waits)."""
        ...

    def submit(self, unit: WorkUnit, acquire: Callable[[], Grant] | None) -> Grant:
        """Ask for the unit's grant on the thread that will send it; send at once if granted.

        Returns the grant (or refusal) as soon as it is known; the request runs on. The
        grant's lease (if any) is released when the request ends. ``acquire``'s
        exceptions (a limiter outage) are raised here. ``acquire`` None: the unit needs no
        grant (its provider has no limit and no in-flight cap); :data:`UNLIMITED` is
        returned at once, without waiting for the thread that sends it.
        """
        ...

    def take_unsent(self) -> list[WorkUnit]:
        """Granted units that were not sent: the grant expired before the request could go
        (or, needing no grant, the unit still waited for a thread when the executor closed)."""
        ...


def lease_guard_s(provider: Provider, lease_s: float) -> float:
    """How much of a claim's lease must be left to start a request on it.

    A request ends within about three timeouts; starting it with that much lease left
    means no other worker can recover the task while it is in flight from here. Capped at
    half the lease, so that a short lease (tests) still lets work through.
    """
    return min(LEASE_GUARD_TIMEOUTS * provider.timeout_s, lease_s / 2)


@dataclass
class ProviderLane:
    """Claimed units of one provider waiting for grants (times: monotonic seconds)."""

    units: deque[WorkUnit] = field(default_factory=deque)
    not_before: float = 0.0
    paused_until: float = 0.0
    next_refill: float = 0.0
    next_top_up: float = 0.0
    granted_at: deque[float] = field(default_factory=deque)
    """When this lane's recent grants came (within ``OWN_RATE_WINDOW_S``)."""
    rate_refused_at: float = -math.inf
    """When the limiter last refused this lane on a rate (the limit was saturated)."""
    claiming: Future[list[DueTask]] | None = None
    """A top-up under way on the claimer thread (at most one per lane)."""
    claiming_at: float = 0.0
    """The monotonic reading taken just before that top-up was started."""


@dataclass
class DispatchStats:
    """Counters for the summary and the benchmarks."""

    granted: int = 0
    refused: int = 0
    claimed: int = 0
    expired: int = 0
    """Grants not used within their send window: the unit went back to its lane unsent."""
    stale: int = 0
    """Units given back unsent because their claim had too little lease left."""
    quota_waits: int = 0
    """Units given back until a spent quota resets (not attempts)."""


class Dispatcher:
    """Moves due tasks from the store to an executor under the limiter."""

    def __init__(
        self,
        queue: WorkQueue,
        providers: Mapping[str, Provider],
        limiter: Limiter,
        executor: Executor,
        *,
        worker_id: str,
        clock: Clock | None = None,
        batch: int = 500,
        idle_s: float = 0.05,
        lookahead_s: float = 1.0,
        lease_s: float = 120.0,
        reconcile_every_s: float = 30.0,
        pauses: PauseStore | None = None,
        rates: RatesInForce | None = None,
        pruner: Pruner | None = None,
        fair_share: bool = True,
        quotas: QuotaBook | None = None,
        background_claims: bool = False,
    ) -> None:
        self.queue = queue
        self.background_claims = background_claims
        self._claimer: ThreadPoolExecutor | None = None
        self.fair_share = fair_share
        self.quotas = quotas
        if quotas is not None and quotas.providers is None:
            quotas.providers = providers
        # id(unit) -> the quota units it took, given back if its grant expires unsent.
        self._quota_taken: dict[int, tuple[weakref.ref[WorkUnit], Taken]] = {}
        self.rates = rates or RatesInForce()
        self.providers = providers
        self.limiter = limiter
        self.executor = executor
        self.worker_id = worker_id
        self.clock = clock or SystemClock()
        self.batch = batch
        self.idle_s = idle_s
        self.lookahead_s = lookahead_s
        self.lease_s = lease_s
        self.reconciler = Reconciler(queue, self.clock, reconcile_every_s)
        self.pruner = pruner
        self.pauses = pauses
        self.lanes = {name: ProviderLane() for name in providers}
        self.stats = DispatchStats()
        self._next_pause_sync = 0.0
        self._next_pause_prune = 0.0
        self._synced: dict[str, datetime] = {}
        """The pauses the last sync copied, to notice one that was resumed."""
        self._wake = threading.Event()
        self._wanting_thread: set[str] = set()
        """Lanes whose head unit needs a grant and found no free thread at their last
        drain: until they have one, units needing no grant are not handed over (they would
        keep every thread busy and the queue full, :meth:`Executor.capacity`)."""
        self._step_failures = FailureStreak(
            log, "dispatcher.step_failed", "dispatcher.step_recovered", first_level=logging.ERROR
        )

    # -- the loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event, until: Callable[[], bool] | None = None) -> None:
        """Dispatch until ``stop`` is set (or ``until()`` is true); then give back claims."""
        try:
            while not stop.is_set() and not (until and until()):
                # Cleared before the step, not after the wait: a wake() that comes while
                # the step runs (a send slot freed) cuts the next wait short.
                self._wake.clear()
                try:
                    # Never wait longer than idle_s: new work may arrive from the API.
                    wait = min(self.step(), self.idle_s)
                except Exception as exc:
                    # A database or limiter outage delays work; it must not end the loop.
                    # The first failure logs its traceback; the next ones, one line each
                    # (an outage of a minute logged 60 tracebacks of ~95 lines), in this
                    # run or a later one (a worker runs one per pump: each round's first
                    # failure logged its traceback).
                    self._step_failures.failed(exc)
                    self.release_all_quietly()
                    # Waited on stop, not on wake: new work must not cut the backoff short
                    # (woken steps failed and logged their traceback several times a second).
                    stop.wait(STEP_FAILURE_BACKOFF_S)
                    continue
                self._step_failures.succeeded()
                if wait > 0:
                    self._wake.wait(wait)
        finally:
            try:
                self.release_all()
            except Exception as exc:
                if until is None:
                    raise
                # A round (a worker's pump) that ends while the database is down cannot
                # give its claims back; their leases bring them back. Raised, it failed the
                # pump in Celery (~150 lines) and skipped waiting for its outcomes.
                self._step_failures.failed(exc)
            finally:
                if self._claimer is not None:
                    self._claimer.shutdown(wait=False)
                    self._claimer = None

    def wake(self) -> None:
        """New work may be due (e.g. the API just created tasks)."""
        self._wake.set()

    def step(self) -> float:
        """Dispatch what can go now; return how long to wait before the next step."""
        self.reconciler.run_if_due()
        if self.pruner is not None:
            self.pruner.run_if_due()  # starts a thread: dispatch never waits for it
        now = self.clock.monotonic()
        self._requeue_unsent()
        self._sync_pauses(now)
        waits: list[float] = []
        for name, lane in self.lanes.items():
            self._collect(name, lane)
            refill_at = max(lane.next_refill, lane.paused_until - PAUSE_REFILL_LEAD_S)
            if not lane.units and now >= refill_at:
                self._refill(name, lane)
                if not lane.units:
                    lane.next_refill = now + self.idle_s
                    refill_at = lane.next_refill
            if lane.units:
                waits.append(self._drain(name, lane))
            else:
                self._wanting_thread.discard(name)
                waits.append(max(0.0, refill_at - now))
        return min(waits, default=self.idle_s)

    def _drain(self, name: str, lane: ProviderLane) -> float:
        provider = self.providers[name]
        guard_s = lease_guard_s(provider, self.lease_s)
        skipped = 0
        earliest_skipped: float | None = None
        stale: list[WorkUnit] = []
        self._wanting_thread.discard(name)
        try:
            while lane.units:
                now = self.clock.monotonic()
                if now < lane.not_before:
                    return lane.not_before - now
                unit = lane.units[0]
                payload = unit.tasks[0].payload if unit.operation is Operation.SUBMIT else None
                limits = _limits(provider, unit, payload, self.rates)
                needs_grant = bool(limits) or provider.in_flight() is not None
                # A unit handed over with no thread free waits for one: up to a request's
                # time (the lease guard) before its own starts. Only a claim with room for
                # both may wait so; another waits for a free thread.
                may_queue = not needs_grant and self._lease_left(unit, now, 2 * guard_s)
                if self.executor.capacity(needs_grant=not may_queue) <= 0 or (
                    not needs_grant and self._wanting_thread
                ):
                    if needs_grant:
                        self._wanting_thread.add(name)
                    self._top_up(name, lane, now)
                    return CAPACITY_RECHECK_S
                if not self._lease_left(unit, now, guard_s):
                    stale.append(lane.units.popleft())
                    continue
                taken = Taken()
                if self.quotas is not None:
                    verdict = self._take_quotas(provider, unit, payload)
                    if not verdict.ok:
                        lane.units.popleft()
                        if self._wait_for_quota(provider, lane, unit, verdict):
                            return max(0.0, lane.paused_until - self.clock.monotonic())
                        continue
                    taken = verdict.taken
                try:
                    grant = self.executor.submit(
                        unit,
                        functools.partial(_grant, self.limiter, provider, limits)
                        if needs_grant
                        else None,
                    )
                except Exception:
                    if self.quotas is not None:
                        self.quotas.give(taken)  # a limiter outage: nothing was sent
                    raise
                if grant.granted:
                    lane.units.popleft()
                    self.stats.granted += 1
                    lane.granted_at.append(now)
                    claimed_at = unit.claimed_at
                    metrics.granted(name, None if claimed_at is None else now - claimed_at)
                    if taken.parts:
                        self._remember_taken(unit, taken)
                    continue
                if self.quotas is not None:
                    self.quotas.give(taken)
                self.stats.refused += 1
                metrics.refused(name, grant.reason)
                if grant.reason == "rate":
                    lane.rate_refused_at = now
                # From the time *after* the refusal: the limiter's clock read later than
                # `now`, and waking before its TAT costs a second refusal and a minimum wait.
                wait = grant.retry_after_s
                if grant.reason == "in_flight":
                    wait = min(wait, IN_FLIGHT_RECHECK_S)
                if (
                    grant.reason == "rate"
                    and skipped < min(MAX_SKIPS_PER_STEP, len(lane.units) - 1)
                    and has_account_limits(provider, unit, payload)
                ):
                    # One account's budget is spent: let other accounts' work go first
                    # rather than holding the whole provider back (head-of-line blocking).
                    lane.units.rotate(-1)
                    skipped += 1
                    earliest_skipped = (
                        wait if earliest_skipped is None else min(wait, earliest_skipped)
                    )
                    continue
                if earliest_skipped is not None:
                    wait = min(wait, earliest_skipped)
                after = self.clock.monotonic()
                lane.not_before = after + max(wait, MIN_WAIT_S)
                if grant.reason == "paused":
                    # Claim nothing more while the provider has asked us to wait.
                    lane.paused_until = after + grant.retry_after_s
                    if grant.retry_after_s > self.lookahead_s * 2:
                        self._release_lane(name, lane, grant.retry_after_s)
                        return grant.retry_after_s
                    continue
                self._top_up(name, lane, now)
            return 0.0
        finally:
            if stale:
                self._release_stale(stale)

    def _lease_left(self, unit: WorkUnit, now: float, guard_s: float) -> bool:
        """Whether ``unit``'s tasks are claimed with more than ``guard_s`` lease left."""
        claimed_at = unit.claimed_at
        return claimed_at is not None and now <= claimed_at + self.lease_s - guard_s

    def _release_stale(self, units: list[WorkUnit]) -> None:
        """Give back units whose claims are too old to send on; the claims are still ours."""
        self.stats.stale += len(units)
        claimed = [t for unit in units for t in unit.tasks]
        log.info("dispatcher.released_stale", extra={"count": len(claimed)})
        self.queue.release(claimed, charge=self._fair_cost)

    def _requeue_unsent(self) -> None:
        """Put units whose grant expired back at the head of their lanes."""
        for unit in self.executor.take_unsent():
            self.stats.expired += 1
            kept = self._quota_taken.pop(id(unit), None)
            # By identity: an id is reused once its unit is freed (a unit that was sent
            # leaves its entry behind), and another unit's units must not come back here.
            if kept is not None and kept[0]() is unit and self.quotas is not None:
                self.quotas.give(kept[1])
            self.lanes[unit.provider].units.appendleft(unit)

    # -- quotas ------------------------------------------------------------------------

    def _take_quotas(
        self, provider: Provider, unit: WorkUnit, payload: Mapping[str, Any] | None
    ) -> QuotaVerdict:
        """Take the unit's cost from every quota it draws on (from this process's allowance,
        reserving a block from the database when it runs low: :func:`reservation_block`)."""
        assert self.quotas is not None
        if unit.operation is Operation.LOOKUP and not provider.supports_lookup(unit.tasks[0].kind):
            # Settled with no request (execute: "outcome unknown", or submitted again
            # later, charged then): it spends nothing of a quota.
            return QuotaVerdict(True)
        kinds = [task.kind for task in unit.tasks]
        specs = provider.quotas_for(unit.operation, payload, kinds)
        if not specs:
            return QuotaVerdict(True)
        block = reservation_block(specs, self._lookahead_count(provider))
        return self.quotas.take(specs, block=block)

    def _remember_taken(self, unit: WorkUnit, taken: Taken) -> None:
        # A weak reference: the entry must not keep a sent unit (its payloads) alive.
        self._quota_taken[id(unit)] = (weakref.ref(unit), taken)
        while len(self._quota_taken) > QUOTA_TAKEN_KEPT:
            del self._quota_taken[next(iter(self._quota_taken))]

    def _wait_for_quota(
        self, provider: Provider, lane: ProviderLane, unit: WorkUnit, verdict: QuotaVerdict
    ) -> bool:
        """Give ``unit`` back until its spent quota resets: not an attempt, not a failure.

        A quota on everything the provider does holds the whole lane, as a pause does
        (nothing more is claimed until the reset); a quota on one scope or account gives
        back only the unit. Returns whether the lane now waits.
        """
        assert verdict.resets_at is not None
        self.stats.quota_waits += 1
        wall = self.clock.now()
        delay_s = max(0.0, (verdict.resets_at - wall).total_seconds())
        log.info(
            "dispatcher.quota_spent",
            extra={
                "key": verdict.key,
                "resets_at": verdict.resets_at.isoformat(),
                "tasks": len(unit.tasks),
            },
        )
        self.queue.release(
            list(unit.tasks), next_attempt_at=verdict.resets_at, charge=self._fair_cost
        )
        everything = all(
            verdict.key in {spec.key for spec in provider.quotas_for(op, None)} for op in Operation
        )
        if not everything:
            return False
        lane.paused_until = self.clock.monotonic() + delay_s
        lane.not_before = lane.paused_until
        self._release_lane(provider.name, lane, delay_s)
        return True

    def _sync_pauses(self, now: float) -> None:
        """Copy the pauses kept in the database into the limiter (they may have been lost)."""
        if self.pauses is None or now < self._next_pause_sync:
            return
        self._next_pause_sync = now + PAUSE_SYNC_S
        wall = self.clock.now()
        active = self.pauses.active(wall)
        for key, until in active.items():
            self.limiter.pause(key, (until - wall).total_seconds())
        # A pause gone from the database before its end was resumed by an operator
        # (sluice.controls): clear it here too, and let its lanes claim again at once.
        lifted = [key for key, until in self._synced.items() if key not in active and until > wall]
        for key in lifted:
            self.limiter.unpause(key)
            lane = self.lanes.get(key.split(":", 1)[0])
            if lane is not None:
                lane.paused_until = lane.not_before = lane.next_refill = 0.0
        self._synced = active
        if now >= self._next_pause_prune:
            self._next_pause_prune = now + PAUSE_PRUNE_S
            # Only pauses that ended a while ago on this host's clock: a host whose clock
            # runs ahead would otherwise delete a pause still running for the others, whose
            # syncs then take the missing row for an operator's resume and lift it.
            self.pauses.prune(wall - timedelta(seconds=PAUSE_PRUNE_AFTER_S))

    # -- claims ------------------------------------------------------------------------

    def _refill(self, name: str, lane: ProviderLane) -> None:
        """Claim for ``lane`` now (or take the answer of the top-up under way)."""
        if lane.claiming is not None:
            self._collect(name, lane, wait=True)
            return
        want = self._claim_size(self.providers[name], lane)
        claimed_at = self.clock.monotonic()
        self._add_claimed(name, lane, self._claim(name, want), claimed_at)

    def _claim(self, name: str, want: int) -> list[DueTask]:
        """Claim up to ``want`` due tasks of provider ``name`` (safe on any thread)."""
        provider = self.providers[name]
        if self.fair_share:
            # Weighted fair queuing between fairness keys, held across every worker.
            return self.queue.claim_fair(
                self.clock.now(),
                want,
                self.worker_id,
                self.lease_s,
                name,
                provider.fairness_weights,
                self._fair_cost,
            )
        # Plain arrival order (due time, then id): the baseline of bench/fairness.py.
        return self.queue.claim_due(
            self.clock.now(), want, self.worker_id, self.lease_s, providers=[name]
        )

    def _fair_cost(self, name: str, kind: str | None, operation: Operation) -> float:
        """What a task uses of provider ``name``'s budget: the unit fair shares count in."""
        return self.providers[name].fair_cost(kind, operation)

    def _collect(self, name: str, lane: ProviderLane, wait: bool = False) -> None:
        """Add a finished top-up's tasks to ``lane`` (``wait``: wait for one under way).

        A claim that failed raises here, on the dispatcher's thread, as a claim made
        there would have.
        """
        future = lane.claiming
        if future is None or not (wait or future.done()):
            return
        lane.claiming = None
        self._add_claimed(name, lane, future.result(), lane.claiming_at)

    def _add_claimed(
        self, name: str, lane: ProviderLane, due: list[DueTask], claimed_at: float
    ) -> None:
        if not due:
            return
        self.stats.claimed += len(due)
        lane.units.extend(build_units(self.providers[name], due, claimed_at))
        if self.fair_share and len(lane.units) > len(due):
            # A top-up may bring children whose parents were created while older roots
            # waited here: they go first, as the claim order has it (trees first).
            lane.units = deque(sorted(lane.units, key=_buffer_order))

    def _top_up(self, name: str, lane: ProviderLane, now: float) -> None:
        """Claim more work while waiting for a grant, before the lane runs dry.

        A claim made only once the lane is empty delays the next request by the claim's
        duration, and the limiter never gives that time back; made while waiting out the
        spacing, it usually costs nothing. At most one top-up per half lookahead, so that
        polls falling due meanwhile are claimed, and batched, together.
        """
        if now < lane.next_top_up or now < lane.paused_until:
            return
        if len(lane.units) * 2 > self._claim_size(self.providers[name], lane):
            return
        lane.next_top_up = now + self.lookahead_s / 2
        if not self.background_claims:
            self._refill(name, lane)
            return
        if lane.claiming is not None:
            return
        want = self._claim_size(self.providers[name], lane)
        if self._claimer is None:
            self._claimer = ThreadPoolExecutor(1, thread_name_prefix="sluice-claimer")
        lane.claiming_at = self.clock.monotonic()
        lane.claiming = self._claimer.submit(self._claim, name, want)

    def _claim_size(self, provider: Provider, lane: ProviderLane) -> int:
        """How many tasks a claim for ``lane`` asks for.

        Arrival order: a lookahead at the provider's rate. Fair share: the same, unless the
        limit is saturated (a rate refusal within the last window); then a lookahead of
        what this lane itself was granted (with headroom). Every worker claiming a whole
        lookahead of the shared rate buffers workers x lookahead of work, all of it in
        the shares of its claim time: a key arriving later got its share only once those
        buffers drained (B got 35% at equal weights behind A's buffered 4 s). Sized by
        their own grants, the buffers of all workers together hold about one lookahead.
        """
        full = self._lookahead_count(provider)
        if not self.fair_share:
            return full
        now = self.clock.monotonic()
        while lane.granted_at and lane.granted_at[0] < now - OWN_RATE_WINDOW_S:
            lane.granted_at.popleft()
        if now - lane.rate_refused_at > OWN_RATE_WINDOW_S:
            return full
        own_rate = len(lane.granted_at) / OWN_RATE_WINDOW_S
        sized = math.ceil(own_rate * self.lookahead_s * OWN_RATE_HEADROOM)
        return max(MIN_FAIR_CLAIM, min(full, sized))

    def _lookahead_count(self, provider: Provider) -> int:
        rates = [
            per_second(spec.rate) for spec in self.rates.apply(provider.limits_for("write", None))
        ]
        if not rates:
            return self.batch
        fastest = min(rates)
        return max(1, min(self.batch, math.ceil(fastest * self.lookahead_s)))

    def _release_lane(self, name: str, lane: ProviderLane, delay_s: float) -> None:
        self._collect(name, lane, wait=True)
        claimed = [t for unit in lane.units for t in unit.tasks]
        lane.units.clear()
        at = self.clock.now() + timedelta(seconds=delay_s)
        self.queue.release(claimed, next_attempt_at=at, charge=self._fair_cost)

    def release_all_quietly(self) -> None:
        """Give back claims if the store answers; their leases expire otherwise."""
        try:
            self.release_all()
        except Exception:
            log.warning("dispatcher.release_failed", exc_info=True)

    def release_all(self) -> None:
        """Give back every claimed, unsent unit (shutdown), expired grants included."""
        for name, lane in self.lanes.items():
            try:
                self._collect(name, lane, wait=True)
            except Exception:
                # A top-up that failed claimed nothing this worker could give back.
                log.warning("dispatcher.claim_failed", exc_info=True)
        self._requeue_unsent()
        claimed = [t for lane in self.lanes.values() for unit in lane.units for t in unit.tasks]
        for lane in self.lanes.values():
            lane.units.clear()
        if claimed:
            self.queue.release(claimed, charge=self._fair_cost)
        if self.quotas is not None:
            self.quotas.flush()


UNLIMITED = Grant(granted=True, retry_after_s=0.0)


def acquire(
    limiter: Limiter,
    provider: Provider,
    unit: WorkUnit,
    payload: Mapping[str, Any] | None,
    rates: RatesInForce | None = None,
) -> Grant:
    """Ask for the grant one request of ``unit`` needs (a provider with no limits needs none),
    at the rate in force on each of its keys, with a window hold on each short window
    (:mod:`sluice.ratelimit.holds`: the limit kept at the provider however it stamps)."""
    return _grant(limiter, provider, _limits(provider, unit, payload, rates))


def _grant(limiter: Limiter, provider: Provider, limits: list[LimitSpec]) -> Grant:
    """The grant on ``limits`` (already at the rate in force) and the in-flight cap; the
    dispatcher works the limits out once and hands this to the sending thread."""
    in_flight = provider.in_flight()
    if not limits and in_flight is None:
        return UNLIMITED
    return holds.acquire(
        limiter,
        limits,
        in_flight=in_flight,
        timeout_s=provider.timeout_s,
        judges_spacing=provider.judges_spacing,
    )


def _limits(
    provider: Provider,
    unit: WorkUnit,
    payload: Mapping[str, Any] | None,
    rates: RatesInForce | None,
) -> list[LimitSpec]:
    kinds = [task.kind for task in unit.tasks]
    limits = provider.limits_for(
        unit.operation.access, payload, operation=unit.operation, kinds=kinds
    )
    return list(rates.apply(limits)) if rates is not None else list(limits)


def has_account_limits(
    provider: Provider, unit: WorkUnit, payload: Mapping[str, Any] | None
) -> bool:
    """Whether ``unit`` draws on limits of its own account beside the provider-wide ones."""
    access = unit.operation.access
    return payload is not None and len(provider.limits_for(access, payload)) > len(
        provider.limits_for(access, None)
    )


def _buffer_order(unit: WorkUnit) -> tuple[int, bool]:
    """How a fair lane orders its buffer at a top-up (stable): priority, then anything but
    new roots (children, polls, lookups). Within a priority the claims' order stands,
    except that a top-up's children, polls and lookups go before new roots held; a poll a
    claim took first stays before its claim's creates of its priority or lower, and a
    higher-priority create goes before it."""
    first = unit.tasks[0]
    is_root = unit.operation is Operation.SUBMIT and first.parent_id is None
    return (-first.priority, is_root)


def build_units(
    provider: Provider, due: list[DueTask], claimed_at: float | None = None
) -> list[WorkUnit]:
    """One unit per submit or lookup; polls grouped as the provider batches them; each
    stamped with ``claimed_at``, when its tasks were claimed. The units keep the claim's
    order: each poll batch goes where its first task sits in it (a fair claim hands a
    key's polls and creates out in turns, so a poll it takes first is sent first)."""
    from sluice.engine.execute import task_ref

    place = {t.id: n for n, t in enumerate(due)}
    placed: list[tuple[int, WorkUnit]] = []
    polls: list[DueTask] = []
    for task in due:
        if task.operation is Operation.POLL:
            polls.append(task)
        else:
            placed.append(
                (place[task.id], WorkUnit(provider.name, task.operation, (task,), claimed_at))
            )
    if polls:
        by_id = {t.id: t for t in polls}
        for group in provider.poll_groups([task_ref(t) for t in polls]):
            batch = tuple(by_id[r.task_id] for r in group)
            placed.append(
                (
                    min((place[t.id] for t in batch), default=len(due)),
                    WorkUnit(provider.name, Operation.POLL, batch, claimed_at),
                )
            )
    placed.sort(key=lambda entry: entry[0])
    return [unit for _, unit in placed]


def monotonic_deadline(seconds: float) -> Callable[[], bool]:
    """A predicate that turns true ``seconds`` from now."""
    end = time.monotonic() + seconds
    return lambda: time.monotonic() >= end
