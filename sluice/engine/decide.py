"""Turn one provider decision into the outcome the store records: pure, no I/O.

This is the one place that acts on ``Accepted | StatusReport | RateLimited | Transient |
Failed | Found | NotFound``: rate limits (and a provider that cannot be reached, paused by
Sluice's own back-off) never count as attempts, transient failures back
off with full jitter up to ``max_attempts`` failures in a row (a good answer from the
provider starts the count again), final statuses release or end the task's children.

No duplicate creates: after an ambiguous end (a create that may have reached the provider:
a lost answer, a 5xx, a worker lost mid-request; or status reads that no longer find its
object, on the retry of such a task) the task is ``uncertain`` and ``maybe_created``. A
kind with a lookup is looked up by client reference before any re-create; a kind without
one ends in Error, "outcome unknown", unless its provider opts in to re-submitting
(``resubmit_when_unknown``). Only a lookup that finds nothing, or an answer that proves
nothing was created, clears ``maybe_created``.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sluice.domain import DueTask, Outcome, Phase, TaskStatus
from sluice.engine.retry import Backoff, PollSchedule
from sluice.providers.base import (
    Accepted,
    Found,
    LookupDecision,
    NotFound,
    PollDecision,
    RateLimited,
    StatusReport,
    SubmitDecision,
    Transient,
    deadline_message,
)
from sluice.store.chains import children_end

DEFAULT_PAUSE_S = 1.0


@dataclass(frozen=True)
class Policy:
    """A provider's retry and polling rules, as plain numbers."""

    provider: str
    max_attempts: int
    backoff: Backoff
    poll: PollSchedule
    deadline_s: float | None
    can_lookup: bool
    synchronous: bool = False
    resubmit_when_unknown: bool = False


OUTCOME_UNKNOWN = "outcome unknown: check the provider"


def _later(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=max(0.0, seconds))


def _outcome(task: DueTask, to_status: TaskStatus, phase: Phase, **values: Any) -> Outcome:
    """An outcome for ``task``, guarded by the status and the claim it was decided under."""
    return Outcome(
        task_id=task.id,
        from_status=task.status,
        to_status=to_status,
        phase=phase,
        claim=task.claimed_by,
        **values,
    )


def rate_limited(task: DueTask, decision: RateLimited, now: datetime) -> Outcome:
    """Wait out the provider's pause (or, unreachable, Sluice's); the attempt does not count."""
    pause = decision.retry_after_s if decision.retry_after_s is not None else DEFAULT_PAUSE_S
    fields: dict[str, Any] = {"next_attempt_at": _later(now, pause)}
    phase = task.phase
    if task.phase is Phase.SUBMITTING:
        # Refused before it was created: the next attempt is a plain submit.
        phase = Phase.READY
        fields["maybe_created"] = False
    return _outcome(
        task,
        task.status,
        phase,
        event="unreachable" if decision.unreachable else "rate_limited",
        detail=f"{decision.detail}; paused {pause:g}s",
        fields=fields,
        pause_s=pause,
    )


def transient(
    task: DueTask,
    decision: Transient,
    policy: Policy,
    now: datetime,
    retry_phase: Phase,
    rng: random.Random | None = None,
    **settled: Any,
) -> Outcome:
    """Back off and retry, or give up with the last error after ``max_attempts`` failures in
    a row (``attempts`` counts them; a create accepted or a status read starts it again).

    ``settled`` are more fields to record either way (e.g. ``maybe_created``).
    """
    attempts = task.attempts + 1
    if attempts >= policy.max_attempts:
        message = f"gave up after {attempts} attempts: {decision.message}"
        if decision.gone:
            return _object_gone(task, policy, message, attempts, decision.message)
        return ended(
            task,
            TaskStatus.ERROR,
            "gave_up",
            message,
            attempts=attempts,
            last_error=decision.message,
            **settled,
        )
    delay = policy.backoff.delay(attempts, rng)
    if decision.retry_after_s is not None:
        delay = max(delay, decision.retry_after_s)
    return _outcome(
        task,
        task.status,
        retry_phase,
        event="attempt_failed",
        detail=f"attempt {attempts}: {decision.message}; next in {delay:.2f}s",
        fields={
            "attempts": attempts,
            "last_error": decision.message,
            "next_attempt_at": _later(now, delay),
            **settled,
        },
    )


