"""The dispatcher: hands due work to an executor only as fast as the limiter grants it.

Per provider it keeps a short buffer of *claimed* work units (about ``lookahead_s`` worth
at the provider's rate), asks the limiter for a grant for the head unit and, when granted,
hands it to the executor at once, so nothing but a thread hand-off lies between the grant
and the request. A refusal only sets an in-memory "not before" time for that provider:
waiting costs no database write and no sleeping worker. The same loop runs embedded (one
process, forever) and inside Celery workers (bounded pumps).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from sluice.clock import Clock, SystemClock
from sluice.domain import DueTask, Operation, WorkUnit
from sluice.engine.reconcile import Reconciler
from sluice.providers.base import Provider
from sluice.ratelimit.base import Limiter
from sluice.ratelimit.rate import Grant
from sluice.store.queue import WorkQueue

log = logging.getLogger("sluice.dispatcher")

STEP_FAILURE_BACKOFF_S = 1.0
MIN_WAIT_S = 0.0001
# An in-flight refusal's retry_after_s is when leases would *expire*; a finishing request
# frees its slot much sooner, so look again shortly.
IN_FLIGHT_RECHECK_S = 0.005
# How many units refused on their own account's limit a step passes over to reach others.
MAX_SKIPS_PER_STEP = 8


def worker_name() -> str:
    """A name for this process in claims: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Executor(Protocol):
    """Runs granted work units."""

    def capacity(self) -> int:
        """How many more units could start right now."""
        ...

    def submit(self, unit: WorkUnit, grant: Grant) -> None:
        """Start the unit now; the grant's lease (if any) is released when it ends."""
        ...


@dataclass
class ProviderLane:
    """Claimed units of one provider waiting for grants."""

    units: deque[WorkUnit] = field(default_factory=deque)
    not_before: float = 0.0
    next_refill: float = 0.0
    next_top_up: float = 0.0


