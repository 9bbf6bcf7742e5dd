"""Task statuses, internal phases and the transitions the store allows."""

from __future__ import annotations

from enum import StrEnum


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
