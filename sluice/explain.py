"""Why is a task where it is: one structured answer, for the API, the CLI and the console.

:meth:`Explainer.explain` reads the task, its parent, the pauses and pins in the database,
the limiter (pause ends, in-flight leases) and the rates in force, and names exactly one
``state``:

==================  =================================================================
``final``           Completed, Error (validation error, or error after n attempts) or
                    Cancelled, and why
``waiting_parent``  its parent is not Completed yet (the parent's id and status)
``paused``          one of its keys is paused: until when, by which signal, why, by whom
``in_flight_cap``   due, but the provider's ``max_in_flight`` requests are running
``backing_off``     a failed attempt: the next one at T (attempt n of m, last error)
``awaiting_lookup`` a create may have reached the provider: it is looked up by client
                    reference before anything is sent again
``polling``         In Progress at the provider: the next poll at T
``scheduled``       Not Started, due later (e.g. given back when a pause began)
``waiting_quota``   a quota it draws on is spent; it goes when the quota resets (not an
                    attempt): the quota, its use, and the reset in UTC and on the quota's
                    own clock (``GET /api/providers/{name}/quotas`` has every quota's state)
``sending``         a worker holds it and is asking for its grant or sending it
``waiting_slot``    due and waiting its turn under the rate in force: how many due
                    tasks of its provider go first, and about how long that takes
==================  =================================================================

Beside the state it always lists the rate in force on each of the task's limit keys
(configured, in force, and the source of the lower one: ``pinned``, ``learned``...).
Everything here is a read; the counts are capped (:data:`AHEAD_CAP`) so an answer stays
cheap with a million tasks queued.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sluice import errors
from sluice.controls import Controls, InFlightState, PauseState
from sluice.domain import FINAL_STATUSES, Operation, Phase, Task, TaskStatus
from sluice.engine.quotas import QuotaState, quota_state
from sluice.engine.rates import per_second
from sluice.providers.base import Provider
from sluice.ratelimit.gcra import pause_scopes_all
from sluice.ratelimit.rate import LimitSpec, shown_rate
from sluice.store.quotas import QuotaStore
from sluice.store.repository import TaskRepository
from sluice.units import UNIT_S

log = logging.getLogger("sluice.explain")

AHEAD_CAP = 10_000
"""Due tasks ahead are counted up to this many (the answer then says "at least")."""

STATES = (
    "final",
    "waiting_parent",
    "paused",
    "in_flight_cap",
    "backing_off",
    "awaiting_lookup",
    "polling",
    "scheduled",
    "waiting_quota",
    "sending",
    "waiting_slot",
)


@dataclass(frozen=True)
class ParentInfo:
    id: int
    status: TaskStatus


@dataclass(frozen=True)
class SlotInfo:
    """Due and waiting for a grant: ``ahead`` due tasks of the provider go first."""

    key: str | None
    """The slowest key of the request (the one that sets the pace)."""
    ahead: int
    ahead_capped: bool
    """``ahead`` reached :data:`AHEAD_CAP`: at least that many."""
    eta_s: float | None
    """About how long until its turn at the rate in force (None: no rate limits it)."""


@dataclass(frozen=True)
class QuotaWaitInfo:
    """A spent quota the task draws on: it goes at ``resets_at`` (not an attempt)."""

    key: str
    quota: str
    used: int
    limit: int
    resets_at: datetime
    resets_at_local: str | None
    """``resets_at`` on the clock of the quota's time zone (None: a rolling quota)."""


@dataclass(frozen=True)
class BackoffInfo:
    until: datetime | None
    attempt: int
    max_attempts: int
    last_error: str | None


@dataclass(frozen=True)
class LookupInfo:
    maybe_created: bool
    due_at: datetime | None


@dataclass(frozen=True)
class PollInfo:
    next_poll_at: datetime | None
    polls: int


@dataclass(frozen=True)
class FinalInfo:
    status: TaskStatus
    why: str