def _object_gone(task: DueTask, policy: Policy, message: str, attempts: int, cause: str) -> Outcome:
    """Give up when the last of ``max_attempts`` failed status reads found no object by the
    task's id (``object_gone``).

    A retry by request then does not poll the missing id again. It is marked
    ``maybe_created``, like an ambiguous create: a kind with a lookup is looked up by client
    reference before it is created again, so that a status request answering 404 for every
    id (a wrong path), or one 404 after other failures, finds the object still listed and
    polls it. A kind with no lookup goes the way of any create nothing can check: "outcome
    unknown" (no request), then a second retry by request creates it, unless its provider
    opted in to ``resubmit_when_unknown``. A tracked task has nothing to create: it is
    polled again.
    """
    missing = task.external_id
    if task.track_only:
        then = "tracked, so a retry only polls it again"
    elif policy.can_lookup:
        then = "a retry looks it up by client reference and creates it again if it is not there"
    elif policy.resubmit_when_unknown:
        then = "a retry creates it again (resubmit_when_unknown)"
    else:
        then = (
            f"kind {task.kind!r} has no lookup, so a retry ends in 'outcome unknown' "
            "and a second retry creates it again"
        )
    return ended(
        task,
        TaskStatus.ERROR,
        "object_gone",
        f"{message} ({policy.provider} answered that it has no object {missing}: {then})",
        attempts=attempts,
        last_error=cause,
        maybe_created=not task.track_only,
    )


def accepted(
    task: DueTask, external_id: str, completed: bool, policy: Policy, now: datetime, event: str
) -> Outcome:
    """The provider has the object: poll it, or it is already done."""
    if completed:
        return _outcome(
            task,
            TaskStatus.COMPLETED,
            Phase.DONE,
            event=event,
            detail=f"{policy.provider} id {external_id} (synchronous)",
            fields={
                "external_id": external_id,
                "next_attempt_at": None,
                "attempts": 0,
                "last_error": None,
                "maybe_created": False,
            },
            release_children=True,
        )
    interval = policy.poll.base_s
    deadline = _later(now, policy.deadline_s) if policy.deadline_s is not None else None
    return _outcome(
        task,
        TaskStatus.IN_PROGRESS,
        Phase.POLLING,
        event=event,
        detail=f"{policy.provider} id {external_id}",
        fields={
            "external_id": external_id,
            "next_attempt_at": _later(now, interval),
            "poll_interval_s": interval,
            "deadline_at": deadline,
            "attempts": 0,
            "last_error": None,
            "maybe_created": False,
        },
    )


def after_submit(
    task: DueTask,
    decision: SubmitDecision,
    policy: Policy,
    now: datetime,
    rng: random.Random | None = None,
) -> Outcome:
    """Outcome of a create request."""
    if isinstance(decision, Accepted):
        return accepted(task, decision.external_id, decision.completed, policy, now, "submitted")
    if isinstance(decision, RateLimited):
        if decision.ambiguous and not policy.resubmit_when_unknown:
            return _limited_maybe_created(task, decision, policy, now)
        return rate_limited(task, decision, now)
    if isinstance(decision, Transient):
        if not decision.ambiguous:
            return transient(task, decision, policy, now, Phase.READY, rng, maybe_created=False)
        if policy.can_lookup:
            return transient(task, decision, policy, now, Phase.UNCERTAIN, rng, maybe_created=True)
        if policy.resubmit_when_unknown:
            # The provider opted in to the risk of a duplicate: submit again after backoff.
            return transient(task, decision, policy, now, Phase.READY, rng, maybe_created=False)
        return outcome_unknown(task, policy, decision.message)
    return failed(task, decision.message)


def _limited_maybe_created(
    task: DueTask, decision: RateLimited, policy: Policy, now: datetime
) -> Outcome:
    """A create refused with a server error that is also a "slow down" (TTD's 503): the
    provider is paused as for any signal, and the attempt does not count, but the create
    may have been committed, so it is settled like any ambiguous end: looked up once the
    pause is over, or, for a kind without a lookup, "outcome unknown"."""
    limited = rate_limited(task, decision, now)
    if policy.can_lookup:
        return dataclasses.replace(
            limited,
            phase=Phase.UNCERTAIN,
            detail=f"{limited.detail}; a server error: looked up before it is sent again",
            fields={**limited.fields, "maybe_created": True},
        )
    return dataclasses.replace(
        outcome_unknown(task, policy, decision.detail), pause_s=limited.pause_s
    )


def failed(task: DueTask, message: str) -> Outcome:
    """A permanent refusal (validation): Error with the provider's message."""
    return ended(task, TaskStatus.ERROR, "rejected", message, maybe_created=False)


