"""Task statuses, internal phases and the transitions the store allows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class TaskStatus(StrEnum):
    """The public status vocabulary (the prototype's four words, plus Cancelled)."""

    NOT_STARTED = "Not Started"
    IN_PROGRESS = "In Progress"
    COMPLETED = "Completed"
    ERROR = "Error"
    CANCELLED = "Cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.ERROR, TaskStatus.CANCELLED})


class Phase(StrEnum):
    """Finer internal state beside the public status.

    ``waiting_parent``: Not Started, parent not Completed yet.
    ``ready``: Not Started, due at ``next_attempt_at``.
    ``submitting``: a worker holds the task and may be calling the provider.
    ``uncertain``: a submit may have reached the provider; look up before re-creating.
    ``polling``: In Progress, next poll due at ``next_attempt_at``.
    ``done``: a final status.
    """

    WAITING_PARENT = "waiting_parent"
    READY = "ready"
    SUBMITTING = "submitting"
    UNCERTAIN = "uncertain"
    POLLING = "polling"
    DONE = "done"


ALLOWED_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.NOT_STARTED: frozenset(
        {TaskStatus.IN_PROGRESS, TaskStatus.COMPLETED, TaskStatus.ERROR, TaskStatus.CANCELLED}
    ),
    TaskStatus.IN_PROGRESS: frozenset(
        {TaskStatus.COMPLETED, TaskStatus.ERROR, TaskStatus.CANCELLED}
    ),
    # Retry (POST /api/tasks/{id}/retry) puts failed or cancelled work back in line.
    TaskStatus.ERROR: frozenset({TaskStatus.NOT_STARTED}),
    TaskStatus.CANCELLED: frozenset({TaskStatus.NOT_STARTED}),
    TaskStatus.COMPLETED: frozenset(),
}


def can_transition(current: TaskStatus, new: TaskStatus) -> bool:
    """Whether ``current -> new`` is a legal status change (same status is not a change)."""
    return new in ALLOWED_TRANSITIONS[current]


@dataclass(frozen=True)
class Task:
    """A task as the store knows it."""

    id: int
    provider: str
    kind: str | None
    payload: dict[str, Any] | None
    external_id: str | None
    parent_id: int | None
    status: TaskStatus
    phase: Phase
    track_only: bool
    validation_error: str | None
    last_error: str | None
    attempts: int
    polls: int
    next_attempt_at: datetime | None
    idempotency_key: str | None
    client_ref: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TaskEvent:
    """One entry of a task's append-only history."""

    id: int
    task_id: int
    at: datetime
    event: str
    from_status: TaskStatus | None
    to_status: TaskStatus | None
    detail: str | None


@dataclass(frozen=True)
class NewTask:
    """What a client asks the store to create.

    ``parent_index`` names an earlier item of the same batch as the parent;
    ``parent_id`` names a task that already exists. At most one of them is set.
    """

    provider: str
    kind: str | None = None
    payload: dict[str, Any] | None = None
    id: int | None = None
    parent_id: int | None = None
    parent_index: int | None = None
    status: TaskStatus = TaskStatus.NOT_STARTED
    idempotency_key: str | None = None
    request_hash: str | None = None

    @property
    def track_only(self) -> bool:
        """The prototype's mode: an object submitted elsewhere, tracked by its id."""
        return self.kind is None