@dataclass(frozen=True)
class RateInfo:
    """The rate on one key of the task: configured, in force now, and why."""

    key: str
    configured: str
    in_force: str
    per_second: float
    source: str
    reason: str
    since: datetime | None


@dataclass(frozen=True)
class Explanation:
    """Why task ``task_id`` is where it is (see the module docstring for ``state``)."""

    task_id: int
    status: TaskStatus
    phase: Phase
    state: str
    summary: str
    operation: str | None = None
    parent: ParentInfo | None = None
    pause: PauseState | None = None
    slot: SlotInfo | None = None
    quota: QuotaWaitInfo | None = None
    in_flight: InFlightState | None = None
    backoff: BackoffInfo | None = None
    lookup: LookupInfo | None = None
    poll: PollInfo | None = None
    final: FinalInfo | None = None
    rates: list[RateInfo] = field(default_factory=list)


def when(moment: datetime | None) -> str:
    """A moment as explanations show it: ``2026-12-02 09:15:03Z``."""
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%SZ")


def operation_of(task: Task) -> Operation:
    if task.phase is Phase.POLLING:
        return Operation.POLL
    if task.phase is Phase.UNCERTAIN:
        return Operation.LOOKUP
    return Operation.SUBMIT


class Explainer:
    """Answers "why is this task here" over a repository and the controls' view."""

    def __init__(
        self, repo: TaskRepository, controls: Controls, *, fair_share: bool = True
    ) -> None:
        self.repo = repo
        self.controls = controls
        # How the engine claims (SLUICE_FAIR_SHARE): it decides which tasks are ahead.
        self.fair_share = fair_share

    def explain(self, task_id: int, *, tenant: str | None = None) -> Explanation:
        """The explanation of task ``task_id`` (TaskNotFound for another tenant's task).

        For a caller within one ``tenant``, tasks ahead are counted among that tenant's
        tasks only, and who set a pause is not named (both belong to the operators).
        """
        task = self.repo.get(task_id, tenant=tenant)
        now = self.repo.clock.now()
        base: dict[str, Any] = {"task_id": task.id, "status": task.status, "phase": task.phase}
        if task.status in FINAL_STATUSES:
            final = self._final(task)
            return Explanation(**base, state="final", summary=f"final: {final.why}", final=final)
        if task.phase is Phase.WAITING_PARENT and task.parent_id is not None:
            parent = self.repo.get(task.parent_id)
            return Explanation(
                **base,
                state="waiting_parent",
                summary=f"waiting for parent task {parent.id} ({parent.status.value})",
                parent=ParentInfo(parent.id, parent.status),
            )
        operation = operation_of(task)
        base["operation"] = operation.value
        provider = self.controls.providers.get(task.provider)
        limits: list[LimitSpec] = []
        if provider is not None:
            payload = task.payload if operation is Operation.SUBMIT else None
            limits = provider.limits_for(operation.access, payload)
        base["rates"] = rates = self._rates(limits)

        pause = self._pause(provider, limits, now)
        if pause is not None and tenant is not None:
            pause = replace(pause, actor=None)
        if pause is not None:
            until = "until resumed" if pause.until is None else f"until {when(pause.until)}"
            by = f" by {pause.actor}" if pause.actor else ""
            why = f": {pause.reason}" if pause.reason else ""
            return Explanation(
                **base,
                state="paused",
                summary=f"paused {until} on {pause.key} ({pause.signal or 'limiter'}{by}){why}",
                pause=pause,
            )
        spent = self._spent_quota(provider, task, operation, now)
        if spent is not None:
            local = f" ({spent.resets_at_local})" if spent.resets_at_local else ""
            return Explanation(
                **base,
                state="waiting_quota",
                summary=(
                    f"waiting for quota {spent.key} ({spent.used} of {spent.limit} used, "
                    f"{spent.reset}) to reset at {when(spent.resets_at)}{local}: the quota "
                    "is spent, so it goes then (not an attempt, not a failure)"
                ),
                quota=QuotaWaitInfo(
                    spent.key,
                    spent.quota,
                    spent.used,
                    spent.limit,
                    spent.resets_at,
                    spent.resets_at_local,
                ),
            )
        due = task.next_attempt_at is None or task.next_attempt_at <= now
        if not due and task.phase is Phase.READY:
            if task.attempts > 0:
                max_attempts = provider.max_attempts if provider is not None else 0
                backoff = BackoffInfo(
                    task.next_attempt_at, task.attempts, max_attempts, task.last_error
                )
                return Explanation(
                    **base,
                    state="backing_off",
                    summary=(
                        f"backing off until {when(task.next_attempt_at)} after attempt "
                        f"{task.attempts} of {max_attempts}: {task.last_error or 'no message'}"
                    ),
                    backoff=backoff,
                )
            return Explanation(
                **base,
                state="scheduled",
                summary=f"not started; due at {when(task.next_attempt_at)}",
            )
        if task.phase is Phase.UNCERTAIN and not due:
            return Explanation(
                **base,
                state="awaiting_lookup",
                summary=(
                    f"awaiting a lookup at {when(task.next_attempt_at)}: a create may have "
                    f"reached {task.provider}, so it is looked up by client reference "
                    "before anything is sent again"
                ),
                lookup=LookupInfo(task.maybe_created, task.next_attempt_at),
            )
        if task.phase is Phase.POLLING and not due:
            return Explanation(
                **base,
                state="polling",
                summary=(
                    f"in progress at {task.provider}; next poll at {when(task.next_attempt_at)}"
                ),
                poll=PollInfo(task.next_attempt_at, task.polls),
            )
        in_flight = self._in_flight(provider)
        if in_flight is not None and (in_flight.in_flight or 0) >= in_flight.max_in_flight:
            return Explanation(
                **base,
                state="in_flight_cap",
                summary=(
                    f"held by the in-flight cap on {in_flight.key}: {in_flight.in_flight} of "
                    f"{in_flight.max_in_flight} requests running"
                ),
                in_flight=in_flight,
            )
        # A poll or lookup stays in its phase while claimed. The claim may be a stopped
        # worker's (`sluice up` killed): nothing moves until it lapses, so say when.
        claimed = task.claimed_until is not None and task.claimed_until > now
        if task.phase is Phase.SUBMITTING or claimed:
            until, then = "", ""
            if claimed:
                until = f" until {when(task.claimed_until)}"
                then = " (if that worker stopped, the task is taken up again then)"
            what = {"submit": "request", "poll": "poll", "lookup": "lookup"}[operation.value]
            return Explanation(
                **base,
                state="sending",
                summary=(
                    f"claimed by a worker{until}: its grant from the limiter is being asked "
                    f"for, or its {what} to {task.provider} is on the way{then}"
                ),
                in_flight=in_flight,
            )
        slot = self._slot(task, rates, now, tenant)
        if task.phase is Phase.UNCERTAIN:
            base["lookup"] = LookupInfo(task.maybe_created, task.next_attempt_at)
        if task.phase is Phase.POLLING:
            base["poll"] = PollInfo(task.next_attempt_at, task.polls)
        ahead = f"{'at least ' if slot.ahead_capped else ''}{slot.ahead} due ahead of it"
        eta = "" if slot.eta_s is None else f", about {_seconds(slot.eta_s)}"
        at = f" at {_rate_of(rates, slot.key)}" if slot.key else ""
        what = {"submit": "a slot", "poll": "a poll slot", "lookup": "a lookup slot"}[
            operation.value
        ]
        return Explanation(
            **base,
            state="waiting_slot",
            summary=f"waiting for {what} on {slot.key or task.provider}: {ahead}{eta}{at}",
            slot=slot,
            in_flight=in_flight,
        )

    # -- parts -------------------------------------------------------------------------

    def _spent_quota(
        self, provider: Provider | None, task: Task, operation: Operation, now: datetime
    ) -> QuotaState | None:
        """The first quota ``task``'s next request draws on that has too little left."""
        if provider is None:
            return None
        payload = task.payload if operation is Operation.SUBMIT else None
        store = QuotaStore(self.repo.engine)
        for spec in provider.quotas_for(operation, payload, [task.kind]):
            state = quota_state(store, spec.key, spec.quota, now)
            if state.remaining < spec.cost:
                return state
        return None

    def _final(self, task: Task) -> FinalInfo:
        if task.status is TaskStatus.COMPLETED:
            shown = f" (external id {task.external_id})" if task.external_id else ""
            return FinalInfo(task.status, f"completed{shown}")
        if task.status is TaskStatus.CANCELLED:
            detail = task.last_error
            if detail is None:
                cancels = [e for e in self.repo.events(task.id) if e.to_status is task.status]
                detail = cancels[-1].detail if cancels else None
            return FinalInfo(task.status, f"cancelled ({detail})" if detail else "cancelled")
        if task.validation_error:
            return FinalInfo(task.status, f"error: {task.validation_error}")
        return FinalInfo(
            task.status,
            f"error after {task.attempts} attempt(s): {task.last_error or 'no message'}",
        )

    def _rates(self, limits: list[LimitSpec]) -> list[RateInfo]:
        shown = []
        for spec in limits:
            force = self.controls.rates.in_force(spec)
            try:
                configured = self.controls.limit_of(spec.key).rate
            except errors.UnknownLimit:
                configured = spec.rate
            rate = configured if force.source == "configured" else force.rate
            shown.append(
                RateInfo(
                    spec.key,
                    str(configured),
                    shown_rate(rate),
                    per_second(force.rate),
                    force.source,
                    force.reason,
                    force.since,
                )
            )
        return shown

    def _pause(
        self, provider: Provider | None, limits: list[LimitSpec], now: datetime
    ) -> PauseState | None:
        keys = [spec.key for spec in limits]
        if provider is not None:
            keys.append(provider.pause_key())
            cap = provider.in_flight()
            if cap is not None:
                keys.append(cap.key)
        scopes = pause_scopes_all(keys)
        recorded = self.controls.pauses.details(now)
        found = [PauseState.of(recorded[scope]) for scope in scopes if scope in recorded]
        if found:
            # The one that ends last is the one the task waits for.
            return max(found, key=lambda p: p.until or datetime.max.replace(tzinfo=now.tzinfo))
        for key in keys:
            try:
                until_s = self.controls.limiter.paused_until(key)
            except errors.LimiterError as exc:
                log.warning("explain.limiter_unavailable", extra={"error": str(exc)})
                return None
            if until_s is not None:
                until = now + timedelta(seconds=max(0.0, until_s - now.timestamp()))
                return PauseState(key, until, "limiter", None, None, None)
        return None

    def _in_flight(self, provider: Provider | None) -> InFlightState | None:
        if provider is None or provider.in_flight() is None:
            return None
        return self.controls.in_flight_state(provider)

    def _slot(
        self, task: Task, rates: list[RateInfo], now: datetime, tenant: str | None
    ) -> SlotInfo:
        ahead = self.repo.due_ahead(task, now, AHEAD_CAP, tenant=tenant, fair=self.fair_share)
        slowest = min(rates, key=lambda r: r.per_second, default=None)
        eta = None
        if slowest is not None and slowest.per_second > 0 and math.isfinite(slowest.per_second):
            eta = (ahead + 1) / slowest.per_second
        return SlotInfo(slowest.key if slowest else None, ahead, ahead >= AHEAD_CAP, eta)


def _rate_of(rates: list[RateInfo], key: str) -> str:
    for rate in rates:
        if rate.key == key:
            return rate.in_force + ("" if rate.source == "configured" else f" ({rate.source})")
    return "?"


def _seconds(seconds: float) -> str:
    for unit in ("h", "min"):
        if seconds >= UNIT_S[unit]:
            return f"{seconds / UNIT_S[unit]:.1f} {unit}"
    return f"{seconds:.1f} s"