@dataclass
class DispatchStats:
    """Counters for the summary and the benchmarks."""

    granted: int = 0
    refused: int = 0
    claimed: int = 0


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
    ) -> None:
        self.queue = queue
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
        self.lanes = {name: ProviderLane() for name in providers}
        self.stats = DispatchStats()
        self._wake = threading.Event()

    # -- the loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event, until: Callable[[], bool] | None = None) -> None:
        """Dispatch until ``stop`` is set (or ``until()`` is true); then give back claims."""
        try:
            while not stop.is_set() and not (until and until()):
                try:
                    # Never wait longer than idle_s: new work may arrive from the API.
                    wait = min(self.step(), self.idle_s)
                except Exception:
                    # A database or limiter outage delays work; it must not end the loop.
                    log.exception("dispatcher.step_failed")
                    self.release_all_quietly()
                    wait = STEP_FAILURE_BACKOFF_S
                if wait > 0:
                    self._wake.wait(wait)
                    self._wake.clear()
        finally:
            self.release_all()

    def wake(self) -> None:
        """New work may be due (e.g. the API just created tasks)."""
        self._wake.set()

    def step(self) -> float:
        """Dispatch what can go now; return how long to wait before the next step."""
        self.reconciler.run_if_due()
        now = self.clock.time()
        waits: list[float] = []
        for name, lane in self.lanes.items():
            if not lane.units and now >= lane.next_refill:
                self._refill(name, lane)
                if not lane.units:
                    lane.next_refill = now + self.idle_s
            if lane.units:
                waits.append(self._drain(name, lane))
            else:
                waits.append(max(0.0, lane.next_refill - now))
        return min(waits, default=self.idle_s)

    def _drain(self, name: str, lane: ProviderLane) -> float:
        provider = self.providers[name]
        skipped = 0
        earliest_skipped: float | None = None
        while lane.units:
            now = self.clock.time()
            if now < lane.not_before:
                return lane.not_before - now
            if self.executor.capacity() <= 0:
                self._top_up(name, lane, now)
                return 0.001
            unit = lane.units[0]
            payload = unit.tasks[0].payload if unit.operation is Operation.SUBMIT else None
            grant = acquire(self.limiter, provider, unit, payload)
            if not grant.granted:
                self.stats.refused += 1
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
                lane.not_before = self.clock.time() + max(wait, MIN_WAIT_S)
                if grant.reason == "paused" and grant.retry_after_s > self.lookahead_s * 2:
                    self._release_lane(lane, grant.retry_after_s)
                    return grant.retry_after_s
                self._top_up(name, lane, now)
                continue
            lane.units.popleft()
            self.stats.granted += 1
            self.executor.submit(unit, grant)
        return 0.0

    # -- claims ------------------------------------------------------------------------

    def _refill(self, name: str, lane: ProviderLane) -> None:
        provider = self.providers[name]
        want = self._lookahead_count(provider)
        due = self.queue.claim_due(
            self.clock.now(), want, self.worker_id, self.lease_s, providers=[name]
        )
        if not due:
            return
        self.stats.claimed += len(due)
        lane.units.extend(build_units(provider, due))

    def _top_up(self, name: str, lane: ProviderLane, now: float) -> None:
        """Claim more work while waiting for a grant, before the lane runs dry.

        A claim made only once the lane is empty delays the next request by the claim's
        duration, and the limiter never gives that time back; made while waiting out the
        spacing, it usually costs nothing. At most one top-up per half lookahead, so that
        polls falling due meanwhile are claimed, and batched, together.
        """
        if now < lane.next_top_up:
            return
        if len(lane.units) * 2 > self._lookahead_count(self.providers[name]):
            return
        lane.next_top_up = now + self.lookahead_s / 2
        self._refill(name, lane)

    def _lookahead_count(self, provider: Provider) -> int:
        rates = [
            spec.rate.limit / spec.rate.window_s for spec in provider.limits_for("write", None)
        ]
        if not rates:
            return self.batch
        per_second = min(rates)
        return max(1, min(self.batch, math.ceil(per_second * self.lookahead_s)))

    def _release_lane(self, lane: ProviderLane, delay_s: float) -> None:
        claimed = [t for unit in lane.units for t in unit.tasks]
        lane.units.clear()
        at = self.clock.now() + timedelta(seconds=delay_s)
        self.queue.release(claimed, next_attempt_at=at)

    def release_all_quietly(self) -> None:
        """Give back claims if the store answers; their leases expire otherwise."""
        try:
            self.release_all()
        except Exception:
            log.warning("dispatcher.release_failed", exc_info=True)

    def release_all(self) -> None:
        """Give back every claimed, unsent unit (shutdown)."""
        claimed = [t for lane in self.lanes.values() for unit in lane.units for t in unit.tasks]
        for lane in self.lanes.values():
            lane.units.clear()
        if claimed:
            self.queue.release(claimed)


UNLIMITED = Grant(granted=True, retry_after_s=0.0)


def acquire(
    limiter: Limiter, provider: Provider, unit: WorkUnit, payload: Mapping[str, Any] | None
) -> Grant:
    """Ask for the grant one request of ``unit`` needs (a provider with no limits needs none)."""
    limits = provider.limits_for(unit.operation.access, payload)
    in_flight = provider.in_flight()
    if not limits and in_flight is None:
        return UNLIMITED
    return limiter.acquire(limits, in_flight=in_flight)


def has_account_limits(
    provider: Provider, unit: WorkUnit, payload: Mapping[str, Any] | None
) -> bool:
    """Whether ``unit`` draws on limits of its own account beside the provider-wide ones."""
    access = unit.operation.access
    return payload is not None and len(provider.limits_for(access, payload)) > len(
        provider.limits_for(access, None)
    )


def build_units(provider: Provider, due: list[DueTask]) -> list[WorkUnit]:
    """One unit per submit or lookup; polls grouped as the provider batches them."""
    from sluice.engine.execute import task_ref

    units: list[WorkUnit] = []
    polls: list[DueTask] = []
    for task in due:
        if task.operation is Operation.POLL:
            polls.append(task)
        else:
            units.append(WorkUnit(provider.name, task.operation, (task,)))
    if polls:
        by_id = {t.id: t for t in polls}
        for group in provider.poll_groups([task_ref(t) for t in polls]):
            units.append(
                WorkUnit(provider.name, Operation.POLL, tuple(by_id[r.task_id] for r in group))
            )
    return units


def monotonic_deadline(seconds: float) -> Callable[[], bool]:
    """A predicate that turns true ``seconds`` from now."""
    end = time.monotonic() + seconds
    return lambda: time.monotonic() >= end
