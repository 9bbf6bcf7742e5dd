"""Run one work unit against its provider and turn the answers into outcomes.

Used by every executor (local threads, Celery tasks): the caller holds a limiter grant
for the unit, bound as the send permit of its thread (:mod:`sluice.ratelimit.sendgate`),
and records the returned outcomes with the store.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import datetime

import httpx

from sluice import errors
from sluice.domain import DueTask, Operation, Outcome, WorkUnit
from sluice.engine import decide
from sluice.engine.decide import Policy
from sluice.engine.retry import Backoff, PollSchedule
from sluice.providers.base import PollDecision, Provider, TaskRef, Transient
from sluice.ratelimit.base import Limiter

log = logging.getLogger("sluice.engine")

POLL_MAX_FACTOR = 8.0


def policy_of(provider: Provider, kind: str | None = None) -> Policy:
    """The retry and polling numbers of a provider, for :mod:`sluice.engine.decide`."""
    return Policy(
        provider=provider.name,
        max_attempts=provider.max_attempts,
        backoff=Backoff(provider.retry_base_s, provider.retry_max_s),
        poll=PollSchedule(
            provider.poll_interval_s,
            max(provider.poll_interval_s, provider.poll_interval_s * POLL_MAX_FACTOR),
        ),
        deadline_s=provider.deadline_s,
        can_lookup=provider.supports_lookup(kind),
        synchronous=provider.is_synchronous(kind),
        resubmit_when_unknown=provider.resubmits_when_unknown(kind),
    )


def task_ref(task: DueTask) -> TaskRef:
    return TaskRef(
        task_id=task.id,
        kind=task.kind,
        payload=task.payload or {},
        external_id=task.external_id,
        client_ref=task.client_ref or "",
        parent_external_id=task.parent_external_id,
        tenant=task.tenant,
    )


def execute_unit(
    unit: WorkUnit,
    provider: Provider,
    client: httpx.Client,
    limiter: Limiter,
    now: Callable[[], datetime],
    rng: random.Random | None = None,
) -> list[Outcome]:
    """Send the unit's one request and decide every task's outcome."""
    try:
        outcomes = _run(unit, provider, client, now, rng)
    except errors.GrantExpired:
        # Nothing was sent: the caller asks for a new grant, nothing is recorded.
        raise
    except Exception as exc:
        # The adapter translates HTTP failures into decisions; anything else is a bug in
        # configuration or code, retried like a transient failure rather than lost.
        log.exception("unit.crashed", extra={"provider": unit.provider, "op": unit.operation.value})
        outcomes = [_crashed(unit.operation, t, provider, exc, now(), rng) for t in unit.tasks]
    pauses = [o.pause_s for o in outcomes if o.pause_s is not None]
    if pauses:
        pause = max(pauses)
        try:
            limiter.pause(provider.pause_key(), pause)
        except errors.LimiterError:
            # The outcomes must still be written: the caller keeps the pause in the database
            # too, and dispatchers copy it back into the limiter once it answers again.
            log.warning("provider.pause_failed", exc_info=True, extra={"provider": provider.name})
        log.info("provider.paused", extra={"provider": provider.name, "pause_s": pause})
    return outcomes


def _crashed(
    operation: Operation,
    task: DueTask,
    provider: Provider,
    exc: Exception,
    at: datetime,
    rng: random.Random | None,
) -> Outcome:
    """The outcome of a unit that raised: a submit may have been sent, so it is ambiguous."""
    policy = policy_of(provider, task.kind)
    try:
        said = str(exc)
    except Exception:  # an exception that cannot print itself still ends as a failure
        said = "(unprintable)"
    message = f"internal error: {type(exc).__name__}: {said}"
    if operation is Operation.SUBMIT:
        return decide.after_submit(task, Transient(message, ambiguous=True), policy, at, rng)
    return decide.transient(task, Transient(message), policy, at, task.phase, rng)


def _run(
    unit: WorkUnit,
    provider: Provider,
    client: httpx.Client,
    now: Callable[[], datetime],
    rng: random.Random | None,
) -> list[Outcome]:
    first = unit.tasks[0]
    if unit.operation is Operation.SUBMIT:
        decision = provider.submit(client, task_ref(first))
        return [decide.after_submit(first, decision, policy_of(provider, first.kind), now(), rng)]
    if unit.operation is Operation.LOOKUP:
        if not provider.supports_lookup(first.kind):
            # Nothing to ask: end it or submit again, as the provider chose. No request.
            return [decide.unresolved(first, policy_of(provider, first.kind), now())]
        found = provider.lookup(client, task_ref(first))
        return [decide.after_lookup(first, found, policy_of(provider, first.kind), now(), rng)]
    answers = provider.poll(client, [task_ref(t) for t in unit.tasks])
    at = now()
    outcomes = []
    for task in unit.tasks:
        answer: PollDecision = answers.get(
            task.id, Transient(f"{provider.name} gave no status for {task.external_id}")
        )
        outcomes.append(decide.after_poll(task, answer, policy_of(provider, task.kind), at, rng))
    return outcomes