def outcome_unknown(task: DueTask, policy: Policy, cause: str) -> Outcome:
    """A create may have happened and this kind cannot be looked up: Error, for a person.

    ``maybe_created`` is cleared: nothing more Sluice can check, so a retry by request is
    the person's decision to submit again.
    """
    message = (
        f"{OUTCOME_UNKNOWN} ({policy.provider} has no lookup for kind {task.kind!r}; "
        f"{cause}); retry to submit again"
    )
    return ended(
        task, TaskStatus.ERROR, "outcome_unknown", message, last_error=cause, maybe_created=False
    )


def unresolved(task: DueTask, policy: Policy, now: datetime) -> Outcome:
    """A task to look up whose kind has no lookup (a worker was lost mid-submission, or a
    retry of a create that may have happened): no request is sent."""
    if policy.resubmit_when_unknown:
        return _outcome(
            task,
            task.status,
            Phase.READY,
            event="resubmitting",
            detail=(
                f"{policy.provider} has no lookup for kind {task.kind!r}; submitting again "
                "(resubmit_when_unknown)"
            ),
            fields={"next_attempt_at": now, "maybe_created": False},
        )
    return outcome_unknown(
        task,
        policy,
        "nothing settled whether the provider has it: a worker was lost mid-submission, "
        "or status reads no longer found its object",
    )


def ended(
    task: DueTask, status: TaskStatus, event: str | None, message: str, **fields: Any
) -> Outcome:
    """Error or Cancelled with ``message``; the unfinished descendants end with it."""
    values: dict[str, Any] = {
        "validation_error": message if status is TaskStatus.ERROR else None,
        "last_error": message,
        "next_attempt_at": None,
    }
    values.update(fields)
    return _outcome(
        task,
        status,
        Phase.DONE,
        event=event,
        detail=message,
        fields=values,
        end_descendants=children_end(task.id, status, message),
    )


def after_lookup(
    task: DueTask,
    decision: LookupDecision,
    policy: Policy,
    now: datetime,
    rng: random.Random | None = None,
) -> Outcome:
    """Outcome of looking up a create whose answer was lost."""
    if isinstance(decision, Found):
        return accepted(task, decision.external_id, policy.synchronous, policy, now, "found")
    if isinstance(decision, NotFound):
        return _outcome(
            task,
            task.status,
            Phase.READY,
            event="lookup",
            detail="no object with this client reference; submitting again",
            fields={"next_attempt_at": now, "maybe_created": False},
        )
    if isinstance(decision, RateLimited):
        return rate_limited(task, decision, now)
    return transient(task, decision, policy, now, Phase.UNCERTAIN, rng)


def after_poll(
    task: DueTask,
    decision: PollDecision,
    policy: Policy,
    now: datetime,
    rng: random.Random | None = None,
) -> Outcome:
    """Outcome of a status read (also when nothing changed: the next poll is scheduled)."""
    if isinstance(decision, RateLimited):
        return rate_limited(task, decision, now)
    if isinstance(decision, Transient):
        return transient(task, decision, policy, now, Phase.POLLING, rng)
    return _status_report(task, decision, policy, now)


def _status_report(task: DueTask, report: StatusReport, policy: Policy, now: datetime) -> Outcome:
    polls = task.polls + 1
    status = report.status
    if status is TaskStatus.COMPLETED:
        return _outcome(
            task,
            TaskStatus.COMPLETED,
            Phase.DONE,
            detail=f"{policy.provider} status {report.raw_status!r}",
            fields={"polls": polls, "next_attempt_at": None, "last_error": None},
            release_children=True,
        )
    if status in (TaskStatus.ERROR, TaskStatus.CANCELLED):
        message = report.message or f"{policy.provider} status {report.raw_status!r}"
        return ended(task, status, None, message, polls=polls)
    deadline = task.deadline_at
    if policy.deadline_s is not None:
        if deadline is None:
            # A task polled without having been created here (tracked, or polled again after
            # a retry by request): the deadline runs from its first status read.
            deadline = _later(now, policy.deadline_s)
        elif now >= deadline:
            message = deadline_message(policy.provider, policy.deadline_s)
            return ended(task, TaskStatus.ERROR, "deadline", message, polls=polls)
    # Only forward moves: a provider answering "Not Started" for an In Progress task
    # changes nothing.
    to_status = task.status
    if status is TaskStatus.IN_PROGRESS and task.status is TaskStatus.NOT_STARTED:
        to_status = TaskStatus.IN_PROGRESS
    changed = to_status != task.status
    interval = policy.poll.next_interval(task.poll_interval_s, changed)
    return _outcome(
        task,
        to_status,
        Phase.POLLING,
        detail=f"{policy.provider} status {report.raw_status!r}" if changed else None,
        fields={
            "polls": polls,
            "poll_interval_s": interval,
            "next_attempt_at": _later(now, interval),
            "deadline_at": deadline,
            "attempts": 0,
        },
    )
